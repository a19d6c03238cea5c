"""Batch-1 decode of one model shape under several variants of the CUDA fast path, in one run,
so that small differences (a few percent) are not lost in the spread between lent machines.

    PYTHONPATH=src python3 benchmarks/decode_variants.py --shape tinyllama-1.1b
        [--variants folded folded-8 layered torch-glue] [--output DIR]

Variants:
- folded: the default (batch-1 GEMVs add the residual and apply the RMSNorm themselves);
- folded-8: the same with 8 output rows per program in the norm-applying GEMVs (half as many
  programs re-read the input, its norm weight and the partial sums);
- layered: batch-1 GEMVs, but add + RMSNorm as their own kernels (`model.one_token = None`);
- torch-glue: `fused_kernels=False` (cuBLAS and torch's glue ops).

Each variant gets a fresh engine (the graphs are captured with it). Decode tok/s as in
gpu_bench: 128 / (t(1 + 128 tokens) - t(1 token)) after a 128-token prompt, best of 3.
Writes decode_variants_<shape>_<gpu>.json and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import torch
from shapes import SHAPES, hf_config

VARIANTS = ("folded", "folded-8", "layered", "torch-glue")


def _patch(variant: str):
    """Install the variant's hooks; returns a function that removes them."""
    from minerva.models import llama, triton_gemv

    use_fused, rms_norm = llama.LlamaForCausalLM.use_fused_kernels, triton_gemv.gemv_rms_norm
    if variant == "layered":

        def layered(self, enabled=True):
            use_fused(self, enabled)
            self.one_token = None

        llama.LlamaForCausalLM.use_fused_kernels = layered
    elif variant == "folded-8":

        def rows8(h, partials, norm_weight, eps, weight, bias=None):
            config = (8, *triton_gemv.gemv_config(*weight.shape)[1:])
            return triton_gemv._launch(h, weight, bias, config, norm=(partials, norm_weight, eps))

        triton_gemv.gemv_rms_norm = rows8

    def undo() -> None:
        llama.LlamaForCausalLM.use_fused_kernels = use_fused
        triton_gemv.gemv_rms_norm = rms_norm

    return undo


def decode_tok_s(folder: Path, variant: str) -> float:
    from minerva import LLM, SamplingParams

    undo = _patch(variant)
    try:
        llm = LLM(
            model=str(folder),
            load_format="dummy",
            dtype="bfloat16",
            max_model_len=4096,
            fused_kernels=variant != "torch-glue",
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
        return max(128 / (timed(129) - timed(1)) for _ in range(3))
    finally:
        undo()
        llm = None  # free the engine (weights, KV cache, graphs) before the next one
        gc.collect()
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="tinyllama-1.1b", choices=list(SHAPES))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--output", default="benchmarks/results")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp())
    (folder / "config.json").write_text(json.dumps(hf_config(args.shape, dtype="bfloat16")))
    results = {}
    for variant in args.variants:
        results[variant] = decode_tok_s(folder, variant)
        print(
            f"{args.shape} {variant:10s} batch-1 decode {results[variant]:7.1f} tok/s", flush=True
        )
    gpu = torch.cuda.get_device_name()
    slug = next((g for g in ("h100", "h200") if g in gpu.lower()), "gpu")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "decode_variants", "gpu": gpu, "torch": torch.__version__}
    doc |= {"shape": args.shape, "decode_batch1_tok_s": results}
    (out / f"decode_variants_{args.shape}_{slug}.json").write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
