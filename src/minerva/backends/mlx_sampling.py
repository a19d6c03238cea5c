"""Per-request samplers and logits processors for mlx-lm's BatchGenerator, with Minerva's
definitions (sampling_params.py) rather than mlx-lm's own.

Why not mlx-lm's: its penalties look at the last 20 tokens only and its samplers draw from
MLX's one global generator, so a seed could not hold while other requests run. Here every
sampled request owns a PRNG key split once per token (same seed, same tokens, whatever runs
beside it) and penalties follow Minerva: repetition over prompt + output, frequency and
presence over the output. Shapes: logits / logprobs [1, V], context [n] (prompt + output so far).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import mlx.core as mx

from minerva.request import Request
from minerva.sampling_params import SamplingParams

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


def greedy(logprobs: mx.array) -> mx.array:
    """argmax; one shared function, so an all-greedy batch samples in one call."""
    return mx.argmax(logprobs, axis=-1)


def make_sampler(params: SamplingParams, seed: int) -> Sampler:
    """Temperature, then top-k, top-p and min-p on the tempered distribution, then a draw
    with the request's own key."""
    if params.greedy:
        return greedy
    key = [mx.random.key(seed % (1 << 63))]
    inv_temp, top_k, top_p, min_p = (
        1.0 / params.temperature,
        params.top_k,
        params.top_p,
        params.min_p,
    )

    def sample(logprobs: mx.array) -> mx.array:
        x = logprobs.astype(mx.float32) * inv_temp
        x = x - mx.logsumexp(x, axis=-1, keepdims=True)
        if 0 < top_k < x.shape[-1]:
            kth = mx.sort(x, axis=-1)[..., -top_k][..., None]  # [1, 1]
            x = mx.where(x < kth, -math.inf, x)
        if top_p < 1.0:
            x = _top_p(x, top_p)
        if min_p > 0.0:
            x = mx.where(x < mx.max(x, axis=-1, keepdims=True) + math.log(min_p), -math.inf, x)
        key[0], sub = mx.random.split(key[0])
        return mx.random.categorical(x, key=sub)

    return sample


def _top_p(x: mx.array, top_p: float) -> mx.array:
    """Keep the smallest set of likeliest tokens whose mass reaches top_p (ties kept)."""
    ordered = mx.sort(x, axis=-1)[..., ::-1]  # [1, V] descending
    probs = mx.exp(ordered)
    mass_before = mx.cumsum(probs, axis=-1) - probs
    kept = (mass_before < top_p).sum(axis=-1, keepdims=True)  # >= 1
    threshold = mx.take_along_axis(ordered, kept - 1, axis=-1)
    return mx.where(x < threshold, -math.inf, x)


def make_processors(req: Request, eos_token_ids: list[int]) -> list[LogitsProcessor]:
    """Penalties, logit bias and min_tokens as BatchGenerator logits processors."""
    p, n_prompt = req.sampling_params, len(req.prompt_token_ids)
    procs: list[LogitsProcessor] = []
    if p.logit_bias:
        ids = mx.array(list(p.logit_bias))
        values = mx.array(list(p.logit_bias.values()), dtype=mx.float32)

        def bias(context: mx.array, logits: mx.array) -> mx.array:
            logits = logits.astype(mx.float32)
            logits[:, ids] = logits[:, ids] + values
            return logits

        procs.append(bias)
    if p.repetition_penalty != 1.0:
        procs.append(_repetition(p.repetition_penalty))
    if p.frequency_penalty or p.presence_penalty:
        procs.append(_frequency_presence(p.frequency_penalty, p.presence_penalty, n_prompt))
    if p.min_tokens:
        stop_ids = sorted(set(eos_token_ids) | set(p.stop_token_ids))
        procs.append(_min_tokens(p.min_tokens, stop_ids, n_prompt))
    return procs


def _repetition(penalty: float) -> LogitsProcessor:
    def apply(context: mx.array, logits: mx.array) -> mx.array:
        logits = logits.astype(mx.float32)
        seen = logits[:, context]  # [1, n]; repeats of one id write the same value
        logits[:, context] = mx.where(seen > 0, seen / penalty, seen * penalty)
        return logits

    return apply


def _frequency_presence(frequency: float, presence: float, n_prompt: int) -> LogitsProcessor:
    def apply(context: mx.array, logits: mx.array) -> mx.array:
        output = context[n_prompt:]
        if output.size == 0:
            return logits
        counts = mx.zeros((logits.shape[-1],), dtype=mx.float32).at[output].add(1.0)  # [V]
        penalty = frequency * counts + presence * (counts > 0)
        return logits.astype(mx.float32) - penalty[None]

    return apply


def _min_tokens(min_tokens: int, stop_ids: list[int], n_prompt: int) -> LogitsProcessor:
    ids = mx.array(stop_ids)

    def apply(context: mx.array, logits: mx.array) -> mx.array:
        if context.size - n_prompt >= min_tokens or not stop_ids:
            return logits
        logits = logits.astype(mx.float32)
        logits[:, ids] = -math.inf
        return logits

    return apply
