"""bench/logit_metrics.py: KL, top-1 agreement and perplexity on hand-computed distributions."""

from __future__ import annotations

import math

import pytest
import torch

from minerva.bench.logit_metrics import LogitStats, paired_ppl_difference


def test_kl_agreement_and_perplexity_on_a_toy_distribution():
    ref = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]])
    test = torch.tensor([[0.25, 0.5, 0.25], [0.1, 0.2, 0.7]])
    stats = LogitStats()
    stats.add(ref.log(), test.log(), torch.tensor([0, 2]))
    out = stats.result()
    kl_first = 0.5 * math.log(2) + 0.25 * math.log(0.5)  # sum p log(p/q); the second row is 0
    assert out["mean_kl"] == pytest.approx(kl_first / 2)
    assert out["max_kl"] == pytest.approx(kl_first)
    assert out["top1_agreement"] == 0.5  # argmax 0 vs 1, then 2 vs 2
    assert out["perplexity"] == pytest.approx(math.exp(-(math.log(0.25) + math.log(0.7)) / 2))
    assert out["ref_perplexity"] == pytest.approx(math.exp(-(math.log(0.5) + math.log(0.7)) / 2))
    # per-token NLL differences: log 2 and 0 -> mean log(2)/2, sample std log(2)/sqrt(2)
    stderr = out["perplexity"] * (math.log(2) / math.sqrt(2)) / math.sqrt(2)
    assert out["ppl_delta_stderr"] == pytest.approx(stderr)


def test_identical_models_have_zero_kl_and_full_agreement_across_chunks():
    logprobs = torch.log_softmax(torch.randn(5, 11, generator=torch.Generator().manual_seed(0)), -1)
    stats = LogitStats()
    for rows in (slice(0, 2), slice(2, 5)):
        stats.add(logprobs[rows], logprobs[rows], torch.zeros(rows.stop - rows.start, dtype=int))
    out = stats.result()
    assert out["mean_kl"] == pytest.approx(0.0, abs=1e-12)
    assert out["top1_agreement"] == 1.0 and out["num_scored"] == 5
    assert out["perplexity"] == pytest.approx(out["ref_perplexity"])
    assert out["ppl_delta"] == pytest.approx(0.0) and out["ppl_delta_stderr"] == 0.0


def test_paired_difference_of_two_models_over_the_same_tokens():
    ref = torch.tensor([[0.5, 0.5], [0.5, 0.5]]).log()
    a, b = LogitStats(), LogitStats()
    targets = torch.tensor([0, 1])
    a.add(ref, torch.tensor([[0.25, 0.75], [0.25, 0.75]]).log(), targets)  # nll log 4, log 4/3
    b.add(ref, ref, targets)  # nll log 2, log 2
    out = paired_ppl_difference(a, b)
    ppl_a = math.exp((math.log(4) + math.log(4 / 3)) / 2)
    assert out["ppl_difference"] == pytest.approx(ppl_a - 2)
    d = torch.tensor([math.log(2), math.log(2 / 3)], dtype=torch.float64)
    assert out["stderr"] == pytest.approx(ppl_a * float(d.std()) / math.sqrt(2))
