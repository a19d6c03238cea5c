"""The kernel set a model is built with: which functions run the dense linear layers and the
layer glue (add + RMSNorm, SiLU * mul, RoPE), and whether the batch-1 fused GEMVs exist.

Chosen once, from the platform and the config (`select_kernels`), and handed to the model's
layers and linear methods at construction: torch everywhere (the slow twin), C kernels on the
CPU, Triton on CUDA. The Triton set binds its PDL setting (ops/pdl.py) into every launch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F

from minerva.ops import torch_ops
from minerva.platform import Platform


@dataclass(frozen=True)
class KernelSet:
    name: str
    """"torch", "cpu" or "triton"."""
    linear: Callable
    """F.linear's contract: (x [T, K], weight [N, K], bias [N] | None) -> [T, N]."""
    add_rms_norm: Callable
    """(x, residual | None, weight, eps) -> (rms_norm(x + residual) * weight, x + residual)."""
    silu_and_mul: Callable
    """[T, 2I] (gate | up) -> silu(gate) * up [T, I]."""
    rope: Callable
    """(x [T, heads, D], cos, sign-folded sin [T, 1, D]) -> rotated copy."""
    gemv_rms_norm: Callable | None = None
    """Batch 1: (h, partials, norm_weight, eps, weight, bias) -> RMSNorm(h) @ weight.T + bias."""
    gemv_add_residual: Callable | None = None
    """Batch 1: (x, weight, bias, residual, gated) -> (residual + linear, partials)."""
    linear_silu_mul: Callable | None = None
    """(x, gate_up weight, bias) -> silu_and_mul(linear(x, weight, bias)) in one pass over the
    product's output, where the kernel set has it (the CPU's)."""
    fuse_rope_write_kv: bool = False
    """RoPE and the KV-cache write in one kernel (the attention backend's rope_write_kv)."""
    pdl: bool = False
    """Triton kernels are launched with programmatic dependent launch."""

    @property
    def one_token(self) -> bool:
        """Whether batch-1 steps fold the glue into the GEMVs (the model's one-token path)."""
        return self.gemv_rms_norm is not None


def torch_kernels() -> KernelSet:
    return KernelSet(
        "torch", F.linear, torch_ops.add_rms_norm, torch_ops.silu_and_mul, torch_ops.apply_rope
    )


def cpu_kernels() -> KernelSet | None:
    """The C kernels (built on first use), or None where they cannot be built (logged once)."""
    from minerva.ops import cpu_linear, cpu_ops  # noqa: PLC0415 - builds C code on first use

    if not (cpu_linear.load() and cpu_ops.load()):
        return None
    return KernelSet(
        "cpu",
        cpu_linear.linear,
        cpu_ops.add_rms_norm,
        cpu_ops.silu_and_mul,
        cpu_ops.apply_rope,
        linear_silu_mul=cpu_linear.linear_silu_mul,
    )


def triton_kernels(pdl: bool = False) -> KernelSet:
    """Triton GEMV and glue kernels (CUDA); `pdl` is bound into every launch."""
    from minerva.ops import triton_gemv, triton_ops  # noqa: PLC0415 - needs triton

    def bind(fn: Callable) -> Callable:
        return functools.partial(fn, pdl=True) if pdl else fn

    return KernelSet(
        "triton",
        bind(triton_ops.linear),
        bind(triton_ops.add_rms_norm),
        bind(triton_ops.silu_and_mul),
        bind(triton_ops.apply_rope),
        gemv_rms_norm=bind(triton_gemv.gemv_rms_norm),
        gemv_add_residual=bind(triton_gemv.gemv_add_residual),
        fuse_rope_write_kv=True,
        pdl=pdl,
    )


def select_kernels(platform: Platform, *, fused: bool, cpu: bool, pdl: bool) -> KernelSet:
    """fused: Triton kernels on CUDA (the caller checks the attention backend can take them);
    cpu: the C kernels on the CPU, torch where they do not build; else torch."""
    if platform.is_cuda and fused:
        return triton_kernels(pdl)
    if platform.kind == "cpu" and cpu:
        return cpu_kernels() or torch_kernels()
    return torch_kernels()
