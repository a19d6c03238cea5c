"""Verifying draft tokens exactly: which proposals a target step keeps.

The standard rule (Leviathan et al., Chen et al.): at draft position j, accept draft d with
probability min(1, p(d) / q(d)); on the first rejection emit a token from norm(max(0, p - q)) and
stop; if every draft is accepted, emit one more token from the next position's p. The output then
follows the target distribution p exactly.

Minerva's proposers are deterministic, so q is one-hot at d: accept with probability p(d), and on
rejection emit from p with d removed (renormalized). That is exactly what comes out of sampling
each position x_j ~ p_j with the request's own counter-based noise and keeping x_0..x_a, where
a is the first j with x_j != d_j: P(x_j = d_j) = p(d_j), and x_j given x_j != d_j follows p
without d_j. The sampler draws every x_j as plain decoding would (same seed, same token index),
so a speculated request emits the very tokens it would have without speculation, greedy or not.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def accept_drafts(sampled: Sequence[int], drafts: Sequence[int]) -> list[int]:
    """The tokens a verify step emits: ``sampled[j]`` (j = 0..k) is the target's token at draft
    position j (after the last known token, then after each draft); keeps them up to and
    including the first that differs from its draft. len(sampled) == len(drafts) + 1."""
    for j, draft in enumerate(drafts):
        if sampled[j] != draft:
            return list(sampled[: j + 1])
    return list(sampled)


def rejection_sample_reference(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor,
    draft_ids: Sequence[int],
    generator: torch.Generator,
) -> list[int]:
    """The standard accept / resample rule for any draft distribution (the slow twin that the
    one-hot coupling is tested against). target_probs [k + 1, V], draft_probs [k, V]."""
    out = []
    for j, d in enumerate(draft_ids):
        p, q = target_probs[j], draft_probs[j]
        u = torch.rand((), generator=generator).item()
        if u < min(1.0, (p[d] / q[d]).item()):
            out.append(int(d))
            continue
        residual = (p - q).clamp(min=0)
        out.append(int(torch.multinomial(residual / residual.sum(), 1, generator=generator)))
        return out
    out.append(int(torch.multinomial(target_probs[-1], 1, generator=generator)))
    return out
