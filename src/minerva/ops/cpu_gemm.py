"""Many-row bf16 / fp16 products on the CPU (prefill): fp32 GEMM over weight tiles.

torch has no fast bf16 / fp16 GEMM on CPUs without AVX512_BF16 or AMX, while its fp32 GEMM (MKL)
runs near the FMA peak. Each tile of weight rows, sized to stay in cache, is converted to fp32
once per product and multiplied by all the input rows; the weights stay 16-bit in memory. Sums
run in fp32 and each output is rounded once. cpu_linear.linear sends products of GEMM_MIN_ROWS
rows or more here; the measurements are in benchmarks/results/cpu_gemm.json.

cpu_gemm.c widens the inputs and each weight tile to fp32 and rounds each tile's product, which
comes out [tile rows, input rows], into its columns of the result. torch's copies (the slow
twins, and the fallback where the C code cannot be built) cost tens of microseconds a call at
prefill sizes, and the transposed one several times a contiguous copy.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import torch

from minerva.ops import native

TILE_BYTES = 4 << 20
"""fp32 bytes of one converted weight tile: measured best among 1-8 MiB (cpu_gemm.json)."""
PASS_ROWS = 512
"""Input rows per pass over the weight: bounds the scratch; conversion is ~1% of a pass."""
TILE_ALIGN = 16

_local = threading.local()  # per thread: one fp32 scratch tensor, grown on demand

SOURCE = Path(__file__).with_name("cpu_gemm.c")
_SUFFIX = {torch.bfloat16: "bf16", torch.float16: "f16"}
_store: dict[torch.dtype, object] = {}  # dtype -> ctypes function; empty until load()
_widen: dict[torch.dtype, object] = {}
_store_silu_mul: dict[torch.dtype, object] = {}


def load() -> bool:
    """Build (once per cache key) and bind cpu_gemm.c; False, logged once, when it cannot be
    (the products then round their output through torch)."""
    lib = native.load(SOURCE)
    if lib is not None and not _store:
        for dtype, suffix in _SUFFIX.items():
            if suffix == "f16" and not lib.minerva_gemm_has_f16():
                continue
            p, i64 = ctypes.c_void_p, ctypes.c_int64
            fn = getattr(lib, f"minerva_gemm_store_{suffix}")
            fn.argtypes, fn.restype = [p, i64, i64, p, i64, ctypes.c_int], ctypes.c_int
            _store[dtype] = fn
            fn = getattr(lib, f"minerva_gemm_load_{suffix}")
            fn.argtypes, fn.restype = [p, p, i64, ctypes.c_int], ctypes.c_int
            _widen[dtype] = fn
            fn = getattr(lib, f"minerva_gemm_store_silu_mul_{suffix}")
            fn.argtypes, fn.restype = [p, i64, i64, p, ctypes.c_int], ctypes.c_int
            _store_silu_mul[dtype] = fn
    return lib is not None


def widen(src: torch.Tensor, dst: torch.Tensor) -> None:
    """dst = src in fp32 (exact): both contiguous, of one shape; through cpu_gemm.c where it is
    loaded."""
    fn = _widen.get(src.dtype)
    if fn is None or fn(src.data_ptr(), dst.data_ptr(), src.numel(), torch.get_num_threads()):
        dst.copy_(src)


def store(out: torch.Tensor, y: torch.Tensor) -> None:
    """y[:, :] = out.t() rounded to y's dtype: out [n, m] fp32 contiguous, y [m, n] with
    contiguous rows (a column slice of the result); through cpu_gemm.c where it is loaded."""
    fn = _store.get(y.dtype)
    n, m = out.shape
    if (
        fn is None
        or y.stride(1) != 1
        or fn(out.data_ptr(), n, m, y.data_ptr(), y.stride(0), torch.get_num_threads())
    ):
        y.copy_(out.t())


def _scratch(numel: int) -> torch.Tensor:
    buf = getattr(_local, "buf", None)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: writable in and out of the mode
            buf = _local.buf = torch.empty(numel, dtype=torch.float32)
        _local.plans = {}  # their views point into the old buffer
    return buf[:numel]


def tile_rows(n: int, k: int) -> int:
    """Weight rows per tile for an [n, k] weight."""
    rows = max(TILE_ALIGN, TILE_BYTES // (4 * k) // TILE_ALIGN * TILE_ALIGN)
    return min(rows, n)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] @ weight[N, K].T + bias [N] -> [M, N] in x's dtype; inputs contiguous, on CPU."""
    y = _whole(x, weight, bias, gated=False)
    return _tiled(x, weight, bias) if y is None else y


