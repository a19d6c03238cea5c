"""The one-token GGUF GEMV with 8-bit activations, for CUDA: integer dot products of 4 bytes at
a time (`dp4a`), as llama.cpp's CUDA backend does it.

Decoding each weight to a float costs about ten instructions per value (ops/triton_quant.py),
which makes a 4-bit GEMV compute-bound on an H100. Here x is first quantized to int8 in blocks
of 32 with one float32 scale each (`quantize_x`: the RMSNorm or SiLU * mul of the batch-1 path
applied on the way), and the weight codes stay integers: a 32-bit word of Q4_K nibbles becomes
two words of four 4-bit codes with one AND (and a shift), and one `dp4a` multiplies and adds four
codes with four int8 activations. Scales apply once per sub-block: with x ~ dx * xq,
    sum_i (d * sc * q_i - dmin * m) * x_i = d * sc * dx * sum_i q_i xq_i - dmin * m * dx * sum xq.
The activations' rounding is llama.cpp's (q8_1) and the CPU kernels' (ops/quant_act.h). The
float kernel stays the twin, and serves float32 models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from minerva.ops import pdl as _pdl
from minerva.ops.triton_gemv import load_x, norm_rstd, store_rows
from minerva.ops.triton_quant import SPAN

LOW4 = tl.constexpr(0x0F0F0F0F)  # the low nibble of each of four bytes
# Triton's interpreter runs no inline PTX: there dp4a is four byte products (tests on the CPU)
_INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def _dp4a(a, b):
    """Per 32-bit lane: the sum of the products of a's and b's four signed bytes."""
    if _INTERPRET:
        return (
            ((a << 24) >> 24) * ((b << 24) >> 24)
            + ((a << 16) >> 24) * ((b << 16) >> 24)
            + ((a << 8) >> 24) * ((b << 8) >> 24)
            + (a >> 24) * (b >> 24)
        )
    return tl.inline_asm_elementwise(
        "dp4a.s32.s32 $0, $1, $2, 0;", "=r,r,r", [a, b], dtype=tl.int32, is_pure=True, pack=1
    )


@triton.jit
def _quant_x_kernel(
    x_ptr, part_in_ptr, num_part_in, norm_w_ptr, eps, xq_ptr, dx_ptr, sx_ptr, K,
    NORM_IN: tl.constexpr, GATED_IN: tl.constexpr, BLOCK: tl.constexpr, BLOCK_P: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    """x (normalised or gated) -> int8 codes, a scale per 32 values, dx * sum(codes) per 16."""
    if USE_PDL:  # see ops/pdl.py
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    rstd = 0.0
    if NORM_IN:
        rstd = norm_rstd(part_in_ptr, num_part_in, K, eps, BLOCK_P)
    _quant_span(x_ptr, rstd, norm_w_ptr, xq_ptr, dx_ptr, sx_ptr, K, tl.program_id(0) * BLOCK,
                NORM_IN, GATED_IN, BLOCK)  # fmt: skip


@triton.jit
def _quant_span(x_ptr, rstd, norm_w_ptr, xq_ptr, dx_ptr, sx_ptr, K, start,
                NORM_IN: tl.constexpr, GATED_IN: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """Values [start, start + BLOCK) of x's 8-bit form (start a multiple of BLOCK)."""
    offs = start + tl.arange(0, BLOCK)
    x = tl.reshape(load_x(x_ptr, offs, K, rstd, norm_w_ptr, NORM_IN, GATED_IN), [BLOCK // 32, 32])
    d = tl.max(tl.abs(x), axis=1) / 127.0
    inv = tl.where(d > 0, 1.0 / d, 0.0)
    if _INTERPRET:  # no libdevice there: halves round up instead of to even
        q = tl.floor(x * inv[:, None] + 0.5)
    else:
        q = tl.extra.cuda.libdevice.rint(x * inv[:, None])
    blocks = start // 32 + tl.arange(0, BLOCK // 32)
    ok = blocks * 32 < K
    tl.store(dx_ptr + blocks, d, mask=ok)
    q16 = tl.sum(tl.reshape(q, [BLOCK // 16, 16]), axis=1)
    d16 = tl.reshape(tl.broadcast_to(d[:, None], [BLOCK // 32, 2]), [BLOCK // 16])
    halves = start // 16 + tl.arange(0, BLOCK // 16)
    tl.store(sx_ptr + halves, q16 * d16, mask=halves * 16 < K)
    tl.store(xq_ptr + offs, tl.reshape(q, [BLOCK]).to(tl.int8), mask=offs < K)


@triton.jit
def _dot_tile(w32_ptr, w8_ptr, w16_ptr, roff, row_ok, zero3, xq32_ptr, dx_ptr, sx_ptr, k0, K,
              QT: tl.constexpr, C: tl.constexpr):  # fmt: skip
    """This tile's part of the rows' dot products, float32 [BN, C]. roff: the rows' byte
    offsets; zero3: int32 zeros [BN, 1, 1] (x words are loaded at the weight words' shape)."""
    c = tl.arange(0, C)
    ro32 = (roff // 4)[:, None, None]
    ro16 = (roff // 2)[:, None]
    ro8 = roff[:, None]
    if QT == 8:  # Q8_0: 8 words of int8 codes per 32 values
        j = tl.arange(0, 8)
        widx = k0 // 4 + c[:, None] * 8 + j[None, :]  # [C, 8] word index in the row and in x
        cok = k0 + c * 32 < K
        m3 = row_ok[:, None, None] & cok[None, :, None]
        w = tl.load(w32_ptr + ro32 + widx[None], mask=m3, other=0)
        xw = tl.load(xq32_ptr + widx[None] + zero3, mask=cok[None, :, None], other=0)
        isum = tl.sum(_dp4a(w, xw), axis=2)
        blk = k0 // 32 + c
        m2 = row_ok[:, None] & cok[None, :]
        d = tl.load(w16_ptr + ro16 + K // 2 + blk[None, :], mask=m2, other=0.0).to(tl.float32)
        dx = tl.load(dx_ptr + blk, mask=cok, other=0.0)
        return isum.to(tl.float32) * d * dx[None, :]
    elif QT == 2:  # Q4_0: 4 words per 32 values (low nibbles: values 0-15, high: 16-31)
        j = tl.arange(0, 4)
        cok = k0 + c * 32 < K
        m3 = row_ok[:, None, None] & cok[None, :, None]
        w = tl.load(
            w32_ptr + ro32 + (k0 // 8 + c[:, None] * 4 + j[None, :])[None], mask=m3, other=0
        )
        xi = k0 // 4 + c[:, None] * 8 + j[None, :]
        xlo = tl.load(xq32_ptr + xi[None] + zero3, mask=cok[None, :, None], other=0)
        xhi = tl.load(xq32_ptr + xi[None] + 4 + zero3, mask=cok[None, :, None], other=0)
        isum = tl.sum(_dp4a(w & LOW4, xlo) + _dp4a((w >> 4) & LOW4, xhi), axis=2)
        blk = k0 // 32 + c
        m2 = row_ok[:, None] & cok[None, :]
        d = tl.load(w16_ptr + ro16 + K // 4 + blk[None, :], mask=m2, other=0.0).to(tl.float32)
        dx = tl.load(dx_ptr + blk, mask=cok, other=0.0)
        sx = tl.load(sx_ptr + 2 * blk, mask=cok, other=0.0) + tl.load(
            sx_ptr + 2 * blk + 1, mask=cok, other=0.0
        )
        return d * (isum.to(tl.float32) * dx[None, :] - 8.0 * sx[None, :])
    elif QT == 14:  # Q6_K: halves of 128 in 8 units u = 2t + s of 16 values (quarter t, half s)
        j = tl.arange(0, 4)[None, None, :]
        u = tl.arange(0, 8)[None, :, None]
        t = u // 2
        h = k0 // 128 + c
        h3 = h[:, None, None]
        cok = h * 128 < K
        m4 = row_ok[:, None, None, None] & cok[None, :, None, None]
        m3 = row_ok[:, None, None] & cok[None, :, None]
        r4 = ro32[:, :, :, None]
        # quarter t's low 4 bits: ql bytes (t % 2) * 32 + l, low nibbles for t < 2, else high
        ql = tl.load(r4 + (h3 * 16 + (t % 2) * 8 + 4 * (u % 2) + j)[None] + w32_ptr, mask=m4,
                     other=0)  # fmt: skip
        qh = tl.load(r4 + (K // 8 + h3 * 8 + 4 * (u % 2) + j)[None] + w32_ptr, mask=m4, other=0)
        q = ((ql >> ((t // 2) * 4)[None]) & LOW4) | (((qh >> (2 * t)[None]) & 0x03030303) << 4)
        xi = k0 // 4 + c[:, None, None] * 32 + 4 * u + j
        xw = tl.load(xq32_ptr + xi[None] + zero3[:, :, :, None], mask=cok[None, :, None, None],
                     other=0)  # fmt: skip
        isum = tl.sum(_dp4a(q, xw), axis=3).to(tl.float32)  # [BN, C, 8]
        u2 = tl.arange(0, 8)[None, :]
        sc = tl.load(w8_ptr + ro8[:, :, None] + (K // 2 + K // 4 + h[:, None] * 8 + u2)[None],
                     mask=m3, other=0).to(tl.int8, bitcast=True).to(tl.float32)  # fmt: skip
        dx = tl.load(dx_ptr + h[:, None] * 4 + u2 // 2, mask=cok[:, None], other=0.0)
        sx = tl.load(sx_ptr + h[:, None] * 8 + u2, mask=cok[:, None], other=0.0)
        out = tl.sum(sc * (isum * dx[None] - 32.0 * sx[None]), axis=2)
        d = tl.load(w16_ptr + ro16 + (13 * K // 32 + h // 2)[None, :],
                    mask=row_ok[:, None] & cok[None, :], other=0.0)  # fmt: skip
        return d.to(tl.float32) * out
    else:  # Q4_K / Q5_K: chunks of 64, 8 words; low nibbles sub-block 2ch, high 2ch + 1
        j = tl.arange(0, 8)
        ch = k0 // 64 + c
        cok = ch * 64 < K
        m3 = row_ok[:, None, None] & cok[None, :, None]
        m2 = row_ok[:, None] & cok[None, :]
        w = tl.load(w32_ptr + ro32 + (ch[:, None] * 8 + j[None, :])[None], mask=m3, other=0)
        lo = w & LOW4
        hi = (w >> 4) & LOW4
        if QT == 13:
            qh = tl.load(w32_ptr + ro32 + (K // 8 + (ch // 4)[:, None] * 8 + j[None, :])[None],
                         mask=m3, other=0)  # fmt: skip
            bit = (2 * (ch % 4))[None, :, None]
            lo = lo | (((qh >> bit) & 0x01010101) << 4)
            hi = hi | (((qh >> (bit + 1)) & 0x01010101) << 4)
            sc_off = K // 2 + K // 8
        else:
            sc_off = K // 2
        xi = ch[:, None] * 16 + j[None, :]
        xlo = tl.load(xq32_ptr + xi[None] + zero3, mask=cok[None, :, None], other=0)
        xhi = tl.load(xq32_ptr + xi[None] + 8 + zero3, mask=cok[None, :, None], other=0)
        ilo = tl.sum(_dp4a(lo, xlo), axis=2).to(tl.float32)
        ihi = tl.sum(_dp4a(hi, xhi), axis=2).to(tl.float32)
        sub = ch * 2
        sc_lo = tl.load(w8_ptr + ro8 + (sc_off + sub)[None, :], mask=m2, other=0).to(tl.float32)
        sc_hi = tl.load(w8_ptr + ro8 + (sc_off + sub + 1)[None, :], mask=m2, other=0).to(tl.float32)
        mn_lo = tl.load(w8_ptr + ro8 + (sc_off + K // 32 + sub)[None, :], mask=m2, other=0).to(
            tl.float32
        )
        mn_hi = tl.load(w8_ptr + ro8 + (sc_off + K // 32 + sub + 1)[None, :], mask=m2, other=0).to(
            tl.float32
        )
        dd = (sc_off + K // 16) // 2 + (ch // 4) * 2
        d = tl.load(w16_ptr + ro16 + dd[None, :], mask=m2, other=0.0).to(tl.float32)
        dmin = tl.load(w16_ptr + ro16 + dd[None, :] + 1, mask=m2, other=0.0).to(tl.float32)
        dx_lo = tl.load(dx_ptr + sub, mask=cok, other=0.0)[None, :]
        dx_hi = tl.load(dx_ptr + sub + 1, mask=cok, other=0.0)[None, :]
        sx_lo = tl.load(sx_ptr + 2 * sub, mask=cok, other=0.0) + tl.load(
            sx_ptr + 2 * sub + 1, mask=cok, other=0.0
        )
        sx_hi = tl.load(sx_ptr + 2 * sub + 2, mask=cok, other=0.0) + tl.load(
            sx_ptr + 2 * sub + 3, mask=cok, other=0.0
        )
        return d * (sc_lo * dx_lo * ilo + sc_hi * dx_hi * ihi) - dmin * (
            mn_lo * sx_lo[None, :] + mn_hi * sx_hi[None, :]
        )  # fmt: skip


@triton.jit
def _fence_gpu(x):
    """Every thread holding x: its earlier stores visible GPU-wide (fence.acq_rel.gpu)."""
    return tl.inline_asm_elementwise(
        "fence.acq_rel.gpu;\n mov.b32 $0, $1;", "=r,r", [x], dtype=tl.int32, is_pure=False,
        pack=1,
    )  # fmt: skip


@triton.jit
def _qgemv_int8_kernel(
    xq32_ptr, dx_ptr, sx_ptr, w32_ptr, w8_ptr, w16_ptr, b_ptr, out_ptr, N, K, stride_w,
    res_ptr, part_out_ptr,
    count_ptr, qnorm_w_ptr, qeps, qxq_ptr, qdx_ptr, qsx_ptr,
    QT: tl.constexpr, C: tl.constexpr, HAS_BIAS: tl.constexpr, RES_OUT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_PDL: tl.constexpr,
    QUANT_OUT: tl.constexpr, Q_NORM: tl.constexpr, Q_GATED: tl.constexpr,
    THREADS: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    roff = rows.to(tl.int64) * stride_w
    zero3 = tl.zeros([BLOCK_N, 1, 1], tl.int32)
    if USE_PDL:  # see ops/pdl.py
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    acc = tl.zeros([BLOCK_N, C], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        acc += _dot_tile(w32_ptr, w8_ptr, w16_ptr, roff, row_ok, zero3, xq32_ptr, dx_ptr,
                         sx_ptr, k0, K, QT, C)  # fmt: skip
    y = tl.sum(acc, axis=1)
    store_rows(y, pid, rows, row_ok, b_ptr, out_ptr, res_ptr, part_out_ptr, HAS_BIAS, RES_OUT)
    if QUANT_OUT:  # the last program to finish quantizes the output for the next layer
        if not _INTERPRET:  # (the interpreter runs the programs one after another)
            _fence_gpu(tl.arange(0, THREADS))
            tl.debug_barrier()
        done = tl.atomic_add(count_ptr, 1, sem="acq_rel")
        if done == tl.num_programs(0) - 1:
            kq = N // 2 if Q_GATED else N
            rstd = 0.0
            if Q_NORM:
                rstd = norm_rstd(part_out_ptr, tl.num_programs(0), kq, qeps, 1024)
            for start in range(0, kq, 1024):
                _quant_span(out_ptr, rstd, qnorm_w_ptr, qxq_ptr, qdx_ptr, qsx_ptr, kq, start,
                            Q_NORM, Q_GATED, 1024)  # fmt: skip
            tl.atomic_xchg(count_ptr, 0)  # ready for the next launch


# ---- launchers ------------------------------------------------------------------------------

QuantX = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""x quantized: (int8 codes [K], float32 scales [K/32], float32 dx * sum of codes [K/16])."""


def quantize_x(
    x: torch.Tensor,
    k: int,
    norm: tuple[torch.Tensor, torch.Tensor, float] | None = None,
    gated: bool = False,
    pdl: bool = False,
) -> QuantX:
    """x [1, k] (or [1, 2k] gated: silu(gate) * up) -> its 8-bit form; with norm = (partials,
    norm_weight, eps), RMSNorm(x) * norm_weight is quantized."""
    x = x.reshape(-1).contiguous()
    xq = torch.empty(k, dtype=torch.int8, device=x.device)
    dx = torch.empty(k // 32, dtype=torch.float32, device=x.device)
    sx = torch.empty(k // 16, dtype=torch.float32, device=x.device)
    part_in, norm_w, eps = norm if norm is not None else (dx, x, 0.0)
    block = 1024
    _quant_x_kernel[(triton.cdiv(k, block),)](
        x, part_in, part_in.numel(), norm_w, eps, xq, dx, sx, k,
        NORM_IN=norm is not None, GATED_IN=gated, BLOCK=block, BLOCK_P=1024, USE_PDL=pdl,
        num_warps=4, **_pdl.launch_kwargs(pdl),
    )  # fmt: skip
    return xq, dx, sx


def gemv_config(ggml_type: int, n: int, k: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages): the best or within 3% of the best of the H100
    sweep for the Mistral-7B weights (benchmarks/results/gpu_quant_kernels_h100.json, gemv8)."""
    if ggml_type == 14 and k <= n:  # Q6_K qkv / gate_up: more rows per program
        return (8 if n < 16384 else 4), 2048, 4, 2
    if ggml_type in (12, 13, 14):  # Q4_K, Q5_K, Q6_K
        return 2, 2048, 2, 2
    return 4, max(SPAN[ggml_type], 1024), 4, 2


def qgemv_int8(
    xq: QuantX,
    planes: torch.Tensor,
    ggml_type: int,
    bias: torch.Tensor | None = None,
    *,
    out: torch.Tensor,
    residual: torch.Tensor | None = None,
    config: tuple[int, int, int, int] | None = None,
    pdl: bool = False,
    quant_out: QuantOut | None = None,
) -> torch.Tensor | None:
    """out [1, N] = x @ W.T (+ bias) (+ residual) for x quantized by `quantize_x`; returns the
    partial sums of squares of the new residual stream when `residual` is given. quant_out: the
    kernel also leaves the next layer's 8-bit input in quant_out.xq, what `quantize_x` would make
    of out (with quant_out.norm: RMSNorm(out) * weight, out being the residual stream; gated:
    silu(gate) * up of out = [gate | up]), saving that launch."""
    codes, dx, sx = xq
    n, k = planes.shape[0], codes.numel()
    block_n, block_k, num_warps, num_stages = config or gemv_config(ggml_type, n, k)
    grid = triton.cdiv(n, block_n)
    partials = None
    if residual is not None:
        partials = torch.empty(grid, dtype=torch.float32, device=planes.device)
    q = quant_out
    if q is not None:
        _check_quant_out(q, out, n, residual is not None)
    qnorm_w, qeps = q.norm if q is not None and q.norm is not None else (dx, 0.0)
    _qgemv_int8_kernel[(grid,)](
        codes.view(torch.int32), dx, sx, planes.view(torch.int32), planes,
        planes.view(torch.float16), bias if bias is not None else dx, out, n, k,
        planes.stride(0),
        residual.contiguous() if residual is not None else dx,
        partials if partials is not None else dx,
        q.count if q is not None else dx, qnorm_w, qeps,
        *(q.xq if q is not None else (dx, dx, dx)),
        QT=int(ggml_type), C=block_k // SPAN[ggml_type], HAS_BIAS=bias is not None,
        RES_OUT=residual is not None, BLOCK_N=block_n, BLOCK_K=block_k, USE_PDL=pdl,
        QUANT_OUT=q is not None, Q_NORM=q is not None and q.norm is not None,
        Q_GATED=q is not None and q.gated, THREADS=32 * num_warps,
        num_warps=num_warps, num_stages=num_stages, **_pdl.launch_kwargs(pdl),
    )  # fmt: skip
    return partials


@dataclass
class QuantOut:
    """What a GEMV quantizes of its own output for the next layer (`qgemv_int8(quant_out=)`):
    norm = (weight, eps) of the RMSNorm applied to it (the output is then the residual stream),
    or gated (the output is [gate | up]); xq receives the 8-bit form; count: an int32 zero
    the kernel's programs count themselves on (left at zero)."""

    xq: QuantX
    count: torch.Tensor
    norm: tuple[torch.Tensor, float] | None = None
    gated: bool = False


def quant_out_buffers(k: int, device: torch.device) -> QuantX:
    """Empty (codes, scales, sums) for an x of k values."""
    return (
        torch.empty(k, dtype=torch.int8, device=device),
        torch.empty(k // 32, dtype=torch.float32, device=device),
        torch.empty(k // 16, dtype=torch.float32, device=device),
    )


def _check_quant_out(q: QuantOut, out: torch.Tensor, n: int, res_out: bool) -> None:
    if (q.norm is not None) == q.gated or (q.norm is not None and not res_out):
        raise ValueError("quant_out: a norm of the residual stream out, or gated")
    if not out.is_contiguous() or out.numel() != n:
        raise ValueError("quant_out needs the whole output in one contiguous tensor")
    kq = n // 2 if q.gated else n
    if q.xq[0].numel() != kq or kq % 32:
        raise ValueError(f"quant_out buffers for {q.xq[0].numel()} values, the output gives {kq}")
