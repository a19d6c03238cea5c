"""PNG plots of a serving benchmark (matplotlib, Agg backend: no display needed).

* throughput.png: output tokens/s and requests/s against the load level, one line per target;
* latency.png: TTFT, TPOT and E2E percentiles (p50 solid, p99 dashed) against the load level;
* ttft_cdf.png, itl_cdf.png: distribution (CDF) of TTFT and ITL, one panel per load level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    try:
        import matplotlib  # noqa: PLC0415 - optional dependency (extra "bench")
    except ImportError:
        from minerva.errors import ConfigError  # noqa: PLC0415

        raise ConfigError(
            "plots need matplotlib: pip install matplotlib (or minerva-llm[bench]), "
            "or pass --no-plots"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _position(summaries: list[dict]) -> dict:
    """Level label -> x position: its concurrency or rate; an unbounded rate (x None) goes
    one doubling past the largest finite one."""
    finite = [s["x"] for s in summaries if s["x"] is not None]
    beyond = 2 * max(finite) if finite else 1.0
    return {s["level"]: s["x"] if s["x"] is not None else beyond for s in summaries}


def _by_target(summaries: list[dict]) -> dict[str, list[dict]]:
    pos = _position(summaries)
    groups: dict[str, list[dict]] = {}
    for s in summaries:
        groups.setdefault(s["target"], []).append(s)
    return {t: sorted(rows, key=lambda r: pos[r["level"]]) for t, rows in groups.items()}


def _is_rate_sweep(summaries: list[dict]) -> bool:
    return summaries[0].get("sweep") == "rate" or summaries[0]["request_rate"] is not None


def _style_x(ax, summaries: list[dict]) -> None:
    """Log axis with a tick at every measured level (sweeps double: 1, 2, 4 ...); y from 0."""
    ax.set_xlabel("request rate (req/s)" if _is_rate_sweep(summaries) else "concurrency")
    pos = _position(summaries)
    ticks = dict(sorted({p: level for level, p in pos.items()}.items()))
    labels = [
        "inf" if next(s["x"] for s in summaries if s["level"] == lv) is None else f"{p:g}"
        for p, lv in ticks.items()
    ]
    if len(ticks) > 1 and min(ticks) > 0:
        ax.set_xscale("log", base=2)
    ax.set_xticks(list(ticks), labels)
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)


def _caption(fig, doc: dict) -> None:
    """Model, workload and date under the figure, so a PNG alone says what it shows."""
    models = ", ".join(dict.fromkeys(str(t.get("model")) for t in doc.get("targets", [])))
    cfg = doc.get("config", {})
    workload = cfg.get("workload") or "?"
    if cfg.get("max_tokens"):
        workload += f", max_tokens={cfg['max_tokens']}"
    fig.text(
        0.01, 0.005, f"model: {models} | workload: {workload} | {doc.get('date', '')}",
        fontsize="small", color="0.3", ha="left", va="bottom",
    )  # fmt: skip


def _series(rows: list[dict], key: str, stat: str | None = None) -> tuple[list, list]:
    pos = _position(rows)
    xs = [pos[r["level"]] for r in rows]
    ys = [(r[key] or {}).get(stat) if stat else r[key] for r in rows]
    return xs, [np.nan if y is None else y for y in ys]


def plot_throughput(plt, summaries: list[dict], path: Path, doc: dict | None = None) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for target, rows in _by_target(summaries).items():
        axes[0].plot(*_series(rows, "output_throughput"), marker="o", label=target)
        axes[1].plot(*_series(rows, "request_throughput"), marker="o", label=target)
    for ax, title in zip(axes, ("output tokens/s", "requests/s")):
        ax.set_title(title)
        _style_x(ax, summaries)
        ax.legend()
    _save(plt, fig, path, doc)


def plot_latency(plt, summaries: list[dict], path: Path, doc: dict | None = None) -> None:
    metrics = [("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)"), ("e2e_ms", "E2E latency (ms)")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (target, rows) in enumerate(_by_target(summaries).items()):
        color = colors[i % len(colors)]
        for ax, (key, _) in zip(axes, metrics):
            ax.plot(*_series(rows, key, "median"), marker="o", color=color, label=f"{target} p50")
            ax.plot(
                *_series(rows, key, "p99"), marker="x", ls="--", color=color, label=f"{target} p99"
            )
    for ax, (_, title) in zip(axes, metrics):
        ax.set_title(title)
        _style_x(ax, summaries)
        ax.legend(fontsize="small")
    _save(plt, fig, path, doc)


def plot_cdf(plt, requests: list[dict], metric: str, path: Path, doc: dict | None = None) -> None:
    """CDF of TTFT ('ttft') or ITL ('itl') in ms: one panel per load level, a line per target."""
    levels = list(dict.fromkeys(r["level"] for r in requests))
    cols = min(len(levels), 4)
    rows = -(-len(levels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False)
    for ax, level in zip(axes.flat, levels):
        for target in dict.fromkeys(r["target"] for r in requests):
            values = _values(requests, target, level, metric)
            if values:
                ax.step(np.sort(values), np.arange(1, len(values) + 1) / len(values), label=target)
        unit = "requests" if metric == "ttft" else "gaps between chunks"
        ax.set(title=level, xlabel=f"{metric.upper()} (ms)", ylabel=f"fraction of {unit}")
        ax.set_xlim(left=0)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(levels) :]:
        ax.set_visible(False)
    _save(plt, fig, path, doc)


def _values(requests: list[dict], target: str, level: str, metric: str) -> list[float]:
    ok = [r for r in requests if r["target"] == target and r["level"] == level and r["success"]]
    if metric == "ttft":
        return [r["ttft"] * 1e3 for r in ok]
    return [(b - a) * 1e3 for r in ok for a, b in zip(r["chunk_times"], r["chunk_times"][1:])]


def _save(plt, fig, path: Path, doc: dict | None = None) -> None:
    fig.tight_layout(rect=(0, 0.04, 1, 1) if doc else None)
    if doc:
        _caption(fig, doc)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_serve_plots(doc: dict, out_dir: str | Path) -> list[Path]:
    """The four PNGs of a serving result document; returns their paths."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / n for n in ("throughput.png", "latency.png", "ttft_cdf.png", "itl_cdf.png")]
    plot_throughput(plt, doc["summaries"], paths[0], doc)
    plot_latency(plt, doc["summaries"], paths[1], doc)
    plot_cdf(plt, doc["requests"], "ttft", paths[2], doc)
    plot_cdf(plt, doc["requests"], "itl", paths[3], doc)
    return paths
