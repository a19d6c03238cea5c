"""Batch-1 decode of one model shape under several variants of the CUDA fast path, in one run,
so that small differences (a few percent) are not lost in the spread between lent machines.

    PYTHONPATH=src python3 benchmarks/decode_variants.py --shape tinyllama-1.1b
        [--variants default no-pdl session2 layered torch-glue] [--profile]

Variants:
- default: what the engine does (GEMVs with the add + RMSNorm and SiLU * mul folded in, RoPE +
  KV write in one kernel, programmatic dependent launch);
- no-pdl: plain launches (config pdl=false);
- session2: plain launches, separate RoPE / KV-write / SiLU * mul kernels (the previous path);
- layered: session2 with add + RMSNorm as their own kernels too (no one-token GEMV hooks);
- torch-glue: `fused_kernels=False` (cuBLAS and torch's glue ops);
- int8 / float: GGUF weights (--gguf) with 8-bit activations and dp4a products in the one-token
  GEMVs, or the float kernel that decodes the weights (quant/gguf.py INT8_ACTIVATIONS);
- fused-quant / unfused-quant: GGUF int8, the next layer's 8-bit x quantized by the producing
  GEMV's last program, or by a launch of its own (quant/gguf_one_token.py FUSE_QUANT_OUT).

Each variant gets a fresh engine (the graphs are captured with it). Decode tok/s as in
gpu_bench: 128 / (t(1 + 128 tokens) - t(1 token)) after a 128-token prompt, best of 3.
--profile adds, for every variant, the GPU kernels of a decode step (torch.profiler over
the graph replays): count and time per step by kernel. Writes
decode_variants_<shape>_<gpu>.json and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from shapes import SHAPES, hf_config

VARIANTS = (
    "default", "no-pdl", "session2", "layered", "torch-glue", "int8", "float", "fused-quant",
    "unfused-quant",
)  # fmt: skip


def _patch(variant: str):
    """Install the variant's kernel set (the worker picks it once); returns a function that
    removes it."""
    import dataclasses

    from minerva.quant import gguf, gguf_one_token
    from minerva.runner import worker

    select = worker.select_kernels
    int8, fuse = gguf.INT8_ACTIVATIONS, gguf_one_token.FUSE_QUANT_OUT
    if variant in ("int8", "float"):
        gguf.INT8_ACTIVATIONS = variant == "int8"
    if variant in ("fused-quant", "unfused-quant"):  # GGUF int8: the next x from the producer
        gguf_one_token.FUSE_QUANT_OUT = variant == "fused-quant"
    if variant in ("session2", "layered"):

        def separate(platform, **kw):
            kernels = select(platform, **kw)
            if kernels.name != "triton":
                return kernels
            add_residual = kernels.gemv_add_residual

            def silu_then_down(x, weight, bias, residual, gated=False):
                if gated:
                    x = kernels.silu_and_mul(x)
                return add_residual(x, weight, bias, residual)

            kernels = dataclasses.replace(
                kernels, fuse_rope_write_kv=False, gemv_add_residual=silu_then_down
            )
            if variant == "layered":
                kernels = dataclasses.replace(kernels, gemv_rms_norm=None, gemv_add_residual=None)
            return kernels

        worker.select_kernels = separate

    def undo() -> None:
        worker.select_kernels = select
        gguf.INT8_ACTIVATIONS, gguf_one_token.FUSE_QUANT_OUT = int8, fuse

    return undo


def _profile(llm, prompt: list[int], steps: int = 32) -> dict:
    """GPU kernels of `steps` graph-replayed decode steps: per kernel name, launches and
    microseconds per step; with the summed kernel time and the wall time per step."""
    from torch.profiler import ProfilerActivity, profile

    from minerva import SamplingParams

    def run(k: int) -> None:
        llm.generate([prompt], SamplingParams(max_tokens=k, temperature=0, ignore_eos=True))

    run(steps + 1)  # warm
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run(1)
    prefill = {e.name for e in prof.events() if e.device_type.name == "CUDA"}
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.cuda.synchronize()
        t = time.perf_counter()
        run(steps + 1)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
    per_kernel = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type.name == "CUDA" and e.device_time > 0:
            per_kernel[e.name][0] += 1
            per_kernel[e.name][1] += e.device_time
    rows = sorted(
        (
            {"kernel": name[:90], "per_step": n / steps, "us_per_step": us / steps}
            for name, (n, us) in per_kernel.items()
            if n >= steps or name not in prefill
        ),
        key=lambda r: -r["us_per_step"],
    )
    return {
        "steps": steps,
        "wall_us_per_step_incl_prefill": wall / steps * 1e6,
        "kernel_us_per_step": sum(r["us_per_step"] for r in rows),
        "launches_per_step": sum(r["per_step"] for r in rows),
        "kernels": rows,
    }


def decode_tok_s(model: Path, variant: str, profile: bool = False) -> tuple[float, dict | None]:
    from minerva import LLM, SamplingParams

    undo = _patch(variant)
    try:
        gguf_file = model.suffix == ".gguf"
        llm = LLM(
            model=str(model),
            load_format="auto" if gguf_file else "dummy",
            dtype="bfloat16",
            max_model_len=4096,
            fused_kernels=variant != "torch-glue",
            pdl=variant not in ("no-pdl", "session2", "layered"),
            progress=False,
        )
        prompt = [torch.randint(3, 32000, (128,), generator=torch.Generator().manual_seed(0))]

        def timed(k: int) -> float:
            params = SamplingParams(max_tokens=k, temperature=0, ignore_eos=True)
            torch.cuda.synchronize()
            t = time.perf_counter()
            llm.generate([prompt[0].tolist()], params)
            torch.cuda.synchronize()
            return time.perf_counter() - t

        timed(8)
        tok_s = max(128 / (timed(129) - timed(1)) for _ in range(3))
        return tok_s, (_profile(llm, prompt[0].tolist()) if profile else None)
    finally:
        undo()
        llm = None  # free the engine (weights, KV cache, graphs) before the next one
        gc.collect()
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="tinyllama-1.1b", choices=list(SHAPES))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--profile", action="store_true", help="kernel table of every variant")
    ap.add_argument("--output", default="benchmarks/results")
    ap.add_argument(
        "--gguf", type=Path, default=None, help="a GGUF file instead of random bf16 weights"
    )
    args = ap.parse_args()
    model = args.gguf
    if model is None:
        model = Path(tempfile.mkdtemp())
        (model / "config.json").write_text(json.dumps(hf_config(args.shape, dtype="bfloat16")))
    else:
        args.shape = model.stem
    results, profiles = {}, {}
    for variant in args.variants:
        results[variant], prof = decode_tok_s(model, variant, args.profile)
        if prof:
            profiles[variant] = prof
        print(
            f"{args.shape} {variant:12s} batch-1 decode {results[variant]:7.1f} tok/s", flush=True
        )
    gpu = torch.cuda.get_device_name()
    slug = next((g for g in ("h100", "h200") if g in gpu.lower()), "gpu")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "decode_variants", "gpu": gpu, "torch": torch.__version__}
    doc |= {"shape": args.shape, "decode_batch1_tok_s": results}
    for variant, profile in profiles.items():
        doc["profile_" + variant] = profile
        print(f"\nkernels of one decode step ({variant}):")
        for r in profile["kernels"][:25]:
            print(f"{r['us_per_step']:8.1f} us {r['per_step']:6.1f}x  {r['kernel']}")
        print(
            f"sum {profile['kernel_us_per_step']:.1f} us in {profile['launches_per_step']:.0f} "
            f"launches; wall {profile['wall_us_per_step_incl_prefill']:.1f} us per step"
        )
    (out / f"decode_variants_{args.shape}_{slug}.json").write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
