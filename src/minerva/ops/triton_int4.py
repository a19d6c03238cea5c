"""Linear layers over 4-bit weights in groups of 128 (quant/int4.py), in Triton: the codes stay
packed in memory and are widened in registers, group by group.

A row's group g of 128 values is 64 bytes: byte i holds code i in its low nibble and code 64 + i
in its high nibble, so the two halves of a group multiply two contiguous runs of x. A value is
scale * code + offset (scale and offset float16, one pair per group), so a group's product is
scale * dot(codes, x) + offset * sum(x): the codes (0..15) enter the dot as they are.
- `gemv`: one token, the bf16 GEMV's structure (ops/triton_gemv.py) with its fused input and
  epilogue: RMSNorm applied while loading x, SiLU * mul on x, residual added to the output; the
  values are widened as ops/triton_quant.py's qgemv widens GGUF codes (scale * code + offset,
  elementwise into one accumulator);
- `gemm`: several tokens, each group's codes widened to x's dtype (exact) and multiplied on the
  tensor cores (tl.dot), the group's scale and offset applied to the float32 partial.
Imports triton: load only on CUDA (tests run it on the CPU through TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minerva.ops import pdl as _pdl
from minerva.ops.triton_gemv import load_x, norm_rstd, store_rows
from minerva.ops.triton_quant import _codes_f32

GROUP = 128
HALF = tl.constexpr(64)  # values per nibble half of a group


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, s_ptr, o_ptr, b_ptr, out_ptr, N, K, stride_wn, stride_sn,
    part_in_ptr, num_part_in, norm_w_ptr, eps, res_ptr, part_out_ptr,
    HAS_BIAS: tl.constexpr, NORM_IN: tl.constexpr, GATED_IN: tl.constexpr,
    RES_OUT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
    BLOCK_P: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    g = tl.arange(0, BLOCK_G)
    i = tl.arange(0, HALF)
    if USE_PDL:  # see ops/pdl.py
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    rstd = 0.0
    if NORM_IN:  # x is a residual stream whose sum of squares its producer left in partials
        rstd = norm_rstd(part_in_ptr, num_part_in, K, eps, BLOCK_P)
    w_rows = w_ptr + rows.to(tl.int64)[:, None, None] * stride_wn
    s_rows = rows.to(tl.int64)[:, None] * stride_sn
    # one elementwise accumulator, summed once at the end: a reduction per group (the dot of
    # each group, then its scale) costs shuffles in every iteration of a weight stream
    acc = tl.zeros([BLOCK_N, BLOCK_G, HALF], tl.float32)
    zero_rows = tl.zeros([BLOCK_N], tl.int32)
    num_groups = K // (2 * HALF)
    for g0 in range(0, num_groups, BLOCK_G):
        gi = g0 + g  # [BLOCK_G] group indices
        g_ok = gi < num_groups
        b = tl.load(w_rows + (gi[:, None] * HALF + i[None, :])[None],
                    mask=row_ok[:, None, None] & g_ok[None, :, None], other=0)  # fmt: skip
        # x in the weight tile's own layout (the same element for every row), as qgemv
        kl = gi[None, :, None] * (2 * HALF) + i[None, None, :] + zero_rows[:, None, None]
        x_lo = load_x(x_ptr, kl, K, rstd, norm_w_ptr, NORM_IN, GATED_IN)
        x_hi = load_x(x_ptr, kl + HALF, K, rstd, norm_w_ptr, NORM_IN, GATED_IN)
        m2 = row_ok[:, None] & g_ok[None, :]
        s = tl.load(s_ptr + s_rows + gi[None, :], mask=m2, other=0.0).to(tl.float32)[:, :, None]
        o = tl.load(o_ptr + s_rows + gi[None, :], mask=m2, other=0.0).to(tl.float32)[:, :, None]
        acc += (_codes_f32(b & 15, 0.0) * s + o) * x_lo + (_codes_f32(b >> 4, 0.0) * s + o) * x_hi
    y = tl.sum(tl.sum(acc, axis=2), axis=1)
    store_rows(y, pid, rows, row_ok, b_ptr, out_ptr, res_ptr, part_out_ptr, HAS_BIAS, RES_OUT)


def gemv_config(n: int, k: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_G groups per slice, num_warps, num_stages): 4 rows x 1024 values per
    slice, the bytes of the bf16 GEMV's 4 x 256. Not yet tuned on a GPU."""
    return 4, 8, 4, 3


