"""Batch-1 linear layers (matrix-vector products) in Triton, for decode on CUDA.

At one token per step a linear layer is a stream of its weight through the SMs: the speed is
the fraction of memory bandwidth the kernel reaches. Each program owns BLOCK_N output rows and
walks K in BLOCK_K slices, keeping a [BLOCK_N, BLOCK_K] fp32 partial product in registers and
reducing it once at the end; the loop is software-pipelined (num_stages), so several slices
are in flight per SM. Imports triton: load only on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, N, K, stride_wn,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * stride_wn
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        k_ok = k < K
        x = tl.load(x_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
        w = tl.load(w_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        acc += w.to(tl.float32) * x[None, :]
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=row_ok)


def gemv_config(n: int, k: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) for an [n, k] weight: 4 rows x 1024 columns on
    8 warps (2 or 3 stages) won 6 of the 10 Mistral-7B / TinyLlama weights in the H100 sweep of
    benchmarks/gemv_bench.py (benchmarks/results/gemv_bench_h100.json)."""
    return 4, 1024, 8, 3


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """x [1, K] @ weight[N, K].T (+ bias) -> [1, N] in x's dtype, fp32 accumulation."""
    n, k = weight.shape
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    x = x.reshape(-1)
    if not x.is_contiguous():
        x = x.contiguous()
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    block_n, block_k, num_warps, num_stages = config or gemv_config(n, k)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight, bias if bias is not None else weight, out, n, k, weight.stride(0),
        HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out
