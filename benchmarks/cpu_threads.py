"""Decode speed against the CPU thread count, on an idle machine and under load (issue #14,
defect 8): what `--num-threads` should default to.

A busy machine starves OpenMP's thread barriers: with as many threads as cores, every step
waits for the thread that lost its core. This measures batch-1 decode tokens/s of the bundled
demo model (or --model) for num_threads 1..cores, first as the machine is (its 1-minute load
average is recorded: a shared machine is not idle), then with one busy-loop process per core
running beside it.

    PYTHONPATH=src python3 benchmarks/cpu_threads.py [--model demo] [--tokens 64] [--repeats 3]

Writes benchmarks/results/cpu_threads.json (figures there and in the README, not here).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time

import torch
from record import write_results


def _busy() -> None:
    while True:
        pass


class Load:
    """One busy-loop process per core while inside the block."""

    def __init__(self, procs: int) -> None:
        self.procs = procs
        self.workers: list[mp.Process] = []

    def __enter__(self) -> Load:
        self.workers = [mp.Process(target=_busy, daemon=True) for _ in range(self.procs)]
        for w in self.workers:
            w.start()
        time.sleep(0.5)  # let the scheduler spread them
        return self

    def __exit__(self, *exc) -> None:
        for w in self.workers:
            w.terminate()
        for w in self.workers:
            w.join()


def decode_tok_s(llm, prompt: str, tokens: int, repeats: int) -> float | None:
    """Median decode tokens/s of one greedy request (its prefill excluded by subtraction: the
    median one-token run from the median full run); None when noise makes that difference
    non-positive (too few --tokens for the machine's noise), never an absurd figure."""
    from minerva import SamplingParams

    def run(n: int) -> float:
        params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
        t = time.perf_counter()
        llm.generate(prompt, params)
        return time.perf_counter() - t

    run(tokens)  # warm-up at this thread count
    firsts, fulls = [], []
    for _ in range(repeats):
        firsts.append(run(1))
        fulls.append(run(1 + tokens))
    decode_s = statistics.median(fulls) - statistics.median(firsts)
    return tokens / decode_s if decode_s > 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="times each condition runs")
    parser.add_argument("--output", default="benchmarks/results/cpu_threads.json")
    args = parser.parse_args()

    from minerva import LLM

    cores = os.cpu_count() or 1
    llm = LLM(model=args.model, device="cpu", dtype="float32", max_num_seqs=1, progress=False)
    prompt = "The command line tool reads its configuration from"
    results = []
    conditions = [("as is", 0), ("loaded", cores)] * args.rounds  # interleaved: drift hits both
    for round_, (condition, procs) in enumerate(conditions):
        load_average = round(os.getloadavg()[0], 2)  # other work already on the machine
        with Load(procs):
            for threads in range(1, cores + 1):
                torch.set_num_threads(threads)
                speed = decode_tok_s(llm, prompt, args.tokens, args.repeats)
                results.append(
                    {"round": round_ // 2, "condition": condition, "busy_processes": procs,
                     "load_average_1min_before": load_average,
                     "num_threads": threads,
                     "decode_tok_s": None if speed is None else round(speed, 1)}
                )  # fmt: skip
                print(
                    f"{condition:7s} load {load_average} threads={threads}: {speed} tok/s",
                    flush=True,
                )
    write_results("cpu_threads", "cpu_threads.py", args, results, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
