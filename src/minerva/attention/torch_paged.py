"""Paged attention in plain torch: runs on any device and is the oracle for every fast kernel.

Decode rows are batched (one gather of their blocks, one masked matmul); each prefill chunk
attends with scaled_dot_product_attention over its gathered context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minerva.attention.metadata import AttentionMetadata


def is_fp8(dtype: torch.dtype) -> bool:
    """An 8-bit float KV cache: values stored as they are (scale 1.0), saturated at its range."""
    return dtype in (torch.float8_e4m3fn, torch.float8_e5m2)


def to_cache_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x in the cache's dtype; fp8 saturates at its largest finite value (a key beyond 448 in
    e4m3 would otherwise turn NaN on some devices), as vLLM's fp8 conversion does."""
    if is_fp8(dtype):
        top = torch.finfo(dtype).max
        return x.clamp(-top, top).to(dtype)
    return x.to(dtype)


def write_kv(
    kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store k, v [num_tokens, num_kv_heads, head_dim] at their slots of kv_cache
    [2, num_blocks, block_size, num_kv_heads, head_dim]."""
    flat = kv_cache.view(2, -1, kv_cache.shape[-2], kv_cache.shape[-1])
    k, v = to_cache_dtype(k, kv_cache.dtype), to_cache_dtype(v, kv_cache.dtype)
    if is_fp8(kv_cache.dtype):  # index_copy_ has no fp8 kernel on the CPU: copy the bytes
        flat, k, v = flat.view(torch.uint8), k.view(torch.uint8), v.view(torch.uint8)
    flat[0].index_copy_(0, slot_mapping, k)
    flat[1].index_copy_(0, slot_mapping, v)


def _context(
    kv_cache: torch.Tensor, block_table: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the first `length` cached K and V of one sequence: [length, num_kv_heads, head_dim]."""
    block_size = kv_cache.shape[2]
    num_blocks = -(-length // block_size)
    # index_select, not kv_cache[:, ids]: the same gather, several times faster on CPU
    blocks = kv_cache.index_select(1, block_table[:num_blocks])  # [2, nb, bs, kvh, d]
    blocks = blocks.reshape(2, num_blocks * block_size, *kv_cache.shape[3:])
    return blocks[0, :length], blocks[1, :length]


def _decode_plan(meta: AttentionMetadata, block_size: int, window: int | None):
    """Per step and window, shared by all layers: the cache slots of every decode row's
    context [n, max_ctx] and an additive mask [n, 1, 1, max_ctx] (0 or -inf)."""
    key = ("decode_plan", window)
    plan = meta.extras.get(key)
    if plan is not None:
        return plan
    n = meta.num_decodes
    seq_lens = meta.seq_lens[:n].unsqueeze(1)
    max_ctx = max(meta.seq_lens_cpu[:n])
    pos = torch.arange(max_ctx, device=seq_lens.device).unsqueeze(0)  # [1, L]
    blocks = meta.block_tables[:n].long().gather(1, (pos // block_size).expand(n, -1))
    slots = blocks * block_size + pos % block_size  # [n, L]
    allowed = pos < seq_lens
    if window is not None:
        allowed &= pos >= seq_lens - window
    bias = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device)
    bias.masked_fill_(~allowed, float("-inf"))
    plan = (slots, bias[:, None, None, :])
    meta.extras[key] = plan
    return plan


def _decode(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    window: int | None,
) -> torch.Tensor:
    n, num_heads, head_dim = q.shape  # [num_decodes, H, D]
    num_kv_heads = kv_cache.shape[3]
    slots, bias = _decode_plan(meta, kv_cache.shape[2], window)
    flat = kv_cache.view(2, -1, num_kv_heads, head_dim)
    kv = flat.index_select(1, slots.view(-1)).view(2, *slots.shape, num_kv_heads, head_dim)
    # [2, n, L, KV, D]
    if kv.dtype != q.dtype:
        kv = kv.to(q.dtype)
    k = kv[0].permute(0, 2, 3, 1)  # [n, KV, D, L]
    v = kv[1].transpose(1, 2)  # [n, KV, L, D]
    qg = q.view(n, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = torch.matmul(qg, k).float() * scale + bias  # [n, KV, G, L]
    probs = scores.softmax(dim=-1).to(q.dtype)
    return torch.matmul(probs, v).view(n, num_heads, head_dim)


def _prefill(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_len: int,
    scale: float,
    window: int | None,
) -> torch.Tensor:
    query_len, num_heads, _ = q.shape
    k, v = _context(kv_cache, block_table, seq_len)  # [L, KV, D]
    # 4-D inputs with GQA: the fused CPU kernel (3-D ones take the unfused math path)
    k = k.to(q.dtype).transpose(0, 1)[None]  # [1, KV, L, D]
    v = v.to(q.dtype).transpose(0, 1)[None]
    qt = q.transpose(0, 1)[None]  # [1, H, Q, D]
    gqa = num_heads != k.shape[1]
    if window is None and query_len == seq_len:
        out = F.scaled_dot_product_attention(qt, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        q_pos = torch.arange(seq_len - query_len, seq_len, device=q.device).unsqueeze(1)
        k_pos = torch.arange(seq_len, device=q.device).unsqueeze(0)
        mask = k_pos <= q_pos
        if window is not None:
            mask &= k_pos > q_pos - window
        out = F.scaled_dot_product_attention(qt, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    out = out[0]
    return out.transpose(0, 1)  # [Q, H, D]


def paged_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """q [num_tokens, H, D] against the cache (this step's K/V already written) -> [num_tokens, H, D]."""
    out = torch.empty_like(q)
    nd = meta.num_decodes
    if nd:
        out[:nd] = _decode(q[:nd], kv_cache, meta, scale, sliding_window)
    starts = meta.query_start_loc_cpu
    for i in range(nd, meta.num_seqs):
        s, e = starts[i], starts[i + 1]
        out[s:e] = _prefill(
            q[s:e], kv_cache, meta.block_tables[i], meta.seq_lens_cpu[i], scale, sliding_window
        )
    return out


class TorchAttention:
    """The plain-torch reference behind the AttentionBackend protocol."""

    name = "torch"
    graph_safe = False  # reads host-side lengths every step
    rope_write_kv = None

    write_kv = staticmethod(write_kv)
    paged_attention = staticmethod(paged_attention)

    def plan_decode_graph(self, meta, num_kv_heads: int, max_seq_len: int) -> None:
        """Not graph-safe: nothing to plan."""
