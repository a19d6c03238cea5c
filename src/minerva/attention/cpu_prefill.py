"""Prefill chunks' attention on the CPU in one C call each (cpu_prefill.c), for the CPU
backend (cpu_backend.py). torch_paged._prefill is the slow twin and the fallback for whatever the
kernel does not take (a dtype pair it lacks, odd strides, autograd)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from minerva.ops import native

SOURCE = Path(__file__).with_name("cpu_prefill.c")
_PAIRS = {  # (model dtype, KV cache dtype): the kernel's suffix
    (torch.float32, torch.float32): "f32",
    (torch.bfloat16, torch.bfloat16): "bf16",
    (torch.float16, torch.float16): "f16",
    (torch.float32, torch.bfloat16): "f32_bf16",
    (torch.float32, torch.float16): "f32_f16",
}
_attend: dict[tuple[torch.dtype, torch.dtype], object] = {}

MAX_CONTEXT = 256
"""The longest context (seq_len) a chunk may see to take the kernel: its cost grows with the
square of the length without the flash kernel's blocking, which catches up around here and
wins at longer lengths (benchmarks/cpu_prefill_attention.py, results/cpu_prefill_attention.json)."""


def load() -> bool:
    """Build (once per cache key) and bind the kernels; False, logged once, when impossible."""
    lib = native.load(SOURCE)
    if lib is not None and not _attend:
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        for pair, suffix in _PAIRS.items():
            if suffix.endswith("f16") and not lib.minerva_prefill_has_f16():
                continue
            fn = getattr(lib, f"minerva_prefill_attention_{suffix}")
            fn.argtypes = [p, i64, p, i64, i64, i64, i64, p, i64, i64, i64, ctypes.c_float]
            fn.argtypes += [i64, p, ctypes.c_int]
            fn.restype = ctypes.c_int
            _attend[pair] = fn
    return lib is not None


def attend(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_len: int,
    scale: float,
    window: int | None,
    out: torch.Tensor,
    force: bool = False,
) -> bool:
    """out = torch_paged._prefill(q, kv_cache, block_table, seq_len, scale, window) for one
    chunk q [Q, H, D] (the last Q of seq_len positions) into out [Q, H, D] (contiguous); False,
    with out untouched, where the kernel does not apply. `force`: past MAX_CONTEXT too
    (benchmarks)."""
    fn = _attend.get((q.dtype, kv_cache.dtype))
    tokens, heads, dim = q.shape
    if (
        fn is None
        or (seq_len > MAX_CONTEXT and not force)
        or q.stride()[1:] != (dim, 1)
        or not out.is_contiguous()
        or out.dtype != q.dtype
        or not kv_cache.is_contiguous()
        or block_table.dtype != torch.int32
        or not block_table.is_contiguous()
        or block_table.shape[0] * kv_cache.shape[2] < seq_len
        or torch.is_grad_enabled()
    ):
        return False
    _, num_blocks, block_size, kv_heads, _ = kv_cache.shape
    rc = fn(
        q.data_ptr(),
        q.stride(0),
        kv_cache.data_ptr(),
        num_blocks,
        block_size,
        kv_heads,
        dim,
        block_table.data_ptr(),
        seq_len,
        tokens,
        heads,
        scale,
        window or 0,
        out.data_ptr(),
        torch.get_num_threads(),
    )
    return rc == 0
