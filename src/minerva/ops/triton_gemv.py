"""Batch-1 linear layers (matrix-vector products) in Triton, for decode on CUDA.

At one token per step a linear layer is a stream of its weight through the SMs: the speed is
the fraction of memory bandwidth the kernel reaches. Each program owns BLOCK_N output rows and
walks K in BLOCK_K slices, keeping a [BLOCK_N, BLOCK_K] fp32 partial product in registers and
reducing it once at the end; the loop is software-pipelined (num_stages), so several slices
are in flight per SM. With one token the glue around the linear layers can ride along: `gemv_add_residual` adds
the residual stream in the epilogue and leaves per-program sums of squares, and
`gemv_rms_norm` applies the next RMSNorm while loading its input, so a decoder layer at batch
1 needs no separate add + RMSNorm kernels. Imports triton: load only on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minerva.ops import pdl as _pdl


@triton.jit
def norm_rstd(part_in_ptr, num_part_in, K, eps, BLOCK_P: tl.constexpr):
    """1 / RMS of a residual stream of K values whose sum of squares its producing GEMV left in
    `num_part_in` partials."""
    p = tl.arange(0, BLOCK_P)
    ss = tl.zeros([BLOCK_P], tl.float32)
    for p0 in range(0, num_part_in, BLOCK_P):
        ss += tl.load(part_in_ptr + p0 + p, mask=p0 + p < num_part_in, other=0.0)
    return 1.0 / tl.sqrt(tl.sum(ss, axis=0) / K + eps)


@triton.jit
def load_x(x_ptr, k, K, rstd, norm_w_ptr, NORM_IN: tl.constexpr, GATED_IN: tl.constexpr):
    """x at indices k (any shape; 0 past K) as float32: RMSNorm'd (NORM_IN) or silu(gate) * up
    of an x of 2K values (GATED_IN), with the roundings of the layered ops."""
    k_ok = k < K
    x = tl.load(x_ptr + k, mask=k_ok, other=0.0)
    if NORM_IN:  # RMSNorm with add_rms_norm's roundings: normalise, round, scale, round
        normed = (x.to(tl.float32) * rstd).to(x.dtype)
        x = (tl.load(norm_w_ptr + k, mask=k_ok, other=0.0) * normed).to(x.dtype)
    if GATED_IN:  # silu(gate) * up, rounded like silu_and_mul
        up = tl.load(x_ptr + K + k, mask=k_ok, other=0.0)
        gate = x.to(tl.float32)
        x = (gate / (1.0 + tl.exp(-gate))).to(up.dtype) * up
    return x.to(tl.float32)


@triton.jit
def store_rows(y, pid, rows, row_ok, b_ptr, out_ptr, res_ptr, part_out_ptr,
               HAS_BIAS: tl.constexpr, RES_OUT: tl.constexpr):  # fmt: skip
    """The epilogue of a GEMV program: y (float32 [BLOCK_N]) + bias, rounded to out's dtype; with
    RES_OUT, + residual (the new residual stream) and its sum of squares in part_out[pid]."""
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    y = y.to(out_ptr.dtype.element_ty)
    if RES_OUT:  # round(linear) + residual
        y = y.to(tl.float32) + tl.load(res_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        y = y.to(out_ptr.dtype.element_ty)
        yf = tl.where(row_ok, y.to(tl.float32), 0.0)
        tl.store(part_out_ptr + pid, tl.sum(yf * yf, axis=0))
    tl.store(out_ptr + rows, y, mask=row_ok)


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, N, K, stride_wn,
    part_in_ptr, num_part_in, norm_w_ptr, eps, res_ptr, part_out_ptr,
    scale_ptr,
    HAS_BIAS: tl.constexpr, NORM_IN: tl.constexpr, GATED_IN: tl.constexpr,
    RES_OUT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr, USE_PDL: tl.constexpr, HAS_SCALE: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * stride_wn
    # An L2 prefetch of the weight rows before this wait was slower on the H100 (TinyLlama
    # batch-1 decode 894 vs 925 tok/s in
    # benchmarks/results/decode_variants_tinyllama-1.1b_h100_prefetch.json).
    if USE_PDL:  # see ops/pdl.py
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    rstd = 0.0
    if NORM_IN:  # x is a residual stream whose sum of squares its producer left in partials
        rstd = norm_rstd(part_in_ptr, num_part_in, K, eps, BLOCK_P)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        w = tl.load(w_rows + k[None, :], mask=row_ok[:, None] & (k < K)[None, :], other=0.0)
        x = load_x(x_ptr, k, K, rstd, norm_w_ptr, NORM_IN, GATED_IN)
        acc += w.to(tl.float32) * x[None, :]
    y = tl.sum(acc, axis=1)
    if HAS_SCALE:  # an 8-bit weight's scale per row
        y *= tl.load(scale_ptr + rows, mask=row_ok, other=0.0)
    store_rows(y, pid, rows, row_ok, b_ptr, out_ptr, res_ptr, part_out_ptr, HAS_BIAS, RES_OUT)


def gemv_config(n: int, k: int, itemsize: int = 2) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) for an [n, k] weight: 4 rows x 1024 columns on
    8 warps (2 or 3 stages) won 6 of the 10 Mistral-7B / TinyLlama weights in the H100 sweep of
    benchmarks/gemv_bench.py (benchmarks/results/gemv_bench_h100.json); one-byte (fp8) weights
    take 2048 columns, the same bytes per slice."""
    return 4, 2048 if itemsize == 1 else 1024, 8, 3


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: tuple[int, int, int, int] | None = None,
    pdl: bool = False,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [1, K] @ weight[N, K].T (+ bias) -> [1, N] in x's dtype, fp32 accumulation; `scale`
    (float32 [N]) multiplies each row's product (an fp8 weight's)."""
    return _launch(x, weight, bias, config, pdl=pdl, scale=scale)


def gemv_add_residual(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    gated: bool = False,
    pdl: bool = False,
    scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual + x @ weight.T (+ bias), per-program partial sums of its squares): the new
    residual stream [1, N] and what `gemv_rms_norm` needs to normalise it. gated: x is
    [gate | up] of twice the weight's width and the input is silu(gate) * up (the MLP's down
    projection, with its activation folded in)."""
    n = weight.shape[0]
    block_n = gemv_config(n, weight.shape[1], weight.element_size())[0]
    partials = torch.empty(triton.cdiv(n, block_n), dtype=torch.float32, device=x.device)
    out = _launch(
        x, weight, bias, None, residual=residual, partials_out=partials, gated=gated, pdl=pdl,
        scale=scale,
    )  # fmt: skip
    return out, partials


