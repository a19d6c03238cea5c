"""Every engine on the same weights, in one run: `minerva bench latency | throughput |
consistency` in-process (minerva, llamacpp, transformers by default) on one model, then
`minerva bench serve` against llama.cpp's own OpenAI server (`python -m llama_cpp.server`),
Minerva's server in front of llama.cpp (`minerva serve --backend llamacpp`) and Minerva's own
engine, all on one F16 GGUF file, for the server-overhead figure.

    PYTHONPATH=src python3 benchmarks/backends_compare.py [--model demo] [--threads 2]
        [--backends minerva,llamacpp,transformers] [--parts offline,serve]
        (offline = latency,throughput,consistency; each may be named alone)
        [--quantization q8_0] [--backend-arg minerva.kv_cache_dtype=float16]
        [--serve-mlx] [--serve-mistralrs] [--dtype bfloat16]
        [--output benchmarks/results/backends_cpu_demo]

Writes each command's folder (results.json, report.md, CSV, PNG charts) under --output and a
summary (ratios to minerva, the serve overhead) in --output/summary.json; a part left out of
--parts keeps its earlier results from --output. The serve overhead is TTFT at concurrency 1:
llama_cpp.server ignores ``ignore_eos``, so its outputs can be shorter, which only later
requests' queueing (higher concurrency) would feel. Needs llama-cpp-python
with its server extra (pip install "minerva-llm[llamacpp]").

--quantization runs the offline part at the same bits in every engine: each quantizes the
model's float weights while loading (Minerva in situ, llama.cpp's own quantizer on its F16
conversion, mistral.rs ISQ, MLX affine at the same width); transformers, which has no such
option, is left out of that run; the serve part stays on the F16 file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from minerva.cli import main  # noqa: E402
from tests.ports import free_port  # noqa: E402


def bench(kind: str, out: Path, *args: str, run: bool = True) -> dict:
    """One `minerva bench` command (or, run=False, its earlier results, {} if none); its
    results.json."""
    folder = out / kind
    if not run:
        earlier = folder / "results.json"
        return json.loads(earlier.read_text()) if earlier.exists() else {}
    sys.argv = ["minerva", "bench", kind, *args]  # what the report records as its command
    code = main(["bench", kind, *args, "--no-progress", "--output", str(folder)])
    assert code == 0, f"minerva bench {kind} exited with {code}"
    return json.loads((folder / "results.json").read_text())


def f16_gguf(model: str, folder: Path) -> Path:
    """The model as an F16 GGUF file (the llamacpp backend's own conversion, cached)."""
    from minerva.backends.llamacpp_files import gguf_for
    from minerva.config import EngineConfig
    from minerva.demo import resolve_model_arg

    config = EngineConfig.from_kwargs(model=model)
    os.environ.setdefault("MINERVA_CACHE_DIR", str(folder))
    return gguf_for(resolve_model_arg(model), None, config)


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited:\n{log.read_text()}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).raise_for_status()
            return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{cmd[:4]} did not start:\n{log.read_text()}")


def serve_overhead(model: str, out: Path, threads: int, args) -> dict:
    """llama_cpp.server, minerva --backend llamacpp and minerva on one file, one bench run."""
    if "serve" not in args.parts:
        return bench("serve", out, run=False)
    with tempfile.TemporaryDirectory() as tmp:
        return _serve(f16_gguf(model, Path(tmp)), out, threads, args)


def _mlx_servers(model: str, ctx: str, threads: int) -> dict[str, list[str]]:
    """mlx-lm's own OpenAI server and Minerva's server on the mlx backend, on the model's HF
    folder (MLX reads no GGUF); their ports are filled in by _serve."""
    from minerva.demo import resolve_model_arg

    folder, py = str(resolve_model_arg(model)), sys.executable
    return {
        "mlx_lm.server": [py, "-m", "mlx_lm", "server", "--model", folder, "--port", "{port}",
                          "--max-tokens", ctx],
        "minerva-mlx": [py, "-m", "minerva.cli", "serve", "--model", folder, "--backend", "mlx",
                        "--port", "{port}", "--num-threads", str(threads), "--max-model-len",
                        ctx, "--no-access-log"],
    }  # fmt: skip


