"""Linear layers over GGUF weights in Triton, for CUDA: the weight stays quantized in memory
(the plane layout of quant/gguf_planes.py) and is dequantized in registers, tile by tile.

One helper, `_tile`, decodes a tile of a weight's rows for every type: a group `g` of its
codes as float32 [BLOCK_N, C, W] with the K index of each value [C, W]. A GGUF block mixes
value positions (a Q4_K byte holds values i and i + 32 of a 64-value chunk), so a tile comes out
in groups whose K indices are not contiguous; every kernel loads x at the same indices, and a
dot product does not care about order. Three kernels use it:
- `qgemv`: one token (decode at batch 1), a weight stream like the bf16 GEMV of
  ops/triton_gemv.py, with the same fused epilogues: RMSNorm applied while loading x, SiLU * mul
  on x, residual added to the output (with its sums of squares for the next norm);
- `qgemm`: several tokens, the decoded tile rounded to x's dtype and multiplied on the tensor
  cores (tl.dot) with a [BLOCK_M, BLOCK_K] tile of x; small BLOCK_M for concurrent decode,
  large for prefill;
- `dequantize`: the weight as x's dtype (a prefill scratch buffer, and the check of `_tile`
  against the torch decoder).
Imports triton: load only on CUDA (tests run it on the CPU through TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minerva.ops import pdl as _pdl
from minerva.ops.triton_gemv import load_x, norm_rstd, store_rows

# GGML type ids (quant/gguf_types.py's GGMLType, which this layer does not import)
Q4_0, Q8_0, Q4_K, Q5_K, Q6_K = 2, 8, 12, 13, 14

# type -> (values per chunk (C chunks per tile), values per group row W, groups per chunk)
_GEOMETRY = {
    Q8_0: (32, 32, 1),
    Q4_0: (32, 16, 2),
    Q4_K: (64, 32, 2),
    Q5_K: (64, 32, 2),
    Q6_K: (128, 16, 8),
}
SPAN = {t: span for t, (span, _, _) in _GEOMETRY.items()}
"""Values per chunk: the K granularity of every kernel's tiles (also ops/triton_qgemv_int8.py's)."""


@triton.jit
def _codes_f32(v, offset: tl.constexpr):
    """Small unsigned integer codes (any int type, < 2^23) minus `offset`, as float32, without a
    conversion instruction (a quarter-rate one on Hopper): 2^23 + v has v as its low mantissa
    bits, and subtracting 2^23 + offset is exact."""
    bits = v.to(tl.int32) | 0x4B000000
    return bits.to(tl.float32, bitcast=True) - (8388608.0 + offset)


@triton.jit
def _tile(w_ptr, w16_ptr, roff, roff16, row_ok, k0, K,
          QT: tl.constexpr, g: tl.constexpr, C: tl.constexpr, W: tl.constexpr):  # fmt: skip
    """Group g of the tile at k0: (values float32 [BN, C, W], their K indices [C, W]).
    roff / roff16: the rows' offsets in bytes / in f16 units; row_ok: [BN] mask."""
    c = tl.arange(0, C)
    i = tl.arange(0, W)
    ro = roff[:, None, None]
    if QT == 8:  # Q8_0: chunks of 32 int8 codes, one f16 scale each
        cok = k0 + c * 32 < K
        k = k0 + c[:, None] * 32 + i[None, :]
        m3 = row_ok[:, None, None] & cok[None, :, None]
        q = tl.load(w_ptr + ro + k[None], mask=m3, other=0) ^ 0x80  # int8 + 128
        d = tl.load(w16_ptr + roff16[:, None] + K // 2 + (k0 // 32 + c)[None, :],
                    mask=row_ok[:, None] & cok[None, :], other=0.0)  # fmt: skip
        w = _codes_f32(q, 128.0) * d.to(tl.float32)[:, :, None]
    elif QT == 2:  # Q4_0: 16 bytes per 32 values (low nibble: i, high: i + 16), one scale
        cok = k0 + c * 32 < K
        m3 = row_ok[:, None, None] & cok[None, :, None]
        b = tl.load(w_ptr + ro + (k0 // 2 + c[:, None] * 16 + i[None, :])[None], mask=m3, other=0)
        if g == 0:
            q = b & 15
        else:
            q = b >> 4
        k = k0 + c[:, None] * 32 + g * 16 + i[None, :]
        d = tl.load(w16_ptr + roff16[:, None] + K // 4 + (k0 // 32 + c)[None, :],
                    mask=row_ok[:, None] & cok[None, :], other=0.0)  # fmt: skip
        w = _codes_f32(q, 8.0) * d.to(tl.float32)[:, :, None]
    elif QT == 14:  # Q6_K: halves of 128; group g = quarter g // 2, its sub-block g % 2
        t: tl.constexpr = g // 2
        hh: tl.constexpr = g % 2
        h = k0 // 128 + c  # half index in the row
        cok = h * 128 < K
        m3 = row_ok[:, None, None] & cok[None, :, None]
        ql = tl.load(w_ptr + ro + (h[:, None] * 64 + (t % 2) * 32 + hh * 16 + i[None, :])[None],
                     mask=m3, other=0)  # fmt: skip
        qh = tl.load(w_ptr + ro + (K // 2 + h[:, None] * 32 + hh * 16 + i[None, :])[None],
                     mask=m3, other=0)  # fmt: skip
        if t < 2:
            nib = ql & 15
        else:
            nib = ql >> 4
        q = _codes_f32(nib | (((qh >> (2 * t)) & 3) << 4), 32.0)
        m2 = row_ok[:, None] & cok[None, :]
        sc = tl.load(w_ptr + roff[:, None] + (K // 2 + K // 4 + h * 8 + 2 * t + hh)[None, :],
                     mask=m2, other=0).to(tl.int8, bitcast=True)  # fmt: skip
        d = tl.load(w16_ptr + roff16[:, None] + (13 * K // 32 + h // 2)[None, :], mask=m2,
                    other=0.0)  # fmt: skip
        s = d.to(tl.float32) * sc.to(tl.float32)
        w = q * s[:, :, None]
        k = k0 + c[:, None] * 128 + 32 * t + 16 * hh + i[None, :]
    else:  # Q4_K (12) / Q5_K (13): chunks of 64 (low nibbles: sub-block 2c, high: 2c + 1)
        ch = k0 // 64 + c  # chunk index in the row
        cok = ch * 64 < K
        m3 = row_ok[:, None, None] & cok[None, :, None]
        m2 = row_ok[:, None] & cok[None, :]
        b = tl.load(w_ptr + ro + (ch[:, None] * 32 + i[None, :])[None], mask=m3, other=0)
        if g == 0:
            q = b & 15
        else:
            q = b >> 4
        if QT == 13:
            qh = tl.load(w_ptr + ro + (K // 2 + (ch // 4)[:, None] * 32 + i[None, :])[None],
                         mask=m3, other=0)  # fmt: skip
            q = q | (((qh >> (2 * (ch % 4) + g)[None, :, None]) & 1) << 4)
            sc_off = K // 2 + K // 8
        else:
            sc_off = K // 2
        sub = ch * 2 + g
        sc = tl.load(w_ptr + roff[:, None] + (sc_off + sub)[None, :], mask=m2, other=0)
        mn = tl.load(w_ptr + roff[:, None] + (sc_off + K // 32 + sub)[None, :], mask=m2, other=0)
        dd = (sc_off + K // 16) // 2 + (ch // 4) * 2  # f16 index of (d, dmin)
        d = tl.load(w16_ptr + roff16[:, None] + dd[None, :], mask=m2, other=0.0)
        dmin = tl.load(w16_ptr + roff16[:, None] + dd[None, :] + 1, mask=m2, other=0.0)
        s = d.to(tl.float32) * sc.to(tl.float32)
        ms = dmin.to(tl.float32) * mn.to(tl.float32)
        w = _codes_f32(q, 0.0) * s[:, :, None] - ms[:, :, None]
        k = k0 + c[:, None] * 64 + 32 * g + i[None, :]
    return w, k


@triton.jit
def _tile_natural(w_ptr, w16_ptr, roff, roff16, row_ok, k0, K,
                  QT: tl.constexpr, C: tl.constexpr, W: tl.constexpr,
                  BN: tl.constexpr, BK: tl.constexpr):  # fmt: skip
    """The tile at k0 as float32 [BN, BK] in K order: the groups of `_tile` interleaved back
    (in registers), so a matrix product can take it with a contiguous tile of x."""
    if QT == 8:
        w, _ = _tile(w_ptr, w16_ptr, roff, roff16, row_ok, k0, K, QT, 0, C, W)
    elif QT == 14:  # 8 groups of 16 in K order: group g = 4 * g2 + 2 * g1 + g0
        g0, _ = _tile(w_ptr, w16_ptr, roff, roff16, row_ok, k0, K, QT, 0, C, W)
        g1, _ = _tile(w_ptr, w16_ptr, roff, roff16, row_ok, k0, K, QT, 1, C, W)
        g2, _ = _tile(w_ptr, w16_ptr, roff, roff16, row_ok, k0, K, QT, 2, C, W)
        g3, _ = _tile(w_ptr, w16_ptr, roff, roff16, row_ok, k0, K, QT, 3, C, W)
        g4, _ = _tile(w_ptr, w16_ptr, roff, roff16, row_ok, k0, K, QT, 4, C, W)
        g5, _ = _tile(w_ptr, w16_ptr, roff, roff16, row_ok, k0, K, QT, 5, C, W)
        g6, _ = _tile(w_ptr, w16_ptr, roff, roff16, row_ok, k0, K, QT, 6, C, W)
        g7, _ = _tile(w_ptr, w16_ptr, roff, roff16, row_ok, k0, K, QT, 7, C, W)
        a = tl.join(
            tl.join(tl.join(g0, g1), tl.join(g2, g3)), tl.join(tl.join(g4, g5), tl.join(g6, g7))
        )  # [BN, C, 16, g0, g1, g2]
        w = tl.permute(a, (0, 1, 5, 4, 3, 2))
    else:  # two groups: the low nibbles' values, then the high nibbles'
        lo, _ = _tile(w_ptr, w16_ptr, roff, roff16, row_ok, k0, K, QT, 0, C, W)
        hi, _ = _tile(w_ptr, w16_ptr, roff, roff16, row_ok, k0, K, QT, 1, C, W)
        w = tl.permute(tl.join(lo, hi), (0, 1, 3, 2))
    return tl.reshape(w, [BN, BK])


@triton.jit
def _qgemv_kernel(
    x_ptr, w_ptr, w16_ptr, b_ptr, out_ptr, N, K, stride_w,
    part_in_ptr, num_part_in, norm_w_ptr, eps, res_ptr, part_out_ptr,
    QT: tl.constexpr, C: tl.constexpr, W: tl.constexpr, NG: tl.constexpr,
    HAS_BIAS: tl.constexpr, NORM_IN: tl.constexpr, GATED_IN: tl.constexpr,
    RES_OUT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    roff = rows.to(tl.int64) * stride_w
    roff16 = roff // 2
    if USE_PDL:  # see ops/pdl.py
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    rstd = 0.0
    if NORM_IN:  # x is a residual stream whose sum of squares its producer left in partials
        rstd = norm_rstd(part_in_ptr, num_part_in, K, eps, BLOCK_P)
    acc = tl.zeros([BLOCK_N, C, W], tl.float32)
    zero_rows = tl.zeros([BLOCK_N], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        for g in tl.static_range(NG):
            w, k = _tile(w_ptr, w16_ptr, roff, roff16, row_ok, k0, K, QT, g, C, W)
            # x at the tile's shape (the same element for every row): loaded in the weight
            # tile's own layout, where a [C, W] load would be moved through shared memory
            k3 = k[None, :, :] + zero_rows[:, None, None]
            x = load_x(x_ptr, k3, K, rstd, norm_w_ptr, NORM_IN, GATED_IN)
            acc += w * x
    y = tl.sum(tl.sum(acc, axis=2), axis=1)
    store_rows(y, pid, rows, row_ok, b_ptr, out_ptr, res_ptr, part_out_ptr, HAS_BIAS, RES_OUT)


@triton.jit
def _qgemm_kernel(
    x_ptr, w_ptr, w16_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_w, stride_om,
    QT: tl.constexpr, C: tl.constexpr, W: tl.constexpr, NG: tl.constexpr,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, IEEE: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(0)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    row_ok = rows < N
    roff = rows.to(tl.int64) * stride_w
    roff16 = roff // 2
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    if USE_PDL:  # see ops/pdl.py
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    kb = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        w = _tile_natural(w_ptr, w16_ptr, roff, roff16, row_ok, k0, K, QT, C, W, BLOCK_N, BLOCK_K)
        kk = k0 + kb
        x = tl.load(x_rows + kk[None, :], mask=m_ok[:, None] & (kk < K)[None, :], other=0.0)
        w2 = w.to(x.dtype)
        if IEEE:  # float32 models get float32 products, as torch's matmul gives them
            acc = tl.dot(x, tl.trans(w2), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w2), acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rm.to(tl.int64)[:, None] * stride_om + rows[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & row_ok[None, :])


@triton.jit
def _dequant_kernel(
    w_ptr, w16_ptr, out_ptr, N, K, stride_w, stride_o,
    QT: tl.constexpr, C: tl.constexpr, W: tl.constexpr, NG: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    row_ok = rows < N
    roff = rows.to(tl.int64) * stride_w
    roff16 = roff // 2
    out_rows = out_ptr + rows.to(tl.int64)[:, None, None] * stride_o
    for g in tl.static_range(NG):
        w, k = _tile(w_ptr, w16_ptr, roff, roff16, row_ok, k0, K, QT, g, C, W)
        mask = row_ok[:, None, None] & (k < K)[None, :, :]
        tl.store(out_rows + k[None, :, :], w.to(out_ptr.dtype.element_ty), mask=mask)


# ---- launchers ------------------------------------------------------------------------------


def _geometry(ggml_type: int, block_k: int) -> tuple[int, int, int]:
    """(C, W, NG) of a tile of block_k values."""
    span, width, groups = _GEOMETRY[ggml_type]
    return block_k // span, width, groups


def gemv_config(ggml_type: int, n: int, k: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) of the one-token kernel."""
    return 4, max(SPAN[ggml_type], 1024), 4, 3


def gemm_config(ggml_type: int, m: int, n: int, k: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) of the several-token kernel; above 16
    tokens the best of the H100 sweep at 64 (benchmarks/results/gpu_quant_kernels_h100_batch.json)."""
    if m <= 16:
        return 16, 32, max(SPAN[ggml_type], 256), 4, 3
    if SPAN[ggml_type] > 64:  # Q6_K
        return 64, 64, SPAN[ggml_type], 4, 3
    return 64, 128, 64, 8, 3


def _views(planes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return planes, planes.view(torch.float16)


def qgemv(
    x: torch.Tensor,
    planes: torch.Tensor,
    ggml_type: int,
    bias: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    norm: tuple[torch.Tensor, torch.Tensor, float] | None = None,
    residual: torch.Tensor | None = None,
    gated: bool = False,
    config: tuple[int, int, int, int] | None = None,
    pdl: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x [1, K] (or [1, 2K] gated) @ W.T for W in planes uint8 [N, plane row bytes] ->
    ([1, N] in x's dtype, written into `out` if given; partial sums of squares or None).
    norm = (partials, norm_weight, eps): RMSNorm(x) * norm_weight is the input;
    residual [1, N]: the output is residual + x @ W.T and its partials come back."""
    n = planes.shape[0]
    k = x.shape[-1] // 2 if gated else x.shape[-1]
    block_n, block_k, num_warps, num_stages = config or gemv_config(ggml_type, n, k)
    c, width, groups = _geometry(ggml_type, block_k)
    x = x.reshape(-1).contiguous()
    if out is None:
        out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    grid = triton.cdiv(n, block_n)
    partials = None
    if residual is not None:
        partials = torch.empty(grid, dtype=torch.float32, device=x.device)
    # unused pointers get x, which nothing writes (Triton's interpreter copies every tensor
    # argument back after a launch, so an alias of `out` would overwrite the result there)
    part_in, norm_w, eps = norm if norm is not None else (x, x, 0.0)
    w, w16 = _views(planes)
    _qgemv_kernel[(grid,)](
        x, w, w16, bias if bias is not None else x, out, n, k, planes.stride(0),
        part_in, part_in.numel(), norm_w, eps,
        residual.contiguous() if residual is not None else x,
        partials if partials is not None else x,
        QT=int(ggml_type), C=c, W=width, NG=groups,
        HAS_BIAS=bias is not None, NORM_IN=norm is not None, GATED_IN=gated,
        RES_OUT=residual is not None, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_P=1024,
        USE_PDL=pdl, num_warps=num_warps, num_stages=num_stages, **_pdl.launch_kwargs(pdl),
    )  # fmt: skip
    return out, partials


def qgemm(
    x: torch.Tensor,
    planes: torch.Tensor,
    ggml_type: int,
    bias: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    config: tuple[int, int, int, int, int] | None = None,
    pdl: bool = False,
) -> torch.Tensor:
    """x [M, K] @ W.T (+ bias) -> [M, N] in x's dtype (written into `out`, whose rows may be
    strided, if given): the decoded tiles rounded to x's dtype, tensor-core products."""
    m, k = x.shape
    n = planes.shape[0]
    block_m, block_n, block_k, num_warps, num_stages = config or gemm_config(ggml_type, m, n, k)
    c, width, groups = _geometry(ggml_type, block_k)
    if x.stride(1) != 1:
        x = x.contiguous()
    if out is None:
        out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    w, w16 = _views(planes)
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    _qgemm_kernel[grid](
        x, w, w16, bias if bias is not None else x, out, m, n, k, x.stride(0),
        planes.stride(0), out.stride(0),
        QT=int(ggml_type), C=c, W=width, NG=groups, HAS_BIAS=bias is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, IEEE=x.dtype == torch.float32,
        USE_PDL=pdl,
        num_warps=num_warps, num_stages=num_stages, **_pdl.launch_kwargs(pdl),
    )  # fmt: skip
    return out


def dequantize(
    planes: torch.Tensor, ggml_type: int, cols: int, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """The weight [N, cols] in `dtype`, decoded from its planes."""
    n = planes.shape[0]
    block_n, block_k = 16, max(SPAN[ggml_type], 256)
    c, width, groups = _geometry(ggml_type, block_k)
    out = torch.empty(n, cols, dtype=dtype, device=planes.device)
    w, w16 = _views(planes)
    grid = (triton.cdiv(n, block_n), triton.cdiv(cols, block_k))
    _dequant_kernel[grid](
        w, w16, out, n, cols, planes.stride(0), out.stride(0),
        QT=int(ggml_type), C=c, W=width, NG=groups, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=4,
    )  # fmt: skip
    return out
