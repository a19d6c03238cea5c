"""Minerva on one NVIDIA GPU: a Mistral-7B-shaped model with random bf16 weights.

    PYTHONPATH=src python3 benchmarks/gpu_bench.py [--shape mistral-7b] [--batches 8 32 64]
        [--output DIR]

Measures the copy-bandwidth roofline, engine start time, batch-1 decode tokens/s (after a
128-token prompt), prefill of a 512-token prompt (time to first token), decode throughput at
several concurrencies (128 in / 128 out; with an output per request per step as the server
asks, and with one output per request as LLM.generate asks), and peak GPU memory; transformers
in the same run (--no-transformers skips it). Writes gpu_bench_<shape>_<gpu>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from shapes import SHAPES, hf_config


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second; decode reads each weight byte
    once per token, so the batch-1 roofline is this bandwidth / weight bytes."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        b.copy_(a)
    torch.cuda.synchronize()
    bw = 2 * a.numel() * 20 / (time.perf_counter() - t)
    del a, b
    torch.cuda.empty_cache()
    return bw


def timed_generate(llm, prompts, params) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    llm.generate(prompts, params)
    torch.cuda.synchronize()
    return time.perf_counter() - t


def run_batch(engine, prompts, params, stream: bool = True) -> tuple[float, dict]:
    """All prompts at once through the engine; wall time and where the steps' time went.
    stream: an output per request per step (as the server asks); else one at the end (as
    LLM.generate asks)."""
    for p in prompts:
        engine.add_request(p, params, stream=stream)
    split = {"decode_steps": 0, "decode_s": 0.0, "other_steps": 0, "other_s": 0.0}
    torch.cuda.synchronize()
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        t = time.perf_counter()
        engine.step()
        dt = time.perf_counter() - t
        kind = (
            "decode" if set(engine.last_scheduler_output.num_scheduled_tokens) == {1} else "other"
        )
        split[f"{kind}_steps"] += 1
        split[f"{kind}_s"] += dt
    torch.cuda.synchronize()
    return time.perf_counter() - start, split


def transformers_decode(folder: Path, prompt: list[int], static: bool, n: int = 64) -> dict:
    """transformers generate, batch 1, bf16, sdpa: decode tok/s = n / (t(1+n) - t(1)).

    static=True uses the static cache, with which generate compiles the forward itself."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    ids = torch.tensor([prompt], device="cuda")
    extra = {"cache_implementation": "static"} if static else {}

    def run(k: int) -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                ids,
                max_new_tokens=k,
                min_new_tokens=k,
                do_sample=False,
                attention_mask=torch.ones_like(ids),
                pad_token_id=0,
                **extra,
            )
        torch.cuda.synchronize()
        return time.perf_counter() - t

    t = time.perf_counter()
    run(4)
    run(1 + n)  # static: compiles for the decode shapes
    warm_s = time.perf_counter() - t
    t1, tn = min(run(1) for _ in range(2)), min(run(1 + n) for _ in range(2))
    model = None  # free it before the next measurement
    torch.cuda.empty_cache()
    return {
        "decode_tok_s": n / (tn - t1),
        "ttft_s": t1,
        "cache": "static" if static else "dynamic",
        "compiled": static,
        "attn": "sdpa",
        "warm_up_s": warm_s,
    }


