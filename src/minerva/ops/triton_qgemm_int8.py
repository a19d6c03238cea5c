"""Several tokens times a GGUF weight on the int8 tensor cores, for CUDA (concurrent decode and
prefill): x quantized to int8 per row in blocks of 32 (llama.cpp's q8_1 rounding), the weight's
codes widened to int8 in registers, and one int8 `tl.dot` per 32 values with the scales applied
to its int32 result:
    sum_i (s_w * q_i - m_w) * x_i = s_w * dx * sum_i q_i xq_i - m_w * dx * sum_i xq_i
(s_w, m_w: the weight sub-block's scale and min; dx: x block's scale). Decoding the weight to
floats costs about ten instructions per value and is repeated for every tile of rows
(ops/triton_quant.py `qgemm`), and decoding it once into a bf16 scratch buffer costs two passes
over twice the model's bytes per step; here a value costs about one integer instruction and the
products run at int8 tensor-core rate. Codes with a fixed offset (Q4_0: q - 8, Q6_K: q - 32) are
shifted in registers, so only the K types' mins need the sums of x.

Plane layouts as quant/gguf_planes.py writes them; K a whole number of the type's blocks.
Imports triton: load only on CUDA (or under TRITON_INTERPRET=1, where the tests run it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minerva.ops import pdl as _pdl

Q4_0, Q8_0, Q4_K, Q5_K, Q6_K = 2, 8, 12, 13, 14
TYPES = frozenset({Q4_0, Q8_0, Q4_K, Q5_K, Q6_K})
_STEP = {Q4_0: 32, Q8_0: 32, Q4_K: 64, Q5_K: 64, Q6_K: 128}
"""K values per loop step: one block (Q4_0, Q8_0), a 64-value chunk of two sub-blocks (Q4_K,
Q5_K), a half of 128 values in four quarters (Q6_K)."""


@triton.jit
def _round_away(v):
    """roundf: halves away from zero (llama.cpp's quantize_row_q8_1)."""
    return tl.where(v >= 0, tl.floor(v + 0.5), -tl.floor(0.5 - v))


@triton.jit
def _quant_rows_kernel(x_ptr, xq_ptr, dx_ptr, sx_ptr, K, stride_x, BLOCK: tl.constexpr):
    """Row program_id(1) of x, BLOCK values at a time -> int8 codes, a scale per 32 values,
    and dx * sum(codes) per 32."""
    row = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < K
    x = tl.load(x_ptr + row * stride_x + offs, mask=ok, other=0.0).to(tl.float32)
    x = tl.reshape(x, [BLOCK // 32, 32])
    d = tl.max(tl.abs(x), axis=1) / 127.0
    inv = tl.where(d > 0, 1.0 / d, 0.0)
    q = _round_away(x * inv[:, None])
    blocks = tl.program_id(0) * (BLOCK // 32) + tl.arange(0, BLOCK // 32)
    bok = blocks * 32 < K
    tl.store(dx_ptr + row * (K // 32) + blocks, d, mask=bok)
    tl.store(sx_ptr + row * (K // 32) + blocks, tl.sum(q, axis=1) * d, mask=bok)
    tl.store(xq_ptr + row * K + offs, tl.reshape(q, [BLOCK]).to(tl.int8), mask=ok)


@triton.jit
def _x_block(xq_ptr, dx_ptr, sx_ptr, xrow, srow, m_ok, k, j):
    """x's int8 codes [BM, 32] at K offset k, their scales [BM] and scaled sums [BM]."""
    xq = tl.load(xq_ptr + xrow[:, None] + k + j[None, :], mask=m_ok[:, None], other=0)
    dx = tl.load(dx_ptr + srow + k // 32, mask=m_ok, other=0.0)
    sx = tl.load(sx_ptr + srow + k // 32, mask=m_ok, other=0.0)
    return xq, dx, sx


@triton.jit
def _idot(xq, wq):
    """int8 [BM, 32] . int8 [BN, 32] -> float32 [BM, BN] (exact: |sum| < 2^24)."""
    return tl.dot(xq, tl.trans(wq), out_dtype=tl.int32).to(tl.float32)


@triton.jit
def _qgemm_int8_kernel(
    xq_ptr, dx_ptr, sx_ptr, w_ptr, w16_ptr, b_ptr, out_ptr, M, N, K, stride_w, stride_om,
    QT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    STEP: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    row_ok = rows < N
    ro = rows.to(tl.int64)[:, None] * stride_w  # [BN, 1] byte offsets of the weight rows
    ro1 = rows.to(tl.int64) * stride_w  # [BN]
    xrow = rm.to(tl.int64) * K
    srow = rm.to(tl.int64) * (K // 32)
    j = tl.arange(0, 32)
    wmask = row_ok[:, None]
    if USE_PDL:  # see ops/pdl.py
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, STEP):
        if QT == 8:  # Q8_0: int8 codes | d f16 [K/32]
            wq = tl.load(w_ptr + ro + k0 + j[None, :], mask=wmask, other=0).to(
                tl.int8, bitcast=True
            )
            d = tl.load(w16_ptr + ro1 // 2 + K // 2 + k0 // 32, mask=row_ok, other=0.0)
            xq, dx, _ = _x_block(xq_ptr, dx_ptr, sx_ptr, xrow, srow, m_ok, k0, j)
            acc += _idot(xq, wq) * dx[:, None] * d.to(tl.float32)[None, :]
        elif QT == 2:  # Q4_0: 16 bytes per 32 values (low nibbles 0-15, high 16-31) | d f16
            b = tl.load(w_ptr + ro + k0 // 2 + (j % 16)[None, :], mask=wmask, other=0)
            q = tl.where(j[None, :] < 16, b & 15, b >> 4).to(tl.int8) - 8
            d = tl.load(w16_ptr + ro1 // 2 + K // 4 + k0 // 32, mask=row_ok, other=0.0)
            xq, dx, _ = _x_block(xq_ptr, dx_ptr, sx_ptr, xrow, srow, m_ok, k0, j)
            acc += _idot(xq, q) * dx[:, None] * d.to(tl.float32)[None, :]
        elif QT == 14:  # Q6_K: ql [K/2] | qh [K/4] | sc int8 [K/16] | d f16 [K/256]
            h = k0 // 128
            qh = tl.load(w_ptr + ro + K // 2 + h * 32 + j[None, :], mask=wmask, other=0)
            d = tl.load(w16_ptr + ro1 // 2 + 13 * K // 32 + h // 2, mask=row_ok, other=0.0)
            d = d.to(tl.float32)
            for t in tl.static_range(4):  # quarter t: values 32t..32t+31 of the half
                ql = tl.load(w_ptr + ro + h * 64 + (t % 2) * 32 + j[None, :], mask=wmask, other=0)
                q = ((ql >> (4 * (t // 2))) & 15) | (((qh >> (2 * t)) & 3) << 4)
                q = q.to(tl.int8) - 32
                sc = w_ptr + ro1 + K // 2 + K // 4 + h * 8 + 2 * t
                sc0 = tl.load(sc, mask=row_ok, other=0).to(tl.int8, bitcast=True).to(tl.float32)
                sc1 = tl.load(sc + 1, mask=row_ok, other=0).to(tl.int8, bitcast=True)
                xq, dx, _ = _x_block(xq_ptr, dx_ptr, sx_ptr, xrow, srow, m_ok, k0 + 32 * t, j)
                first = j[None, :] < 16  # the two 16-value sub-blocks have their own scales
                lo = _idot(tl.where(first, xq, 0).to(tl.int8), q)
                hi = _idot(tl.where(first, 0, xq).to(tl.int8), q)
                part = lo * sc0[None, :] + hi * sc1.to(tl.float32)[None, :]
                acc += part * dx[:, None] * d[None, :]
        else:  # Q4_K / Q5_K: a chunk of 64 = 32 bytes (low nibbles: sub-block 2c, high: 2c + 1)
            ch = k0 // 64
            b = tl.load(w_ptr + ro + ch * 32 + j[None, :], mask=wmask, other=0)
            lo = b & 15
            hi = b >> 4
            if QT == 13:  # qh [K/8]: bit 2 (ch % 4) (+1) of byte j in group ch // 4
                qh = tl.load(w_ptr + ro + K // 2 + (ch // 4) * 32 + j[None, :], mask=wmask, other=0)
                lo = lo | (((qh >> (2 * (ch % 4))) & 1) << 4)
                hi = hi | (((qh >> (2 * (ch % 4) + 1)) & 1) << 4)
                sc_off = K // 2 + K // 8
            else:
                sc_off = K // 2
            dd = w16_ptr + ro1 // 2 + (sc_off + K // 16) // 2 + (ch // 4) * 2
            d = tl.load(dd, mask=row_ok, other=0.0).to(tl.float32)
            dmin = tl.load(dd + 1, mask=row_ok, other=0.0).to(tl.float32)
            for g in tl.static_range(2):
                sub = 2 * ch + g
                sc = tl.load(w_ptr + ro1 + sc_off + sub, mask=row_ok, other=0).to(tl.float32)
                mn = tl.load(w_ptr + ro1 + sc_off + K // 32 + sub, mask=row_ok, other=0)
                xq, dx, sx = _x_block(xq_ptr, dx_ptr, sx_ptr, xrow, srow, m_ok, k0 + 32 * g, j)
                if g == 0:
                    q = lo.to(tl.int8)
                else:
                    q = hi.to(tl.int8)
                acc += _idot(xq, q) * dx[:, None] * (d * sc)[None, :]
                acc -= sx[:, None] * (dmin * mn.to(tl.float32))[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rm.to(tl.int64)[:, None] * stride_om + rows[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & row_ok[None, :])


# ---- launchers ------------------------------------------------------------------------------

QuantRows = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""x [M, K] quantized: (int8 codes [M, K], float32 scales [M, K/32], dx * sum(codes) [M, K/32])."""


def quantize_rows(x: torch.Tensor) -> QuantRows:
    """x [M, K] (K a multiple of 32) -> its 8-bit form, block by block of 32 values."""
    m, k = x.shape
    xq = torch.empty(m, k, dtype=torch.int8, device=x.device)
    dx = torch.empty(m, k // 32, dtype=torch.float32, device=x.device)
    sx = torch.empty(m, k // 32, dtype=torch.float32, device=x.device)
    if x.stride(1) != 1:
        x = x.contiguous()
    block = 512
    _quant_rows_kernel[(triton.cdiv(k, block), m)](x, xq, dx, sx, k, x.stride(0), BLOCK=block)
    return xq, dx, sx


def gemm_config(ggml_type: int, m: int, n: int, k: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages)."""
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    return block_m, 128, 4, 3


def qgemm_int8(
    x: torch.Tensor,
    planes: torch.Tensor,
    ggml_type: int,
    bias: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    config: tuple[int, int, int, int] | None = None,
    pdl: bool = False,
    xq: QuantRows | None = None,
) -> torch.Tensor:
    """x [M, K] @ W.T (+ bias) -> [M, N] in x's dtype (into `out`, rows may be strided), for W
    in planes uint8 [N, plane row bytes]; `xq`: x already quantized by quantize_rows."""
    m, k = x.shape
    n = planes.shape[0]
    codes, dx, sx = xq if xq is not None else quantize_rows(x)
    block_m, block_n, num_warps, num_stages = config or gemm_config(ggml_type, m, n, k)
    if out is None:
        out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    _qgemm_int8_kernel[grid](
        codes, dx, sx, planes, planes.view(torch.float16), bias if bias is not None else dx,
        out, m, n, k, planes.stride(0), out.stride(0),
        QT=int(ggml_type), HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n,
        STEP=_STEP[int(ggml_type)], USE_PDL=pdl,
        num_warps=num_warps, num_stages=num_stages, **_pdl.launch_kwargs(pdl),
    )  # fmt: skip
    return out
