"""Linear layers over 4-bit weights in groups of 128 (quant/int4.py), in Triton: the codes stay
packed in memory and are widened in registers, group by group.

A row's group g of 128 values is 64 bytes: byte i holds code i in its low nibble and code 64 + i
in its high nibble, so the two halves of a group multiply two contiguous runs of x. A value is
scale * code + offset (scale and offset float16, one pair per group), so a group's product is
scale * dot(codes, x) + offset * sum(x): the codes (0..15) enter the dot as they are.
- `gemv`: one token, with the batch-1 path's fusions (RMSNorm and SiLU * mul applied to x,
  residual added to the output). By default x is quantized to 8 bits per block of 32 first
  (ops/triton_qgemv_int8.quantize_x, which applies the norm or SiLU * mul) and the codes meet it in
  `dp4a` integer dot products, as the GGUF GEMV does: a group's product is then
  scale * sum_b dx_b * dot(codes_b, xq_b) + offset * sum(x), about one instruction per value
  where widening each code to a float takes five, which made the float kernel compute-bound.
  `int8_x=False` runs the float kernel (x in bf16, the bf16 GEMV's structure of
  ops/triton_gemv.py with its fused input and epilogue), the dp4a kernel's twin;
- `gemm`: several tokens, each group's codes widened to x's dtype (exact) and multiplied on the
  tensor cores (tl.dot), the group's scale and offset applied to the float32 partial;
- `dequantize`: the weight in x's dtype, for many tokens (prefill), where decoding it once into
  a scratch buffer and running cuBLAS beats decoding every tile in the GEMM.
Imports triton: load only on CUDA (tests run it on the CPU through TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minerva.ops import pdl as _pdl
from minerva.ops.triton_gemv import load_x, norm_rstd, store_rows
from minerva.ops.triton_qgemv_int8 import LOW4, QuantX, _dp4a, quantize_x
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


@triton.jit
def _gemv_dp4a_kernel(
    xq32_ptr, dx_ptr, sx_ptr, w32_ptr, s_ptr, o_ptr, b_ptr, out_ptr, N, K, stride_w32,
    stride_sn, res_ptr, part_out_ptr, HAS_BIAS: tl.constexpr, RES_OUT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """x quantized by quantize_x (int8 codes read as 32-bit words, a scale dx per 32 values,
    dx * sum(codes) per 16). A group's 64 bytes are 16 words: word 8h + j holds (low nibbles)
    values 32h + 4j .. + 3 and (high nibbles) 64 + 32h + 4j .. + 3, x's words 32g + 8h + j and
    32g + 16 + 8h + j; four x blocks of 32 per group, two per nibble half."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    g = tl.arange(0, BLOCK_G)
    h = tl.arange(0, 2)
    j = tl.arange(0, 8)
    zero4 = tl.zeros([BLOCK_N, 1, 1, 1], tl.int32)
    w_rows = w32_ptr + rows.to(tl.int64)[:, None, None, None] * stride_w32
    s_rows = rows.to(tl.int64)[:, None] * stride_sn
    if USE_PDL:  # see ops/pdl.py
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    acc = tl.zeros([BLOCK_N, BLOCK_G], tl.float32)
    num_groups = K // (2 * HALF)
    for g0 in range(0, num_groups, BLOCK_G):
        gi = g0 + g
        g_ok = gi < num_groups
        word = gi[:, None, None] * 16 + h[None, :, None] * 8 + j[None, None, :]  # [BG, 2, 8]
        w = tl.load(w_rows + word[None], mask=row_ok[:, None, None, None] & g_ok[None, :, None, None],
                    other=0)  # fmt: skip
        xi = gi[:, None, None] * 32 + h[None, :, None] * 8 + j[None, None, :]
        x_ok = g_ok[None, :, None, None]
        x_lo = tl.load(xq32_ptr + xi[None] + zero4, mask=x_ok, other=0)
        x_hi = tl.load(xq32_ptr + xi[None] + 16 + zero4, mask=x_ok, other=0)
        i_lo = tl.sum(_dp4a(w & LOW4, x_lo), axis=3).to(tl.float32)  # [BN, BG, 2]
        i_hi = tl.sum(_dp4a((w >> 4) & LOW4, x_hi), axis=3).to(tl.float32)
        blk = gi[:, None] * 4 + h[None, :]  # [BG, 2]: x blocks of the low halves
        d_lo = tl.load(dx_ptr + blk, mask=g_ok[:, None], other=0.0)
        d_hi = tl.load(dx_ptr + blk + 2, mask=g_ok[:, None], other=0.0)
        dot = tl.sum(i_lo * d_lo[None] + i_hi * d_hi[None], axis=2)  # [BN, BG]
        e = tl.arange(0, 8)
        sx = tl.sum(tl.load(sx_ptr + gi[:, None] * 8 + e[None, :], mask=g_ok[:, None], other=0.0),
                    axis=1)  # fmt: skip
        m2 = row_ok[:, None] & g_ok[None, :]
        s = tl.load(s_ptr + s_rows + gi[None, :], mask=m2, other=0.0).to(tl.float32)
        o = tl.load(o_ptr + s_rows + gi[None, :], mask=m2, other=0.0).to(tl.float32)
        acc += s * dot + o * sx[None, :]
    y = tl.sum(acc, axis=1)
    store_rows(y, pid, rows, row_ok, b_ptr, out_ptr, res_ptr, part_out_ptr, HAS_BIAS, RES_OUT)


