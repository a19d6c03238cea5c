"""Batch-1 linear layers on one GPU: cuBLAS (F.linear, and mm on a transposed copy) against the
Triton GEMV of ops/triton_gemv.py over a sweep of tile configs, for the weight shapes of the
Mistral-7B and TinyLlama-1.1B decode steps (bf16).

    PYTHONPATH=src python3 benchmarks/gemv_bench.py [--output DIR]

Each variant runs inside a CUDA graph over enough distinct weight copies (>= 512 MB) that no
call is served from L2, as in a real step where every layer has its own weights. Checks every
variant against an fp32 reference first. Writes gemv_bench_<gpu>.json and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from minerva.ops.triton_gemv import gemv

SHAPES = {  # name -> (N, K)
    "7b.qkv": (6144, 4096),
    "7b.o": (4096, 4096),
    "7b.gate_up": (28672, 4096),
    "7b.down": (4096, 14336),
    "7b.lm_head": (32000, 4096),
    "1b.qkv": (2560, 2048),
    "1b.o": (2048, 2048),
    "1b.gate_up": (11264, 2048),
    "1b.down": (2048, 5632),
    "1b.lm_head": (32000, 2048),
}
CONFIGS = list(itertools.product((4, 8, 16), (256, 512, 1024), (4, 8), (2, 3, 4)))


def time_per_call(fn, copies: int, replays: int = 10) -> float:
    """Seconds per call of fn(i), i over the weight copies, replayed from a CUDA graph."""
    for i in range(copies):
        fn(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(copies):
            fn(i)
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / (replays * copies)


def bench_shape(name: str, n: int, k: int) -> tuple[dict, str]:
    nbytes = n * k * 2
    copies = max(2, -(-(512 << 20) // nbytes))
    ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
    wts = [w.t().contiguous() for w in ws]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    ref = x.float() @ ws[0].float().t()
    scale = ref.abs().max().item()

    def err(y: torch.Tensor) -> float:
        return (y.float() - ref).abs().max().item() / scale

    result = {"shape": name, "n": n, "k": k, "bytes": nbytes}
    result["cublas_err"] = err(F.linear(x, ws[0]))
    result["cublas_s"] = time_per_call(lambda i: F.linear(x, ws[i]), copies)
    result["cublas_nn_err"] = err(x @ wts[0])
    result["cublas_nn_s"] = time_per_call(lambda i: x @ wts[i], copies)
    best = None
    for cfg in CONFIGS:
        e = err(gemv(x, ws[0], config=cfg))
        if e > 2e-2:
            raise AssertionError(f"{name} {cfg}: relative error {e}")
        t = time_per_call(lambda i, c=cfg: gemv(x, ws[i], config=c), copies)
        if best is None or t < best[1]:
            best = (cfg, t, e)
    result["triton_config"], result["triton_s"], result["triton_err"] = best

    def cell(t: float) -> str:
        return f"{t * 1e6:.1f} us ({nbytes / t / 1e9:.0f} GB/s)"

    row = (
        f"| {name} | {n}x{k} | {cell(result['cublas_s'])} | {cell(result['cublas_nn_s'])} "
        f"| {cell(best[1])} {best[0]} |"
    )
    return result, row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", default="benchmarks/results")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows, table = [], []
    for name, (n, k) in SHAPES.items():
        result, row = bench_shape(name, n, k)
        rows.append(result)
        table.append(row)
        print(row, flush=True)
        torch.cuda.empty_cache()
    gpu = torch.cuda.get_device_name()
    slug = next((g for g in ("h100", "h200") if g in gpu.lower()), "gpu")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "gemv_bench", "gpu": gpu, "torch": torch.__version__, "results": rows}
    (out / f"gemv_bench_{slug}.json").write_text(json.dumps(doc, indent=2))
    print("| weight | N x K | F.linear (cuBLAS) | mm on W.T copy | Triton GEMV, best config |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(table))


if __name__ == "__main__":
    main()
