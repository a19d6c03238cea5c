"""Verification of draft tokens is exact: chi-square tests against the target distribution with
fixed seeds (deterministic, so they cannot flake), and the one-hot coupling against the
standard accept / resample rule."""

from __future__ import annotations

import math

import torch

from minerva.sampler import Sampler
from minerva.sampling_metadata import SamplingMetadata
from minerva.sampling_params import SamplingParams
from minerva.spec import SpecDecodeStats, accept_drafts
from minerva.spec.rejection_sampler import rejection_sample_reference

CPU = torch.device("cpu")
VOCAB = 8


def chi2_critical(df: int, z: float = 3.29) -> float:
    """Wilson-Hilferty: the chi-square quantile at upper tail ~5e-4 for df degrees."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2(counts: list[int], probs: list[float]) -> float:
    n = sum(counts)
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs) if p > 0)


def sample_rows(logits: torch.Tensor, seeds: list[int], index: int) -> list[int]:
    """The sampler's token for each seed at output index `index` (temperature 1)."""
    params = [SamplingParams(temperature=1.0)] * len(seeds)
    n = len(seeds)
    meta = SamplingMetadata.build(params, seeds, [index] * n, [[]] * n, [[]] * n, VOCAB, CPU)
    return Sampler()(logits.expand(n, VOCAB), meta).token_ids.tolist()


def test_one_hot_verification_follows_the_target_distribution():
    """Two positions, draft d0 then d1: the first emitted token and the pair distribution
    follow p; accepted drafts are those the target itself sampled."""
    torch.manual_seed(0)
    logits = torch.randn(2, VOCAB) * 1.5  # [2, V]: the target after the last token, after d0
    p0, p1 = logits.softmax(-1)
    d0 = int(p0.argsort()[-2])  # a likely draft, not the likeliest
    seeds = list(range(20000))
    x0 = sample_rows(logits[0:1], seeds, 5)
    x1 = sample_rows(logits[1:2], seeds, 6)
    firsts, accepted = [0] * VOCAB, 0
    for a, b in zip(x0, x1):
        tokens = accept_drafts([a, b], [d0])
        firsts[tokens[0]] += 1
        accepted += len(tokens) == 2
        assert tokens == ([d0, b] if a == d0 else [a])
    assert chi2(firsts, p0.tolist()) < chi2_critical(VOCAB - 1)
    # Acceptance has probability p(d0): a binomial within 4 sigma.
    n, p = len(seeds), p0[d0].item()
    assert abs(accepted - n * p) < 4 * math.sqrt(n * p * (1 - p))
    # Given acceptance, the next token follows p1.
    seconds = [0] * VOCAB
    for a, b in zip(x0, x1):
        if a == d0:
            seconds[b] += 1
    assert chi2(seconds, p1.tolist()) < chi2_critical(VOCAB - 1)


def test_reference_rule_follows_the_target_for_any_draft_distribution():
    torch.manual_seed(1)
    target = torch.randn(3, VOCAB).softmax(-1)  # [k + 1, V]
    draft = torch.randn(2, VOCAB).softmax(-1)  # [k, V]
    gen = torch.Generator().manual_seed(2)
    firsts = [0] * VOCAB
    for _ in range(20000):
        drafts = [int(torch.multinomial(draft[j], 1, generator=gen)) for j in range(2)]
        out = rejection_sample_reference(target, draft, drafts, gen)
        firsts[out[0]] += 1
    assert chi2(firsts, target[0].tolist()) < chi2_critical(VOCAB - 1)


def test_one_hot_coupling_and_reference_rule_agree_in_distribution():
    torch.manual_seed(3)
    logits = torch.randn(1, VOCAB)
    p = logits.softmax(-1)
    d = int(p.argmax())
    one_hot = torch.zeros(1, VOCAB)
    one_hot[0, d] = 1.0
    gen = torch.Generator().manual_seed(4)
    ref = [0] * VOCAB
    target = torch.cat([p, p])  # [2, V]; the bonus position is not compared
    for _ in range(20000):
        ref[rejection_sample_reference(target, one_hot, [d], gen)[0]] += 1
    ours = [0] * VOCAB
    for a in sample_rows(logits, list(range(20000)), 0):
        ours[accept_drafts([a, 0], [d])[0]] += 1
    # Two-sample chi-square over the categories.
    stat = sum((a - b) ** 2 / (a + b) for a, b in zip(ref, ours) if a + b)
    assert stat < chi2_critical(VOCAB - 1)


def test_greedy_keeps_drafts_while_they_are_the_argmax():
    assert accept_drafts([4, 5, 6], [4, 5]) == [4, 5, 6]
    assert accept_drafts([4, 7, 6], [4, 5]) == [4, 7]
    assert accept_drafts([9, 5, 6], [4, 5]) == [9]
    assert accept_drafts([9], []) == [9]


def test_stats_count_per_position():
    stats = SpecDecodeStats()
    stats.observe(3, 1, 2)
    stats.observe(2, 2, 3)
    stats.observe(0, 0, 1)  # no drafts: not a verify step
    assert stats.num_verify_steps == 2 and stats.num_draft_tokens == 5
    assert stats.acceptance_rate == 3 / 5 and stats.mean_accepted_length == 2.5
    assert stats.acceptance_rate_per_position == [1.0, 0.5, 0.0]
