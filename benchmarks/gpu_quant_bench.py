"""GGUF models on one NVIDIA GPU: Minerva and llama.cpp on the same files, in one run.

    PYTHONPATH=src python3 benchmarks/gpu_quant_bench.py --parts files minerva llama \
        [--models mistral-7b:Q4_K_M mistral-7b:Q8_0 tinyllama-1.1b:Q4_K_M] [--llama-bin DIR]
        [--work DIR] [--output DIR]

Files: random-weight models written as GGUF with llama.cpp's tensor types for the mix (random
codes, f16 scales in [1e-4, 1e-3): valid weights that neither engine can tell from trained ones
by speed). Minerva: batch-1 decode after a 128-token prompt (reported next to its bytes-read
roofline), prefill of 512 tokens, and 64 / 256 concurrent requests of 128 in / 128 out.
llama.cpp (tools built on the same machine, CUDA, flash attention on): llama-bench `-p 512 -n 128
-fa 1 -r 3` and llama-batched-bench `-npp 128 -ntg 128 -npl 64,256`. Parts can run in separate
calls: results accumulate in WORK/results.json, and every part rewrites OUTPUT's
gpu_quant_bench_<gpu>.json and .md, so nothing measured is lost.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import copy_bandwidth, run_batch, timed_generate  # noqa: E402
from shapes import hf_config  # noqa: E402

F16_FIELDS = {"Q8_0": (0,), "Q4_0": (0,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
"""Byte offsets of the f16 scales in a file block of each type."""


def random_blocks(ggml_type, rows: int, cols: int, rng, scale: tuple[float, float]) -> np.ndarray:
    """uint8 [rows, row bytes]: blocks of random codes whose f16 scales are uniform in `scale`
    (valid weights, as fast to decode as trained ones)."""
    from minerva.quant.gguf_types import BLOCK_GEOMETRY

    block, size = BLOCK_GEOMETRY[ggml_type]
    b = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    lo, hi = scale
    for off in F16_FIELDS[ggml_type.name]:
        d = (rng.random((rows, cols // block), dtype=np.float32) * (hi - lo) + lo).astype(
            np.float16
        )
        b[:, :, off : off + 2] = d.view(np.uint8).reshape(rows, cols // block, 2)
    return b.reshape(rows, -1)


def write_random_gguf(shape: str, mix: str, path: Path) -> None:
    """A `shape` model whose every weight is random blocks of the type `mix` gives it."""
    from minerva.demo import demo_model_path
    from minerva.loader.gguf_export import write_gguf
    from minerva.loader.hf_config import _parse_config
    from minerva.quant.gguf_mix import mix_type
    from minerva.quant.gguf_types import GGMLType, QuantizedTensor

    cfg = hf_config(shape)
    config = _parse_config(cfg, path)
    n_layers, h, inter = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]
    kv = cfg["num_key_value_heads"] * h // cfg["num_attention_heads"]
    rng = np.random.default_rng(0)

    def tensors():
        yield "model.embed_tokens.weight", torch.empty(cfg["vocab_size"], h)
        for i in range(n_layers):
            p = f"model.layers.{i}."
            for name, rows, cols in [
                ("self_attn.q_proj", h, h), ("self_attn.k_proj", kv, h),
                ("self_attn.v_proj", kv, h), ("self_attn.o_proj", h, h),
                ("mlp.gate_proj", inter, h), ("mlp.up_proj", inter, h),
                ("mlp.down_proj", h, inter),
            ]:  # fmt: skip
                yield p + name + ".weight", torch.empty(rows, cols)
            yield p + "input_layernorm.weight", torch.ones(h)
            yield p + "post_attention_layernorm.weight", torch.ones(h)
        yield "model.norm.weight", torch.ones(h)
        if not cfg["tie_word_embeddings"]:
            yield "lm_head.weight", torch.empty(cfg["vocab_size"], h)

    def plan(gguf_name: str, shape_: tuple) -> GGMLType:
        m = re.match(r"blk\.(\d+)\.", gguf_name)
        layer = int(m.group(1)) if m else None
        return mix_type(mix, gguf_name, layer, n_layers, cols=shape_[-1])

    def quantize(tensor: torch.Tensor, ggml_type: GGMLType) -> QuantizedTensor:
        rows, cols = tensor.shape
        b = random_blocks(ggml_type, rows, cols, rng, (1e-4, 1e-3))
        return QuantizedTensor(torch.from_numpy(b), ggml_type, (rows, cols))

    write_gguf(
        config, tensors(), path, plan, quantize=quantize,
        tokenizer_dir=demo_model_path(), file_type=mix.lower(), name=f"random-{shape}",
    )  # fmt: skip


def write_random_folder(shape: str, path: Path) -> None:
    """A `shape` model as a bf16 safetensors folder of random weights (std 0.02), written from
    the GPU a shard at a time (for the in-situ fp8 runs)."""
    from safetensors.torch import save_file

    cfg = hf_config(shape, dtype="bfloat16")
    path.mkdir(parents=True, exist_ok=True)
    h, inter, n_layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = cfg["num_key_value_heads"] * h // cfg["num_attention_heads"]
    g = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape_):
        return (torch.randn(*shape_, generator=g, device="cuda") * 0.02).bfloat16()

    def layer(i: int) -> dict:
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h),
                  "self_attn.v_proj": (kv, h), "self_attn.o_proj": (h, h),
                  "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
                  "mlp.down_proj": (h, inter)}  # fmt: skip
        out = {p + k + ".weight": rand(*v).cpu() for k, v in shapes.items()}
        for norm in ("input_layernorm", "post_attention_layernorm"):  # no shared storage
            out[p + norm + ".weight"] = torch.ones(h, dtype=torch.bfloat16)
        return out

    first = {"model.embed_tokens.weight": rand(cfg["vocab_size"], h).cpu(),
             "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}  # fmt: skip
    if not cfg["tie_word_embeddings"]:
        first["lm_head.weight"] = rand(cfg["vocab_size"], h).cpu()
    save_file(first, path / "model-first.safetensors")
    for i in range(n_layers):
        save_file(layer(i), path / f"model-layer{i:03d}.safetensors")
    (path / "config.json").write_text(json.dumps(cfg))


def measure_minerva(
    path: Path, concurrency: list[int], bandwidth: float, quantization: str | None = None
) -> dict:
    from minerva import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(
        model=str(path), max_model_len=4096, max_num_batched_tokens=4096, progress=False,
        quantization=quantization,
    )  # fmt: skip
    start_s = time.perf_counter() - t0
    weight_bytes = llm.engine.worker.weight_bytes
    g = torch.Generator().manual_seed(0)

    def prompts(n, length):
        return [torch.randint(3, 4000, (length,), generator=g).tolist() for _ in range(n)]

    def greedy(k):
        return SamplingParams(max_tokens=k, temperature=0, ignore_eos=True)

    p128 = prompts(1, 128)
    timed_generate(llm, p128, greedy(8))  # warm-up
    t1 = min(timed_generate(llm, p128, greedy(1)) for _ in range(2))
    tn = min(timed_generate(llm, p128, greedy(129)) for _ in range(2))
    decode = 128 / (tn - t1)
    timed_generate(llm, prompts(1, 512), greedy(1))
    ttft = min(timed_generate(llm, prompts(1, 512), greedy(1)) for _ in range(3))
    throughput, decode_only = {}, {}
    for b in concurrency:
        run_batch(llm.engine, prompts(b, 128), greedy(4))  # warm-up: shapes, graphs
        dt, steps = run_batch(llm.engine, prompts(b, 128), greedy(128))
        throughput[b] = b * 128 / dt
        decode_only[b] = b * steps["decode_steps"] / max(steps["decode_s"], 1e-9)
    layer = llm.engine.worker.model.model.layers[0].mlp.down_proj
    result = {
        "engine_start_s": start_s,
        "weight_bytes": weight_bytes,
        "layouts": sorted({g[3] for g in getattr(layer, "gguf_groups", [])}),
        "cuda_graphs": llm.engine.worker.runner.graphs is not None,
        "decode_batch1_tok_s": decode,
        "roofline_tok_s": bandwidth / weight_bytes,
        "decode_fraction_of_roofline": decode * weight_bytes / bandwidth,
        "prefill512_tok_s": 512 / ttft,
        "prefill512_ttft_s": ttft,
        "throughput_128in_128out_tok_s": throughput,
        "decode_only_tok_s": decode_only,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    del llm
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return result


def measure_llama(path: Path, bin_dir: Path, concurrency: list[int]) -> dict:
    bench = subprocess.run(
        [str(bin_dir / "llama-bench"), "-m", str(path), "-ngl", "99", "-p", "512", "-n", "128",
         "-fa", "1", "-r", "3", "-o", "json"],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    result: dict = {"llama_bench_rc": bench.returncode}
    if bench.returncode == 0:
        for row in json.loads(bench.stdout):
            key = "prefill512_tok_s" if row["n_prompt"] else "decode_batch1_tok_s"
            result[key] = row["avg_ts"]
            result[key.replace("tok_s", "samples")] = row.get("samples_ts")
    else:
        result["llama_bench_stderr"] = bench.stderr[-2000:]
    ctx = max(concurrency) * 256 + 256
    batched = subprocess.run(
        [str(bin_dir / "llama-batched-bench"), "-m", str(path), "-ngl", "99", "-c", str(ctx),
         "-b", "2048", "-ub", "512", "-npp", "128", "-ntg", "128",
         "-npl", ",".join(map(str, concurrency)), "-fa", "on"],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    result["batched_rc"] = batched.returncode
    result["batched_table"] = [ln for ln in batched.stdout.splitlines() if ln.startswith("|")]
    gen = {}
    for ln in result["batched_table"]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) >= 10 and cells[2].isdigit():  # PP TG B N_KV T_PP S_PP T_TG S_TG T S
            gen[int(cells[2])] = float(cells[7])
    result["generated_tok_s"] = gen  # S_TG: generated tokens per second in the TG phase
    if batched.returncode != 0:
        result["batched_stderr"] = batched.stderr[-2000:]
    return result


def summary(results: dict) -> str:
    lines = [
        "| shape | mix | GB | Minerva decode (of roofline) | llama.cpp decode | ratio | "
        "Minerva prefill-512 | llama.cpp | ratio | Minerva 64 / 256 concurrent | llama.cpp | ratio 64 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for _, r in sorted(results.get("models", {}).items()):
        m, ll = r.get("minerva") or {}, r.get("llama") or {}

        def ratio(a, b):
            return f"{a / b:.2f}x" if a and b else "-"

        md, lld = m.get("decode_batch1_tok_s"), ll.get("decode_batch1_tok_s")
        mp, llp = m.get("prefill512_tok_s"), ll.get("prefill512_tok_s")
        mt = m.get("throughput_128in_128out_tok_s") or {}
        lt = ll.get("generated_tok_s") or {}
        conc = " / ".join(f"{v:.0f}" for v in mt.values()) if mt else "-"
        lconc = " / ".join(f"{v:.0f}" for v in lt.values()) if lt else "-"
        m64 = mt.get(64) or mt.get("64")
        l64 = lt.get(64) or lt.get("64")
        gb = m.get("weight_bytes", 0) / 1e9
        dec = f"{md:.1f} ({m['decode_fraction_of_roofline']:.0%})" if md else "-"
        lines.append(
            f"| {r['shape']} | {r['mix']} | {gb:.2f} | {dec} | {lld or 0:.1f} | {ratio(md, lld)} "
            f"| {mp or 0:.0f} | {llp or 0:.0f} | {ratio(mp, llp)} | {conc} | {lconc} "
            f"| {ratio(m64, l64)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", nargs="+", default=["files", "minerva", "llama"])
    ap.add_argument(
        "--models",
        nargs="+",
        default=["mistral-7b:Q4_K_M", "mistral-7b:Q8_0", "tinyllama-1.1b:Q4_K_M"],
        help="shape:mix pairs",
    )
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--llama-bin", type=Path, default=Path("/tmp/llama-build/bin"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/qbench"))
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    ap.add_argument(
        "--dequant-rows",
        type=int,
        default=None,
        help="rows above which the weights are decoded to bf16 for cuBLAS (quant/gguf_matmul.py)",
    )
    ap.add_argument(
        "--int8-rows",
        type=int,
        default=None,
        help="rows up to which x is quantized to int8 for the tensor cores (quant/gguf_matmul.py)",
    )
    ap.add_argument(
        "--int4-float-x",
        action="store_true",
        help="int4's one-token GEMV on bf16 x (the float kernel) instead of 8-bit x and dp4a",
    )
    ap.add_argument("--tag", default="", help="suffix of the result key (a variant's name)")
    args = ap.parse_args()
    from minerva.quant import gguf_matmul

    if args.int4_float_x:
        from minerva.ops import triton_int4

        triton_int4.INT8_X = False

    if args.dequant_rows is not None:
        gguf_matmul.PREFILL_DEQUANT_ROWS = args.dequant_rows
    if args.int8_rows is not None:
        gguf_matmul.INT8_GEMM_MAX_ROWS = args.int8_rows
    args.work.mkdir(parents=True, exist_ok=True)
    store = args.work / "results.json"
    gpu = torch.cuda.get_device_name()
    slug = next((s for s in ("h100", "h200") if s in gpu.lower()), "gpu")
    # A fresh machine starts from the committed results, so that a run of some models keeps the
    # figures of the others (a benchmark never discards what it measured).
    committed = Path("benchmarks/results") / f"gpu_quant_bench_{slug}.json"
    seed = store if store.exists() else committed
    results = json.loads(seed.read_text()) if seed.exists() else {"models": {}}
    results.update(gpu=gpu, torch=torch.__version__)
    if "bandwidth" not in results:
        results["bandwidth"] = copy_bandwidth()

    def save() -> None:
        store.write_text(json.dumps(results, indent=1))
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / f"gpu_quant_bench_{slug}.json").write_text(json.dumps(results, indent=1))
        (args.output / f"gpu_quant_bench_{slug}.md").write_text(summary(results))

    for pair in args.models:
        shape, mix = pair.split(":")
        insitu = mix.lower() in ("fp8", "int8", "int4")  # a bf16 folder quantized at load
        path = args.work / (f"{shape}-bf16" if insitu else f"{shape}-{mix}.gguf")
        key = f"{shape}-{mix}{args.tag}"
        entry = results["models"].setdefault(key, {"shape": shape, "mix": mix + args.tag})
        if "files" in args.parts and not path.exists():
            t = time.perf_counter()
            if insitu:
                write_random_folder(shape, path)
            else:
                write_random_gguf(shape, mix, path)
            entry["write_s"] = time.perf_counter() - t
            print(f"wrote {path}", flush=True)
        if "minerva" in args.parts:
            try:
                entry["minerva"] = measure_minerva(
                    path, args.concurrency, results["bandwidth"], mix.lower() if insitu else None
                )
            except Exception as e:  # recorded; the other models still run
                entry["minerva_error"] = f"{type(e).__name__}: {e}"[:2000]
            print(key, "minerva", json.dumps(entry.get("minerva"))[:400], flush=True)
            save()
        if "llama" in args.parts and not insitu:
            entry["llama"] = measure_llama(path, args.llama_bin, args.concurrency)
            print(key, "llama", json.dumps(entry["llama"])[:400], flush=True)
            save()
    save()
    print(summary(results))


if __name__ == "__main__":
    main()
