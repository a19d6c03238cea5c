"""KV-cache write in Triton: this step's k, v [num_tokens, num_kv_heads, head_dim] into their slots.

One program per token copies all of its KV heads at once (one row of the cache slot). Tokens
whose slot is -1 (padding rows of a CUDA-graph batch) are skipped, so a captured graph can run
with fewer real tokens than it was captured for. `rope_write_kv` does RoPE on q and k in the
same pass (one kernel per layer instead of two). An 8-bit float cache (fp8 e4m3 / e5m2, compute
capability 8.9+) stores the values as they are (scale 1.0), saturated at its largest finite
value, as the torch path's write does. Imports triton: load through triton_backend.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minerva.ops import pdl as _pdl

_CACHE_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}
"""The largest finite value of each 8-bit float cache dtype (values beyond it saturate)."""


def cache_max(kv_cache: torch.Tensor) -> float:
    """What the kernels clamp to before storing into ``kv_cache`` (0.0: no clamp)."""
    return _CACHE_MAX.get(kv_cache.dtype, 0.0)


@triton.jit
def to_cache(x, dtype: tl.constexpr, CACHE_MAX: tl.constexpr):
    """x as the cache's dtype; an 8-bit float cache (CACHE_MAX > 0) saturates instead of
    overflowing to NaN."""
    if CACHE_MAX > 0:
        x = tl.minimum(tl.maximum(x.to(tl.float32), -CACHE_MAX), CACHE_MAX)
    return x.to(dtype)


@triton.jit
def _kv_write_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_mapping_ptr,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cb,
    stride_cs,
    stride_ch,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    CACHE_MAX: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    if USE_PDL:  # see ops/pdl.py
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    # slot -1 marks a padding token: every lane is masked off, nothing is read or written.
    mask = (offs_h[:, None] < NUM_KV_HEADS) & (offs_d[None, :] < HEAD_DIM) & (slot >= 0)
    safe_slot = tl.maximum(slot, 0)
    block = safe_slot // BLOCK_SIZE
    offset = safe_slot % BLOCK_SIZE
    dst = block * stride_cb + offset * stride_cs + offs_h[:, None] * stride_ch + offs_d[None, :]
    k = tl.load(
        k_ptr + token * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask
    )
    v = tl.load(
        v_ptr + token * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask
    )
    out_ty = k_cache_ptr.dtype.element_ty
    tl.store(k_cache_ptr + dst, to_cache(k, out_ty, CACHE_MAX), mask=mask)
    tl.store(v_cache_ptr + dst, to_cache(v, out_ty, CACHE_MAX), mask=mask)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def write_kv(
    kv_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
    pdl: bool = False,
) -> None:
    """Store k, v [num_tokens, num_kv_heads, head_dim] at slot_mapping [num_tokens] (int64,
    -1 = skip) of kv_cache [2, num_blocks, block_size, num_kv_heads, head_dim]. No host sync."""
    num_tokens = slot_mapping.shape[0]
    if num_tokens == 0:
        return
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    k, v = _last_dim_contiguous(k), _last_dim_contiguous(v)
    k_cache, v_cache = kv_cache[0], kv_cache[1]  # [num_blocks, block_size, kvh, d]
    _kv_write_kernel[(num_tokens,)](
        k,
        v,
        k_cache,
        v_cache,
        slot_mapping,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_H=triton.next_power_of_2(num_kv_heads),
        BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=block_size,
        CACHE_MAX=cache_max(kv_cache),
        num_warps=4,
        USE_PDL=pdl,
        **_pdl.launch_kwargs(pdl),
    )


@triton.jit
def _rope_write_kv_kernel(
    qkv_ptr, cos_ptr, sin_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    stride_t, stride_cb, stride_cs, stride_ch, num_heads, num_kv_heads,
    D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_KV: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    CACHE_MAX: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    if USE_PDL:  # see ops/pdl.py
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    t = tl.program_id(0).to(tl.int64)
    half: tl.constexpr = D // 2
    d = tl.arange(0, D)
    rolled = (d + half) % D  # rotate_half(x) * sin == roll(x, D/2) * [-sin_lo, sin_hi]
    h = tl.arange(0, BLOCK_H)  # the q heads, then the k heads
    rows = qkv_ptr + t * stride_t + h[:, None] * D
    qk = (h < num_heads + num_kv_heads)[:, None]
    x = tl.load(rows + d[None, :], mask=qk)
    xr = tl.load(rows + rolled[None, :], mask=qk)
    c = tl.load(cos_ptr + t * D + d)[None, :]
    s = tl.load(sin_ptr + t * D + d)[None, :]
    y = x * c + xr * s  # in the model dtype, like ops.triton_ops.apply_rope
    is_q = (h < num_heads)[:, None]
    tl.store(q_out_ptr + (t * num_heads + h[:, None]) * D + d[None, :], y, mask=is_q)
    # slot -1 marks a padding token: q is still written, the cache is not touched.
    slot = tl.load(slot_mapping_ptr + t).to(tl.int64)
    safe_slot = tl.maximum(slot, 0)
    base = (safe_slot // BLOCK_SIZE) * stride_cb + (safe_slot % BLOCK_SIZE) * stride_cs
    kh = tl.maximum(h - num_heads, 0)
    k_mask = qk & (h >= num_heads)[:, None] & (slot >= 0)
    k_dst = k_cache_ptr + base + kh[:, None] * stride_ch + d[None, :]
    tl.store(k_dst, to_cache(y, k_cache_ptr.dtype.element_ty, CACHE_MAX), mask=k_mask)
    vh = tl.arange(0, BLOCK_KV)
    v_mask = (vh < num_kv_heads)[:, None] & (slot >= 0)
    v_src = qkv_ptr + t * stride_t + (num_heads + num_kv_heads + vh[:, None]) * D + d[None, :]
    v = tl.load(v_src, mask=v_mask)
    v_dst = v_cache_ptr + base + vh[:, None] * stride_ch + d[None, :]
    tl.store(v_dst, to_cache(v, v_cache_ptr.dtype.element_ty, CACHE_MAX), mask=v_mask)


def rope_write_kv(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin_signed: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    pdl: bool = False,
) -> torch.Tensor:
    """qkv [T, (H + 2 KVH) * D] -> rotated q [T, H, D]; rotated k and v go to their slots of
    kv_cache (slot -1 skipped). cos / sign-folded sin [T, 1, D] as in ops.torch_ops.apply_rope.
    Same result as apply_rope on q and k followed by write_kv."""
    t = qkv.shape[0]
    d = kv_cache.shape[-1]
    qkv = qkv.reshape(t, -1)
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    q = torch.empty(t, num_heads, d, dtype=qkv.dtype, device=qkv.device)
    if t == 0:
        return q
    k_cache, v_cache = kv_cache[0], kv_cache[1]  # [num_blocks, block_size, kvh, d]
    block_h = triton.next_power_of_2(num_heads + num_kv_heads)
    _rope_write_kv_kernel[(t,)](
        qkv, cos.reshape(t, d).contiguous(), sin_signed.reshape(t, d).contiguous(), q,
        k_cache, v_cache, slot_mapping, qkv.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), num_heads, num_kv_heads,
        D=d, BLOCK_H=block_h, BLOCK_KV=triton.next_power_of_2(num_kv_heads),
        BLOCK_SIZE=kv_cache.shape[2], CACHE_MAX=cache_max(kv_cache),
        num_warps=min(max(block_h * d // 1024, 1), 8),
        USE_PDL=pdl, **_pdl.launch_kwargs(pdl),
    )  # fmt: skip
    return q
