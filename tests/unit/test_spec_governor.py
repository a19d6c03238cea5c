"""The speculation governor: per batch-size bucket, speculate where it measured faster, and
try the other mode now and then (synthetic step times: no clock involved)."""

from __future__ import annotations

from minerva.request import Request
from minerva.sampling_params import SamplingParams
from minerva.spec import NgramProposer, SpeculationGovernor, Speculator


def drive(gov: SpeculationGovernor, rows: int, steps: int, spec_s: float, plain_s: float,
          spec_tokens: float) -> list[bool]:  # fmt: skip
    """Run `steps` decisions; a speculative step takes spec_s and emits rows * spec_tokens
    tokens, a plain one plain_s and rows tokens."""
    decisions = []
    for _ in range(steps):
        spec = gov.should_speculate(rows)
        decisions.append(spec)
        if spec:
            gov.observe(rows, True, spec_s, round(rows * spec_tokens))
        else:
            gov.observe(rows, False, plain_s, rows)
    return decisions


def test_speculates_where_it_pays_and_not_where_it_does_not():
    gov = SpeculationGovernor(explore_every=16)
    # Batch 1: a verify step costs 1.3 decode steps and emits 2.5 tokens: speculate.
    small = drive(gov, 1, 100, spec_s=1.3, plain_s=1.0, spec_tokens=2.5)
    # Batch 64: compute-bound, a verify step costs 4 decode steps for 2.5 tokens: don't.
    large = drive(gov, 64, 100, spec_s=4.0, plain_s=1.0, spec_tokens=2.5)
    assert sum(small[10:]) >= 80 and sum(large[10:]) <= 10
    assert not all(small) and any(large[10:])  # the other mode is still tried now and then
    assert gov.goodput(1, True) > gov.goodput(1, False)
    assert gov.goodput(64, True) < gov.goodput(64, False)
    assert SpeculationGovernor.bucket(48) == SpeculationGovernor.bucket(64) == 64


def test_follows_a_workload_that_stops_paying():
    gov = SpeculationGovernor(explore_every=8, smoothing=0.3)
    drive(gov, 4, 50, spec_s=1.2, plain_s=1.0, spec_tokens=3.0)
    later = drive(gov, 4, 80, spec_s=1.2, plain_s=1.0, spec_tokens=1.0)  # acceptance gone
    assert sum(later[-40:]) <= 6


def test_speculator_makes_no_proposals_on_a_plain_step():
    class Never(SpeculationGovernor):
        def should_speculate(self, num_rows: int) -> bool:
            return False

    req = Request("a", [1, 2, 3, 1, 2], SamplingParams(), max_tokens=10)
    req.num_computed_tokens = req.num_tokens - 1
    Speculator(NgramProposer(1, 2), 3, 100, Never()).propose([req])
    assert req.spec_token_ids == []
    Speculator(NgramProposer(1, 2), 3, 100, None).propose([req])
    assert req.spec_token_ids == [3, 1, 2]
