"""A 128-token bf16 prefill of the demo model with the CPU's prefill fast paths on and off, in one
process, round after round (the two variants alternate, so a neighbour's load hits both alike).

"off" switches each fast path to its slow twin, which is the code before them:
cpu_gemm's one-tile products (`_whole`, kept scratch views and the gate_up product with
SiLU * mul fused into its rounding) -> the tile loop and a separate SiLU * mul; cpu_prefill.c's
query heads in pairs -> one head at a time (`minerva_prefill_pairs = 0`). Both give the same
bits (tests/unit/test_cpu_gemm.py, test_cpu_attention.py); only the time differs.

Time to first token of fresh prompts (max_tokens=1), wall clock (or, --clock cpu, the process's
CPU time), medians per round:

    PYTHONPATH=src python3 benchmarks/bf16_prefill_twins.py --rounds 8 --output FILE
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time

import torch
from record import write_results


def main() -> None:
    from minerva import LLM, SamplingParams
    from minerva.attention import cpu_prefill
    from minerva.ops import cpu_gemm, native

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--per-round", type=int, default=15)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: the process's CPU time (all threads), which a busy machine stretches less",
    )
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    llm = LLM(model="demo", device="cpu", dtype="bfloat16")
    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    gen = torch.Generator().manual_seed(0)
    pairs = ctypes.c_int.in_dll(native.load(cpu_prefill.SOURCE), "minerva_prefill_pairs")
    whole = cpu_gemm._whole
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def variant(on: bool) -> None:
        cpu_gemm._whole = whole if on else (lambda *a, **k: None)
        pairs.value = 1 if on else 0

    def ttft() -> float:
        # a fresh prompt each time: a repeated one would come from the prefix cache
        prompt = torch.randint(3, 4000, (args.length,), generator=gen).tolist()
        t0 = clock()
        llm.generate([prompt], params)
        return clock() - t0

    rounds = []
    for r in range(args.rounds):
        row = {"round": r, "load_average": os.getloadavg()[0]}
        for name, on in (
            (("on", True), ("off", False)) if r % 2 == 0 else (("off", False), ("on", True))
        ):
            variant(on)
            for _ in range(3):
                ttft()  # warm-up
            row[f"{name}_ms"] = [ttft() * 1e3 for _ in range(args.per_round)]
        variant(True)
        rounds.append(row)
        on_ms, off_ms = statistics.median(row["on_ms"]), statistics.median(row["off_ms"])
        print(f"round {r}: fast paths on {on_ms:.2f} ms, off {off_ms:.2f} ms")
    on_all = [statistics.median(r["on_ms"]) for r in rounds]
    off_all = [statistics.median(r["off_ms"]) for r in rounds]
    summary = {
        "length": args.length,
        "threads": args.threads,
        "clock": args.clock,
        "on_ms_median_of_rounds": statistics.median(on_all),
        "off_ms_median_of_rounds": statistics.median(off_all),
        "off_over_on_per_round": [b / a for a, b in zip(on_all, off_all)],
        "rounds": rounds,
    }
    print(
        f"median of round medians: on {summary['on_ms_median_of_rounds']:.2f} ms, "
        f"off {summary['off_ms_median_of_rounds']:.2f} ms"
    )
    write_results("bf16_prefill_twins", __file__, args, [summary], args.output)


if __name__ == "__main__":
    main()
