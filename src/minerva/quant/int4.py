"""4-bit weights in groups of 128 values along each row, asymmetric (`--quantization int4`,
also `w4a16`): a quarter of bf16's bytes plus a float16 scale and offset per group (4.25 bits
per weight), quantized while a float checkpoint loads. Weight-only for several tokens
(activations stay in bf16); one token quantizes x to 8 bits per block of 32 on the way into its
GEMV, as the GGUF path and llama.cpp do (ops/triton_int4.py says why).

Each group maps a range [lo, hi] onto the codes 0..15: scale = (hi - lo) / 15, offset = lo,
code = round((w - offset) / scale) against the float16-rounded pair, values outside the range
clamped (an all-equal group has scale 0 and decodes to its value rounded to float16). The range
is the group's [min, max] narrowed about its centre by the factor, of CLIP_STEPS from 1 down to
CLIP_MIN, whose decoded group is nearest the original in squared error: a few outliers then no
longer stretch the step of the other 120-odd values (min-max itself is the first candidate, so
the search never does worse). A group's 128 codes are 64
bytes: byte i holds code i (low nibble) and code 64 + i (high nibble), the layout the Triton
kernels read (ops/triton_int4.py); one token runs their GEMV with the batch-1 fusions (RMSNorm
in, SiLU * mul in, residual out), several tokens their tensor-core GEMM. The output head, the
layer most sensitive to rounding, gets int8 rows instead (Int4QuantConfig). Elsewhere the twin
decodes the weight and multiplies (correct, slow): on the CPU q4_k_m is the 4-bit choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minerva.errors import ConfigError, ModelLoadError
from minerva.ops.kernels import KernelSet
from minerva.quant.base import (
    LinearMethod,
    QuantConfig,
    create_bias,
    shape_mismatch,
    shard_destination,
)
from minerva.quant.int8 import Int8LinearMethod

GROUP = 128
# Rows of x above which a CUDA product decodes the weight into a bf16 scratch buffer and runs
# cuBLAS instead of the fused GEMM, which reads the 4-bit codes but decodes them again for
# every tile of rows: the GGUF path's rule (quant/gguf_matmul.py), whose fused GEMM measured
# slower than the scratch beyond 16 rows on the narrower weights; an H100 / H200 run of
# benchmarks/gpu_quant_bench.py at int4 tells whether it holds here.
DEQUANT_ROWS = 16
CLIP_STEPS = 16
CLIP_MIN = 0.7


def _encode(g: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Groups g [N, G, 128] on the ranges [lo, hi] [N, G] -> (codes float [N, G, 128], scale
    and offset float16 [N, G]); rounding against the stored (float16) pair, so decoding meets
    the nearest code."""
    offset = lo.half()
    scale = ((hi - lo) / 15).half()
    s, o = scale.float()[..., None], offset.float()[..., None]
    codes = torch.where(s > 0, torch.round((g - o) / torch.where(s > 0, s, 1.0)), 0.0)
    return codes.clamp(0, 15), scale, offset


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [N, K] float (K a multiple of 128) -> (packed codes uint8 [N, K / 2], scale float16
    [N, K / 128], offset float16 [N, K / 128]); the clipping search of the module docstring."""
    n, k = w.shape
    g = w.float().reshape(n, k // GROUP, GROUP)
    lo, hi = g.amin(dim=2), g.amax(dim=2)
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    best = None
    for factor in torch.linspace(1.0, CLIP_MIN, CLIP_STEPS).tolist():
        codes, scale, offset = _encode(g, centre - radius * factor, centre + radius * factor)
        decoded = codes * scale.float()[..., None] + offset.float()[..., None]
        err = (decoded - g).square().sum(dim=2)  # [N, G]
        if best is None:
            best = [err, codes, scale, offset]
            continue
        better = err < best[0]
        best[0] = torch.where(better, err, best[0])
        best[1] = torch.where(better[..., None], codes, best[1])
        best[2] = torch.where(better, scale, best[2])
        best[3] = torch.where(better, offset, best[3])
    _, codes, scale, offset = best
    codes = codes.to(torch.uint8)
    packed = codes[..., : GROUP // 2] | (codes[..., GROUP // 2 :] << 4)
    return packed.reshape(n, k // 2), scale, offset


def dequantize_rows(packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor):
    """The twin's weight: float32 [N, K]."""
    n = packed.shape[0]
    b = packed.reshape(n, -1, GROUP // 2)
    codes = torch.cat([b & 15, b >> 4], dim=2).float()  # [N, groups, 128]
    w = codes * scale.float()[..., None] + offset.float()[..., None]
    return w.reshape(n, -1)


class Int4LinearMethod(LinearMethod):
    name = "int4"

    def __init__(self, kernels: KernelSet | None = None) -> None:
        self.kernels = kernels

    def create_weights(self, layer, in_features, output_sizes, bias, params_dtype) -> None:
        if in_features % GROUP:
            raise ConfigError(
                f"quantization=int4 needs layers whose input width is a multiple of {GROUP} "
                f"(this model has one of {in_features}): use int8 or q4_0"
            )
        out = sum(output_sizes)
        groups = in_features // GROUP
        layer.weight = nn.Parameter(torch.empty(out, in_features // 2, dtype=torch.uint8), False)
        # buffers: no checkpoint tensor fills them (loading the weight does)
        layer.register_buffer("weight_scale", torch.empty(out, groups, dtype=torch.float16))
        layer.register_buffer("weight_offset", torch.empty(out, groups, dtype=torch.float16))
        create_bias(layer, out, bias, params_dtype)

    def load_weight(self, layer, param, tensor, shard_id) -> None:
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise ModelLoadError("is not a float tensor: int4 quantizes float checkpoints only")
        if param is not layer.weight:  # the bias stays in the model's dtype
            shard_destination(layer, param, tensor, shard_id).copy_(tensor)
            return
        start, size = layer.shard_rows(shard_id) if shard_id is not None else (0, len(param))
        want = (size, param.shape[1] * 2)
        if tuple(tensor.shape) != want:
            raise shape_mismatch(tensor.shape, want)
        packed, scale, offset = quantize_rows(tensor.to(param.device))
        param.data.narrow(0, start, size).copy_(packed)
        layer.weight_scale.narrow(0, start, size).copy_(scale)
        layer.weight_offset.narrow(0, start, size).copy_(offset)

    def weight_bytes(self, layer: nn.Module) -> int:
        extra = (layer.weight_scale.numel() + layer.weight_offset.numel()) * 2
        return super().weight_bytes(layer) + extra

    @property
    def _triton(self) -> bool:
        return self.kernels is not None and self.kernels.gemv_rms_norm is not None

    def _on_gpu(self, x: torch.Tensor) -> bool:
        return self._triton and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16)

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        w, s, o, b = layer.weight, layer.weight_scale, layer.weight_offset, layer.bias
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if self._on_gpu(x2):
            from minerva.ops import triton_int4  # noqa: PLC0415 - CUDA only

            if x2.shape[0] == 1:
                y = triton_int4.gemv(x2, w, s, o, b, pdl=self.kernels.pdl)
            elif x2.shape[0] > DEQUANT_ROWS:
                y = F.linear(x2, triton_int4.dequantize(w, s, o, x2.dtype), b)
            else:
                y = triton_int4.gemm(x2, w, s, o, b)
        else:  # the twin
            dtype = torch.float32 if x2.is_cpu else x2.dtype
            y = x2.to(dtype) @ dequantize_rows(w, s, o).to(dtype).T
            if b is not None:
                y = y + b.to(dtype)
        return y.to(x.dtype).reshape(*lead, w.shape[0])

    def apply_norm_in(self, layer, h, partials, norm_weight, eps) -> torch.Tensor:
        if not self._on_gpu(h):
            return super().apply_norm_in(layer, h, partials, norm_weight, eps)
        from minerva.ops import triton_int4  # noqa: PLC0415 - CUDA only

        return triton_int4.gemv_rms_norm(
            h, partials, norm_weight, eps, layer.weight, layer.weight_scale,
            layer.weight_offset, layer.bias, pdl=self.kernels.pdl,
        )  # fmt: skip

    def apply_add_residual(self, layer, x, residual, gated=False):
        if not self._on_gpu(x):
            return super().apply_add_residual(layer, x, residual, gated)
        from minerva.ops import triton_int4  # noqa: PLC0415 - CUDA only

        return triton_int4.gemv_add_residual(
            x, layer.weight, layer.weight_scale, layer.weight_offset, layer.bias, residual,
            gated, pdl=self.kernels.pdl,
        )  # fmt: skip


class Int4QuantConfig(QuantConfig):
    """int4 groups for every linear layer but the output head, which gets int8 rows."""

    name = "int4"

    def __init__(self, kernels: KernelSet | None = None) -> None:
        self.int4 = Int4LinearMethod(kernels)
        self.head = Int8LinearMethod(kernels)

    def get_method(self, prefix: str) -> LinearMethod:
        return self.head if prefix.endswith("lm_head") else self.int4
