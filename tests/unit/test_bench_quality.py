"""Perplexity windows and consistency agreement against hand-computed values."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from minerva.bench.consistency import agreement, compare_all, to_units
from minerva.bench.perplexity import perplexity, windows
from minerva.errors import ConfigError


@pytest.mark.parametrize(
    "n, window, stride", [(10, 4, 2), (10, 4, 4), (9, 4, 3), (3, 8, 4), (50, 16, 5)]
)
def test_every_token_after_the_first_is_scored_exactly_once(n, window, stride):
    scored: list[int] = []

    def score(ids: list[int]) -> list[float]:
        # ids are global positions: report which positions each window would score
        return [-float(p) for p in ids[1:]]

    ids = list(range(n))
    spans = windows(n, window, stride)
    for begin, end, num_new in spans:
        got = score(ids[begin:end])
        scored += [-int(v) for v in (got[-num_new:] if num_new <= len(got) else got)]
        assert end - begin <= window
    assert sorted(scored) == list(range(1, n))
    # Mean NLL = mean of positions 1..n-1 = n/2.
    result = perplexity(score, ids, window, stride)
    assert result["mean_nll"] == pytest.approx(n / 2)
    assert result["num_scored"] == n - 1 and result["num_windows"] == len(spans)


def test_uniform_model_has_perplexity_equal_to_its_vocabulary():
    vocab = 37

    def uniform(ids):
        return [-math.log(vocab)] * (len(ids) - 1)

    assert perplexity(uniform, list(range(100)), 16)["perplexity"] == pytest.approx(vocab)


def test_perplexity_errors():
    with pytest.raises(ConfigError, match="at least 2 tokens"):
        perplexity(lambda ids: [], [1], 8)
    with pytest.raises(ConfigError, match="stride <= window"):
        windows(10, 4, 5)


def test_agreement_hand_computed():
    assert agreement([1, 2, 3, 4], [1, 2, 3, 4]) == {
        "token_agreement": 1.0,
        "prefix_agreement": 1.0,
        "exact_match": 1.0,
        "first_divergence": None,
    }
    # Diverge at index 2, meet again at 3; the longer output (5) is the denominator.
    a = agreement([1, 2, 9, 4], [1, 2, 3, 4, 5])
    assert a == {
        "token_agreement": 3 / 5, "prefix_agreement": 2 / 5, "exact_match": 0.0,
        "first_divergence": 2,
    }  # fmt: skip
    assert agreement([1, 2], [1, 2, 3])["first_divergence"] == 2  # one stopped early
    assert agreement([1, 2], [1, 2, 3])["prefix_agreement"] == pytest.approx(2 / 3)
    assert agreement([], [])["exact_match"] == 1.0


def test_compare_all_pairs_and_units():
    outputs = {"x": [[1, 2], [3]], "y": [[1, 2], [4]], "z": [[1, 5], [3]]}
    rows = compare_all(outputs, "tokens")
    assert [(r["a"], r["b"]) for r in rows] == [("x", "y"), ("x", "z"), ("y", "z")]
    xy = rows[0]
    assert xy["exact_match"] == pytest.approx(0.5) and xy["token_agreement"] == pytest.approx(0.5)
    assert rows[1]["token_agreement"] == pytest.approx((0.5 + 1.0) / 2)
    assert (xy["first_divergence"], xy["num_diverged"]) == (0, 1)
    assert (rows[1]["first_divergence"], rows[1]["num_diverged"]) == (1, 1)
    assert to_units(["a b  c"]) == ([["a", "b", "c"]], "words")

    class Tok:
        def encode(self, text, add_special_tokens=True):
            assert add_special_tokens is False
            return [ord(c) for c in text]

    assert to_units(["ab"], Tok()) == ([[97, 98]], "tokens")


def test_token_distributions_hand_computed():
    from minerva.bench.token_distribution import compare, kl_divergence, top_k_overlap

    same = compare([[1, 2, 2], [3]], [[2, 1], [2, 3]])  # the same counts, in another order
    assert same == {"top_k_overlap": 1.0, "kl_divergence": 0.0}
    a, b = Counter({1: 3, 2: 1}), Counter({1: 1, 3: 1})
    # support {1, 2, 3}, add-1/2: P_a = (3.5, 1.5, 0.5) / 5.5, P_b = (1.5, 0.5, 1.5) / 3.5
    p, q = [3.5 / 5.5, 1.5 / 5.5, 0.5 / 5.5], [1.5 / 3.5, 0.5 / 3.5, 1.5 / 3.5]
    expected = sum(x * math.log(x / y) for x, y in zip(p, q))
    assert kl_divergence(a, b) == pytest.approx(expected)
    assert kl_divergence(b, a) != pytest.approx(expected)  # KL is not symmetric
    assert top_k_overlap(a, b, k=2) == pytest.approx(0.5) and top_k_overlap(a, b, k=1) == 1.0


def test_coherence_scores_only_the_output_tokens():
    from minerva.bench.coherence import coherence

    calls = []

    def score(ids):  # log p of token i+1 = -(i+1): position-dependent, so the slice shows
        calls.append(ids)
        return [-(i + 1.0) for i in range(len(ids) - 1)]

    r = coherence(score, [[7, 8, 9], [5]], [[1, 2], [3, 4, 6]])
    assert calls == [[7, 8, 9, 1, 2], [5, 3, 4, 6]]
    # prompt 1: outputs at positions 3, 4 -> log p -3, -4; prompt 2: -1, -2, -3
    assert r["scored_tokens"] == 5
    assert r["coherence_ppl"] == pytest.approx(math.exp((3 + 4 + 1 + 2 + 3) / 5))
    assert coherence(score, [[1]], [[]])["coherence_ppl"] is None
