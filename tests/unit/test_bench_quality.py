"""Perplexity windows and consistency agreement against hand-computed values."""

from __future__ import annotations

import math

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
    }
    # Diverge at index 2, meet again at 3; the longer output (5) is the denominator.
    a = agreement([1, 2, 9, 4], [1, 2, 3, 4, 5])
    assert a == {"token_agreement": 3 / 5, "prefix_agreement": 2 / 5, "exact_match": 0.0}
    assert agreement([1, 2], [1, 2, 3])["prefix_agreement"] == pytest.approx(2 / 3)
    assert agreement([], [])["exact_match"] == 1.0


def test_compare_all_pairs_and_units():
    outputs = {"x": [[1, 2], [3]], "y": [[1, 2], [4]], "z": [[1, 5], [3]]}
    rows = compare_all(outputs, "tokens")
    assert [(r["a"], r["b"]) for r in rows] == [("x", "y"), ("x", "z"), ("y", "z")]
    xy = rows[0]
    assert xy["exact_match"] == pytest.approx(0.5) and xy["token_agreement"] == pytest.approx(0.5)
    assert rows[1]["token_agreement"] == pytest.approx((0.5 + 1.0) / 2)
    assert to_units(["a b  c"]) == ([["a", "b", "c"]], "words")

    class Tok:
        def encode(self, text, add_special_tokens=True):
            assert add_special_tokens is False
            return [ord(c) for c in text]

    assert to_units(["ab"], Tok()) == ([[97, 98]], "tokens")
