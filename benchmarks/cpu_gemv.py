"""CPU matrix-vector products: Minerva's C kernel (ops/cpu_linear.py) against torch's F.linear.

    PYTHONPATH=src python3 benchmarks/cpu_gemv.py [--dtypes bfloat16 float32 float16]
        [--rows 1 4] [--shapes smollm-135m tinyllama-1.1b] [--rounds 5]

For every linear layer shape of the models (fused qkv and gate_up as Minerva runs them, and the
vocab projection) and every number of input rows: weight GB/s = weight bytes / time per call.
Each timing cycles over enough copies of the weight (>= 256 MB) that they come from DRAM, as in
a real decode step, not from the cache. Rounds alternate kernel and torch; the best round of
each is kept (the machine may be shared: see the spread between rounds in the JSON).
Writes benchmarks/results/cpu_gemv.json and prints a table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from record import write_results
from shapes import SHAPES

from minerva.ops import cpu_linear


def layer_shapes(shape: str) -> list[tuple[str, int, int]]:
    """(name, N, K) of each distinct linear layer of a model shape."""
    c = SHAPES[shape]
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    head_dim = h // c["num_attention_heads"]
    qkv = (c["num_attention_heads"] + 2 * c["num_key_value_heads"]) * head_dim
    return [("qkv", qkv, h), ("o", h, h), ("gate_up", 2 * i, h), ("down", h, i), ("lm_head", v, h)]


def time_per_call(fn, xs, weights, rounds_out: list[float]) -> None:
    t = time.perf_counter()
    for w in weights:
        fn(xs, w)
    rounds_out.append((time.perf_counter() - t) / len(weights))


def bench(n: int, k: int, dtype: torch.dtype, rows: list[int], rounds: int) -> list[dict]:
    nbytes = n * k * dtype.itemsize
    copies = max(2, (256 << 20) // nbytes)
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, k, generator=g).to(dtype) for _ in range(copies)]
    out = []
    for m in rows:
        x = torch.randn(m, k, generator=g).to(dtype)
        times: dict[str, list[float]] = {"kernel": [], "torch": []}
        with torch.inference_mode():
            cpu_linear.gemv(x, weights[0]), F.linear(x, weights[0])  # warm-up
            for _ in range(rounds):
                time_per_call(cpu_linear.gemv, x, weights, times["kernel"])
                time_per_call(F.linear, x, weights, times["torch"])
        best = {name: min(t) for name, t in times.items()}
        out.append(
            {
                "N": n,
                "K": k,
                "rows": m,
                "dtype": str(dtype).removeprefix("torch."),
                "weight_bytes": nbytes,
                "kernel_gb_s": nbytes / best["kernel"] / 1e9,
                "torch_gb_s": nbytes / best["torch"] / 1e9,
                "speedup": best["torch"] / best["kernel"],
                "kernel_us": [round(t * 1e6, 1) for t in times["kernel"]],
                "torch_us": [round(t * 1e6, 1) for t in times["torch"]],
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shapes", nargs="+", default=["smollm-135m", "tinyllama-1.1b"])
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32", "float16"])
    ap.add_argument("--rows", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--output", default=str(Path(__file__).parent / "results" / "cpu_gemv.json"))
    args = ap.parse_args()
    if not cpu_linear.load():
        raise SystemExit(f"the CPU kernel is not available: {cpu_linear.status()}")

    results = []
    seen = set()
    print(
        f"{'model':15} {'layer':8} {'N x K':>12} {'dtype':9} {'rows':>4}  kernel GB/s  torch GB/s"
    )
    for shape in args.shapes:
        for name, n, k in layer_shapes(shape):
            for dtype_name in args.dtypes:
                dtype = getattr(torch, dtype_name)
                if (n, k, dtype) in seen:
                    continue
                seen.add((n, k, dtype))
                for r in bench(n, k, dtype, args.rows, args.rounds):
                    r |= {"model": shape, "layer": name}
                    results.append(r)
                    print(
                        f"{shape:15} {name:8} {f'{n}x{k}':>12} {dtype_name:9} {r['rows']:4}  "
                        f"{r['kernel_gb_s']:11.1f}  {r['torch_gb_s']:10.1f}  ({r['speedup']:.2f}x)",
                        flush=True,
                    )
    write_results("cpu_gemv", "cpu_gemv.py", args, results, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
