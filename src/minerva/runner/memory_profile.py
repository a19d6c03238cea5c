"""Measure one step's activation memory before the KV cache is sized (CUDA).

The KV cache takes what `memory_fraction` leaves after the weights and the activations, so the
activations are measured, not guessed: a dummy step at the scheduler's limits (every batched
token, every sequence sampling with the costliest sampler settings) runs on a throw-away KV
cache, and the allocator's peak above the weights is the reserve. Decode steps replayed from
CUDA graphs keep their activations in a separate pool, so the decode step at max_num_seqs is
measured too and reserved on top, with room for the one-sequence prefill graphs (at most the
prefill step's peak).
"""

from __future__ import annotations

import math

from torch import nn

from minerva.platform import Platform
from minerva.request import CachedRequestData, NewRequestData, SchedulerOutput
from minerva.runner.kv_cache import KVCacheSpec, allocate_kv_caches
from minerva.runner.model_runner import ModelRunner
from minerva.sampling_params import SamplingParams

# The costliest sampler path: temperature + top_p sort + top logprobs over the whole vocab.
_PROFILE_PARAMS = SamplingParams(max_tokens=2, temperature=1.0, top_p=0.9, top_k=50, logprobs=5)


def profile_activation_memory(
    model: nn.Module,
    spec: KVCacheSpec,
    platform: Platform,
    *,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    max_model_len: int,
    include_graphs: bool,
) -> int:
    """Peak bytes one step needs beyond the weights (plus the graph pool if asked)."""
    num_seqs = max(1, min(max_num_seqs, max_num_batched_tokens))
    # Every batched token in num_seqs sequences (each at most max_model_len - 1 long).
    per_seq = min(max_model_len - 1, max(1, max_num_batched_tokens // num_seqs))
    lengths = [per_seq] * num_seqs
    blocks = sum(math.ceil((n + 1) / spec.block_size) for n in lengths) + 1
    kv_caches = allocate_kv_caches(spec, blocks, platform.device)
    runner = ModelRunner(model, kv_caches, spec.block_size, platform.device)
    try:
        platform.reset_peak_memory()
        base = platform.memory_used()
        requests = _dummy_requests(lengths, spec.block_size)
        ids = [r.request_id for r in requests]
        runner.execute(SchedulerOutput(ids, list(lengths), new_requests=requests))
        platform.synchronize()
        prefill_peak = platform.peak_memory() - base
        decode_peak = 0
        if include_graphs:
            cached = CachedRequestData(ids, list(lengths), [[] for _ in ids])
            platform.reset_peak_memory()
            runner.execute(SchedulerOutput(ids, [1] * num_seqs, cached_requests=cached))
            platform.synchronize()
            decode_peak = platform.peak_memory() - base
        prefill_peak = max(prefill_peak, 0)
        graph_pool = prefill_peak + max(decode_peak, 0) if include_graphs else 0
        return prefill_peak + graph_pool
    finally:
        del runner, kv_caches
        platform.reset_peak_memory()


def _dummy_requests(lengths: list[int], block_size: int) -> list[NewRequestData]:
    requests, next_block = [], 1  # block 0 is the null block
    for i, n in enumerate(lengths):
        count = math.ceil((n + 1) / block_size)
        block_ids = list(range(next_block, next_block + count))
        requests.append(
            NewRequestData(
                f"profile-{i}", [0] * n, [], _PROFILE_PARAMS, i, frozenset(), block_ids, 0
            )
        )
        next_block += count
    return requests