@triton.jit
def _gemm_kernel(
    x_ptr, w_ptr, s_ptr, o_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_sn,
    stride_ym, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    i = tl.arange(0, HALF)
    m_ok = rm < M
    n_ok = rn < N
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * stride_wn
    s_rows = rn.to(tl.int64) * stride_sn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for gi in range(0, K // (2 * HALF)):
        k = i + gi * (2 * HALF)
        x_lo = tl.load(x_rows + k[None, :], mask=m_ok[:, None], other=0.0)  # [BM, 64]
        x_hi = tl.load(x_rows + (k + HALF)[None, :], mask=m_ok[:, None], other=0.0)
        b = tl.load(w_rows + (i + gi * HALF)[None, :], mask=n_ok[:, None], other=0)  # [BN, 64]
        lo = (b & 15).to(x_lo.dtype)
        hi = (b >> 4).to(x_lo.dtype)
        q = tl.dot(x_lo, tl.trans(lo))
        q = tl.dot(x_hi, tl.trans(hi), q)  # [BM, BN]: dot(codes, x), exact codes
        sx = tl.sum(x_lo.to(tl.float32), axis=1) + tl.sum(x_hi.to(tl.float32), axis=1)
        s = tl.load(s_ptr + s_rows + gi, mask=n_ok, other=0.0).to(tl.float32)
        o = tl.load(o_ptr + s_rows + gi, mask=n_ok, other=0.0).to(tl.float32)
        acc += q * s[None, :] + sx[:, None] * o[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + rm.to(tl.int64)[:, None] * stride_ym + rn[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def gemm_config(m: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages): thin for concurrent decode, square for
    prefill. Not yet tuned on a GPU."""
    if m <= 16:
        return 16, 64, 4, 4
    if m <= 64:
        return 64, 64, 4, 4
    return 128, 128, 8, 3


def gemm(
    x: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [M, K] (bf16 / fp16) @ W.T (+ bias) -> [M, N] in x's dtype, for W [N, K] stored as
    packed codes uint8 [N, K / 2] with scale and offset float16 [N, K / 128]."""
    m, k = x.shape
    n = codes.shape[0]
    if x.stride(1) != 1:
        x = x.contiguous()
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    block_m, block_n, num_warps, num_stages = gemm_config(m)
    _gemm_kernel[(triton.cdiv(m, block_m), triton.cdiv(n, block_n))](
        x, codes, scale, offset, bias if bias is not None else scale, y, m, n, k,
        x.stride(0), codes.stride(0), scale.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return y


def gemv(x, codes, scale, offset, bias=None, pdl=False) -> torch.Tensor:
    """x [1, K] @ W.T (+ bias) -> [1, N] in x's dtype (W as in `gemm`), float32 accumulation."""
    return _launch(x, codes, scale, offset, bias, pdl=pdl)


def gemv_add_residual(x, codes, scale, offset, bias, residual, gated=False, pdl=False):
    """(residual + x @ W.T (+ bias), per-program partial sums of its squares), as
    ops/triton_gemv.gemv_add_residual; gated: x is [gate | up], the input silu(gate) * up."""
    block_n = gemv_config(*codes.shape)[0]
    partials = torch.empty(triton.cdiv(codes.shape[0], block_n), dtype=torch.float32,
                           device=x.device)  # fmt: skip
    out = _launch(x, codes, scale, offset, bias, residual=residual, partials_out=partials,
                  gated=gated, pdl=pdl)  # fmt: skip
    return out, partials


def gemv_rms_norm(h, partials, norm_weight, eps, codes, scale, offset, bias=None, pdl=False):
    """RMSNorm(h) * norm_weight @ W.T (+ bias), as ops/triton_gemv.gemv_rms_norm."""
    return _launch(h, codes, scale, offset, bias, norm=(partials, norm_weight, eps), pdl=pdl)


def _launch(x, codes, scale, offset, bias, residual=None, partials_out=None, norm=None,
            gated=False, pdl=False):  # fmt: skip
    n = codes.shape[0]
    k = codes.shape[1] * 2
    x = x.reshape(-1)
    if not x.is_contiguous():
        x = x.contiguous()
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    block_n, block_g, num_warps, num_stages = gemv_config(n, k)
    part_in, norm_w, eps = norm if norm is not None else (out, out, 0.0)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, codes, scale, offset, bias if bias is not None else scale, out, n, k,
        codes.stride(0), scale.stride(0), part_in, part_in.numel(), norm_w, eps,
        residual.contiguous() if residual is not None else out,
        partials_out if partials_out is not None else out,
        HAS_BIAS=bias is not None, NORM_IN=norm is not None, GATED_IN=gated,
        RES_OUT=residual is not None, BLOCK_N=block_n, BLOCK_G=block_g, BLOCK_P=1024,
        USE_PDL=pdl, num_warps=num_warps, num_stages=num_stages, **_pdl.launch_kwargs(pdl),
    )  # fmt: skip
    return out
