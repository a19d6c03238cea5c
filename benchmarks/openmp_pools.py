"""Decode steps driven from AsyncEngine's thread (as the server runs them), with the model
loaded on the caller's thread or in a thread that exits (runner/openmp_pools.py), interleaved.

    PYTHONPATH=src python3 benchmarks/openmp_pools.py [--model demo] [--threads 2] [--rounds 3]

Each measurement is its own process: load, then AsyncEngine streams `--repeats` greedy
generations of `--output-len` tokens after a 128-token prompt; per variant the median token
interval and the median engine step time (engine.step on the engine thread) over the repeats,
and per round both, so a noisy round shows. Results are written after every measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from record import write_results

HERE = Path(__file__).resolve().parent
VARIANTS = {"load on the caller's thread": False, "load in a passing thread": True}


def child(args) -> dict:
    from minerva import LLM, SamplingParams  # noqa: PLC0415
    from minerva.demo import resolve_model_arg  # noqa: PLC0415
    from minerva.engine.async_engine import AsyncEngine  # noqa: PLC0415
    from minerva.runner import openmp_pools  # noqa: PLC0415

    openmp_pools.LOAD_IN_PASSING_THREAD = args.passing
    llm = LLM(
        model=str(resolve_model_arg(args.model)), device="cpu", max_num_seqs=1,
        enable_prefix_caching=False, num_threads=args.threads, progress=False,
    )  # fmt: skip
    engine = llm.engine
    steps: list[float] = []
    step = engine.step

    def timed_step():
        t = time.perf_counter()
        out = step()
        steps.append(time.perf_counter() - t)
        return out

    engine.step = timed_step

    async def run() -> dict:
        async_engine = AsyncEngine(engine)
        async_engine.start()
        ids = list(range(300, 428))
        params = SamplingParams(max_tokens=args.output_len, temperature=0.0, ignore_eos=True)
        intervals, step_medians = [], []
        for _ in range(args.repeats + 1):  # the first one warms up
            steps.clear()
            times: list[float] = []
            stream = await async_engine.add_request(ids, params)
            async for out in stream:
                times += [time.perf_counter()] * len(out.outputs[0].delta_token_ids)
            intervals.append((times[-1] - times[1]) / (len(times) - 2))
            step_medians.append(statistics.median(steps[2:]))
        return {
            "token_interval_ms": statistics.median(intervals[1:]) * 1e3,
            "step_ms": statistics.median(step_medians[1:]) * 1e3,
        }

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--output", default=str(HERE / "results" / "openmp_pools.json"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--passing", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    rows: list[dict] = []
    public = argparse.Namespace(
        **{k: v for k, v in vars(args).items() if k not in ("child", "passing", "output")}
    )
    for r in range(args.rounds):
        order = list(VARIANTS.items())
        for name, passing in order if r % 2 == 0 else order[::-1]:
            cmd = [sys.executable, __file__, "--child", "--passing", str(int(passing))]
            cmd += ["--model", args.model, "--threads", str(args.threads)]
            cmd += ["--output-len", str(args.output_len), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = {"variant": name, "round": r, **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(json.dumps(row), flush=True)
            summary = {
                v: {
                    key: statistics.median(x[key] for x in rows if x["variant"] == v)
                    for key in ("token_interval_ms", "step_ms")
                }
                for v in VARIANTS
                if any(x["variant"] == v for x in rows)
            }
            result = {"rows": rows, "summary": summary}
            write_results("openmp_pools", "openmp_pools.py", public, [result], args.output)
    for v, s in summary.items():
        print(f"{v:32s} token interval {s['token_interval_ms']:.2f} ms, step {s['step_ms']:.2f} ms")


if __name__ == "__main__":
    main()
