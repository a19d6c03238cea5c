"""The engine thread's CPU time per decode step on the CPU, split into the one-call C decode
step and everything else the step does in Python (scheduling, inputs, sampling, outputs).

CPU time of the stepping thread (``time.thread_time_ns``), not wall time: other processes on
a shared machine stretch wall time but not the instructions this thread runs, so two versions
of the code compare even on a busy VM (the OpenMP worker's time is not counted; the C step's
figure is the master thread's share). Offline greedy generation of the demo model, medians
over every decode step of ``--repeats`` generations:

    PYTHONPATH=src python3 benchmarks/engine_thread_cpu.py [--dtype bfloat16 | --quantization q4_k_m]
        [--label main]

Run it once per code version (PYTHONPATH=<other checkout>/src for the other one) with the
same --output: each run adds its row to the file (keyed by --label).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from record import write_results

ROOT = Path(__file__).resolve().parents[1]


def measure(dtype: str, repeats: int, threads: int, quantization: str | None = None) -> dict:
    from minerva import LLM, SamplingParams

    torch.set_num_threads(threads)
    kw = {"quantization": quantization} if quantization else {"dtype": dtype}
    llm = LLM(model="demo", device="cpu", **kw)
    params = SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)
    prompt = list(range(5, 133))
    engine, clock = llm.engine, time.thread_time_ns
    model = engine.worker.runner.model
    step_ns: list[int] = []
    c_ns: list[int] = []
    step = engine.step

    def timed_step():
        start, before = clock(), len(c_ns)
        out = step()
        if len(c_ns) == before + 1:  # a decode step the C step ran (prefill steps are not)
            step_ns.append(clock() - start)
        else:
            del c_ns[before:]
        return out

    llm.generate([prompt], params)  # builds the C step
    decode = model._cpu_step
    if not decode:
        raise SystemExit("the one-call CPU decode step did not build for this model/dtype")
    run = decode.run

    def timed_run(*args, **kwargs):
        start = clock()
        out = run(*args, **kwargs)
        c_ns.append(clock() - start)
        return out

    decode.run, engine.step = timed_run, timed_step
    for _ in range(repeats):
        llm.generate([prompt], params)
    host = [s - c for s, c in zip(step_ns, c_ns)]
    return {
        "dtype": quantization or dtype,
        "threads": threads,
        "decode_steps": len(step_ns),
        "step_cpu_us": statistics.median(step_ns) / 1e3,
        "c_step_cpu_us": statistics.median(c_ns) / 1e3,
        "host_cpu_us": statistics.median(host) / 1e3,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--quantization", help="q8_0 / q4_k_m: GGUF blocks (float32 activations)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--label", default="main", help="this code version's name in the results")
    p.add_argument("--output", default=str(ROOT / "benchmarks/results/engine_thread_cpu.json"))
    args = p.parse_args()
    row = {
        "label": args.label,
        **measure(args.dtype, args.repeats, args.threads, args.quantization),
    }
    out = Path(args.output)
    rows = json.loads(out.read_text())["results"] if out.exists() else []
    rows = [r for r in rows if (r["label"], r["dtype"]) != (row["label"], row["dtype"])] + [row]
    write_results("engine_thread_cpu", "engine_thread_cpu.py", args, rows, out)
    for r in rows:
        print(
            f"{r['label']:>10} {r['dtype']:>9}: step {r['step_cpu_us']:7.1f} us, C step "
            f"{r['c_step_cpu_us']:7.1f}, host {r['host_cpu_us']:6.1f} ({r['decode_steps']} steps)"
        )


if __name__ == "__main__":
    main()
