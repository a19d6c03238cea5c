"""The attention backend protocol: what a model layer and the CUDA graph runner ask of paged
attention. Backends: torch reference (torch_paged.py), Triton (triton_backend.py), CPU C
kernels (cpu_backend.py); attention/__init__.py picks one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from minerva.attention.metadata import AttentionMetadata


@runtime_checkable
class AttentionBackend(Protocol):
    name: str
    """"torch", "triton", "cpu": for logs and tests."""
    graph_safe: bool
    """A decode-only step reads no host values, so it can be captured in a CUDA graph."""
    rope_write_kv: Callable | None
    """(qkv [T, (H + 2 KVH) * D], cos, sin, kv_cache, slot_mapping, H, KVH) -> rotated q
    [T, H, D], with rotated k and v written to the cache in one kernel; None where the backend
    has no such kernel (the model then runs RoPE and write_kv)."""

    def write_kv(
        self,
        kv_cache: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        """k, v [num_tokens, KVH, D] into kv_cache [2, num_blocks, block_size, KVH, D] at
        slot_mapping [num_tokens]."""

    def paged_attention(
        self,
        q: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        sliding_window: int | None = None,
    ) -> torch.Tensor:
        """q [num_tokens, H, D] against the cache (this step's K/V already written) ->
        [num_tokens, H, D]; decode rows first, then prefill chunks (see metadata.py)."""

    def plan_decode_graph(
        self, meta: AttentionMetadata, num_kv_heads: int, max_seq_len: int
    ) -> None:
        """Before capturing a decode step of meta.num_seqs rows whose contexts may reach
        max_seq_len, fix in `meta` what the backend would otherwise derive from host-side
        lengths each step (Triton: the split-K count). Nothing for backends that are not
        graph_safe."""