def gemv_dp4a_config(n: int, k: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_G, num_warps, num_stages): the GGUF Q4_K dp4a GEMV's tuned shape
    (2 rows x 2048 values per slice, 2 warps); benchmarks/int4_sweep.py sweeps it."""
    return 2, 16, 2, 2


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


@triton.jit
def _dequant_kernel(w_ptr, s_ptr, o_ptr, out_ptr, N, K, stride_wn, stride_sn, stride_on,
                    BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    gi = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    i = tl.arange(0, HALF)
    m2 = (rows < N)[:, None] & (gi < K // (2 * HALF))[None, :]
    m3 = m2[:, :, None]
    r64 = rows.to(tl.int64)
    b = tl.load(w_ptr + r64[:, None, None] * stride_wn + (gi[:, None] * HALF + i[None, :])[None],
                mask=m3, other=0)  # fmt: skip
    s = tl.load(s_ptr + r64[:, None] * stride_sn + gi[None, :], mask=m2, other=0.0)
    o = tl.load(o_ptr + r64[:, None] * stride_sn + gi[None, :], mask=m2, other=0.0)
    s = s.to(tl.float32)[:, :, None]
    o = o.to(tl.float32)[:, :, None]
    dst = out_ptr + r64[:, None, None] * stride_on + (gi[:, None] * (2 * HALF) + i[None, :])[None]
    ty = out_ptr.dtype.element_ty
    tl.store(dst, (_codes_f32(b & 15, 0.0) * s + o).to(ty), mask=m3)
    tl.store(dst + HALF, (_codes_f32(b >> 4, 0.0) * s + o).to(ty), mask=m3)


def dequantize(codes, scale, offset, dtype: torch.dtype) -> torch.Tensor:
    """W [N, K] in dtype (scale * code + offset rounded once, as quant/int4.dequantize_rows)."""
    n, k = codes.shape[0], codes.shape[1] * 2
    out = torch.empty(n, k, dtype=dtype, device=codes.device)
    block_n, block_g = 16, 4
    grid = (triton.cdiv(n, block_n), triton.cdiv(k // GROUP, block_g))
    _dequant_kernel[grid](
        codes, scale, offset, out, n, k, codes.stride(0), scale.stride(0), out.stride(0),
        BLOCK_N=block_n, BLOCK_G=block_g, num_warps=4,
    )  # fmt: skip
    return out


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


INT8_X = True
"""One token quantizes x to 8 bits and runs the dp4a kernel (False: the float kernel)."""


def gemv(x, codes, scale, offset, bias=None, pdl=False, int8_x=None) -> torch.Tensor:
    """x [1, K] @ W.T (+ bias) -> [1, N] in x's dtype (W as in `gemm`), float32 accumulation."""
    return _one_token(x, codes, scale, offset, bias, pdl=pdl, int8_x=int8_x)


