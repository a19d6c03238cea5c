"""``minerva bench consistency``: the same prompts, greedy, through offline engines and HTTP
targets; pair by pair how their tokens agree (consistency.py) and how alike their token
frequencies are (token_distribution.py); engine by engine the coherence of what each wrote
under one unquantized reference model (coherence.py)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys

from minerva.bench import commands as C
from minerva.bench.drivers.base import GREEDY_SETTINGS
from minerva.bench.http_client import Target, make_client, parse_target, resolve_model
from minerva.bench.protocols import NEUTRAL_OLLAMA, NEUTRAL_OPENAI, GenParams
from minerva.bench.redact import Redactor
from minerva.bench.workloads import BenchRequest, build_workload
from minerva.errors import ConfigError, MinervaError


def run_consistency(args: argparse.Namespace) -> int:
    from minerva.bench.consistency import compare_all, to_units  # noqa: PLC0415
    from minerva.bench.token_distribution import compare  # noqa: PLC0415

    requests = build_workload(args.workload, args.num_prompts, args.seed, args.max_tokens or 32)
    backends = C._names(args.backend)
    args.model = C._model_paths(args.model)
    if backends and not args.model:
        raise ConfigError("offline backends need --model PATH (repeatable)")
    ids, texts, failed = _offline_outputs(args, requests) if backends else ({}, {}, {})
    targets = [parse_target(t, args.api_key) for t in args.target]
    if targets:
        texts.update(asyncio.run(_texts(args, targets, requests)))
    if len(texts) < 2:
        raise ConfigError(
            "consistency compares at least two participants: give --target and/or --backend/--model"
        )
    tokenizer_path = args.tokenizer or (args.model[0] if args.model else None)
    tok = C._tokenizer(tokenizer_path) if tokenizer_path else None
    if len(ids) == len(texts):
        units, unit = ids, "tokens"
    else:
        units, unit = {}, "words"
        for label, t in texts.items():
            units[label], unit = to_units(t, tok)
    results = compare_all(units, unit)
    for row in results:
        row.update(compare(units[row["a"]], units[row["b"]]))
        row["outputs"] = {"a": texts[row["a"]], "b": texts[row["b"]]}
    engines, reference = _engines(args, requests, units, unit, tok)
    for row in engines:  # an engine's failure is not a divergence at token 0: say so
        row["failed_requests"] = failed.get(row["name"])
    config = {
        "workload": args.workload,
        "num_prompts": len(requests),
        "participants": list(texts),
        "max_tokens": requests[0].max_tokens,
        "sampling (offline backends)": GREEDY_SETTINGS if ids or backends else None,
        "sampling (HTTP targets)": (
            {"temperature": 0.0, "openai": NEUTRAL_OPENAI, "ollama": NEUTRAL_OLLAMA}
            if targets
            else None
        ),
    }
    redactor = Redactor([args.api_key, *(t.api_key for t in targets)])
    extra = {"engines": engines, "reference": reference}
    return C._finish_offline(args, "consistency", results, config, redactor, extra)


def _offline_outputs(args, requests: list[BenchRequest]) -> tuple[dict, dict, dict]:
    """Each offline engine's greedy token ids and texts, and how many requests it failed."""
    console, ids, texts, failed = C._err_console(args), {}, {}, {}
    for label, name, model, dtype in C._engines(args, args.model):
        tok = C._tokenizer(model)
        backend = C._load(args, console, label, name, model, dtype)
        with console.status(f"{label}: generating"):
            outs = backend.generate(
                [tok.encode(r.prompt) for r in requests],
                [r.max_tokens for r in requests],
                ignore_eos=False,
            )
        ids[label], texts[label] = outs, [tok.decode(o) for o in outs]
        failed[label] = backend.failed_requests
        C._release(backend)
    return ids, texts, failed


async def _texts(args, targets: list[Target], requests: list[BenchRequest]) -> dict[str, list[str]]:
    from minerva.bench.consistency import http_outputs  # noqa: PLC0415

    out = {}
    async with make_client(args.timeout) as client:
        for target in targets:
            await resolve_model(client, target)
            out[target.name] = await http_outputs(
                client, target, requests, GenParams(temperature=0.0, neutral=True)
            )
    return out


def _engines(args, requests, units: dict, unit: str, tok) -> tuple[list[dict], dict | None]:
    """One row per participant: output length, distinct tokens, coherence (when a reference
    model can score token ids)."""
    rows = [
        {
            "name": name,
            "mean_output_tokens": sum(map(len, outs)) / max(len(outs), 1),
            "distinct_tokens": len({t for o in outs for t in o}),
        }
        for name, outs in units.items()
    ]
    reference = _reference(args)
    if reference is None or unit != "tokens" or tok is None:
        return rows, None
    from minerva.bench.coherence import coherence  # noqa: PLC0415

    prompts = [tok.encode(r.prompt) for r in requests]
    console = C._err_console(args)
    try:
        driver = C._load(args, console, "reference", reference["backend"], reference["model"],
                         "float32")  # fmt: skip
    except MinervaError as e:
        print(f"minerva: warning: no coherence scores: {e}", file=sys.stderr)
        return rows, None
    try:
        with console.status("reference: scoring every engine's outputs"):
            for row in rows:
                row.update(coherence(driver.token_logprobs, prompts, units[row["name"]]))
    finally:
        C._release(driver)
    return rows, reference


def _reference(args) -> dict | None:
    """The model and engine that score coherence: --reference-model (default: the first
    --model) run by --reference-backend (default: transformers where installed and the model
    is a folder, else minerva), in float32."""
    if args.no_coherence:
        return None
    model = args.reference_model or (args.model[0] if args.model else None)
    if model is None:
        return None
    model = C._model_paths(model)[0]
    backend = args.reference_backend
    if backend is None:
        is_folder = not model.endswith(".gguf")
        backend = "transformers" if is_folder and _importable("transformers") else "minerva"
    return {"backend": backend, "model": model, "dtype": "float32"}


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # e.g. sys.modules[name] is None
        return False