def main() -> None:
    from minerva import LLM, SamplingParams

    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="mistral-7b", choices=list(SHAPES))
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--output", default="benchmarks/results")
    ap.add_argument(
        "--compare-sync",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure batch-1 decode and throughput with async scheduling off",
    )
    ap.add_argument(
        "--torch-glue",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also time the 512-token prefill on a second engine with fused_kernels=false",
    )
    ap.add_argument(
        "--transformers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time transformers generate (bf16, sdpa, dynamic cache) at batch 1",
    )
    args = ap.parse_args()

    roofline_bw = copy_bandwidth()
    folder = Path(tempfile.mkdtemp())
    (folder / "config.json").write_text(json.dumps(hf_config(args.shape, dtype="bfloat16")))
    t0 = time.perf_counter()
    llm = LLM(
        model=str(folder),
        load_format="dummy",
        dtype="bfloat16",
        max_model_len=4096,
        max_num_batched_tokens=4096,
        progress=False,
    )
    start_s = time.perf_counter() - t0
    weight_bytes = llm.engine.worker.weight_bytes
    g = torch.Generator().manual_seed(0)

    def prompts(n, length):
        return [torch.randint(3, 32000, (length,), generator=g).tolist() for _ in range(n)]

    def greedy(k):
        return SamplingParams(max_tokens=k, temperature=0, ignore_eos=True)

    p128 = prompts(1, 128)
    timed_generate(llm, p128, greedy(8))  # warm-up

    def decode_batch1() -> float:
        t1 = min(timed_generate(llm, p128, greedy(1)) for _ in range(2))
        tn = min(timed_generate(llm, p128, greedy(129)) for _ in range(2))
        return 128 / (tn - t1)

    def throughputs(stream: bool = True) -> tuple[dict, dict, dict]:
        total, decode_only, steps = {}, {}, {}
        for b in args.batches:
            run_batch(llm.engine, prompts(b, 128), greedy(4))  # warm-up: kernels, shapes
            dt, steps[b] = run_batch(llm.engine, prompts(b, 128), greedy(128), stream)
            total[b] = b * 128 / dt
            decode_only[b] = b * steps[b]["decode_steps"] / steps[b]["decode_s"]
        return total, decode_only, steps

    decode_tok_s = decode_batch1()

    def ttft512() -> float:
        # A fresh prompt each time: a repeated one would be served from the prefix cache.
        timed_generate(llm, prompts(1, 512), greedy(1))
        return min(timed_generate(llm, prompts(1, 512), greedy(1)) for _ in range(3))

    ttft512_s = ttft512()
    throughput, decode_only, steps = throughputs()
    final_total, final_decode, _ = throughputs(stream=False)
    sync = None
    if args.compare_sync and llm.engine.async_scheduling:
        llm.engine.async_scheduling = False  # safe between generate calls: nothing in flight
        sync_total, sync_decode, _ = throughputs()
        sync = {
            "decode_batch1_tok_s": decode_batch1(),
            "throughput_128in_128out_tok_s": sync_total,
            "decode_only_tok_s": sync_decode,
        }
        llm.engine.async_scheduling = True
    roofline_tok_s = roofline_bw / weight_bytes
    graphs = llm.engine.worker.runner.graphs is not None
    llm_async = llm.engine.async_scheduling
    kv_bytes = llm.engine.worker.kv_cache_bytes
    reserve = llm.engine.worker.activation_reserve
    peak_gib = torch.cuda.max_memory_allocated() / 2**30
    llm = None  # free the engine before transformers loads its copy
    torch.cuda.empty_cache()
    ttft512_torch_glue = None
    if args.torch_glue:  # the kernel set is chosen at construction: a second engine
        llm = LLM(
            model=str(folder),
            load_format="dummy",
            dtype="bfloat16",
            max_model_len=4096,
            max_num_batched_tokens=4096,
            fused_kernels=False,
            progress=False,
        )
        ttft512_torch_glue = ttft512()
        llm = None
        torch.cuda.empty_cache()
    hf = hf_static = None
    if args.transformers:
        hf = transformers_decode(folder, p128[0], static=False)
        hf_static = transformers_decode(folder, p128[0], static=True)
    result = {
        "benchmark": "gpu_bench",
        "gpu": torch.cuda.get_device_name(),
        "driver": _driver_version(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "shape": args.shape,
        "weight_bytes": weight_bytes,
        "copy_bandwidth_gb_s": roofline_bw / 1e9,
        "roofline_decode_tok_s": roofline_tok_s,
        "engine_start_s": start_s,
        "decode_batch1_tok_s": decode_tok_s,
        "decode_fraction_of_roofline": decode_tok_s / roofline_tok_s,
        "prefill512_ttft_s": ttft512_s,
        "prefill512_tok_s": 512 / ttft512_s,
        "prefill512_ttft_s_torch_glue": ttft512_torch_glue,
        "throughput_128in_128out_tok_s": throughput,
        "decode_only_tok_s": decode_only,
        "throughput_steps": steps,
        "final_only_throughput_128in_128out_tok_s": final_total,
        "final_only_decode_only_tok_s": final_decode,
        "async_scheduling": llm_async,
        "sync_scheduling": sync,
        "peak_memory_gib": peak_gib,
        "kv_cache_gib": kv_bytes / 2**30,
        "activation_reserve_gib": reserve / 2**30,
        "peak_over_weights_and_kv": peak_gib * 2**30 / (weight_bytes + kv_bytes) - 1,
        "cuda_graphs": graphs,
        "transformers": hf,
        "transformers_static_compiled": hf_static,
        "decode_ratio_to_transformers": decode_tok_s / hf["decode_tok_s"] if hf else None,
        "decode_ratio_to_transformers_static": (
            decode_tok_s / hf_static["decode_tok_s"] if hf_static else None
        ),
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name().lower()
    slug = next((g for g in ("h100", "h200", "a100", "l40s", "l4", "4090") if g in gpu), "gpu")
    name = f"gpu_bench_{args.shape}_{slug}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}.md").write_text(markdown_table(result))
    print(json.dumps(result, indent=2))
    print(markdown_table(result))


def markdown_table(r: dict) -> str:
    """The headline figures with their ratios to the roofline and to transformers."""
    hf = r["transformers"]
    rows = [
        ("GPU", f"{r['gpu']} (driver {r['driver']}, torch {r['torch']}, triton {r['triton']})"),
        ("shape", f"{r['shape']}, {r['weight_bytes'] / 1e9:.2f} GB of bf16 weights"),
        ("roofline (copy bandwidth / weights)", f"{r['roofline_decode_tok_s']:.0f} tok/s"),
        (
            "batch-1 decode",
            f"{r['decode_batch1_tok_s']:.1f} tok/s = {r['decode_fraction_of_roofline']:.0%} of "
            "roofline"
            + (
                f", {r['decode_ratio_to_transformers']:.1f}x transformers dynamic cache "
                f"({hf['decode_tok_s']:.1f} tok/s), "
                f"{r['decode_ratio_to_transformers_static']:.2f}x transformers static cache + "
                f"compile ({r['transformers_static_compiled']['decode_tok_s']:.1f} tok/s)"
                if hf
                else ""
            ),
        ),
        (
            "prefill 512",
            f"{r['prefill512_tok_s']:.0f} tok/s (TTFT {r['prefill512_ttft_s'] * 1e3:.1f} ms)",
        ),
        ("engine start", f"{r['engine_start_s']:.1f} s"),
        (
            "peak GPU memory",
            f"{r['peak_memory_gib']:.1f} GiB = weights + KV cache ({r['kv_cache_gib']:.1f} GiB) "
            f"+ {r['peak_over_weights_and_kv']:.1%}",
        ),
    ]
    final = r.get("final_only_throughput_128in_128out_tok_s") or {}
    for b, tok_s in r["throughput_128in_128out_tok_s"].items():
        value = f"{tok_s:.0f} tok/s generated ({r['decode_only_tok_s'][b]:.0f} in decode steps)"
        if b in final:
            decode = r["final_only_decode_only_tok_s"][b]
            value += f"; final-only outputs: {final[b]:.0f} ({decode:.0f})"
        rows.append((f"{b} concurrent, 128 in / 128 out", value))
    sync = r.get("sync_scheduling")
    if sync:
        rows.append(
            ("batch-1 decode, async scheduling off", f"{sync['decode_batch1_tok_s']:.1f} tok/s")
        )
    lines = ["| measure | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def _driver_version() -> str | None:
    try:
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
