"""Coherence: the perplexity of each engine's generated text under one reference model (the
unquantized weights, run by a reference engine), so that an engine that is faster because it
computes worse shows it as a higher figure.

For each prompt the reference scores prompt + output in one pass and only the output tokens
count: coherence = exp(mean negative log-likelihood of every output token, over all prompts).
Lower is more what the reference model itself would write; greedy output of the reference is a
floor no engine can beat by much. Comparable across engines of one run (same prompts, same
reference), not across models or runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Scorer = Callable[[list[int]], list[float]]
"""token ids -> log p(ids[i+1] | ids[:i+1]) for every i (an OfflineDriver's token_logprobs)."""


def coherence(score: Scorer, prompts: Sequence[list[int]], outputs: Sequence[list[int]]) -> dict:
    """Perplexity of ``outputs`` (continuations of ``prompts``) under ``score``'s model."""
    nll, count = 0.0, 0
    for prompt, out in zip(prompts, outputs):
        if not out or not prompt:
            continue
        logprobs = score(list(prompt) + list(out))  # [len(prompt) + len(out) - 1]
        scored = logprobs[len(prompt) - 1 :]  # the output tokens' own predictions
        nll -= sum(scored)
        count += len(scored)
    return {
        "coherence_ppl": math.exp(nll / count) if count else None,
        "scored_tokens": count,
    }
