"""Prefill of in-situ fp8 weights on a GPU: x quantized by the torch twin vs one Triton kernel
(quant/fp8.py TRITON_X), with the bf16 model of the same folder beside them. One engine per
dtype; the two fp8 variants alternate on the same engine (prefill runs outside CUDA graphs, so
the flag takes effect at the next call).

    PYTHONPATH=src python3 benchmarks/fp8_prefill.py --folder /tmp/qbench/mistral-7b-bf16 \\
        [--tokens 512] [--rounds 5] [--output benchmarks/results]

The folder is a bf16 checkpoint (gpu_quant_bench.py --parts files --models mistral-7b:fp8 writes
a random one). Writes fp8_prefill_<gpu>.json: TTFT per variant (medians) and tokens/s.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_bench import timed_generate  # noqa: E402

from minerva import LLM, SamplingParams  # noqa: E402
from minerva.quant import fp8  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    prompt = [torch.randint(3, 4000, (args.tokens,), generator=g).tolist()]
    one = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    kw = dict(model=str(args.folder), max_model_len=4096, max_num_batched_tokens=4096)
    times: dict[str, list[float]] = {"fp8_torch_x": [], "fp8_triton_x": [], "bf16": []}
    llm = LLM(**kw, quantization="fp8", progress=False)
    for _ in range(2):
        timed_generate(llm, prompt, one)  # warm-up: kernels, autotuning
    flag = fp8.TRITON_X
    for _ in range(args.rounds):
        for name, on in (("fp8_torch_x", False), ("fp8_triton_x", True)):
            fp8.TRITON_X = on
            times[name].append(timed_generate(llm, prompt, one))
    fp8.TRITON_X = flag
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    llm = LLM(**kw, progress=False)
    timed_generate(llm, prompt, one)
    times["bf16"] = [timed_generate(llm, prompt, one) for _ in range(args.rounds)]
    rows = {
        name: {"ttft_s": statistics.median(t), "tok_s": args.tokens / statistics.median(t),
               "runs_s": t}
        for name, t in times.items()
    }  # fmt: skip
    doc = {
        "benchmark": "fp8_prefill",
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
        "tokens": args.tokens,
        "results": rows,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    slug = torch.cuda.get_device_name().split()[-1].lower()
    (args.output / f"fp8_prefill_{slug}.json").write_text(json.dumps(doc, indent=1))
    for name, r in rows.items():
        print(f"{name:14s} TTFT {r['ttft_s'] * 1e3:8.2f} ms  {r['tok_s']:9.0f} tok/s")


if __name__ == "__main__":
    main()
