"""``minerva tune``: measure a small grid of engine settings with the offline bench on this
machine and write the best one as a TOML config file.

    minerva tune --model M --goal latency|throughput [--memory-limit 8G] [--output FILE]
    minerva tune --goal throughput --config FILE   # re-measure what a run wrote

Each grid point loads the model with those settings (within --memory-limit) and runs the
bench's batch-1 latency (goal latency: lowest end-to-end time) or batched throughput (goal
throughput: most output tokens/s). A point the device cannot run (an 8-bit KV cache on MPS, a
quantization of a GGUF file) is listed as skipped with the reason. Prints a progress bar and a
table, saves a plot and the rows as JSON beside the TOML.

Timings are noisy on a shared machine, so every point is measured ``--rounds`` times, the
rounds interleaved (one pass over the grid, then the next: a change of load hits every point
alike); a point's figure is its median and its noise the range of its rounds. A re-measure of a
written file says whether its new range overlaps the recorded one.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from minerva.config import FIELDS, EngineConfig, coerce_value, field_problem
from minerva.errors import ConfigError, MinervaError

GOALS = {
    "latency": ("e2e_ms", "lower", "batch-1 end-to-end ms"),
    "throughput": ("output_throughput", "higher", "output tokens/s"),
}
"""goal -> (the bench figure it ranks by, which way is better, its label)."""

DEFAULT_GRID = {
    "latency": {"max_num_batched_tokens": "256,2048", "block_size": "16"},
    "throughput": {"max_num_seqs": "8,64", "max_num_batched_tokens": "512,2048"},
}
"""What each goal varies unless flags say otherwise: a few points, minutes on a CPU."""

RUN_FIELDS = ("model", "device", "dtype", "num_threads", "memory_limit", "load_format")
"""Settings of the whole run (not varied): written to the file, read back by --config."""

GRID_FIELDS = (
    "max_num_seqs", "max_num_batched_tokens", "block_size", "kv_cache_dtype", "quantization",
    "enforce_eager",
)  # fmt: skip


def grid_points(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every combination of the grid flags (comma-separated values, parsed by the fields)."""
    axes: dict[str, list[Any]] = {}
    for name in GRID_FIELDS:
        text = getattr(args, name, None) or DEFAULT_GRID[args.goal].get(name)
        if text is None:
            continue
        values = []
        for item in str(text).split(","):
            try:
                value = coerce_value(name, item.strip())
            except ValueError as e:
                raise ConfigError(f"--{name.replace('_', '-')} {item.strip()!r}: {e}") from None
            if problem := field_problem(name, value):
                raise ConfigError(f"--{name.replace('_', '-')} {item.strip()!r}: {problem}")
            values.append(value)
        axes[name] = list(dict.fromkeys(values))
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def _prompts(vocab_size: int, count: int, length: int) -> list[list[int]]:
    """Deterministic token ids away from the special ids at the start of the vocabulary."""
    span = max(vocab_size - 10, 1)
    return [[10 + (i * 7919 + j * 104729) % span for j in range(length)] for i in range(count)]


