"""Several tokens through int8 weights with one scale per output row (quant/int8.py), in Triton:
y [M, N] = (x [M, K] @ codes [N, K].T) * scale [N] (+ bias), the codes widened to x's dtype in
registers, tile by tile, and multiplied on the tensor cores (tl.dot, float32 accumulation).

An int8 code is exact in bf16 and fp16 (|code| <= 127 needs 7 bits), so the only roundings
are x's own dtype and the order of the float32 sums: the twin is x @ (codes * scale).T in float32.
The activations stay in their dtype (weight-only quantization): no per-token scale to lose
accuracy to an outlier feature. One token goes through ops/triton_gemv.py instead (its scale
epilogue takes int8 rows as they are).
Imports triton: load only on CUDA (tests run it on the CPU through TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _int8_gemm_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        k_ok = k < K
        x = tl.load(x_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
    y = acc * tl.load(s_ptr + rn, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        y += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + rm.to(tl.int64)[:, None] * stride_ym + rn[None, :]
    tl.store(out, y.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def gemm_config(m: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) by the number of tokens: a thin tile for
    concurrent decode (the weight bytes bound it), a square one for prefill. Not yet tuned on a
    GPU: starting points of the usual Hopper shapes."""
    if m <= 16:
        return 16, 64, 256, 4, 4
    if m <= 64:
        return 64, 64, 128, 4, 4
    return 128, 128, 64, 8, 3


def gemm(
    x: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: tuple[int, int, int, int, int] | None = None,
) -> torch.Tensor:
    """x [M, K] (bf16 / fp16, rows contiguous) @ (codes int8 [N, K] * scale float32 [N]).T
    (+ bias [N]) -> [M, N] in x's dtype."""
    m, k = x.shape
    n = codes.shape[0]
    if x.stride(1) != 1:
        x = x.contiguous()
    if codes.stride(1) != 1:
        codes = codes.contiguous()
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    block_m, block_n, block_k, num_warps, num_stages = config or gemm_config(m)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _int8_gemm_kernel[grid](
        x, codes, scale, bias if bias is not None else scale, y, m, n, k,
        x.stride(0), codes.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return y
