"""Small host-side costs that code comments cite: the chained prefix hash of one KV block, and
building a device tensor from Python row lists through numpy versus ``torch.tensor`` (the
sampling metadata's per-step inputs). Medians of ``--repeats`` timed loops on the CPU:

    PYTHONPATH=src python3 benchmarks/host_costs.py [--rows 64] [--repeats 7]

Writes benchmarks/results/host_costs_cpu.json and prints a table.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from record import write_results

from minerva.cache.prefix_hash import hash_block


def per_call_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Median over ``repeats`` loops of ``calls`` calls, in microseconds per call."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="batch rows for the list builds")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", default="benchmarks/results/host_costs_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(0)
    block = [rng.randrange(32000) for _ in range(args.block_size)]
    scalars = [[rng.random() for _ in range(6)] for _ in range(args.rows)]  # [rows, 6] floats
    history = [[rng.randrange(32000) for _ in range(256)] for _ in range(args.rows)]  # ids

    def padded_numpy():
        host = np.full((args.rows, 256), 32000, dtype=np.int64)
        for row, ids in enumerate(history):
            host[row, : len(ids)] = ids
        return torch.from_numpy(host)

    def padded_torch_rows():
        host = torch.full((args.rows, 256), 32000, dtype=torch.int64)
        for row, ids in enumerate(history):
            host[row, : len(ids)] = torch.tensor(ids)
        return host

    cases = {
        "prefix_hash_per_block": lambda: hash_block(12345, block),
        "scalars_numpy": lambda: torch.from_numpy(np.array(scalars, dtype=np.float32)),
        "scalars_torch_tensor": lambda: torch.tensor(scalars, dtype=torch.float32),
        "token_ids_numpy": padded_numpy,
        "token_ids_torch_tensor": lambda: torch.tensor(history, dtype=torch.int64),
        "token_ids_torch_rows": padded_torch_rows,
    }
    results = []
    for name, fn in cases.items():
        us = per_call_us(fn, calls=200, repeats=args.repeats)
        results.append({"case": name, "us_per_call": round(us, 2)})
        print(f"{name:28s} {us:10.2f} us")
    by = {r["case"]: r["us_per_call"] for r in results}
    for slow, fast in (
        ("scalars_torch_tensor", "scalars_numpy"),
        ("token_ids_torch_tensor", "token_ids_numpy"),
        ("token_ids_torch_rows", "token_ids_numpy"),
    ):
        ratio = by[slow] / by[fast]
        results.append({"case": f"{slow}_over_{fast}", "ratio": round(ratio, 2)})
        print(f"{slow} / {fast} = {ratio:.2f}x")
    write_results("host_costs", "host_costs.py", args, results, args.output)


if __name__ == "__main__":
    main()
