"""Greedy runs on the GPU against their twin, where bf16 (or fp8) rounding may decide a near tie."""

from __future__ import annotations


def assert_agree_until_near_tie(runs, twins, near_tie: float) -> None:
    """runs, twins: per prompt (token ids, logprobs with top_logprobs). Each run's tokens equal
    its twin's up to a point where the twin's two most likely tokens are within `near_tie`;
    logprobs agree to `near_tie` before it."""
    for (tokens, lps), (ref_tokens, ref_lps) in zip(runs, twins, strict=True):
        div = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), None)
        for i in range(len(tokens) if div is None else div):
            assert abs(lps[i].logprob - ref_lps[i].logprob) < near_tie
        if div is not None:
            first, second = ref_lps[div].top_logprobs[:2]
            assert first - second < near_tie, f"parted at token {div} without a near tie"
