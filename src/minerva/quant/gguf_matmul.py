"""y = x @ W^T for W in GGUF blocks: the C kernels (ops/cpu_quant.c on the file's layout,
ops/cpu_quant_x8.c on the interleaved one), the Triton kernels on CUDA (ops/triton_quant.py on
the plane layout of quant/gguf_planes.py), else the torch twin that dequantizes a tile of rows
at a time and multiplies (any device)."""

from __future__ import annotations

import torch

from minerva.ops import cpu_quant, cpu_quant_x8
from minerva.quant.gguf_dequant import dequantize
from minerva.quant.gguf_types import GGMLType

# Most rows of x the C kernel takes: it beat the dequantize + matmul twin at every row count
# measured, 1-128 (benchmarks/results/cpu_quant_kernels.json), so it takes them all.
KERNEL_MAX_ROWS = 1 << 30
# Rows of x above which the CUDA path decodes the weight into a scratch buffer and runs cuBLAS
# instead of the fused dequantizing GEMM; up to WIDE_FUSED_ROWS rows the fused GEMM keeps
# weights of at least WIDE_FUSED_N rows, whose tiles fill the GPU (H100 sweep, Mistral-7B
# weights at 64 tokens: gate_up fused 2x faster than the scratch, down and the narrow ones slower;
# benchmarks/results/gpu_quant_kernels_h100_batch.json).
PREFILL_DEQUANT_ROWS = 16
WIDE_FUSED_ROWS, WIDE_FUSED_N = 64, 16384
# Rows of x up to which bf16 / fp16 products on CUDA quantize x to int8 and run the int8 tensor
# cores (ops/triton_qgemm_int8.py) when 8-bit activations are on (quant/gguf.py). 0: off, it
# measured 1.3-3x slower than the float paths at 64 and 512 tokens on an H100 (one int8 dot per
# 32 values; gpu_quant_kernels_h100_int8.json).
INT8_GEMM_MAX_ROWS = 0
TILE_ELEMENTS = 1 << 19  # weight values the torch twin dequantizes at a time (cache-sized)


def gguf_matmul(
    x: torch.Tensor,
    data: torch.Tensor,
    ggml_type: GGMLType,
    rows: int,
    layout: str = "file",
    pdl: bool = False,
    int8: bool = False,
) -> torch.Tensor:
    """x [T, K] @ W^T for W in GGUF blocks (uint8 [rows, bytes per row] in `layout`: "file",
    "x8" or "planes") -> [T, rows]: a C kernel on the CPU, a Triton kernel on CUDA, else the
    torch twin. int8: x may be quantized to 8 bits per block of 32 (several rows, CUDA)."""
    if layout == "planes":
        from minerva.ops import triton_quant  # noqa: PLC0415 - needs triton (CUDA only)

        if x.shape[0] == 1:
            return triton_quant.qgemv(x, data, ggml_type, pdl=pdl)[0]
        if int8 and x.shape[0] <= INT8_GEMM_MAX_ROWS and x.dtype != torch.float32:
            from minerva.ops import triton_qgemm_int8  # noqa: PLC0415

            if int(ggml_type) in triton_qgemm_int8.TYPES:
                return triton_qgemm_int8.qgemm_int8(x, data, ggml_type, pdl=pdl)
        m, wide = x.shape[0], rows >= WIDE_FUSED_N
        if m > PREFILL_DEQUANT_ROWS and not (wide and m <= WIDE_FUSED_ROWS):
            # decode once, then the library's GEMM
            w = triton_quant.dequantize(data, ggml_type, x.shape[-1], x.dtype)
            return x @ w.T
        return triton_quant.qgemm(x, data, ggml_type, pdl=pdl)
    if layout == "x8":
        y = None
        if x.shape[0] <= KERNEL_MAX_ROWS:
            y = cpu_quant_x8.matmul(x.float(), data, ggml_type, rows)
        if y is None:  # the twin reads the file's layout
            return dequant_matmul(x, cpu_quant_x8.unpack(data, ggml_type, x.shape[-1]), ggml_type)
        return y
    if x.is_cpu and x.shape[0] <= KERNEL_MAX_ROWS and cpu_quant.has_kernel(ggml_type):
        y = cpu_quant.matmul(x.float(), data, ggml_type, rows)
        if y is not None:
            return y
    return dequant_matmul(x, data, ggml_type)


def dequant_matmul(x: torch.Tensor, data: torch.Tensor, ggml_type: GGMLType) -> torch.Tensor:
    """The torch twin: dequantize W a tile of rows at a time and matmul ([T, rows], float32 on
    the CPU, x's dtype elsewhere)."""
    dtype = torch.float32 if x.is_cpu else x.dtype
    rows, k = data.shape[0], x.shape[-1]
    x = x.to(dtype)
    tile = max(1, TILE_ELEMENTS // k)
    if tile >= rows:
        return x @ dequantize(data, ggml_type).to(dtype).T
    y = torch.empty(x.shape[0], rows, dtype=dtype, device=x.device)
    for r in range(0, rows, tile):
        w = dequantize(data[r : r + tile], ggml_type).to(dtype)  # [tile, K]
        torch.matmul(x, w.T, out=y[:, r : r + w.shape[0]])
    return y
