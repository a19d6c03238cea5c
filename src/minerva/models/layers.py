"""Building blocks shared by model families: RMSNorm (with fused residual add) and SiLU-gated MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 like transformers; optionally adds the residual first."""

    def __init__(self, hidden_size: int, eps: float, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype))
        self.eps = eps
        self.fused = None  # models.triton_ops on CUDA (set by use_fused_kernels)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # Half precision: normalise in float32, round, then scale (transformers' order).
        h = F.rms_norm(x.float(), self.weight.shape, None, self.eps)
        return self.weight * h.to(x.dtype)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.fused is not None:
            out, new_residual = self.fused.add_rms_norm(x, residual, self.weight, self.eps)
            return out if residual is None else (out, new_residual)
        if residual is None:
            return self._norm(x)
        residual = x + residual  # the new residual stream
        return self._norm(residual), residual


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one matmul."""

    def __init__(
        self, hidden_size: int, intermediate_size: int, bias: bool, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.intermediate_size = intermediate_size
        self.fused = None  # models.triton_ops on CUDA (set by use_fused_kernels)
        self.linear = F.linear  # models.cpu_linear.linear on CPU (set by use_cpu_kernels)
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=bias, dtype=dtype)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.linear(x, self.gate_up_proj.weight, self.gate_up_proj.bias)
        if self.fused is not None:
            h = self.fused.silu_and_mul(gate_up)  # one kernel instead of silu, then mul
        else:
            gate, up = gate_up.split(self.intermediate_size, dim=-1)
            h = F.silu(gate) * up
        return self.linear(h, self.down_proj.weight, self.down_proj.bias)