def _mistralrs_server(model: str, ctx: str, threads: int) -> dict[str, list[str]]:
    """Minerva's server on the mistralrs backend, on the model's HF folder (the mistralrs
    wheel has no server of its own: its server is a separate Rust binary)."""
    from minerva.demo import resolve_model_arg

    folder = str(resolve_model_arg(model))
    return {
        "minerva-mistralrs": [sys.executable, "-m", "minerva.cli", "serve", "--model", folder,
                              "--backend", "mistralrs", "--port", "{port}", "--num-threads",
                              str(threads), "--max-model-len", ctx, "--no-access-log"],
    }  # fmt: skip


def _serve(gguf: Path, out: Path, threads: int, args) -> dict:
    names = ["llama_cpp.server", "minerva-llamacpp", "minerva"]
    ctx = str(args.max_model_len)
    extra = _mlx_servers(args.model, ctx, threads) if args.serve_mlx else {}
    if args.serve_mistralrs:
        extra.update(_mistralrs_server(args.model, ctx, threads))
    ports = {name: free_port() for name in [*names, *extra]}
    py = sys.executable
    cmds = {
        "llama_cpp.server": [py, "-m", "llama_cpp.server", "--model", str(gguf), "--port",
                             str(ports["llama_cpp.server"]), "--n_ctx", ctx, "--n_threads",
                             str(threads), "--n_threads_batch", str(threads)],
        "minerva-llamacpp": [py, "-m", "minerva.cli", "serve", "--model", str(gguf), "--backend",
                             "llamacpp", "--port", str(ports["minerva-llamacpp"]),
                             "--num-threads", str(threads), "--max-model-len", ctx,
                             "--no-access-log"],
        "minerva": [py, "-m", "minerva.cli", "serve", "--model", str(gguf), "--port",
                    str(ports["minerva"]), "--num-threads", str(threads), "--max-model-len", ctx,
                    "--no-access-log"],
    }  # fmt: skip
    for name, cmd in extra.items():
        cmds[name] = [part.replace("{port}", str(ports[name])) for part in cmd]
    procs = []
    try:
        for name, cmd in cmds.items():
            procs.append(start(cmd, ports[name], out / f"{name}.log"))
        targets = [f"--target={n}=http://127.0.0.1:{p}" for n, p in ports.items()]
        # mlx_lm.server lists no models for a local folder; it answers to this name
        targets = [t + (",model=default_model" if "mlx_lm" in t else "") for t in targets]
        return bench("serve", out, *targets, "--workload", args.serve_workload, "--ignore-eos",
                     "--concurrency", args.serve_concurrency, "--num-prompts",
                     str(args.serve_prompts), "--repeats", str(args.serve_repeats))  # fmt: skip
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


MISTRALRS_ISQ = {"q4_k_m": "q4_k", "q5_k_m": "q5_k", "q4_k_s": "q4_k", "q5_k_s": "q5_k"}
"""llama.cpp's mixes as the nearest ISQ type (mistral.rs quantizes every layer alike)."""


def quantized_engines(backends: str, quantization: str | None) -> tuple[str, list[str]]:
    """The engines of the offline part and their --backend-arg options: with a quantization,
    each engine that can quantize while loading does so at that width (transformers left out)."""
    if not quantization:
        return backends, []
    names = [b for b in backends.split(",") if b and b != "transformers"]
    q = quantization.lower()
    opts = []
    for name in names:
        value = MISTRALRS_ISQ.get(q, q) if name == "mistralrs" else q
        opts += ["--backend-arg", f"{name}.quantization={value}"]
    return ",".join(names), opts


def ratios(rows: list[dict], keys: list[str], base: str = "minerva") -> dict:
    ref = next((r for r in rows if r["backend"] == base), None)
    if ref is None:
        return {}
    return {
        r["backend"]: {k: ref[k] / r[k] for k in keys if r.get(k) and ref.get(k)}
        for r in rows
        if r is not ref
    }


def ttft_overhead(ttft: dict, levels: set[str], front: str, own: str) -> dict[str, float]:
    """Minerva's server in front of a backend over that backend's own server: TTFT ratio - 1
    at each load level both were measured at."""
    return {
        level: ttft[f"{front}@{level}"] / ttft[f"{own}@{level}"] - 1
        for level in levels
        if f"{front}@{level}" in ttft and f"{own}@{level}" in ttft
    }