def gemv_add_residual(x, codes, scale, offset, bias, residual, gated=False, pdl=False,
                      int8_x=None):  # fmt: skip
    """(residual + x @ W.T (+ bias), per-program partial sums of its squares), as
    ops/triton_gemv.gemv_add_residual; gated: x is [gate | up], the input silu(gate) * up."""
    n, k = codes.shape[0], codes.shape[1] * 2
    block_n = (gemv_dp4a_config if _int8_x(int8_x) else gemv_config)(n, k)[0]
    partials = torch.empty(triton.cdiv(n, block_n), dtype=torch.float32, device=x.device)
    out = _one_token(x, codes, scale, offset, bias, residual=residual, partials_out=partials,
                     gated=gated, pdl=pdl, int8_x=int8_x)  # fmt: skip
    return out, partials


def gemv_rms_norm(h, partials, norm_weight, eps, codes, scale, offset, bias=None, pdl=False,
                  int8_x=None):  # fmt: skip
    """RMSNorm(h) * norm_weight @ W.T (+ bias), as ops/triton_gemv.gemv_rms_norm."""
    return _one_token(h, codes, scale, offset, bias, norm=(partials, norm_weight, eps), pdl=pdl,
                      int8_x=int8_x)  # fmt: skip


def _int8_x(int8_x: bool | None) -> bool:
    return INT8_X if int8_x is None else int8_x


def _one_token(x, codes, scale, offset, bias, residual=None, partials_out=None, norm=None,
               gated=False, pdl=False, int8_x=None):  # fmt: skip
    """The one-token product with its fusions: x's 8-bit form (the norm or SiLU * mul applied
    while quantizing) through the dp4a kernel, or the float kernel that applies them itself."""
    if not _int8_x(int8_x):
        return _launch(x, codes, scale, offset, bias, residual=residual,
                       partials_out=partials_out, norm=norm, gated=gated, pdl=pdl)  # fmt: skip
    xq = quantize_x(x, codes.shape[1] * 2, norm=norm, gated=gated, pdl=pdl)
    return _launch_dp4a(xq, codes, scale, offset, bias, x.dtype, residual=residual,
                        partials_out=partials_out, pdl=pdl)  # fmt: skip


def _launch_dp4a(xq: QuantX, codes, scale, offset, bias, dtype, residual=None,
                 partials_out=None, pdl=False):  # fmt: skip
    xcodes, dx, sx = xq
    n, k = codes.shape[0], codes.shape[1] * 2
    out = torch.empty(1, n, dtype=dtype, device=codes.device)
    block_n, block_g, num_warps, num_stages = gemv_dp4a_config(n, k)
    _gemv_dp4a_kernel[(triton.cdiv(n, block_n),)](
        xcodes.view(torch.int32), dx, sx, codes.view(torch.int32), scale, offset,
        bias if bias is not None else scale, out, n, k, codes.stride(0) // 4, scale.stride(0),
        residual.contiguous() if residual is not None else out,
        partials_out if partials_out is not None else out,
        HAS_BIAS=bias is not None, RES_OUT=residual is not None, BLOCK_N=block_n,
        BLOCK_G=block_g, USE_PDL=pdl, num_warps=num_warps, num_stages=num_stages,
        **_pdl.launch_kwargs(pdl),
    )  # fmt: skip
    return out


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
