"""The engine's own work per decode step (scheduling, inputs, sampling metadata, output
processing), measured on the CPU with a tiny model; the model's forward is timed apart.

On a GPU this host work runs beside the device under async scheduling; once it is longer than
the GPU's step (small models, many sequences) it sets the speed. Time per decode step at each
batch size and the part of it outside the forward, medians over the steps, for requests that
stream (an output per step, as the server asks) and for requests reported once when finished
(as LLM.generate asks):

    PYTHONPATH=src python3 benchmarks/host_overhead.py [--batches 1 64 256] [--tokens 64]

Writes benchmarks/results/host_overhead_cpu.json and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from record import write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.tiny_models import build_tiny_model  # noqa: E402


def step_times(
    engine, prompts, max_tokens: int, stream: bool = True
) -> tuple[list[float], list[float]]:
    """(wall time, time outside the model's forward) of each engine.step() whose batch is all
    decodes. The forward (attention over every context on the CPU) is the part a GPU takes."""
    from minerva import SamplingParams

    model, forward_s = engine.worker.runner.model, [0.0]
    forward = model.forward

    def timed_forward(*args, **kwargs):
        t = time.perf_counter()
        out = forward(*args, **kwargs)
        forward_s[0] += time.perf_counter() - t
        return out

    model.forward = timed_forward
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    for p in prompts:
        engine.add_request(p, params, stream=stream)
    walls, hosts = [], []
    while engine.has_unfinished_requests():
        forward_s[0] = 0.0
        t = time.perf_counter()
        engine.step()
        dt = time.perf_counter() - t
        if set(engine.last_scheduler_output.num_scheduled_tokens) == {1}:
            walls.append(dt)
            hosts.append(dt - forward_s[0])
    del model.forward
    return walls, hosts


def main() -> None:
    from minerva import LLM

    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--output", default="benchmarks/results/host_overhead_cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the forward is negligible; keep the second core quiet
    folder = Path(tempfile.mkdtemp())
    build_tiny_model(folder, hidden_size=64, num_hidden_layers=1, max_position_embeddings=512)
    llm = LLM(
        model=str(folder),
        device="cpu",
        dtype="float32",
        max_num_seqs=max(args.batches),
        max_num_batched_tokens=8192,
        max_model_len=256,
        async_scheduling="on",
        progress=False,
    )
    rows = []
    for b in args.batches:
        prompts = [[3 + (i % 200)] * 64 for i in range(b)]
        step_times(llm.engine, prompts[: min(b, 4)], 4)  # warm-up
        # stream: an output per request per step (the server); not: one at the end (generate)
        for stream in (True, False):
            walls, hosts = step_times(llm.engine, prompts, args.tokens, stream)
            med, host = statistics.median(walls), statistics.median(hosts)
            rows.append(
                {
                    "batch": b,
                    "stream": stream,
                    "decode_step_ms": med * 1e3,
                    "host_ms": host * 1e3,
                    "host_per_request_us": host / b * 1e6,
                }
            )
            print(
                f"batch {b:4d} {'streamed' if stream else 'final only':10s}: {med * 1e3:7.2f} ms "
                f"per decode step, of which {host * 1e3:6.2f} ms outside the forward "
                f"({host / b * 1e6:6.1f} us per request)"
            )
    write_results("host_overhead", "host_overhead.py", args, rows, args.output)


if __name__ == "__main__":
    main()