def main_() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--backends", default="minerva,llamacpp,transformers")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--serve-repeats", type=int, default=3)
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--serve-workload", default="fixed:in=128,out=32")
    p.add_argument("--serve-concurrency", default="1")
    p.add_argument("--serve-threads", type=int, default=None, help="default: --threads")
    p.add_argument("--parts", default="offline,serve")
    p.add_argument(
        "--serve-mlx",
        action="store_true",
        help="also serve the model's HF folder with mlx_lm.server and minerva --backend mlx",
    )
    p.add_argument(
        "--serve-mistralrs",
        action="store_true",
        help="also serve the model's HF folder with minerva --backend mistralrs",
    )
    p.add_argument(
        "--quantization",
        default=None,
        help="offline part at these bits in every engine (q8_0, q4_k_m, ...); default: none",
    )
    p.add_argument(
        "--backend-arg",
        action="append",
        default=[],
        metavar="BACKEND.KEY=VALUE",
        help="passed on to the offline part's engines (repeatable), e.g. "
        "minerva.kv_cache_dtype=float16",
    )
    p.add_argument("--serve-prompts", type=int, default=16)
    p.add_argument(
        "--dtype",
        default="auto",
        help="latency and throughput in this dtype in every engine (e.g. bfloat16: Minerva's "
        "16-bit path beside llama.cpp's F16 file); auto: each engine's default (Minerva's CPU "
        "default is float32)",
    )
    p.add_argument("--output", default="benchmarks/results/backends_cpu_demo")
    args = p.parse_args()
    command = "PYTHONPATH=src python3 benchmarks/backends_compare.py " + " ".join(sys.argv[1:])
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    backends, quant_opts = quantized_engines(args.backends, args.quantization)
    engines = ["--model", args.model, "--backend", backends, "--device", "cpu",
               "--num-threads", str(args.threads), *quant_opts,
               *(x for arg in args.backend_arg for x in ("--backend-arg", arg))]  # fmt: skip
    parts = set(args.parts.split(","))
    run = {k: bool(parts & {"offline", k}) for k in ("latency", "throughput", "consistency")}
    lengths = ["--input-len", str(args.input_len), "--output-len", str(args.output_len)]
    if args.dtype != "auto":
        lengths += ["--dtype", args.dtype]
    latency = bench(
        "latency", out, *engines, *lengths, "--repeats", str(args.repeats), run=run["latency"]
    )
    throughput = bench(
        "throughput",
        out,
        *engines,
        *lengths,
        "--num-prompts",
        str(args.num_prompts),
        run=run["throughput"],
    )
    quality = ["--dtype", "float32", "--num-prompts", "4", "--max-tokens", "48"]
    consistency = bench("consistency", out, *engines, *quality, run=run["consistency"])
    serve = serve_overhead(args.model, out, args.serve_threads or args.threads, args)
    summaries = serve.get("summaries", [])
    ttft = {s["target"] + "@" + s["level"]: s["ttft_ms"]["median"] for s in summaries}
    levels = {s["level"] for s in summaries}
    overhead = ttft_overhead(ttft, levels, "minerva-llamacpp", "llama_cpp.server")
    overhead_mlx = ttft_overhead(ttft, levels, "minerva-mlx", "mlx_lm.server") or None
    own_engine = ttft_overhead(ttft, levels, "minerva", "llama_cpp.server")
    summary = {
        "benchmark": "backends_compare",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command,  # (bench() rewrites sys.argv for each command's report)
        "note": "a shared 2-core VM, loaded by other jobs while it ran: CPU figures are "
        "indicative only; compare ratios within one part of one run",
        "threads": {"offline": args.threads, "serve": args.serve_threads or args.threads},
        "quantization": args.quantization,
        "latency_minerva_over": ratios(
            latency.get("results", []), ["decode_tok_s", "prefill_tok_s"]
        ),
        "throughput_minerva_over": ratios(throughput.get("results", []), ["output_throughput"]),
        "consistency": [
            {
                k: r[k]
                for k in (
                    "a",
                    "b",
                    "exact_match",
                    "first_divergence",
                    "top_k_overlap",
                    "kl_divergence",
                )
            }  # fmt: skip
            for r in consistency.get("results", [])
        ],
        "coherence": {e["name"]: e.get("coherence_ppl") for e in consistency.get("engines", [])},
        "serve_ttft_p50_ms": ttft,
        "serve_ttft_overhead_minerva_llamacpp_vs_llama_cpp_server": overhead,
        "serve_ttft_overhead_minerva_mlx_vs_mlx_lm_server": overhead_mlx,
        "serve_ttft_minerva_engine_vs_llama_cpp_server": own_engine,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main_()
