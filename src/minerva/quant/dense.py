"""Dense bf16 / fp16 / fp32 weights: the first LinearMethod. apply runs the kernel set's linear
(torch, the C kernel or the Triton GEMV); the batch-1 hooks run the Triton GEMVs with the RMSNorm
folded into the loads and the residual (and SiLU * mul) into the epilogue, where the kernel set
has them."""

from __future__ import annotations

import torch
from torch import nn

from minerva.ops import cpu_decode_step, cpu_linear
from minerva.ops.kernels import KernelSet
from minerva.quant.base import LinearMethod, create_bias, shard_destination


class DenseLinearMethod(LinearMethod):
    name = "dense"
    tensor_parallel = True

    def __init__(self, kernels: KernelSet) -> None:
        self.linear = kernels.linear
        self.gemv_rms_norm = kernels.gemv_rms_norm
        self.gemv_add_residual = kernels.gemv_add_residual
        self.linear_silu_mul = kernels.linear_silu_mul

    def create_weights(
        self,
        layer: nn.Module,
        in_features: int,
        output_sizes: list[int],
        bias: bool,
        params_dtype: torch.dtype,
    ) -> None:
        out = sum(output_sizes)
        layer.weight = nn.Parameter(torch.empty(out, in_features, dtype=params_dtype), False)
        create_bias(layer, out, bias, params_dtype)

    def load_weight(
        self, layer: nn.Module, param: nn.Parameter, tensor, shard_id: str | int | None
    ) -> None:
        shard_destination(layer, param, tensor, shard_id).copy_(tensor)

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x, layer.weight, layer.bias)

    def apply_silu_mul(self, layer: nn.Module, x: torch.Tensor, silu_and_mul) -> torch.Tensor:
        if self.linear_silu_mul is None:
            return super().apply_silu_mul(layer, x, silu_and_mul)
        return self.linear_silu_mul(x, layer.weight, layer.bias)

    def step_groups(self, layer: nn.Module):
        """One group when apply is the CPU kernel set's linear (the C GEMV of its dtype)."""
        w, b = layer.weight, layer.bias
        if self.linear is not cpu_linear.linear or w.dtype not in cpu_linear.MAX_ROWS:
            return None
        if not w.is_cpu or cpu_linear.MAX_ROWS[w.dtype] < cpu_decode_step.MAX_ROWS:
            return None  # apply would take F.linear for some of the step's rows
        if not w.is_contiguous() or b is not None and (b.dtype != w.dtype or not b.is_contiguous()):
            return None
        return [(cpu_decode_step.DENSE, 0, w.shape[0], w)]

    def apply_norm_in(self, layer, h, partials, norm_weight, eps) -> torch.Tensor:
        if self.gemv_rms_norm is None:
            return super().apply_norm_in(layer, h, partials, norm_weight, eps)
        return self.gemv_rms_norm(h, partials, norm_weight, eps, layer.weight, layer.bias)

    def apply_add_residual(self, layer, x, residual, gated=False):
        if self.gemv_add_residual is None:
            return super().apply_add_residual(layer, x, residual, gated)
        return self.gemv_add_residual(x, layer.weight, layer.bias, residual, gated)
