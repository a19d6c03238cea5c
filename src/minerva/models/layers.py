"""Building blocks shared by model families: RMSNorm (with fused residual add) and SiLU-gated MLP.

Their kernels (torch, C or Triton) come from the kernel set the model is built with."""

from __future__ import annotations

import torch
from torch import nn

from minerva.distributed import SINGLE, ParallelContext
from minerva.models.linear import MergedLinear, RowParallelLinear
from minerva.ops.kernels import KernelSet, torch_kernels
from minerva.quant.base import QuantConfig


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 like transformers; optionally adds the residual first."""

    def __init__(
        self,
        hidden_size: int,
        eps: float,
        dtype: torch.dtype | None = None,
        kernels: KernelSet | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype))
        self.eps = eps
        self.add_rms_norm = (kernels or torch_kernels()).add_rms_norm

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out, new_residual = self.add_rms_norm(x, residual, self.weight, self.eps)
        return out if residual is None else (out, new_residual)


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one matmul; under tensor
    parallelism each rank computes 1/n of the intermediate and the ranks' outputs are summed."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        bias: bool,
        dtype: torch.dtype,
        kernels: KernelSet,
        quant: QuantConfig,
        prefix: str,
        parallel: ParallelContext = SINGLE,
    ) -> None:
        super().__init__()
        self.intermediate_size = parallel.shard(intermediate_size, "intermediate_size")
        self.silu_and_mul = kernels.silu_and_mul
        self.gate_up_proj = MergedLinear(
            hidden_size,
            [intermediate_size, intermediate_size],
            bias,
            quant.get_method(f"{prefix}.gate_up_proj"),
            dtype,
            parallel=parallel,
        )
        self.down_proj = RowParallelLinear(
            intermediate_size,
            hidden_size,
            bias,
            quant.get_method(f"{prefix}.down_proj"),
            dtype,
            parallel=parallel,
        )
        # the sum of the ranks' partial outputs; None at world size 1 (nothing to add)
        self.all_reduce = parallel.all_reduce if parallel.is_parallel else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up, down = self.gate_up_proj, self.down_proj
        h = gate_up.method.apply_silu_mul(gate_up, x, self.silu_and_mul)
        out = down.method.apply(down, h)
        return out if self.all_reduce is None else self.all_reduce(out)
