"""x quantized to fp8 e4m3 per row for the fp8 tensor-core product (quant/fp8.py), one kernel.

The torch twin (quant/fp8.quantize_x) takes six passes over a float32 copy of x; for a 512-token
prefill of a 7B model that is a few milliseconds per step, more than the fp8 GEMMs save. Here
one program per row reads its bf16 row twice (the largest magnitude, then the codes; the second
read hits L2) and writes the codes and the row's scale. Rows past x's own, up to the padded
count the GEMM takes, are written as zeros with scale 1. The arithmetic is the twin's
(float32 x / scale, clamped, rounded to nearest even), so the codes are the same bytes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8_MAX = tl.constexpr(448.0)
TINY = tl.constexpr(1e-12)


@triton.jit
def _quantize_rows_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_x, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    live = row < M
    x_row = x_ptr + row.to(tl.int64) * stride_x
    q_row = q_ptr + row.to(tl.int64) * K
    amax = tl.zeros([BLOCK], tl.float32)
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        x = tl.load(x_row + offs, mask=(offs < K) & live, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.maximum(tl.max(amax, axis=0) / FP8_MAX, TINY)
    scale = tl.where(live, scale, 1.0)
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        x = tl.load(x_row + offs, mask=(offs < K) & live, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(x / scale, -FP8_MAX), FP8_MAX)
        tl.store(q_row + offs, q.to(tl.float8e4nv), mask=offs < K)
    tl.store(s_ptr + row, scale)


def quantize_rows(x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (bf16 / fp16 / f32, CUDA, unit stride along K) -> (fp8 codes [rows, K], float32
    scales [rows, 1]) with rows >= M: x ~ codes * scales row by row; rows past M are zeros."""
    m, k = x.shape
    codes = torch.empty(rows, k, dtype=torch.float8_e4m3fn, device=x.device)
    scales = torch.empty(rows, 1, dtype=torch.float32, device=x.device)
    block = min(2048, triton.next_power_of_2(k))
    _quantize_rows_kernel[(rows,)](x, codes, scales, m, k, x.stride(0), BLOCK=block, num_warps=4)
    return codes, scales
