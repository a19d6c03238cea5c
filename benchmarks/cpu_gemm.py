"""Many-row bf16 / fp16 products on the CPU: the GEMV kernel vs cpu_gemm's tiled fp32 GEMM.

    PYTHONPATH=src python3 benchmarks/cpu_gemm.py [--dtypes bfloat16 float16]
        [--rows 8 16 32 64 128 512] [--tile-mib 2 4 8] [--shapes smollm-135m tinyllama-1.1b]

For every linear layer shape of the models (each projection alone, the fused qkv and gate_up as
Minerva runs them, the vocab projection) and every number of input rows: GFLOP/s of the C GEMV
kernel (cpu_linear.gemv), of cpu_gemm.linear at each tile size, and, with --torch, of torch's
own F.linear in that dtype. Each timing cycles over copies of the weight (>= 128 MB) so that
they come from DRAM as in a real forward pass. Rounds alternate the variants; the best round
of each is kept (the machine may be shared: the spread is in the JSON). This picks
cpu_linear.GEMM_MIN_ROWS (the crossover) and cpu_gemm.TILE_BYTES.
Writes benchmarks/results/cpu_gemm.json and prints a table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from record import write_results
from shapes import SHAPES

from minerva.ops import cpu_gemm, cpu_linear

REAL_VOCAB = {"smollm-135m": 49152}  # the shape file pads SmolLM to the demo tokenizer's 32000


def layer_shapes(shape: str) -> list[tuple[str, int, int]]:
    """(name, N, K) of each distinct linear layer of a model shape, alone and fused."""
    c = SHAPES[shape]
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    head_dim = h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * head_dim
    out = [("q_o", h, h), ("kv", kv, h), ("qkv", h + 2 * kv, h), ("gate", i, h)]
    out += [("gate_up", 2 * i, h), ("down", h, i), ("lm_head", v, h)]
    if shape in REAL_VOCAB:
        out.append(("lm_head_real", REAL_VOCAB[shape], h))
    return out


def tiled(tile_bytes: int):
    def run(x, w):
        cpu_gemm.TILE_BYTES = tile_bytes
        return cpu_gemm.linear(x, w, None)

    return run


def bench(n: int, k: int, dtype: torch.dtype, args) -> list[dict]:
    nbytes = n * k * dtype.itemsize
    copies = max(2, (128 << 20) // nbytes)
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, k, generator=g).to(dtype) for _ in range(copies)]
    variants = {"gemv": cpu_linear.gemv}
    variants |= {f"tiles_{mib}MiB": tiled(mib << 20) for mib in args.tile_mib}
    if args.torch:
        variants["torch"] = F.linear
    out = []
    for m in args.rows:
        x = torch.randn(m, k, generator=g).to(dtype)
        times: dict[str, list[float]] = {name: [] for name in variants}
        with torch.inference_mode():
            for fn in variants.values():
                fn(x, weights[0])  # warm-up
            for _ in range(args.rounds):
                for name, fn in variants.items():
                    t = time.perf_counter()
                    for w in weights:
                        fn(x, w)
                    times[name].append((time.perf_counter() - t) / len(weights))
        flops = 2 * m * n * k
        gflops = {name: flops / min(t) / 1e9 for name, t in times.items()}
        out.append(
            {"N": n, "K": k, "rows": m, "dtype": str(dtype).removeprefix("torch.")}
            | {"gflop_s": {name: round(v, 1) for name, v in gflops.items()}}
            | {"us": {name: [round(s * 1e6) for s in t] for name, t in times.items()}}
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shapes", nargs="+", default=["tinyllama-1.1b", "smollm-135m"])
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    ap.add_argument("--rows", nargs="+", type=int, default=[8, 16, 32, 64, 128, 512])
    ap.add_argument("--tile-mib", nargs="+", type=int, default=[2, 4, 8])
    ap.add_argument("--torch", action="store_true", help="also time F.linear in the dtype")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--output", default=str(Path(__file__).parent / "results" / "cpu_gemm.json"))
    args = ap.parse_args()
    if not cpu_linear.load():
        raise SystemExit(f"the CPU kernel is not available: {cpu_linear.status()}")

    results, seen = [], set()
    default_tile = cpu_gemm.TILE_BYTES
    for shape in args.shapes:
        for name, n, k in layer_shapes(shape):
            for dtype_name in args.dtypes:
                if (n, k, dtype_name) in seen:
                    continue
                seen.add((n, k, dtype_name))
                for r in bench(n, k, getattr(torch, dtype_name), args):
                    r = {"model": shape, "layer": name} | r
                    results.append(r)
                    cells = "  ".join(f"{v:>5.0f} {s}" for s, v in r["gflop_s"].items())
                    print(
                        f"{shape:15} {name:12} {f'{n}x{k}':>11} {dtype_name:9} {r['rows']:4}  "
                        f"GFLOP/s {cells}",
                        flush=True,
                    )
    cpu_gemm.TILE_BYTES = default_tile
    write_results("cpu_gemm", "cpu_gemm.py", args, results, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
