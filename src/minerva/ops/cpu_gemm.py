"""Many-row bf16 / fp16 products on the CPU (prefill): fp32 GEMM over weight tiles.

torch has no fast bf16 / fp16 GEMM on CPUs without AVX512_BF16 or AMX, while its fp32 GEMM (MKL)
runs near the FMA peak. Each tile of weight rows, sized to stay in cache, is converted to fp32
once per product and multiplied by all the input rows; the weights stay 16-bit in memory. Sums
run in fp32 and each output is rounded once. cpu_linear.linear sends products of GEMM_MIN_ROWS
rows or more here; the measurements are in benchmarks/results/cpu_gemm.json.
"""

from __future__ import annotations

import threading

import torch

TILE_BYTES = 4 << 20
"""fp32 bytes of one converted weight tile: measured best among 1-8 MiB (cpu_gemm.json)."""
PASS_ROWS = 512
"""Input rows per pass over the weight: bounds the scratch; conversion is ~1% of a pass."""
TILE_ALIGN = 16

_local = threading.local()  # per thread: one fp32 scratch tensor, grown on demand


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
            y[p0:p1, n0:n1].copy_(out.t())  # transposed and rounded while in cache
    return y
