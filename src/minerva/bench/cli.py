"""`minerva bench serve | latency | throughput | consistency | perplexity`: the argparse side.

Heavy imports (torch, transformers, matplotlib) happen inside the commands, so registering the
subcommand costs nothing when another command runs.
"""

from __future__ import annotations

import argparse
from typing import Any


def _common(p: argparse.ArgumentParser, output_kind: str) -> None:
    p.add_argument(
        "--output",
        metavar="DIR",
        default=None,
        help="Folder for results.json, CSV, report.md (and plots). "
        f"Default: bench-results/{output_kind}-TIMESTAMP.",
    )
    p.add_argument("--no-progress", action="store_true", help="No progress display. Default: off.")
    p.add_argument("--seed", type=int, default=0, help="Seed of prompts and arrivals. Default: 0.")


def _http(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--target",
        action="append",
        default=[],
        required=required,
        metavar="NAME=URL[,OPT=V]",
        help="An endpoint to drive (repeatable): NAME=URL with options api=openai|openai-chat|"
        "ollama|ollama-chat (default openai), model=M (default: the first the server lists), "
        "pid=N (server process, for memory; found automatically on this machine), key=API_KEY.",
    )
    p.add_argument(
        "--api-key", default=None, help="Bearer key sent to every target. Default: none."
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="Seconds to wait for a server's next byte. Default: 600.",
    )


def _workload(p: argparse.ArgumentParser, default: str | None, num_prompts: int | None) -> None:
    p.add_argument(
        "--workload",
        default=default,
        metavar="SPEC",
        help="standard | fixed:in=512,out=128 | random:in=512,out=128,range=0.5 | "
        "shared-prefix:prefix=1024,in=32,out=64 | jsonl:PATH. "
        f"Default: {default or 'fixed, from --input-len/--output-len'}.",
    )
    p.add_argument(
        "--num-prompts",
        type=int,
        default=num_prompts,
        metavar="N",
        help="Requests per run (the workload's prompts are cycled). Default: "
        + (
            f"{num_prompts}."
            if num_prompts
            else "64 with --request-rate, else 2 x the widest concurrency (at least 8)."
        ),
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="Override every request's output length (consistency: default 32).",
    )


def _engines(p: argparse.ArgumentParser, backends: str, multi_model: bool = False) -> None:
    shown = {"installed": "the installed ones (minerva, and transformers if present)"}
    p.add_argument(
        "--backend",
        default=backends,
        help="Comma-separated offline backends (minerva, llamacpp, mistralrs, mlx, transformers); "
        "one whose package is "
        f"missing is skipped with a warning. Default: {shown.get(backends, backends or 'none')}.",
    )
    p.add_argument(
        "--model",
        action="append" if multi_model else "store",
        required=not multi_model,
        default=[] if multi_model else None,
        metavar="PATH",
        help="Hugging Face model folder, or demo (the bundled demo model)"
        + (" (repeatable, e.g. two quantizations). Default: none." if multi_model else "."),
    )
    p.add_argument(
        "--device", default="auto", help="auto | cpu | cuda | cuda:N | mps. Default: auto."
    )
    p.add_argument(
        "--dtype",
        default="auto",
        help="Comma-separated dtypes (auto, float32, bfloat16, ...). Default: auto.",
    )
    p.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="CPU threads for every backend. Default: each backend's own choice.",
    )
    p.add_argument(
        "--backend-arg",
        action="append",
        default=[],
        metavar="[BACKEND.]KEY=VALUE",
        help="Option passed to the backends (repeatable), e.g. minerva.max_num_seqs=64 or "
        "transformers.max_batch_size=8. Default: none.",
    )


def _add_serve(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="load test HTTP endpoints (OpenAI / Ollama APIs), side by side",
        description="Drive one or more running servers with streaming requests; "
        "TTFT, TPOT, ITL, E2E, throughput, goodput, memory.",
    )
    _http(p, required=True)
    _workload(p, "standard", None)
    p.add_argument(
        "--concurrency",
        default="1",
        help="Comma-separated in-flight limits, e.g. 1,2,4,8,16. Default: 1.",
    )
    p.add_argument(
        "--request-rate",
        default=None,
        help="Comma-separated Poisson arrival rates (req/s, or inf); "
        "replaces the concurrency sweep. Default: none (the concurrency sweep).",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="In-flight cap with --request-rate. Default: none (every arrival is sent at once).",
    )
    p.add_argument(
        "--burstiness",
        type=float,
        default=1.0,
        help="Gamma shape of arrivals: 1 = Poisson, <1 burstier. Default: 1.",
    )
    p.add_argument(
        "--warmup", type=int, default=2, help="Uncounted requests per target first. Default: 2."
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="Runs per target and level (interleaved). Default: 1.",
    )
    p.add_argument(
        "--slo",
        default=None,
        help="Goodput SLOs, e.g. ttft=200ms,tpot=50ms,e2e=10s. Default: none.",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="Default: 0 (greedy).")
    p.add_argument(
        "--ignore-eos",
        action="store_true",
        help="Ask servers to ignore EOS, for exact output lengths "
        "(OpenAI APIs; an extension of vLLM, llama.cpp and Minerva). Default: off.",
    )
    p.add_argument("--no-plots", action="store_true", help="Skip the PNG plots. Default: off.")
    _common(p, "serve")
    p.set_defaults(func=_lazy("run_serve"))


