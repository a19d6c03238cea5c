"""fp8 e4m3 weights with one float32 scale per output row, quantized while a float checkpoint
loads (`--quantization fp8`): half the bytes of bf16 for the batch-1 GEMV to stream, and the fp8
tensor cores for several tokens.

A row's scale is its largest magnitude / 448 (e4m3's largest finite value), so every row uses the
whole fp8 range and a q / k / v or gate / up piece of a fused layer is quantized on its own. On
CUDA one token runs the Triton GEMV (ops/triton_gemv.py) on the fp8 rows with the scale in its
epilogue, keeping the batch-1 path's fused RMSNorm, SiLU * mul and residual add; several tokens
quantize x per row to fp8 as well (dynamic, one scale per token, as vLLM's fp8 does) and run
torch's scaled matmul. Elsewhere the twin decodes the weight and multiplies (correct, slow: fp8 is
a format for GPUs with fp8 support, compute capability 8.9 and up).
"""

from __future__ import annotations

import torch
from torch import nn

from minerva.errors import ModelLoadError
from minerva.ops.kernels import KernelSet
from minerva.platform import FP8_CAPABILITY
from minerva.quant.base import LinearMethod, create_bias, shard_destination

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
MIN_CAPABILITY = FP8_CAPABILITY
TINY = 1e-12  # the scale of an all-zero row (any positive value decodes it to zeros)
TRITON_X = False
"""Several tokens: x quantized by one Triton kernel (ops/triton_fp8.py) instead of the torch
twin's six passes; off until checked and measured on a GPU."""


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (fp8 codes [N, K], float32 scales [N]): w ~ codes * scale[:, None]."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=TINY)
    return (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The twin's weight: float32 [N, K]."""
    return codes.float() * scale[:, None]


def _scaled_mm_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.is_cuda
        and x.dtype == torch.bfloat16
        and x.shape[-1] % 16 == 0
        and weight.shape[0] % 16 == 0
        and torch.cuda.get_device_capability(x.device) >= MIN_CAPABILITY
    )


def quantize_x(x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The twin of ops/triton_fp8.quantize_rows: x [M, K] -> (fp8 codes [rows, K], float32
    scales [rows, 1]), one scale per row; rows past M are zeros (the GEMM's padding)."""
    if rows > x.shape[0]:
        x = torch.cat([x, x.new_zeros(rows - x.shape[0], x.shape[1])])
    xs = (x.float().abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=TINY)  # [rows, 1]
    return (x.float() / xs).clamp(-FP8_MAX, FP8_MAX).to(FP8), xs


def scaled_matmul(
    x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, triton_x: bool = False
) -> torch.Tensor:
    """x [M, K] bf16 @ (codes * scale).T on the fp8 tensor cores: x quantized per row to fp8 (its
    own scale per token; one Triton kernel, or the torch twin), one product with both scales
    applied -> [M, N] bf16."""
    m = x.shape[0]
    rows = m + (-m % 16)  # the fp8 GEMM takes whole tiles of 16 rows
    if triton_x and x.stride(-1) == 1:
        from minerva.ops import triton_fp8  # noqa: PLC0415 - needs triton (CUDA only)

        xq, xs = triton_fp8.quantize_rows(x, rows)
    else:
        xq, xs = quantize_x(x, rows)
    y = torch._scaled_mm(
        xq, codes.t(), scale_a=xs, scale_b=scale.reshape(1, -1), out_dtype=torch.bfloat16
    )
    return y[:m] if rows != m else y


class FP8LinearMethod(LinearMethod):
    name = "fp8"
    codes_dtype: torch.dtype = FP8

    def __init__(self, kernels: KernelSet | None = None) -> None:
        self.kernels = kernels

    def create_weights(
        self,
        layer: nn.Module,
        in_features: int,
        output_sizes: list[int],
        bias: bool,
        params_dtype: torch.dtype,
    ) -> None:
        out = sum(output_sizes)
        layer.weight = nn.Parameter(torch.empty(out, in_features, dtype=self.codes_dtype), False)
        # a buffer: no checkpoint tensor fills it (loading the weight does)
        layer.register_buffer("weight_scale", torch.empty(out, dtype=torch.float32))
        create_bias(layer, out, bias, params_dtype)

    def load_weight(
        self, layer: nn.Module, param: nn.Parameter, tensor, shard_id: str | int | None
    ) -> None:
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise ModelLoadError(
                f"is not a float tensor: {self.name} quantizes float checkpoints only"
            )
        dest = shard_destination(layer, param, tensor, shard_id)
        if param is not layer.weight:  # the bias stays in the model's dtype
            dest.copy_(tensor)
            return
        self.check_device(dest)
        codes, scale = self.quantize(tensor.to(dest.device))
        dest.copy_(codes)
        start = layer.shard_rows(shard_id)[0] if shard_id is not None else 0
        layer.weight_scale.data.narrow(0, start, dest.shape[0]).copy_(scale)

    def check_device(self, dest: torch.Tensor) -> None:
        """Raise ModelLoadError where the weights cannot live."""
        if dest.is_cuda and torch.cuda.get_device_capability(dest.device) < MIN_CAPABILITY:
            raise ModelLoadError(
                "needs fp8 support (an Ada or Hopper GPU, compute capability 8.9+) for "
                "--quantization fp8: use int8 or q8_0 on this GPU"
            )

    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w [N, K] float -> (codes [N, K], float32 scales [N])."""
        return quantize_rows(w)

    def several_tokens(
        self, x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor | None:
        """x [M, K] @ (codes * scale).T without decoding the weight (M > 1, no bias), or None
        where this device has no such kernel (the twin runs)."""
        if not _scaled_mm_ok(x, codes):
            return None
        return scaled_matmul(x, codes, scale, triton_x=self._triton and TRITON_X)

    def weight_bytes(self, layer: nn.Module) -> int:
        return super().weight_bytes(layer) + layer.weight_scale.numel() * 4

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        w, s, b = layer.weight, layer.weight_scale, layer.bias
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if self._triton and x2.shape[0] == 1:
            from minerva.ops import triton_gemv  # noqa: PLC0415 - CUDA only

            y = triton_gemv.gemv(x2, w, b, pdl=self.kernels.pdl, scale=s)
        elif (y := self.several_tokens(x2, w, s)) is not None:
            if b is not None:
                y = y + b.to(y.dtype)
        else:  # the twin
            dtype = torch.float32 if x2.is_cpu else x2.dtype
            y = x2.to(dtype) @ dequantize_rows(w, s).to(dtype).T
            if b is not None:
                y = y + b.to(dtype)
        return y.to(x.dtype).reshape(*lead, w.shape[0])

    @property
    def _triton(self) -> bool:
        return self.kernels is not None and self.kernels.gemv_rms_norm is not None

    def apply_norm_in(self, layer, h, partials, norm_weight, eps) -> torch.Tensor:
        if not (self._triton and h.is_cuda):
            return super().apply_norm_in(layer, h, partials, norm_weight, eps)
        return self.kernels.gemv_rms_norm(
            h, partials, norm_weight, eps, layer.weight, layer.bias, scale=layer.weight_scale
        )

    def apply_add_residual(self, layer, x, residual, gated=False):
        if not (self._triton and x.is_cuda):
            return super().apply_add_residual(layer, x, residual, gated)
        return self.kernels.gemv_add_residual(
            x, layer.weight, layer.bias, residual, gated, scale=layer.weight_scale
        )