def linear_silu_mul(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor | None:
    """silu(gate) * up of the product x @ weight.T + bias = (gate | up) [M, 2I] -> [M, I], bit
    for bit cpu_ops.silu_and_mul(linear(...)) without the 16-bit [M, 2I] result in memory; None
    where it does not apply (the product takes more than one tile or pass, no C conversions)."""
    return _whole(x, weight, bias, gated=True)


# Products of one weight tile and one pass of input rows (every product of a small model's
# prefill) skip the slicing loop: their fp32 scratch views are kept per shape ("plans", per
# thread, dropped when the scratch grows), and the conversions are called directly. Python
# and torch's per-call costs were ~15% of a 128-token prefill of the 8-layer demo model.
_MAX_PLANS = 64


def _plan(m: int, n: int, k: int) -> tuple:
    """(wf [n, k], xt [k, m], out [n, m], and the three data pointers wf, xf, out): the same
    views of the scratch, at the same offsets, as _tiled's for one tile and one pass (so MKL
    sees the same alignment and gives the same bits)."""
    plans = getattr(_local, "plans", None)
    plan = None if plans is None else plans.get((m, n, k))
    if plan is None:
        buf = _scratch(n * k + m * k + n * m)
        wf, xf, out = buf.split_with_sizes([n * k, m * k, n * m])
        wf, xf, out = wf.view(n, k), xf.view(m, k), out.view(n, m)
        plan = (wf, xf.t(), out, wf.data_ptr(), xf.data_ptr(), out.data_ptr())
        if len(_local.plans) >= _MAX_PLANS:  # prompt lengths vary: keep the recent ones
            _local.plans.clear()
        _local.plans[(m, n, k)] = plan
    return plan


def _whole(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gated: bool
) -> torch.Tensor | None:
    """The one-tile, one-pass product (gated: with SiLU * mul), or None where it does not apply
    or a conversion fails."""
    (m, k), n = x.shape, weight.shape[0]
    widen_fn = _widen.get(x.dtype)
    store_fn = (_store_silu_mul if gated else _store).get(x.dtype)
    if widen_fn is None or store_fn is None or m > PASS_ROWS or tile_rows(n, k) != n:
        return None
    if gated and n % 2:
        return None
    wf, xt, out, wf_ptr, xf_ptr, out_ptr = _plan(m, n, k)
    threads = torch.get_num_threads()
    if widen_fn(x.data_ptr(), xf_ptr, m * k, threads):
        return None
    if widen_fn(weight.data_ptr(), wf_ptr, n * k, threads):
        return None
    if bias is None:
        torch.mm(wf, xt, out=out)
    else:
        torch.addmm(bias.float().unsqueeze(1), wf, xt, out=out)
    if gated:
        y = torch.empty(m, n // 2, dtype=x.dtype)
        rc = store_fn(out_ptr, n // 2, m, y.data_ptr(), threads)
    else:
        y = torch.empty(m, n, dtype=x.dtype)
        rc = store_fn(out_ptr, n, m, y.data_ptr(), n, threads)
    return None if rc else y


def _tiled(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The general product, tile by tile and pass by pass (the slow twin of _whole)."""
    (m, k), n = x.shape, weight.shape[0]
    tile = tile_rows(n, k)
    passes = min(m, PASS_ROWS)
    buf = _scratch(tile * k + passes * k + tile * passes)
    wf_buf, xf_buf, out_buf = buf.split_with_sizes([tile * k, passes * k, tile * passes])
    bias_f = None if bias is None else bias.float().unsqueeze(1)  # [N, 1]
    y = torch.empty(m, n, dtype=x.dtype)
    whole = tile == n and passes == m  # one tile, one pass (small models): no operand slices
    for p0 in range(0, m, PASS_ROWS):
        p1 = min(m, p0 + PASS_ROWS)
        xf = xf_buf[: (p1 - p0) * k].view(p1 - p0, k)
        widen(x if whole else x[p0:p1], xf)
        xt = xf.t()  # [K, rows]
        for n0 in range(0, n, tile):
            n1 = min(n, n0 + tile)
            wf = wf_buf[: (n1 - n0) * k].view(n1 - n0, k)
            widen(weight if whole else weight[n0:n1], wf)  # [tile, K] fp32, in cache
            out = out_buf[: (n1 - n0) * (p1 - p0)].view(n1 - n0, p1 - p0)  # [tile, rows]
            if bias_f is None:
                torch.mm(wf, xt, out=out)
            else:
                torch.addmm(bias_f if whole else bias_f[n0:n1], wf, xt, out=out)
            store(out, y if whole else y[p0:p1, n0:n1])  # transposed and rounded while in cache
    return y
