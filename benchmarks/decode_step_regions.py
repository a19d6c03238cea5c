"""The one-call CPU decode step (ops/cpu_decode_step.c) in its two threading modes, interleaved
in one process on the demo model: one OpenMP region per step (plan.team on: kernels in team
mode, the step's own barriers) against one region per kernel (plan.team off: each GEMV and
the attention fork and join), both at --threads; and the step on one thread for scale.

Two settings per mode, rounds interleaved (A B C A B C ...) so a busy machine's swings fall on
every mode alike:
- `loop`: the C step alone, called back to back with one decode step's inputs (wall time);
- `engine`: offline greedy generation, the C step's wall time inside each decode step and the
  whole engine step's (the OpenMP workers idle through the Python between steps, as in use).

    PYTHONPATH=src python3 benchmarks/decode_step_regions.py [--quantization q4_k_m | --dtype
        bfloat16] [--rounds 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from record import write_results

ROOT = Path(__file__).resolve().parents[1]
MODES = {"one_region": (1, None), "region_per_kernel": (0, None), "one_thread": (0, 1)}


def _stats(ns: list[int]) -> dict:
    ns = sorted(ns)
    return {
        "min_us": ns[0] / 1e3,
        "p10_us": ns[len(ns) // 10] / 1e3,
        "median_us": statistics.median(ns) / 1e3,
        "n": len(ns),
    }


def measure(args) -> list[dict]:
    from minerva import LLM, SamplingParams

    torch.set_num_threads(args.threads)
    kw = {"quantization": args.quantization} if args.quantization else {"dtype": args.dtype}
    llm = LLM(model="demo", device="cpu", **kw)
    params = SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)
    prompt = list(range(5, 133))
    engine = llm.engine
    llm.generate([prompt], params)  # builds the C step
    step = engine.worker.runner.model._cpu_step
    if not step:
        raise SystemExit("the one-call CPU decode step did not build for this model/dtype")
    if not step.in_one_region(args.threads):
        raise SystemExit("this plan has no one-region mode (a kernel without a team mode)")
    run, engine_step = step.run, engine.step
    c_ns: list[int] = []
    step_ns: list[int] = []
    calls: list = []

    def timed_run(*a, **k):
        start = time.perf_counter_ns()
        out = run(*a, **k)
        c_ns.append(time.perf_counter_ns() - start)
        calls.append((a, k))
        return out

    def timed_step():
        start, before = time.perf_counter_ns(), len(c_ns)
        out = engine_step()
        if len(c_ns) == before + 1:  # a decode step the C step ran
            step_ns.append(time.perf_counter_ns() - start)
        else:
            del c_ns[before:]
        return out

    step.run, engine.step = timed_run, timed_step
    llm.generate([prompt], params)
    a, k = calls[len(calls) // 2]  # a mid-generation decode step's inputs
    samples = {mode: {"loop": [], "engine_c": [], "engine_step": []} for mode in MODES}
    for _ in range(args.rounds):
        for mode, (team, threads) in MODES.items():
            step.plan.team = team
            torch.set_num_threads(threads or args.threads)
            for _ in range(args.loop_calls):
                start = time.perf_counter_ns()
                run(*a, **k)
                samples[mode]["loop"].append(time.perf_counter_ns() - start)
            c_ns.clear(), step_ns.clear()
            llm.generate([prompt], params)
            samples[mode]["engine_c"] += c_ns
            samples[mode]["engine_step"] += step_ns
    step.run, engine.step, step.plan.team = run, engine_step, 1
    torch.set_num_threads(args.threads)
    return [
        {
            "mode": mode,
            "threads": threads or args.threads,
            "weights": args.quantization or args.dtype,
            **{f"{part}_{k}": v for part, ns in parts.items() for k, v in _stats(ns).items()},
        }
        for (mode, (_, threads)), parts in zip(MODES.items(), samples.values())
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--quantization", help="q8_0 / q4_k_m: GGUF blocks (float32 activations)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--loop-calls", type=int, default=200)
    p.add_argument("--output", default=str(ROOT / "benchmarks/results/decode_step_regions.json"))
    args = p.parse_args()
    rows = measure(args)
    write_results("decode_step_regions", "decode_step_regions.py", args, rows, args.output)
    for r in rows:
        print(
            f"{r['weights']:>9} {r['mode']:>17} ({r['threads']} threads): loop median "
            f"{r['loop_median_us']:6.0f} us (min {r['loop_min_us']:4.0f}); in the engine: C step "
            f"{r['engine_c_median_us']:6.0f} us, engine step {r['engine_step_median_us']:6.0f} us"
        )


if __name__ == "__main__":
    main()
