"""GGUF block matmuls on the CPU: the C kernel (ops/cpu_quant.c) vs the interleaved-layout kernel
(ops/cpu_quant_x8.c, "x8", for the types that have it) vs its torch twin (dequantize + matmul)
vs dense fp32 / bf16 torch, per GGML type, on a TinyLlama-sized matrix.

    PYTHONPATH=src python3 benchmarks/cpu_quant_kernels.py [--types q4_k q8_0 ...]
        [--rows 1 4 16 128] [--threads 1 2] [--rounds 5] [--n 2048] [--k 5632]

W is [n, k] (TinyLlama's down_proj: 2048 x 5632). Per (type, rows, threads) the methods run in
interleaved rounds (kernel, twin, dense fp32, dense bf16, kernel, ...) and the best round of
each is kept; every round's time is in the JSON (the machine may be shared). Each timed call
cycles over copies of the weight (>= 96 MB, beyond the L3) so the weights come from DRAM as in
a decode step. weight GB/s = the method's weight bytes / time; tok_s_equiv = rows x the matrix's
weights per second / TinyLlama-1.1B's linear weights (1.034e9): the decode (rows = 1) or prefill
rate the whole model would reach at this speed on every layer.
Writes benchmarks/results/cpu_quant_kernels.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from record import write_results

from minerva.ops import cpu_quant, cpu_quant_x8
from minerva.quant.gguf_matmul import dequant_matmul
from minerva.quant.gguf_quantize import quantize_array
from minerva.quant.gguf_types import GGMLType

TINYLLAMA_LINEAR_WEIGHTS = 1.034e9  # 22 x (qkv + o + gate_up + down) + lm_head
COPY_BYTES = 96 << 20
ALL_TYPES = ["q8_0", "q4_0", "q4_k", "q5_k", "q6_k", "q2_k", "q3_k", "q4_1", "q5_0", "q5_1", "q8_1"]
ALL_TYPES += ["iq4_nl", "iq4_xs"]


def copies_of(t: torch.Tensor) -> list[torch.Tensor]:
    n = max(2, COPY_BYTES // (t.numel() * t.element_size()))
    return [t.clone() for _ in range(n)]


def timed_round(fn, x, weights, calls: int) -> float:
    t = time.perf_counter()
    for i in range(calls):
        fn(x, weights[i % len(weights)])
    return (time.perf_counter() - t) / calls


def methods_for(ggml_type: GGMLType, n: int, dense: dict) -> dict:
    """name -> (function(x, weight), weight copies, weight bytes)."""
    w32 = dense["fp32"][0]
    blocks = torch.from_numpy(quantize_array(w32.numpy(), ggml_type))
    qcopies = copies_of(blocks)
    out = {}
    if cpu_quant.has_kernel(ggml_type):
        out["kernel"] = (lambda x, w: cpu_quant.matmul(x, w, ggml_type, n), qcopies, blocks.numel())
    if cpu_quant_x8.supports(ggml_type, n, w32.shape[1]):
        x8 = [cpu_quant_x8.repack(c, ggml_type, w32.shape[1]) for c in qcopies]
        out["x8"] = (lambda x, w: cpu_quant_x8.matmul(x, w, ggml_type, n), x8, blocks.numel())
    out["twin"] = (lambda x, w: dequant_matmul(x, w, ggml_type), qcopies, blocks.numel())
    out["dense_fp32"] = (lambda x, w: F.linear(x, w), dense["fp32"], w32.numel() * 4)
    out["dense_bf16"] = (lambda x, w: F.linear(x.bfloat16(), w), dense["bf16"], w32.numel() * 2)
    return out


def bench_type(name: str, n: int, k: int, dense: dict, args) -> list[dict]:
    ggml_type = GGMLType[name.upper()]
    methods = methods_for(ggml_type, n, dense)
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for m in args.rows:
            x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
            calls, times = {}, {key: [] for key in methods}
            with torch.inference_mode():
                for key, (fn, ws, _) in methods.items():  # warm-up sizes the rounds (~0.1 s)
                    t = timed_round(fn, x, ws, 1)
                    calls[key] = max(1, min(len(ws), int(0.1 / max(t, 1e-6))))
                for _ in range(args.rounds):
                    for key, (fn, ws, _) in methods.items():
                        times[key].append(timed_round(fn, x, ws, calls[key]))
            for key, (_, _, nbytes) in methods.items():
                best = min(times[key])
                results.append(
                    {
                        "type": name,
                        "method": key,
                        "rows": m,
                        "threads": threads,
                        "N": n,
                        "K": k,
                        "weight_bytes": nbytes,
                        "ms": best * 1e3,
                        "weight_gb_s": nbytes / best / 1e9,
                        "tok_s_equiv": m * n * k / best / TINYLLAMA_LINEAR_WEIGHTS,
                        "round_ms": [round(t * 1e3, 3) for t in times[key]],
                        "load_avg_1m": os.getloadavg()[0],  # other processes on the machine
                    }
                )
                r = results[-1]
                print(
                    f"{name:5} {key:10} rows {m:4} thr {threads}  {r['ms']:9.3f} ms "
                    f"{r['weight_gb_s']:7.1f} GB/s  {r['tok_s_equiv']:8.1f} tok/s-equiv",
                    flush=True,
                )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--types", nargs="+", default=ALL_TYPES)
    ap.add_argument("--rows", nargs="+", type=int, default=[1, 4, 16, 128])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--k", type=int, default=5632)
    default_out = Path(__file__).parent / "results" / "cpu_quant_kernels.json"
    ap.add_argument("--output", default=str(default_out))
    args = ap.parse_args()
    if not cpu_quant.load():
        raise SystemExit(f"the CPU kernel is not available: {cpu_quant.status()}")
    w = torch.randn(args.n, args.k, generator=torch.Generator().manual_seed(0))
    dense = {"fp32": copies_of(w), "bf16": copies_of(w.bfloat16())}
    results = []
    for name in args.types:
        results += bench_type(name, args.n, args.k, dense, args)
    write_results("cpu_quant_kernels", "cpu_quant_kernels.py", args, results, args.output)
    print(f"wrote {args.output} (kernel path: {cpu_quant.simd_path()})")


if __name__ == "__main__":
    main()
