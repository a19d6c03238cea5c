"""The bodies of the ``minerva bench`` subcommands: parse, run, write the results, print a table.

Progress goes to stderr (rich, only on a terminal); the final table goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import shlex
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from minerva.bench.http_client import Target, make_client, parse_target, resolve_model
from minerva.bench.load import LoadLevel, parse_levels, run_benchmark
from minerva.bench.metrics import parse_slo
from minerva.bench.protocols import GenParams
from minerva.bench.redact import Redactor
from minerva.bench.report import fmt, lookup, write_report
from minerva.bench.system import system_info
from minerva.bench.workloads import BenchRequest, build_workload
from minerva.errors import ConfigError, ModelLoadError


def _command(redactor: Redactor | None = None) -> str:
    """The command line that ran, secrets masked."""
    return "minerva " + shlex.join((redactor or Redactor()).argv(sys.argv[1:]))


def _out_dir(args: argparse.Namespace, kind: str) -> Path:
    return Path(args.output or f"bench-results/{kind}-{time.strftime('%Y%m%d-%H%M%S')}")


def _err_console(args: argparse.Namespace) -> Console:
    return Console(stderr=True, quiet=args.no_progress)


def _print_table(title: str, rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    table = Table(title=title)
    for _, header, _ in columns:
        table.add_column(header)
    for row in rows:
        table.add_row(*(fmt(lookup(row, k), f) for k, _, f in columns))
    Console().print(table)


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


# ---- serve ---------------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> int:
    targets = [parse_target(t, args.api_key) for t in args.target]
    redactor = Redactor([args.api_key, *(t.api_key for t in targets)])
    if len({t.name for t in targets}) != len(targets):
        raise ConfigError("two --target entries share a NAME: give each target its own name")
    levels = parse_levels(args.concurrency, args.request_rate, args.max_concurrency)
    slo = parse_slo(args.slo)
    _check_positive(num_prompts=args.num_prompts, repeats=args.repeats, max_tokens=args.max_tokens)
    if args.temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {args.temperature}")
    widest = max(lv.concurrency or 1 for lv in levels)
    num_prompts = args.num_prompts or (64 if args.request_rate else max(8, 2 * widest))
    requests = build_workload(args.workload, num_prompts, args.seed, args.max_tokens)
    params = GenParams(temperature=args.temperature, ignore_eos=args.ignore_eos)
    config = {
        "workload": args.workload,
        "num_prompts": num_prompts,
        "levels": [lv.label for lv in levels],
        "burstiness": args.burstiness,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "ignore_eos": args.ignore_eos,
        "seed": args.seed,
        "slo": args.slo,
    }
    out = _out_dir(args, "serve")
    runs: list = []
    try:
        asyncio.run(_serve(args, targets, requests, levels, params, runs))
    except BaseException:  # Ctrl-C or a failure mid-way: keep the runs that finished
        if runs:
            _write_serve(runs, targets, config, slo, out, redactor)
            print(f"minerva: partial results ({len(runs)} runs) in {out}/", file=sys.stderr)
        raise
    doc, paths = _write_serve(runs, targets, config, slo, out, redactor)
    columns = [
        ("target", "target", "s"),
        ("level", "load", "s"),
        ("failed", "failed", "d"),
        ("output_throughput", "out tok/s", ".1f"),
        ("request_throughput", "req/s", ".2f"),
        ("ttft_ms.median", "TTFT p50 ms", ".1f"),
        ("tpot_ms.median", "TPOT p50 ms", ".2f"),
        ("e2e_ms.p99", "E2E p99 ms", ".0f"),
    ]
    _print_table("minerva bench serve", doc["summaries"], columns)
    code = 0
    if not args.no_plots:
        plotted, code = _serve_plots(doc, out)
        paths += plotted
    print(f"results in {out}/ ({', '.join(p.name for p in paths)})")
    return code


def _write_serve(runs, targets: list[Target], config: dict, slo, out: Path, redactor: Redactor):
    """results.json first (what was measured), then the report, CSVs; secrets redacted."""
    from minerva.bench.results import serve_document  # noqa: PLC0415

    system = system_info(server_urls=[t.url for t in targets])
    doc = serve_document(
        runs, [t.describe() for t in targets], config, system, slo, _command(redactor)
    )
    return doc, write_report(doc, out, redactor)


def _serve_plots(doc: dict, out: Path) -> tuple[list[Path], int]:
    """The PNGs, or a warning: a missing matplotlib skips them (exit 0), a crash says why
    (exit 1); the results are written either way."""
    try:
        from minerva.bench.plots import write_serve_plots  # noqa: PLC0415

        return write_serve_plots(doc, out), 0
    except ConfigError as e:  # matplotlib is not installed
        print(f"minerva: warning: no plots: {e}", file=sys.stderr)
        return [], 0
    except Exception as e:  # noqa: BLE001 - the measured results are already on disk
        print(f"minerva: warning: the plots failed ({type(e).__name__}: {e})", file=sys.stderr)
        return [], 1


async def _serve(
    args,
    targets: list[Target],
    requests: list[BenchRequest],
    levels: list[LoadLevel],
    params: GenParams,
    runs: list,
):
    from minerva.bench.monitor import find_server_pid  # noqa: PLC0415

    async with make_client(args.timeout) as client:
        for target in targets:
            await resolve_model(client, target)
            if target.pid is None and target.is_local:
                target.pid = find_server_pid(target.url)
        console = _err_console(args)
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        task = {"id": None}

        def on_run_start(name: str, level: LoadLevel, repeat: int) -> None:
            if task["id"] is not None:
                progress.update(task["id"], visible=False)
            task["id"] = progress.add_task(
                f"{name} {level.label} #{repeat + 1}", total=len(requests)
            )

        def on_done(record) -> None:
            if task["id"] is not None and record.repeat >= 0:
                progress.advance(task["id"])

        with progress:
            return await run_benchmark(
                client,
                targets,
                requests,
                levels,
                params,
                args.repeats,
                args.warmup,
                args.seed,
                args.burstiness,
                on_run_start=on_run_start,
                on_done=on_done,
                results=runs,
            )


# ---- offline -------------------------------------------------------------------------------


def _names(text: str) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _backend_options(args: argparse.Namespace, backend: str) -> dict:
    options = {}
    for item in args.backend_arg:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--backend-arg {item!r}: use [BACKEND.]KEY=VALUE")
        scope, dot, key = key.rpartition(".")
        if not dot or scope == backend:
            options[key] = _value(value)
    return options


def _model_paths(models: list[str] | str | None) -> list[str]:
    """``--model`` values as paths (``demo``: the bundled demo model)."""
    from minerva.demo import resolve_model_arg  # noqa: PLC0415

    names = [models] if isinstance(models, str) else list(models or [])
    return [str(resolve_model_arg(m)) for m in names]


def _backend_names(args: argparse.Namespace) -> list[str]:
    """--backend as names; "installed" is every engine this install can run."""
    from minerva.bench.drivers import installed_drivers  # noqa: PLC0415

    names = _names(args.backend)
    return installed_drivers() if names == ["installed"] else names


def _engines(args: argparse.Namespace, models: list[str]):
    """(label, backend name, model, dtype) for every combination asked for."""
    backends, dtypes = _backend_names(args), _names(args.dtype) or ["auto"]
    for model, name, dtype in itertools.product(models, backends, dtypes):
        parts = (
            [name]
            + ([Path(model).name] if len(models) > 1 else [])
            + ([dtype] if len(dtypes) > 1 else [])
        )
        yield "/".join(parts), name, model, dtype


def _load(
    args: argparse.Namespace, console: Console, label: str, name: str, model: str, dtype: str
):
    from minerva.bench.drivers import load_driver  # noqa: PLC0415

    with console.status(f"{label}: loading {model}"):
        return load_driver(
            name,
            model,
            device=args.device,
            dtype=dtype,
            num_threads=args.num_threads,
            options=_backend_options(args, name),
        )


def _measured(args, kind: str, models: list[str], measure, config: dict) -> list[dict]:
    """``measure(backend, label)`` -> row for every engine; an engine whose package is missing
    is skipped with a warning; on a failure the rows measured so far are written first."""
    from minerva.bench.drivers import BackendNotInstalled  # noqa: PLC0415

    console, results = _err_console(args), []
    try:
        for label, name, model, dtype in _engines(args, models):
            try:
                backend = _load(args, console, label, name, model, dtype)
            except BackendNotInstalled as e:
                print(f"minerva: warning: skipped {label}: {e}", file=sys.stderr)
                continue
            try:
                with console.status(f"{label}: {kind}"):
                    results.append({**measure(backend), "backend": label, "dtype": dtype})
            finally:
                _release(backend)
    except BaseException:
        if results:
            print(f"minerva: writing the {len(results)} rows measured so far", file=sys.stderr)
            _finish_offline(args, kind, results, config)
        raise
    if not results:
        raise ConfigError(f"no backend could run: --backend {args.backend!r}")
    return results


def _release(backend) -> None:
    backend.close()
    gc.collect()


def _vocab_size(model: str) -> int:
    if not Path(model).is_dir():  # a GGUF file, or not a model: the loader says which
        from minerva.loader.source import open_model  # noqa: PLC0415

        return int(open_model(model).config.vocab_size)
    path = Path(model) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"cannot read {path} ({e}): pass a Hugging Face model folder"
        ) from None
    vocab = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")
    if not vocab:
        raise ModelLoadError(f"{path} has no vocab_size")
    return int(vocab)


def _tokenizer(model: str):
    """The tokenizer of an HF folder or a GGUF file (its own vocabulary)."""
    from minerva.loader.source import open_model  # noqa: PLC0415

    tok = open_model(model).tokenizer
    if tok is None:
        raise ConfigError(f"{model} has no tokenizer: give token-id workloads or a tokenizer")
    return tok


def _prompt_ids(model: str, requests: list[BenchRequest]) -> list[list[int]]:
    if all(r.prompt_token_ids is not None for r in requests):
        return [r.prompt_token_ids for r in requests]
    tok = _tokenizer(model)
    return [r.prompt_token_ids or tok.encode(r.prompt) for r in requests]


def _finish_offline(
    args,
    kind: str,
    results: list[dict],
    config: dict,
    redactor: Redactor | None = None,
    extra: dict | None = None,
) -> int:
    """results.json (with ``extra``'s keys), report, CSV and plots; the tables on stdout."""
    from minerva.bench.offline import offline_document  # noqa: PLC0415
    from minerva.bench.report import ENGINE_COLUMNS, OFFLINE_COLUMNS  # noqa: PLC0415

    urls = [t.split("=", 1)[-1].split(",")[0] for t in getattr(args, "target", None) or []]
    doc = offline_document(kind, results, config, system_info(urls), _command(redactor))
    doc.update(extra or {})
    out = _out_dir(args, kind)
    paths = write_report(doc, out, redactor)
    if not getattr(args, "no_plots", True):
        paths += _offline_plots(doc, out)
    _print_table(f"minerva bench {kind}", results, OFFLINE_COLUMNS[kind])
    if doc.get("engines"):
        _print_table("engines", doc["engines"], ENGINE_COLUMNS)
    print(f"results in {out}/ ({', '.join(p.name for p in paths)})")
    return 0


def _offline_plots(doc: dict, out: Path) -> list[Path]:
    """One bar chart per metric, engines side by side; a missing matplotlib only warns."""
    try:
        from minerva.bench.offline_plots import write_offline_plots  # noqa: PLC0415

        return write_offline_plots(doc, out)
    except ConfigError as e:  # matplotlib is not installed
        print(f"minerva: warning: no plots: {e}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - the measured results are already on disk
        print(f"minerva: warning: the plots failed ({type(e).__name__}: {e})", file=sys.stderr)
    return []


def run_latency(args: argparse.Namespace) -> int:
    from minerva.bench import offline  # noqa: PLC0415

    _check_positive(input_len=args.input_len, output_len=args.output_len, repeats=args.repeats)
    args.model = _model_paths(args.model)[0]
    spec = f"fixed:in={args.input_len},out={args.output_len}"
    prompt = build_workload(spec, 1, args.seed, vocab_size=_vocab_size(args.model))[0]
    config = {
        "model": args.model,
        "device": args.device,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "num_threads": args.num_threads,
        "seed": args.seed,
    }

    def measure(backend) -> dict:
        return offline.run_latency(
            backend, prompt.prompt_token_ids, args.output_len, args.repeats, args.warmup
        )

    results = _measured(args, "latency", [args.model], measure, config)
    return _finish_offline(args, "latency", results, config)


def run_throughput(args: argparse.Namespace) -> int:
    from minerva.bench import offline  # noqa: PLC0415

    _check_positive(num_prompts=args.num_prompts, max_tokens=args.max_tokens)
    args.model = _model_paths(args.model)[0]
    spec = args.workload or f"fixed:in={args.input_len},out={args.output_len}"
    requests = build_workload(
        spec, args.num_prompts, args.seed, args.max_tokens, _vocab_size(args.model)
    )
    prompts = _prompt_ids(args.model, requests)
    config = {
        "model": args.model,
        "device": args.device,
        "workload": spec,
        "num_prompts": args.num_prompts,
        "num_threads": args.num_threads,
        "seed": args.seed,
    }

    def measure(backend) -> dict:
        return offline.run_throughput(backend, prompts, [r.max_tokens for r in requests])

    results = _measured(args, "throughput", [args.model], measure, config)
    return _finish_offline(args, "throughput", results, config)


def run_consistency(args: argparse.Namespace) -> int:
    from minerva.bench.consistency_run import run_consistency as run  # noqa: PLC0415

    return run(args)


def run_perplexity(args: argparse.Namespace) -> int:
    from minerva.bench.perplexity import perplexity  # noqa: PLC0415

    args.model = _model_paths(args.model)
    if not args.model:
        raise ConfigError("give at least one --model PATH")
    path = Path(args.file)
    if not path.is_file():
        raise ConfigError(f"--file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    console, results = _err_console(args), []
    for label, name, model, dtype in _engines(args, args.model):
        ids = _tokenizer(model).encode(text)[: args.max_text_tokens]
        backend = _load(args, console, label, name, model, dtype)
        window = min(args.window, backend.max_model_len or args.window)
        start = time.perf_counter()
        with console.status(f"{label}: scoring {len(ids)} tokens"):
            row = perplexity(backend.token_logprobs, ids, window, args.stride)
        row.update(backend=label, model=model, dtype=dtype, duration_s=time.perf_counter() - start)
        results.append(row)
        _release(backend)
    config = {
        "file": str(path),
        "window": args.window,
        "stride": args.stride,
        "max_text_tokens": args.max_text_tokens,
        "device": args.device,
    }
    return _finish_offline(args, "perplexity", results, config)
