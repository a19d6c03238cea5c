"""Attention on the CPU: decode rows and the KV write through C (cpu_decode.c), prefill chunks
through C too (cpu_prefill.py). torch_paged.py is the slow twin and the fallback for whatever the
kernels do not take (autograd, odd strides, a cache dtype it lacks). The kernels read a cache
in the model's dtype, or a bf16 / fp16 cache under a float32 model (half the bytes a decode
step streams); an fp8 KV cache runs on the torch path."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch

from minerva.attention import cpu_prefill, torch_paged
from minerva.attention.metadata import AttentionMetadata
from minerva.ops import native

SOURCE = Path(__file__).with_name("cpu_decode.c")
_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
_PAIRS = {  # (model dtype, KV cache dtype): the kernels' suffix
    **{(d, d): suffix for d, suffix in _SUFFIX.items()},
    (torch.float32, torch.bfloat16): "f32_bf16",
    (torch.float32, torch.float16): "f32_f16",
}
_attend: dict[tuple[torch.dtype, torch.dtype], object] = {}
_write: dict[tuple[torch.dtype, torch.dtype], object] = {}
_fallbacks_logged: set[tuple[torch.dtype, torch.dtype]] = set()
logger = logging.getLogger(__name__)


def load() -> bool:
    """Build (once per cache key) and bind the kernels; False, logged once, when impossible."""
    lib = native.load(SOURCE)
    if lib is not None and not _attend:
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        for pair, suffix in _PAIRS.items():
            if suffix.endswith("f16") and not lib.minerva_attention_has_f16():
                continue
            attend = getattr(lib, f"minerva_decode_attention_{suffix}")
            attend.argtypes = [p, i64, p] + [i64] * 4 + [p, i64, p, i64, i64]
            attend.argtypes += [ctypes.c_float, i64, p, ctypes.c_int]
            write = getattr(lib, f"minerva_write_kv_{suffix}")
            write.argtypes = [p, i64, p, i64, p, i64, i64, p, i64]
            _attend[pair], _write[pair] = attend, write
        cpu_prefill.load()  # without it, prefill chunks run the torch reference
    return lib is not None


def entries(dtype: torch.dtype, kv_dtype: torch.dtype | None = None) -> tuple:
    """(decode attention, KV write) C functions of a `dtype` model over a `kv_dtype` cache
    (default: the model's dtype); cpu_decode_step.c calls them. None where there is none."""
    pair = (dtype, kv_dtype or dtype)
    return _attend.get(pair), _write.get(pair)


def write_kv(
    kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """torch_paged.write_kv in one C call (rows of k / v may be any distance apart)."""
    fn = _write.get((k.dtype, kv_cache.dtype))
    rows, kv_heads, dim = k.shape
    if (
        fn is None
        or v.dtype != k.dtype
        or k.stride()[1:] != (dim, 1)
        or v.stride()[1:] != (dim, 1)
        or not kv_cache.is_contiguous()
        or slot_mapping.dtype != torch.int64
        or not slot_mapping.is_contiguous()
        or torch.is_grad_enabled()
    ):
        return torch_paged.write_kv(kv_cache, k, v, slot_mapping)
    num_slots = kv_cache.shape[1] * kv_cache.shape[2]
    rc = fn(
        k.data_ptr(),
        k.stride(0),
        v.data_ptr(),
        v.stride(0),
        kv_cache.data_ptr(),
        num_slots,
        kv_heads * dim,
        slot_mapping.data_ptr(),
        rows,
    )
    if rc != 0:
        raise IndexError("slot_mapping points outside the KV cache")


def _log_dtype_fallback(q_dtype: torch.dtype, kv_dtype: torch.dtype) -> None:
    """Say once per dtype pair without a kernel why decode attention runs in torch, not C."""
    if q_dtype != kv_dtype and (q_dtype, kv_dtype) not in _fallbacks_logged:
        _fallbacks_logged.add((q_dtype, kv_dtype))
        logger.info(
            "CPU decode attention runs in torch for a %s KV cache under a %s model: "
            "the C kernels read the model's dtype, or bf16 / fp16 under float32",
            str(kv_dtype).removeprefix("torch."),
            str(q_dtype).removeprefix("torch."),
        )


def _decode(q, kv_cache, meta: AttentionMetadata, scale, window) -> torch.Tensor | None:
    """Attention of the decode rows q [n, H, D] in C, or None where the kernel does not apply."""
    fn = _attend.get((q.dtype, kv_cache.dtype))
    n, heads, dim = q.shape
    tables = meta.block_tables
    if (
        fn is None
        or q.stride()[1:] != (dim, 1)
        or not kv_cache.is_contiguous()
        or tables.stride(1) != 1
        or not meta.seq_lens.is_contiguous()
        or torch.is_grad_enabled()
    ):
        _log_dtype_fallback(q.dtype, kv_cache.dtype)
        return None
    _, num_blocks, block_size, kv_heads, _ = kv_cache.shape
    out = torch.empty(n, heads, dim, dtype=q.dtype)
    rc = fn(
        q.data_ptr(),
        q.stride(0),
        kv_cache.data_ptr(),
        num_blocks,
        block_size,
        kv_heads,
        dim,
        tables.data_ptr(),
        tables.stride(0),
        meta.seq_lens.data_ptr(),
        n,
        heads,
        scale,
        window or 0,
        out.data_ptr(),
        torch.get_num_threads(),
    )
    return out if rc == 0 else None  # None: the reference computes it


def paged_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """torch_paged.paged_attention with the decode rows in C (and, in a step of speculative
    verify rows, every row: one decode row per query token)."""
    nd = meta.num_decodes
    if meta.block_tables.dtype != torch.int32 or meta.seq_lens.dtype != torch.int32:
        return torch_paged.paged_attention(q, kv_cache, meta, scale, sliding_window)
    if meta.verify_rows and nd < meta.num_seqs and meta.max_query_len <= SHORT_QUERY:
        out = _decode(q, kv_cache, per_token_rows(meta), scale, sliding_window)
        if out is not None:
            return out
    if nd == meta.num_seqs:  # a pure decode step: no prefill rows to fill in
        out = _decode(q, kv_cache, meta, scale, sliding_window)
        if out is not None:
            return out
        return torch_paged.paged_attention(q, kv_cache, meta, scale, sliding_window)
    out = torch.empty_like(q)
    if nd:
        decoded = _decode(q[:nd], kv_cache, meta, scale, sliding_window)
        if decoded is None:
            return torch_paged.paged_attention(q, kv_cache, meta, scale, sliding_window)
        out[:nd] = decoded
    starts = meta.query_start_loc_cpu
    for i in range(nd, meta.num_seqs):  # each prefill chunk in C, else the torch reference
        s, e = starts[i], starts[i + 1]
        args = (kv_cache, meta.block_tables[i], meta.seq_lens_cpu[i], scale, sliding_window)
        if not cpu_prefill.attend(q[s:e], *args, out[s:e]):
            out[s:e] = torch_paged._prefill(q[s:e], *args)
    return out


SHORT_QUERY = 16
"""Verify steps whose rows have at most this many query tokens run every token as a decode
row (the verify rows' attention then costs what the decode rows' does)."""


def per_token_rows(meta: AttentionMetadata) -> AttentionMetadata:
    """The step as one decode row per query token: token t of a row whose context ends at
    seq_len sees the first seq_len - (tokens after t) keys, through the row's block table.
    Built once per step (every layer reuses it)."""
    rows = meta.extras.get("cpu_per_token_rows")
    if rows is not None:
        return rows
    starts = meta.query_start_loc_cpu
    lens = [starts[i + 1] - starts[i] for i in range(meta.num_seqs)]
    num_tokens = starts[-1]
    row = torch.repeat_interleave(torch.arange(meta.num_seqs), torch.tensor(lens))  # [tokens]
    ends = torch.tensor(starts[1:])[row]  # [tokens]: where each token's row ends
    seq_lens = meta.seq_lens[row] - (ends - 1 - torch.arange(num_tokens))
    rows = AttentionMetadata(
        slot_mapping=meta.slot_mapping,
        block_tables=meta.block_tables.index_select(0, row),
        seq_lens=seq_lens.to(torch.int32).contiguous(),
        query_start_loc=torch.arange(num_tokens + 1, dtype=torch.int32),
        num_decodes=num_tokens,
        max_query_len=1,
        seq_lens_cpu=seq_lens.tolist(),
        query_start_loc_cpu=list(range(num_tokens + 1)),
    )
    meta.extras["cpu_per_token_rows"] = rows
    return rows


class CPUAttention:
    """Decode and prefill attention and the KV write in C on the CPU."""

    name = "cpu"
    graph_safe = False
    rope_write_kv = None

    write_kv = staticmethod(write_kv)
    paged_attention = staticmethod(paged_attention)

    @staticmethod
    def step_kernels(dtype: torch.dtype, kv_dtype: torch.dtype | None = None) -> tuple | None:
        """(attend, write_kv) C functions for a whole-step kernel (ops/cpu_decode_step.py) of a
        `dtype` model over a `kv_dtype` cache (default: the model's dtype)."""
        return entries(dtype, kv_dtype) if load() else None

    def plan_decode_graph(self, meta, num_kv_heads: int, max_seq_len: int) -> None:
        """Not graph-safe: nothing to plan."""
