"""How alike two engines' outputs are as distributions of tokens, whatever their order: each
engine's token frequencies over all its outputs on the same prompts, compared pair by pair.

* ``top_k_overlap``: the share of one engine's k most frequent tokens that are also among the
  other's k most frequent (1 = the same vocabulary in use, 0 = disjoint);
* ``kl_divergence``: KL(P_a || P_b) in nats, with add-1/2 smoothing over the tokens either
  engine produced (so a token only one of them wrote costs a finite amount); 0 = the same
  frequencies.

Greedy engines on the same weights should score ~1 and ~0; a quantized or buggy engine that
drifts into other words, or loops on a few tokens, shows it here even where texts never align.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

SMOOTHING = 0.5
TOP_K = 20


def frequencies(outputs: Sequence[Sequence[Hashable]]) -> Counter:
    """Token -> count over every output."""
    counts: Counter = Counter()
    for out in outputs:
        counts.update(out)
    return counts


def top_k_overlap(a: Counter, b: Counter, k: int = TOP_K) -> float:
    top_a = {t for t, _ in a.most_common(k)}
    top_b = {t for t, _ in b.most_common(k)}
    size = max(len(top_a), len(top_b))
    return len(top_a & top_b) / size if size else 1.0


def kl_divergence(a: Counter, b: Counter, smoothing: float = SMOOTHING) -> float:
    """KL(P_a || P_b) over the union of both supports, additively smoothed."""
    support = set(a) | set(b)
    if not support:
        return 0.0
    total_a = sum(a.values()) + smoothing * len(support)
    total_b = sum(b.values()) + smoothing * len(support)
    kl = 0.0
    for t in support:
        p = (a[t] + smoothing) / total_a
        q = (b[t] + smoothing) / total_b
        kl += p * math.log(p / q)
    return kl


def compare(a_outputs: Sequence[Sequence], b_outputs: Sequence[Sequence], k: int = TOP_K) -> dict:
    a, b = frequencies(a_outputs), frequencies(b_outputs)
    return {"top_k_overlap": top_k_overlap(a, b, k), "kl_divergence": kl_divergence(a, b)}
