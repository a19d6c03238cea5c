"""Prefill and chunked-prefill attention in Triton over the paged KV cache (varlen, causal).

Grid (query blocks, sequences, query heads). Each program takes BLOCK_M query tokens of one
sequence and one head, and streams that sequence's cached keys through its block_table with an
online softmax: the query at position p sees key j iff p - window < j <= p. A chunk's queries
sit at the end of the context (positions seq_len - query_len ...), so earlier chunks and
prefix-cache hits are read from the cache like any other key. Imports triton: load through
triton_backend.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minerva.attention.triton_decode import NO_WINDOW, attend_paged_tile


@triton.jit
def _prefill_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    out_ptr,
    scale_log2,
    window,
    first_seq,
    group,
    stride_qt,
    stride_qh,
    stride_cb,
    stride_cs,
    stride_ch,
    stride_bt,
    stride_ot,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    q_block = tl.program_id(0)
    seq = (tl.program_id(1) + first_seq).to(tl.int64)
    head = tl.program_id(2)
    kv_head = head // group
    q_start = tl.load(query_start_loc_ptr + seq)
    query_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    if q_block * BLOCK_M >= query_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - query_len  # tokens cached before this chunk

    offs_m = q_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_md = (offs_m[:, None] < query_len) & (offs_d[None, :] < HEAD_DIM)
    tokens = (q_start + offs_m).to(tl.int64)
    q = tl.load(
        q_ptr + tokens[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
        mask=mask_md,
        other=0.0,
    )  # [BLOCK_M, BLOCK_D]
    q_pos = context_len + offs_m  # [BLOCK_M]

    # Keys this block can see: from the first query's window start to the last query (causal).
    first_pos = context_len + q_block * BLOCK_M
    end = tl.minimum(first_pos + BLOCK_M, seq_len)
    lo = tl.maximum(first_pos - window + 1, 0)
    lo = (lo // BLOCK_N) * BLOCK_N

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    table = block_tables_ptr + seq * stride_bt
    for n0 in range(lo, end, BLOCK_N):
        pos = n0 + offs_n  # [BLOCK_N]
        in_range = pos < end
        visible = (pos[None, :] <= q_pos[:, None]) & (pos[None, :] > q_pos[:, None] - window)
        m_i, l_i, acc = attend_paged_tile(
            q, m_i, l_i, acc, table, pos, in_range, visible & in_range[None, :],
            k_cache_ptr, v_cache_ptr, kv_head, offs_d, stride_cb, stride_cs, stride_ch,
            scale_log2, HEAD_DIM, BLOCK_SIZE, DOT_PREC,
        )  # fmt: skip

    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    dst = out_ptr + tokens[:, None] * stride_ot + head * stride_oh + offs_d[None, :]
    tl.store(dst, o.to(out_ptr.dtype.element_ty), mask=mask_md)


def _config(head_dim: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages). 64x64 tiles on 4 warps beat 128x64 on 8 warps
    (more programs, less causal imbalance per program) in the H200 sweep of
    benchmarks/attention_bench.py: benchmarks/results/attention_bench_h200.json."""
    if dtype == torch.float32 or head_dim > 128:
        return 64, 32, 4, 1
    return 64, 64, 4, 2


def prefill_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    first_seq: int,
    num_seqs: int,
    max_query_len: int,
    scale: float,
    sliding_window: int | None = None,
    out: torch.Tensor | None = None,
    config: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Attention for sequences first_seq .. first_seq + num_seqs - 1 of a flat batch.

    q [num_tokens, H, D] is the whole batch (rows located by query_start_loc [num_seqs_total + 1]
    int32); their K/V must already be in kv_cache [2, num_blocks, block_size, KVH, D].
    block_tables [num_seqs_total, max_blocks] and seq_lens [num_seqs_total] int32 cover the
    batch. max_query_len (host int) bounds the grid. Writes those rows of out [num_tokens, H, D].
    config (BLOCK_M, BLOCK_N, num_warps, num_stages) overrides the tile choice (benchmarks).
    """
    num_heads, head_dim = q.shape[1], q.shape[2]
    block_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    if out is None:
        out = torch.empty_like(q)
    if num_seqs == 0 or max_query_len == 0:
        return out
    if q.stride(-1) != 1:
        q = q.contiguous()
    block_m, block_n, num_warps, num_stages = config or _config(head_dim, q.dtype)
    k_cache, v_cache = kv_cache[0], kv_cache[1]  # [num_blocks, block_size, kvh, d]
    grid = (triton.cdiv(max_query_len, block_m), num_seqs, num_heads)
    _prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        query_start_loc,
        out,
        scale * 1.4426950408889634,  # log2(e): the kernel uses exp2
        sliding_window if sliding_window else NO_WINDOW,
        first_seq,
        num_heads // num_kv_heads,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=block_size,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out
