"""Fused Triton kernels for the layer glue on CUDA: add + RMSNorm, SiLU * mul, RoPE; and the
linear-layer dispatch (one token: the Triton GEMV, which streams weights faster than cuBLAS
at batch 1 in benchmarks/gemv_bench.py; more: cuBLAS).

Each replaces several small torch kernels whose launch and latency cost dominates a batch-1
decode step. The torch code in ops/torch_ops.py is the slow twin (tests/gpu compare them).
Rounding follows transformers: the residual sum is rounded to the model dtype before it is
normalised, and the normalised value is rounded before the weight multiplies it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from minerva.ops import pdl as _pdl
from minerva.ops.triton_gemv import gemv


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, pdl: bool = False
) -> torch.Tensor:
    """F.linear, with one-row inputs through the Triton GEMV."""
    if x.shape[0] == 1 and x.dim() == 2:
        return gemv(x, weight, bias, pdl=pdl)
    return F.linear(x, weight, bias)


@triton.jit
def _add_rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, n_cols, eps,
    HAS_RES: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    if USE_PDL:  # see ops/pdl.py
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0)
    if HAS_RES:
        x = x + tl.load(res_ptr + row * n_cols + cols, mask=mask, other=0.0)
        tl.store(res_out_ptr + row * n_cols + cols, x, mask=mask)
    xf = x.to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    normed = (xf * inv).to(x.dtype)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    tl.store(out_ptr + row * n_cols + cols, (w * normed).to(x.dtype), mask=mask)


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    pdl: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(rms_norm(x + residual) * weight, x + residual) for contiguous [T, H] tensors."""
    x = x.contiguous()
    rows, cols = x.shape
    out = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else None
    block = triton.next_power_of_2(cols)
    _add_rms_norm_kernel[(rows,)](
        x, residual.contiguous() if residual is not None else x, weight, out,
        res_out if res_out is not None else out, cols, eps,
        HAS_RES=residual is not None, BLOCK=block, num_warps=min(max(block // 256, 1), 16),
        USE_PDL=pdl, **_pdl.launch_kwargs(pdl),
    )  # fmt: skip
    return out, res_out


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, inter, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    if USE_PDL:  # see ops/pdl.py
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * 2 * inter + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * 2 * inter + inter + cols, mask=mask, other=0.0)
    silu = (gate / (1.0 + tl.exp(-gate))).to(up.dtype)  # rounded like F.silu's output
    tl.store(out_ptr + row * inter + cols, silu * up, mask=mask)


def silu_and_mul(gate_up: torch.Tensor, pdl: bool = False) -> torch.Tensor:
    """[T, 2I] (gate | up) -> silu(gate) * up, [T, I]."""
    gate_up = gate_up.contiguous()
    rows, two_i = gate_up.shape
    inter = two_i // 2
    out = torch.empty(rows, inter, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(inter, block))](
        gate_up, out, inter, BLOCK=block, USE_PDL=pdl, **_pdl.launch_kwargs(pdl)
    )
    return out


@triton.jit
def _rope_kernel(
    x_ptr, cos_ptr, sin_ptr, out_ptr, x_stride_t, x_stride_h, num_heads,
    D: tl.constexpr, BLOCK_H: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    if USE_PDL:  # see ops/pdl.py
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    # One program per token, all its heads at once: cos / sin are loaded once per token.
    t = tl.program_id(0)
    half: tl.constexpr = D // 2
    d = tl.arange(0, D)
    h = tl.arange(0, BLOCK_H)
    mask = (h < num_heads)[:, None]
    rolled = (d + half) % D  # rotate_half(x) * sin == roll(x, D/2) * [-sin_lo, sin_hi]
    rows = x_ptr + t * x_stride_t + h[:, None] * x_stride_h
    x = tl.load(rows + d[None, :], mask=mask)
    xr = tl.load(rows + rolled[None, :], mask=mask)
    c = tl.load(cos_ptr + t * D + d)[None, :]
    s = tl.load(sin_ptr + t * D + d)[None, :]
    y = x * c + xr * s  # in the model dtype, like the torch path
    tl.store(out_ptr + (t * num_heads + h[:, None]) * D + d[None, :], y, mask=mask)


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor, pdl: bool = False
) -> torch.Tensor:
    """x [T, heads, D] (last dim contiguous, any row stride) -> rotated copy [T, heads, D];
    cos / sign-folded sin [T, 1, D] as in torch_ops.apply_rope."""
    t, heads, d = x.shape
    out = torch.empty(t, heads, d, dtype=x.dtype, device=x.device)
    cos = cos.reshape(t, d).contiguous()
    sin_signed = sin_signed.reshape(t, d).contiguous()
    block_h = triton.next_power_of_2(heads)
    _rope_kernel[(t,)](
        x, cos, sin_signed, out, x.stride(0), x.stride(1), heads,
        D=d, BLOCK_H=block_h, num_warps=min(max(block_h * d // 1024, 1), 8),
        USE_PDL=pdl, **_pdl.launch_kwargs(pdl),
    )  # fmt: skip
    return out
