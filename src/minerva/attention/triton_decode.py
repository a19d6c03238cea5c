"""Paged decode attention in Triton: one query token per sequence against its cached context.

Grid (num_seqs, num_kv_heads, num_splits). A program owns one KV head and computes every query
head of that GQA group at once, so each K/V tile is read from memory once. Long contexts are
split over num_splits programs (flash-decoding): each writes a partial output and its
log-sum-exp, and a second kernel merges them. (Merging in the last split to arrive, behind an
arrival counter, measured slower: its fences and serial loop over the splits cost more than the
launch they save, benchmarks/results/decode_variants_tinyllama-1.1b_h100_merge_in_kernel.json.
RoPE and the KV write inside this kernel for pure decode steps gained nothing either:
decode_variants_*_h100_rope_in_decode.json.)

CUDA-graph friendly: the host never reads seq_lens. num_splits is a launch parameter; each
program derives its share of the context from seq_lens on the device, so a graph captured with
one set of lengths replays correctly with any other. Rows with seq_len 0 (padding) output zeros.
Imports triton: load through triton_backend.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minerva.ops import pdl as _pdl

NO_WINDOW = 1 << 30
"""Window used when attention is full: larger than any context, so the window mask is a no-op."""

MIN_TOKENS_PER_SPLIT = 256
MAX_SPLITS = 32


@triton.jit
def attend_paged_tile(
    q, m_i, l_i, acc, table, pos, in_range, score_mask,
    k_cache_ptr, v_cache_ptr, kv_head, offs_d, stride_cb, stride_cs, stride_ch, scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """One online-softmax step over the keys at `pos` [BLOCK_N] of a paged sequence (block
    table at `table`): q [R, BLOCK_D] attends where score_mask [R or 1, BLOCK_N] holds.
    Shared by the decode and prefill kernels; returns the updated (m_i, l_i, acc)."""
    block = tl.load(table + pos // BLOCK_SIZE, mask=in_range, other=0).to(tl.int64)
    row = block * stride_cb + (pos % BLOCK_SIZE) * stride_cs + kv_head * stride_ch
    kv_mask = in_range[:, None] & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(k_cache_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PREC) * scale_log2
    s = tl.where(score_mask, s, float("-inf"))  # [R, BLOCK_N]
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row may see nothing in this tile (window start): keep its exp2 free of inf - inf.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_cache_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    pv = tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=DOT_PREC)
    return m_new, l_i, acc * alpha[:, None] + pv


@triton.jit
def _decode_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    out_ptr,
    part_out_ptr,
    part_lse_ptr,
    scale_log2,
    window,
    num_splits,
    stride_qt,
    stride_qh,
    stride_cb,
    stride_cs,
    stride_ch,
    stride_bt,
    stride_ot,
    stride_oh,
    stride_pt,
    stride_ph,
    stride_ps,
    stride_lt,
    stride_lh,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,
    DOT_PREC: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    if USE_PDL:  # see ops/pdl.py
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + offs_g  # query heads of this KV head's group
    mask_gd = (offs_g[:, None] < GROUP) & (offs_d[None, :] < HEAD_DIM)

    # [GROUP_PAD, BLOCK_D]; padded rows are zero and never stored.
    q = tl.load(
        q_ptr + seq * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
        mask=mask_gd,
        other=0.0,
    )

    # Visible keys [lo, seq_len); this split takes a BLOCK_N-aligned slice of them.
    seq_len = tl.load(seq_lens_ptr + seq)
    lo = tl.maximum(seq_len - window, 0)
    lo_aligned = (lo // BLOCK_N) * BLOCK_N
    per_split = tl.cdiv(tl.cdiv(seq_len - lo_aligned, num_splits), BLOCK_N) * BLOCK_N
    start = lo_aligned + split * per_split
    end = tl.minimum(start + per_split, seq_len)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, BLOCK_D], tl.float32)
    table = block_tables_ptr + seq * stride_bt
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + offs_n  # [BLOCK_N] token positions
        valid = (pos >= lo) & (pos < end)
        m_i, l_i, acc = attend_paged_tile(
            q, m_i, l_i, acc, table, pos, valid, valid[None, :],
            k_cache_ptr, v_cache_ptr, kv_head, offs_d, stride_cb, stride_cs, stride_ch,
            scale_log2, HEAD_DIM, BLOCK_SIZE, DOT_PREC,
        )  # fmt: skip

    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # empty context -> zeros
    if SPLIT:
        lse = tl.where(l_i > 0, m_i + tl.log2(l_i), float("-inf"))
        part = part_out_ptr + seq * stride_pt + split * stride_ps
        tl.store(part + heads[:, None] * stride_ph + offs_d[None, :], o, mask=mask_gd)
        lse_ptr = part_lse_ptr + seq * stride_lt + heads * stride_lh + split
        tl.store(lse_ptr, lse, mask=offs_g < GROUP)
    else:
        dst = out_ptr + seq * stride_ot + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(dst, o.to(out_ptr.dtype.element_ty), mask=mask_gd)


@triton.jit
def _merge_kernel(
    part_out_ptr,
    part_lse_ptr,
    out_ptr,
    num_splits,
    stride_pt,
    stride_ph,
    stride_ps,
    stride_lt,
    stride_lh,
    stride_ot,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    if USE_PDL:  # see ops/pdl.py
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < num_splits
    lse = tl.load(
        part_lse_ptr + seq * stride_lt + head * stride_lh + offs_s,
        mask=mask_s,
        other=float("-inf"),
    )
    m = tl.max(lse, 0)
    w = tl.exp2(lse - tl.where(m == float("-inf"), 0.0, m))  # [SPLITS_PAD]; empty splits -> 0
    denom = tl.sum(w, 0)
    part = part_out_ptr + seq * stride_pt + head * stride_ph
    mask = mask_s[:, None] & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(part + offs_s[:, None] * stride_ps + offs_d[None, :], mask=mask, other=0.0)
    res = tl.sum(o * w[:, None], 0) / tl.where(denom > 0, denom, 1.0)
    dst = out_ptr + seq * stride_ot + head * stride_oh + offs_d
    tl.store(dst, res.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)


def choose_num_splits(
    num_seqs: int, num_kv_heads: int, max_seq_len: int, num_sms: int = 132
) -> int:
    """Splits per sequence for the decode kernel. With two waves of (sequence, KV head)
    programs the GPU is full and splitting only adds the merge; below that, split towards four
    programs per SM, keeping at least MIN_TOKENS_PER_SPLIT tokens each. A power of two (few
    graph variants), at most MAX_SPLITS. For a CUDA graph, call it once per batch bucket with
    the longest context the bucket may serve."""
    programs = max(1, num_seqs * num_kv_heads)
    if programs >= 2 * num_sms:
        return 1
    wanted = triton.cdiv(4 * num_sms, programs)
    by_length = max(1, max_seq_len // MIN_TOKENS_PER_SPLIT)
    splits = max(1, min(wanted, by_length, MAX_SPLITS))
    return 1 << (splits.bit_length() - 1)  # round down to a power of two


def _config(head_dim: int, dtype: torch.dtype, programs: int) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages) for one K/V tile of the loop. A deeper pipeline pays
    when many long programs share each SM and costs when few short ones do (split-K at batch 1):
    the H200 sweep in benchmarks/results/attention_bench_h200.json."""
    if dtype == torch.float32 or head_dim > 128:
        return 32, 4, 2
    return 64, 4, (3 if programs >= 256 else 2)


