"""Where a 512-token prefill's time goes on a GPU: time to first token of fresh prompts
(random-weight model of a shape, as gpu_bench.py), then one torch.profiler pass that sums the
device time per kernel and the host time the step leaves the GPU idle. Run it on two checkouts
(PYTHONPATH=<checkout>/src:benchmarks) to see what a change moved.

    PYTHONPATH=src:benchmarks python3 benchmarks/prefill_profile.py --shape tinyllama-1.1b \
        --label after --output DIR

Appends one JSON line per run to DIR/prefill_profile_<shape>.jsonl (nothing is overwritten).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from shapes import SHAPES, hf_config


def main() -> None:
    from minerva import LLM, SamplingParams

    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="tinyllama-1.1b", choices=list(SHAPES))
    ap.add_argument("--label", required=True, help="which checkout this is (before / after)")
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp())
    (folder / "config.json").write_text(json.dumps(hf_config(args.shape, dtype="bfloat16")))
    llm = LLM(model=str(folder), load_format="dummy", dtype="bfloat16", max_model_len=4096,
              max_num_batched_tokens=4096, progress=False)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)  # the CPU: a dry run of the script

    def ttft() -> float:
        # a fresh prompt each time: a repeated one would be served from the prefix cache
        prompt = torch.randint(3, 32000, (args.length,), generator=gen).tolist()
        sync()
        t0 = time.perf_counter()
        llm.generate([prompt], params)
        sync()
        return time.perf_counter() - t0

    for _ in range(3):
        ttft()  # warm-up: kernels, shapes
    times = [ttft() for _ in range(args.repeats)]
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as prof:
        profiled = [ttft() for _ in range(3)]
    kernels = {}
    for e in prof.key_averages():
        dev = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if dev and e.device_type == torch.autograd.DeviceType.CUDA:
            kernels[e.key] = {"device_us": dev / 3, "count": e.count / 3}
    top = dict(sorted(kernels.items(), key=lambda kv: -kv[1]["device_us"])[:30])
    device_us = sum(v["device_us"] for v in kernels.values())
    row = {
        "benchmark": "prefill_profile",
        "label": args.label,
        "shape": args.shape,
        "length": args.length,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "commit": _commit(),
        "ttft_ms": [t * 1e3 for t in times],
        "ttft_ms_median": statistics.median(times) * 1e3,
        "ttft_ms_min": min(times) * 1e3,
        "profiled_ttft_ms": [t * 1e3 for t in profiled],
        "device_ms_per_prefill": device_us / 1e3,
        "kernel_launches_per_prefill": sum(v["count"] for v in kernels.values()),
        "top_kernels": top,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    with open(args.output / f"prefill_profile_{args.shape}.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(
        f"{args.label:7} {args.shape} ttft median {row['ttft_ms_median']:.3f} ms min "
        f"{row['ttft_ms_min']:.3f} | device {row['device_ms_per_prefill']:.3f} ms in "
        f"{row['kernel_launches_per_prefill']:.0f} kernels"
    )
    for name, v in list(top.items())[:12]:
        print(f"    {v['device_us']:9.1f} us {v['count']:5.0f}x {name[:90]}")


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    main()
