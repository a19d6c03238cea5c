"""Prefill attention on the CPU: cpu_prefill.c against the torch reference it replaces
(torch_paged._prefill: gather, scaled_dot_product_attention), one chunk from position 0.

    PYTHONPATH=src python3 benchmarks/cpu_prefill_attention.py [--dtypes bfloat16 float32]
        [--lengths 128 256 384 512 1024] [--heads 4:2 32:4] [--head-dim 64] [--rounds 30]

Each round times both variants once per shape (alternating, as the machine may be shared);
the median of the rounds is kept and the spread is in the JSON. This picks
cpu_prefill.MAX_CONTEXT (the longest context the kernel takes). Writes
benchmarks/results/cpu_prefill_attention.json and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from record import write_results

from minerva.attention import cpu_backend, cpu_prefill, torch_paged

BLOCK_SIZE = 16


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(dtype, length, heads, kv_heads, dim, rounds) -> dict:
    g = torch.Generator().manual_seed(0)
    blocks = length // BLOCK_SIZE + 2
    cache = torch.randn(2, blocks, BLOCK_SIZE, kv_heads, dim, generator=g).to(dtype)
    table = torch.randperm(blocks, generator=g).to(torch.int32)
    qkv = torch.randn(length, heads + 2 * kv_heads, dim, generator=g).to(dtype)
    q, scale = qkv[:, :heads], dim**-0.5
    out = torch.empty(length, heads, dim, dtype=dtype)

    def reference():
        out.copy_(torch_paged._prefill(q, cache, table, length, scale, None))

    def kernel():
        assert cpu_prefill.attend(q, cache, table, length, scale, None, out, force=True)

    times: dict[str, list[float]] = {"torch": [], "c": []}
    with torch.inference_mode():
        reference(), kernel()  # warm-up
        for _ in range(rounds):
            times["torch"].append(_time(reference))
            times["c"].append(_time(kernel))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "length": length,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": dim,
        "us": {k: round(v * 1e6, 1) for k, v in med.items()},
        "c_speedup": round(med["torch"] / med["c"], 2),
        "us_all": {k: [round(t * 1e6, 1) for t in v] for k, v in times.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 384, 512, 1024])
    ap.add_argument("--heads", nargs="+", default=["4:2", "32:4"], help="heads:kv_heads")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--output", default="benchmarks/results/cpu_prefill_attention.json")
    args = ap.parse_args()
    assert cpu_backend.load() and cpu_prefill.load(), "the C kernels did not build"
    results = []
    for dtype in args.dtypes:
        for pair in args.heads:
            heads, kv_heads = map(int, pair.split(":"))
            for length in args.lengths:
                row = measure(
                    getattr(torch, dtype), length, heads, kv_heads, args.head_dim, args.rounds
                )
                results.append(row)
                print(
                    f"{dtype:9s} {heads:3d}/{kv_heads:<2d} L={length:5d}  torch "
                    f"{row['us']['torch']:9.1f} us  C {row['us']['c']:9.1f} us  "
                    f"{row['c_speedup']:.2f}x",
                    flush=True,
                )
    write_results("cpu_prefill_attention", "cpu_prefill_attention.py", args, results, args.output)


if __name__ == "__main__":
    main()