def decode_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    num_splits: int = 1,
    out: torch.Tensor | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    pdl: bool = False,
) -> torch.Tensor:
    """q [num_seqs, H, D] (one token per sequence, at position seq_len - 1) against kv_cache
    [2, num_blocks, block_size, KVH, D] through block_tables [num_seqs, max_blocks] int32 and
    seq_lens [num_seqs] int32 -> out [num_seqs, H, D]. block_n/num_warps/num_stages override
    the tile config (benchmarks)."""
    num_seqs, num_heads, head_dim = q.shape
    block_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    if out is None:
        out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    if q.stride(-1) != 1:
        q = q.contiguous()
    group = num_heads // num_kv_heads
    split = num_splits > 1
    programs = num_seqs * num_kv_heads if not split else 0
    cfg_n, cfg_warps, cfg_stages = _config(head_dim, q.dtype, programs)
    block_n = block_n or cfg_n
    if split:
        part_out = torch.empty(
            (num_seqs, num_heads, num_splits, head_dim), dtype=torch.float32, device=q.device
        )
        part_lse = torch.empty(
            (num_seqs, num_heads, num_splits), dtype=torch.float32, device=q.device
        )
    else:
        part_out, part_lse = out, out  # unused by the kernel
    k_cache, v_cache = kv_cache[0], kv_cache[1]  # [num_blocks, block_size, kvh, d]
    window = sliding_window if sliding_window else NO_WINDOW
    block_d = triton.next_power_of_2(head_dim)
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        out,
        part_out,
        part_lse,
        scale * 1.4426950408889634,  # log2(e): the kernel uses exp2
        window,
        num_splits,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        part_out.stride(0),
        part_out.stride(1),
        part_out.stride(2) if split else 0,
        part_lse.stride(0),
        part_lse.stride(1),
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),  # tl.dot needs M >= 16
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_SIZE=block_size,
        BLOCK_N=block_n,
        SPLIT=split,
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps or cfg_warps,
        num_stages=num_stages or cfg_stages,
        USE_PDL=pdl,
        **_pdl.launch_kwargs(pdl),
    )
    if split:
        _merge_kernel[(num_seqs, num_heads)](
            part_out,
            part_lse,
            out,
            num_splits,
            part_out.stride(0),
            part_out.stride(1),
            part_out.stride(2),
            part_lse.stride(0),
            part_lse.stride(1),
            out.stride(0),
            out.stride(1),
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
            SPLITS_PAD=triton.next_power_of_2(num_splits),
            num_warps=4,
            USE_PDL=pdl,
            **_pdl.launch_kwargs(pdl),
        )
    return out
