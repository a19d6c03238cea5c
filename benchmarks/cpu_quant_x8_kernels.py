"""The interleaved-layout ("x8") GGUF matmul of two versions of ops/cpu_quant_x8.c, interleaved
in one process, on TinyLlama-1.1B's linear shapes.

    PYTHONPATH=src python3 benchmarks/cpu_quant_x8_kernels.py [--before REV] [--types q4_k q6_k q8_0]
        [--rows 128 1] [--threads 2] [--rounds 5] [--layers qkv o gate_up down] [--clock wall]

--before is a git revision whose ops/cpu_quant_x8.c is built beside this tree's (same headers,
same flags); `after` is this tree's. Per (type, layer, rows) the two libraries run the same
repacked weight in alternating rounds (before, after, before, ...), each round ~0.2 s of calls,
and the best round of each is kept; every round's time is in the JSON (the machine may be
shared). Weights are random codes with fp16 scales of 0.01 (the speed does not depend on the
values), rows = activation rows (128 = a 128-token prefill, 1 = a decode step's product). The
weights are not cycled through copies: a prefill product reads each weight once per call from
wherever it is, so rows = 1 here is faster than a decode step that streams from DRAM.
GFLOP/s = 2 x rows x N x K / time. --clock cpu (with --threads 1 only: the product then runs on
the calling thread) times with the thread's CPU time instead of the wall clock: on a machine
shared with other jobs it leaves out the time the thread waits for a core (not the time the
hypervisor takes), so it is far steadier there. Writes benchmarks/results/cpu_quant_x8_kernels.json.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from record import write_results

from minerva.ops import cpu_quant_x8, native

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "src/minerva/ops/cpu_quant_x8.c"
LAYERS = {  # TinyLlama-1.1B: (N, K) of W [N, K]
    "qkv": (2560, 2048),
    "o": (2048, 2048),
    "gate_up": (11264, 2048),
    "down": (2048, 5632),
}
TYPES = {"q8_0": (8, 32, 34, (0,)), "q4_k": (12, 256, 144, (0, 2)), "q6_k": (14, 256, 210, (208,))}
TYPES |= {"iq4_xs": (23, 256, 136, (0,)), "iq4_nl": (20, 32, 18, (0,))}


def bind(path: Path):
    lib = native.build_and_load(path)
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.minerva_x8_qgemm.argtypes = [ctypes.c_int, p, p, p, i64, i64, i64, ctypes.c_int]
    return lib


def before_library(rev: str):
    text = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:{SOURCE}"], capture_output=True, check=True
    ).stdout
    # same folder as this tree's source, so its #includes resolve to the same headers
    path = ROOT / "src/minerva/ops" / f".before_{os.getpid()}_cpu_quant_x8.c"
    path.write_bytes(text)
    try:
        return bind(path)
    finally:
        path.unlink()


def weight(type_name: str, n: int, k: int) -> torch.Tensor:
    """Random blocks with every fp16 scale 0.01, repacked into the x8 layout."""
    ggml, block, nbytes, scales = TYPES[type_name]
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(n, k // block, nbytes), dtype=np.uint8)
    if type_name == "q6_k":  # int8 subblock scales: keep them small and positive
        blocks[:, :, 192:208] = rng.integers(1, 32, size=(n, k // block, 16), dtype=np.uint8)
    half = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
    for at in scales:
        blocks[:, :, at : at + 2] = half
    data = torch.from_numpy(blocks.reshape(n, -1).copy())
    return cpu_quant_x8.repack(data, ggml, k)


CLOCK = {"wall": time.perf_counter, "cpu": time.thread_time}


def timed(lib, ggml, w, x, y, m, n, k, threads, calls, clock=time.perf_counter) -> float:
    t = clock()
    for _ in range(calls):
        rc = lib.minerva_x8_qgemm(ggml, w.data_ptr(), x.data_ptr(), y.data_ptr(), m, n, k, threads)
        assert rc == 0
    return (clock() - t) / calls


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--before", default="main")
    ap.add_argument("--types", nargs="+", default=list(TYPES))
    ap.add_argument("--layers", nargs="+", default=list(LAYERS))
    ap.add_argument("--rows", nargs="+", type=int, default=[128, 1])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clock", choices=list(CLOCK), default="wall")
    default_out = Path(__file__).parent / "results" / "cpu_quant_x8_kernels.json"
    ap.add_argument("--output", default=str(default_out))
    args = ap.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu times the calling thread: it needs --threads 1")
    clock = CLOCK[args.clock]
    libs = {"before": before_library(args.before), "after": bind(ROOT / SOURCE)}
    results = []
    for type_name in args.types:
        ggml = TYPES[type_name][0]
        for layer in args.layers:
            n, k = LAYERS[layer]
            w = weight(type_name, n, k)
            for m in args.rows:
                x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
                ys = {side: torch.empty(m, n) for side in libs}
                calls = {}
                for side, lib in libs.items():  # warm-up sizes the rounds (~0.2 s)
                    t = timed(lib, ggml, w, x, ys[side], m, n, k, args.threads, 1)
                    calls[side] = max(1, int(0.2 / max(t, 1e-6)))
                assert torch.allclose(ys["before"], ys["after"], rtol=1e-4, atol=1e-3)
                times = {side: [] for side in libs}
                for r in range(args.rounds):
                    order = list(libs) if r % 2 == 0 else list(libs)[::-1]
                    for side in order:
                        fn_args = (ggml, w, x, ys[side], m, n, k, args.threads, calls[side])
                        times[side].append(timed(libs[side], *fn_args, clock=clock))
                row = {"type": type_name, "layer": layer, "N": n, "K": k, "rows": m}
                for side in libs:
                    best = min(times[side])
                    row[f"{side}_ms"] = best * 1e3
                    row[f"{side}_gflop_s"] = 2 * m * n * k / best / 1e9
                    row[f"{side}_round_ms"] = [round(t * 1e3, 3) for t in times[side]]
                row["speedup"] = row["before_ms"] / row["after_ms"]
                row["load_avg_1m"] = os.getloadavg()[0]
                results.append(row)
                print(
                    f"{type_name:5} {layer:8} rows {m:4}  before {row['before_gflop_s']:7.1f}  "
                    f"after {row['after_gflop_s']:7.1f} GFLOP/s  x{row['speedup']:.2f}",
                    flush=True,
                )
    write_results("cpu_quant_x8_kernels", "cpu_quant_x8_kernels.py", args, results, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
