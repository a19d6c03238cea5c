"""Perplexity of a model on a text, with a sliding window (for comparing quantizations).

Windows of ``window`` tokens end every ``stride`` tokens; each token is scored once, in the
first window that reaches it, with as much left context as that window gives (the
transformers guide's method, minus its off-by-one at window starts). A large stride is fast;
a small one gives every scored token at least ``window - stride`` tokens of context.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from minerva.errors import ConfigError

ScoreFn = Callable[[list[int]], list[float]]
"""token ids -> log p(ids[i+1] | ids[:i+1]) for each i (len(ids) - 1 values)."""


def windows(num_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, num_new) of each window: it scores its last ``num_new`` positions.

    The first window scores positions 1..end-1; each later one ends ``stride`` tokens further
    and starts ``window`` tokens before its end. A window of w tokens makes w - 1 predictions,
    so the stride is capped at ``window - 1``: consecutive windows overlap by at least a token.
    """
    if window < 2 or not 1 <= stride <= window:
        raise ConfigError(
            f"perplexity needs window >= 2 and 1 <= stride <= window, got window={window}, "
            f"stride={stride}"
        )
    stride = min(stride, window - 1)
    spans: list[tuple[int, int, int]] = []
    prev_end = 1  # position 0 has no context: never scored
    while prev_end < num_tokens:
        end = min(prev_end + stride if spans else window, num_tokens)
        spans.append((max(0, end - window), end, end - prev_end))
        prev_end = end
    return spans


def perplexity(
    score: ScoreFn, token_ids: list[int], window: int, stride: int | None = None
) -> dict:
    """exp(mean negative log-likelihood) over tokens 1..N-1 (the first has no context)."""
    if len(token_ids) < 2:
        raise ConfigError("perplexity needs a text of at least 2 tokens")
    stride = stride or window // 2 or 1
    nll, count = 0.0, 0
    spans = windows(len(token_ids), window, stride)
    for begin, end, num_new in spans:
        logprobs = score(token_ids[begin:end])  # positions begin+1 .. end-1
        scored = logprobs[-num_new:]
        nll -= sum(scored)
        count += len(scored)
    mean = nll / count
    return {
        "perplexity": math.exp(mean),
        "mean_nll": mean,
        "num_tokens": len(token_ids),
        "num_scored": count,
        "num_windows": len(spans),
        "window": window,
        "stride": stride,
    }