def measure(args: argparse.Namespace, point: dict[str, Any], vocab_size: int) -> dict:
    """One grid point's bench figures (or the reason it could not run)."""
    from minerva.bench.drivers.backend_driver import BackendDriver  # noqa: PLC0415
    from minerva.bench.offline import run_latency, run_throughput  # noqa: PLC0415

    options = dict(point)
    for name in ("memory_limit", "load_format"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    try:
        driver = BackendDriver(
            "minerva", args.model, device=args.device, dtype=args.dtype,
            num_threads=args.num_threads, options=options,
        )  # fmt: skip
    except MinervaError as e:
        return {**point, "skipped": str(e)}
    try:
        if args.goal == "latency":
            (prompt,) = _prompts(vocab_size, 1, args.input_len)
            result = run_latency(driver, prompt, args.output_len, repeats=args.repeats)
        else:
            prompts = _prompts(vocab_size, args.num_prompts, args.input_len)
            result = run_throughput(driver, prompts, [args.output_len] * len(prompts))
    except MinervaError as e:
        return {**point, "skipped": str(e)}
    finally:
        driver.close()
        gc.collect()
    result.pop("runs", None)
    return {**point, **result}


def combine_rounds(runs: list[dict], goal: str) -> dict:
    """One point's rounds as one row: the median round's figures, plus ``rounds`` (every
    round's figure) and ``spread`` ([min, max]); skipped if any round was."""
    skipped = next((r for r in runs if "skipped" in r), None)
    if skipped is not None:
        return skipped
    key = GOALS[goal][0]
    figures = [r[key] for r in runs]
    median = statistics.median_low(figures)  # a measured round, not an average of two
    row = dict(next(r for r in runs if r[key] == median))
    return {**row, "rounds": figures, "spread": [min(figures), max(figures)]}


def within_noise(now: dict, then: dict) -> bool:
    """Whether two measurements of one point agree: their ranges of rounds overlap."""
    (a, b), (c, d) = now["spread"], then["spread"]
    return a <= d and c <= b


def best_row(rows: list[dict], goal: str) -> dict | None:
    key, better, _ = GOALS[goal]
    measured = [r for r in rows if r.get(key) is not None]
    if not measured:
        return None
    pick = min if better == "lower" else max
    return pick(measured, key=lambda r: r[key])


def toml_text(values: dict[str, Any], header: str) -> str:
    """A config file of flat field values, one table per section, in the fields' order."""
    lines = [f"# {line}" for line in header.splitlines()]
    by_section: dict[str, list[str]] = {}
    for name, spec in FIELDS.items():
        if name in values and values[name] is not None:
            by_section.setdefault(spec.section, []).append(f"{name} = {_literal(values[name])}")
    for section, entries in by_section.items():
        lines += ["", f"[{section}]", *entries]
    return "\n".join(lines) + "\n"


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def _plot(rows: list[dict], goal: str, path: Path, model: str) -> Path | None:
    try:
        import matplotlib  # noqa: PLC0415 - optional (extra "bench")
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    key, _, label = GOALS[goal]
    measured = [r for r in rows if r.get(key) is not None]
    names = [_point_label(r) for r in measured]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 4))
    medians = [r[key] for r in measured]
    spreads = [r.get("spread", (r[key], r[key])) for r in measured]
    errors = [
        [m - s[0] for m, s in zip(medians, spreads)],
        [s[1] - m for m, s in zip(medians, spreads)],
    ]
    ax.bar(range(len(names)), medians, yerr=errors, capsize=3)  # the range of the rounds
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"{label} (median, range of the rounds)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"minerva tune --goal {goal}: {model}, {time.strftime('%Y-%m-%d')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _point_label(row: dict) -> str:
    return " ".join(f"{k}={row[k]}" for k in GRID_FIELDS if k in row)


def run_tune(args: argparse.Namespace) -> int:
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import Progress  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    try:
        for flag in ("input_len", "output_len", "num_prompts", "repeats", "rounds"):
            if getattr(args, flag) < 1:
                raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1")
        args.memory_limit = _memory_limit(args.memory_limit)
        points = _from_file(args) if args.config else grid_points(args)
        vocab_size = _vocab_size(args)
    except MinervaError as e:
        print(f"minerva tune: error: {e}", file=sys.stderr)
        return 1
    runs: list[list[dict]] = [[] for _ in points]
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"tuning for {args.goal}", total=len(points) * args.rounds)
        for round_ in range(args.rounds):  # interleaved: each pass runs every point once
            for point, done in zip(points, runs):
                label = _point_label(point) or "defaults"
                bar.update(task, description=f"round {round_ + 1}/{args.rounds}: {label}")
                done.append(measure(args, point, vocab_size))
                bar.advance(task)
    rows = [combine_rounds(r, args.goal) for r in runs]
    key, _, label = GOALS[args.goal]
    table = Table(title=f"minerva tune --goal {args.goal} ({label})")
    for name in [k for k in GRID_FIELDS if k in points[0]] + [label]:
        table.add_column(name)
    for row in rows:
        cells = [str(row[k]) for k in GRID_FIELDS if k in points[0]]
        table.add_row(*cells, _shown(row, key))
    Console().print(table)
    best = best_row(rows, args.goal)
    if best is None:
        print("minerva tune: no grid point could run (see the table)", file=sys.stderr)
        return 1
    if args.config:  # a re-measure of a written file: compare, write nothing
        recorded = _recorded(Path(args.config), args.goal)
        then = ""
        if recorded is not None:
            recorded.setdefault("spread", [recorded[key]] * 2)  # a file from before --rounds
            agree = "within" if within_noise(best, recorded) else "outside"
            change = best[key] / recorded[key] - 1 if recorded[key] else 0.0
            then = f" (the file's run: {_shown(recorded, key)}; {change:+.1%}, {agree} its noise)"
        print(f"{args.config}: {_shown(best, key)} {label} now{then}")
        return 0
    return _write(args, rows, best)


def _shown(row: dict, key: str) -> str:
    """'567.14 (503.07-601.20)': the median and the range of the rounds."""
    if row.get(key) is None:
        return f"skipped: {row['skipped']}"
    low, high = row.get("spread", (row[key], row[key]))
    return f"{row[key]:.2f} ({low:.2f}-{high:.2f})"


