"""Many-row bf16 / fp16 products on the CPU (prefill): fp32 GEMM over weight tiles.

torch has no fast bf16 / fp16 GEMM on CPUs without AVX512_BF16 or AMX, while its fp32 GEMM (MKL)
runs near the FMA peak. Each tile of weight rows, sized to stay in cache, is converted to fp32
once per product and multiplied by all the input rows; the weights stay 16-bit in memory. Sums
run in fp32 and each output is rounded once. cpu_linear.linear sends products of GEMM_MIN_ROWS
rows or more here; the measurements are in benchmarks/results/cpu_gemm.json.

Each tile's product comes out [tile rows, input rows]; cpu_gemm.c rounds it into its columns of
the result (torch's copy of that transposed view, the slow twin and the fallback where the C
code cannot be built, takes several times as long).
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


def load() -> bool:
    """Build (once per cache key) and bind cpu_gemm.c; False, logged once, when it cannot be
    (the products then round their output through torch)."""
    lib = native.load(SOURCE)
    if lib is not None and not _store:
        for dtype, suffix in _SUFFIX.items():
            if suffix == "f16" and not lib.minerva_gemm_has_f16():
                continue
            fn = getattr(lib, f"minerva_gemm_store_{suffix}")
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
            fn.argtypes += [ctypes.c_int64, ctypes.c_int]
            fn.restype = ctypes.c_int
            _store[dtype] = fn
    return lib is not None


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
    return buf[:numel]


def tile_rows(n: int, k: int) -> int:
    """Weight rows per tile for an [n, k] weight."""
    rows = max(TILE_ALIGN, TILE_BYTES // (4 * k) // TILE_ALIGN * TILE_ALIGN)
    return min(rows, n)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] @ weight[N, K].T + bias [N] -> [M, N] in x's dtype; inputs contiguous, on CPU."""
    (m, k), n = x.shape, weight.shape[0]
    tile = tile_rows(n, k)
    passes = min(m, PASS_ROWS)
    buf = _scratch(tile * k + tile * passes)
    wf_buf, out_buf = buf[: tile * k], buf[tile * k :]
    bias_f = None if bias is None else bias.float().unsqueeze(1)  # [N, 1]
    y = torch.empty(m, n, dtype=x.dtype)
    for p0 in range(0, m, PASS_ROWS):
        p1 = min(m, p0 + PASS_ROWS)
        xt = x[p0:p1].float().t()  # [K, rows]
        for n0 in range(0, n, tile):
            n1 = min(n, n0 + tile)
            wf = wf_buf[: (n1 - n0) * k].view(n1 - n0, k)
            wf.copy_(weight[n0:n1])  # [tile, K] fp32, in cache
            out = out_buf[: (n1 - n0) * (p1 - p0)].view(n1 - n0, p1 - p0)  # [tile, rows]
            if bias_f is None:
                torch.mm(wf, xt, out=out)
            else:
                torch.addmm(bias_f[n0:n1], wf, xt, out=out)
            store(out, y[p0:p1, n0:n1])  # transposed and rounded while in cache
    return y