def gemv_rms_norm(
    h: torch.Tensor,
    partials: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    pdl: bool = False,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """RMSNorm(h) * norm_weight @ weight.T (+ bias), the norm folded into the GEMV's loads;
    h [1, K] and partials (float32, any length: their sum is h's sum of squares) come from
    `gemv_add_residual` or any producer that keeps that contract."""
    return _launch(h, weight, bias, None, norm=(partials, norm_weight, eps), pdl=pdl, scale=scale)


def _launch(
    x, weight, bias, config, residual=None, partials_out=None, norm=None, gated=False, pdl=False,
    scale=None,
):  # fmt: skip
    n, k = weight.shape
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    x = x.reshape(-1)
    if not x.is_contiguous():
        x = x.contiguous()
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    block_n, block_k, num_warps, num_stages = config or gemv_config(n, k, weight.element_size())
    part_in, norm_w, eps = norm if norm is not None else (out, out, 0.0)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight, bias if bias is not None else weight, out, n, k, weight.stride(0),
        part_in, part_in.numel(), norm_w, eps,
        residual.contiguous() if residual is not None else out,
        partials_out if partials_out is not None else out,
        scale if scale is not None else out,
        HAS_BIAS=bias is not None, NORM_IN=norm is not None, GATED_IN=gated,
        RES_OUT=residual is not None, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_P=1024,
        USE_PDL=pdl, HAS_SCALE=scale is not None,
        num_warps=num_warps, num_stages=num_stages, **_pdl.launch_kwargs(pdl),
    )  # fmt: skip
    return out