def _add_latency(sub: Any) -> None:
    p = sub.add_parser("latency", help="batch-1 prefill / decode speed, TTFT, memory (offline)")
    _engines(p, "installed")
    p.add_argument("--input-len", type=int, default=128, help="Prompt tokens. Default: 128.")
    p.add_argument("--output-len", type=int, default=32, help="Generated tokens. Default: 32.")
    p.add_argument("--repeats", type=int, default=3, help="Measured runs (median). Default: 3.")
    p.add_argument("--warmup", type=int, default=1, help="Uncounted runs first. Default: 1.")
    p.add_argument("--no-plots", action="store_true", help="Skip the PNG plots. Default: off.")
    _common(p, "latency")
    p.set_defaults(func=_lazy("run_latency"))


def _add_throughput(sub: Any) -> None:
    p = sub.add_parser("throughput", help="N requests at once: tokens/s and requests/s (offline)")
    _engines(p, "installed")
    _workload(p, None, 64)
    p.add_argument(
        "--input-len", type=int, default=128, help="Prompt tokens (fixed workload). Default: 128."
    )
    p.add_argument(
        "--output-len", type=int, default=64, help="Output tokens (fixed workload). Default: 64."
    )
    p.add_argument("--no-plots", action="store_true", help="Skip the PNG plots. Default: off.")
    _common(p, "throughput")
    p.set_defaults(func=_lazy("run_throughput"))


def _add_consistency(sub: Any) -> None:
    p = sub.add_parser(
        "consistency", help="greedy outputs of targets / backends / formats compared"
    )
    _http(p, required=False)
    _engines(p, "", multi_model=True)
    _workload(p, "standard", None)
    p.add_argument(
        "--tokenizer",
        default=None,
        metavar="PATH",
        help="Tokenizer folder to compare HTTP texts as tokens (default: the first --model).",
    )
    p.add_argument(
        "--reference-model",
        default=None,
        metavar="PATH",
        help="Unquantized model whose perplexity of each engine's outputs is their coherence "
        "score. Default: the first --model.",
    )
    p.add_argument(
        "--reference-backend",
        default=None,
        help="Engine that runs the reference model, in float32. Default: transformers where "
        "installed (and the model is a folder), else minerva.",
    )
    p.add_argument(
        "--no-coherence", action="store_true", help="Skip the coherence scores. Default: off."
    )
    p.add_argument("--no-plots", action="store_true", help="Skip the PNG plots. Default: off.")
    _common(p, "consistency")
    p.set_defaults(func=_lazy("run_consistency"))


def _add_perplexity(sub: Any) -> None:
    p = sub.add_parser("perplexity", help="perplexity of models on a text file (sliding window)")
    _engines(p, "minerva", multi_model=True)
    p.add_argument("--file", required=True, metavar="TEXT", help="UTF-8 text file to score.")
    p.add_argument(
        "--window",
        type=int,
        default=512,
        help="Tokens per window. Default: 512 (or the model's length).",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="Tokens between window starts. Default: window / 2.",
    )
    p.add_argument(
        "--max-text-tokens",
        type=int,
        default=None,
        help="Score only the first N tokens. Default: all.",
    )
    _common(p, "perplexity")
    p.set_defaults(func=_lazy("run_perplexity"))


def _lazy(name: str):
    def run(args: argparse.Namespace) -> int:
        from minerva.bench import commands  # noqa: PLC0415 - keeps `minerva --help` light

        return getattr(commands, name)(args)

    return run


def add_bench_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``minerva bench`` and its five subcommands."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmarks: serving load, latency, throughput, consistency, perplexity",
        description="Measure Minerva and its peers side by side. See docs/benchmarking.md.",
    )
    sub = parser.add_subparsers(dest="bench_command", required=True)
    for add in (_add_serve, _add_latency, _add_throughput, _add_consistency, _add_perplexity):
        add(sub)
    return parser
