"""The layer glue in plain torch: add + RMSNorm, SiLU * mul, RoPE. Runs on any device and is
the slow twin of the Triton (triton_ops.py) and C (cpu_ops.py) kernels; rounding follows
transformers (the residual sum is rounded to the model dtype before it is normalised, and the
normalised value is rounded before the weight multiplies it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x [T, H] in float32 like transformers, scaled by weight [H]."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    # Half precision: normalise in float32, round, then scale (transformers' order).
    h = F.rms_norm(x.float(), weight.shape, None, eps)
    return weight * h.to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(rms_norm(x + residual) * weight, x + residual); residual None: (rms_norm(x), None)."""
    if residual is not None:
        x = residual = x + residual  # the new residual stream
    return rms_norm(x, weight, eps), residual


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2I] (gate | up) -> silu(gate) * up, [T, I]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotate x [T, heads, D] by cos / sign-folded sin [T, 1, D] (HF's rotate-half layout).

    rotate_half(x) * sin == roll(x, D/2) * [-sin_lo, sin_hi], so one roll replaces the
    slice-negate-concat of the textbook form."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin_signed)


def gemv_add_residual(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    gated: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of triton_gemv.gemv_add_residual: (residual + linear(x), partials [1] float32 whose
    sum is the new residual stream's sum of squares); gated: x is [gate | up]."""
    if gated:
        x = silu_and_mul(x)
    h = F.linear(x, weight, bias) + residual
    return h, h.float().square().sum().reshape(1)


def gemv_rms_norm(
    h: torch.Tensor,
    partials: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Twin of triton_gemv.gemv_rms_norm: RMSNorm(h) from the producer's partials, then linear."""
    rstd = torch.rsqrt(partials.sum() / h.shape[-1] + eps)
    normed = (h.float() * rstd).to(h.dtype)
    return F.linear((norm_weight * normed).to(h.dtype), weight, bias)