def _from_file(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The one point a written file sets; its model, device, dtype and limit become the run's."""
    from minerva.config import load_config  # noqa: PLC0415

    cfg, sources = load_config(args.config, env={})
    values = cfg.flat()
    for name in RUN_FIELDS:
        if sources[name] != "default":
            setattr(args, name, values[name])
    return [{k: values[k] for k in GRID_FIELDS if sources[k] != "default"}]


def _recorded(path: Path, goal: str) -> dict | None:
    """The best row of the run that wrote ``path`` (its JSON rows), if they are there."""
    try:
        rows = json.loads(path.with_suffix(".json").read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return None
    return best_row(rows, goal)


def _write(args: argparse.Namespace, rows: list[dict], best: dict) -> int:
    key, _, label = GOALS[args.goal]
    values = {k: best[k] for k in GRID_FIELDS if k in best}
    for name in RUN_FIELDS:
        if getattr(args, name, None) not in (None, "auto"):
            values[name] = getattr(args, name)
    EngineConfig.from_kwargs(**values)  # what is written must load
    out = Path(args.output)
    header = (
        f"Written by minerva tune --goal {args.goal}: {_shown(best, key)} {label} measured "
        f"here (median and range of {args.rounds} rounds).\n"
        f"Every row is in {out.with_suffix('.json').name}."
    )
    out.write_text(toml_text(values, header))
    out.with_suffix(".json").write_text(json.dumps({"goal": args.goal, "rows": rows}, indent=2))
    plot = _plot(rows, args.goal, out.with_suffix(".png"), args.model or "demo model")
    print(f"best: {_point_label(best)} -> {_shown(best, key)} {label}")
    print(f"wrote {out}" + (f" (plot: {plot})" if plot else " (no plot: matplotlib missing)"))
    return 0


def _memory_limit(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return coerce_value("memory_limit", text)
    except ValueError as e:
        raise ConfigError(f"--memory-limit {text!r}: {e}") from None


def _vocab_size(args: argparse.Namespace) -> int:
    from minerva.runner.model_loading import open_model_source  # noqa: PLC0415

    return open_model_source(EngineConfig.from_kwargs(model=args.model)).config.vocab_size


def add_tune_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "tune",
        help="measure a grid of settings on this machine and write the best as a TOML file",
        description="Measure a small grid of engine settings with the offline bench and write "
        "the best for --goal as a config file (use it with --config).",
    )
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: demo)")
    parser.add_argument("--goal", choices=tuple(GOALS), default="throughput",
                        help="what to optimise. Default: throughput.")  # fmt: skip
    parser.add_argument("--memory-limit", default=None, metavar="SIZE",
                        help="hard memory cap for every point, e.g. 8G (written to the file). "
                        "Default: none.")  # fmt: skip
    parser.add_argument("--output", default="minerva-tuned.toml", metavar="FILE",
                        help="the TOML file to write. Default: minerva-tuned.toml.")  # fmt: skip
    parser.add_argument(
        "--config", default=None, metavar="FILE",
        help="re-measure the settings of a file tune wrote (beside its recorded figure) "
        "instead of a grid; writes nothing. Default: none (measure the grid).",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="Default: auto.")
    parser.add_argument("--load-format", choices=("auto", "dummy"), default=None,
                        help="dummy: random weights of the checkpoint's shapes (a config.json "
                        "is enough; speed only). Default: the checkpoint's weights.")  # fmt: skip
    parser.add_argument("--dtype", default="auto", help="Default: auto.")
    parser.add_argument(
        "--num-threads", type=int, default=None, help="CPU threads. Default: the engine's."
    )
    for name in GRID_FIELDS:
        parser.add_argument(
            f"--{name.replace('_', '-')}", dest=name, default=None, metavar="A,B",
            help=f"values of {name} to try (comma separated). {FIELDS[name].doc} Default: "
            + ", ".join(f"{g}: {v[name]}" for g, v in DEFAULT_GRID.items() if name in v)
            + ("" if any(name in v for v in DEFAULT_GRID.values()) else "not varied")
            + ".",
        )  # fmt: skip
    parser.add_argument("--input-len", type=int, default=64, help="prompt tokens. Default: 64.")
    parser.add_argument("--output-len", type=int, default=32, help="tokens out. Default: 32.")
    parser.add_argument("--num-prompts", type=int, default=16,
                        help="requests at once (throughput). Default: 16.")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="latency repeats. Default: 3.")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measurements of every point, interleaved; a point's figure is "
                        "their median, its noise their range. Default: 3.")  # fmt: skip
    parser.set_defaults(func=run_tune)
    return parser
