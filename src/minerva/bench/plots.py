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


def _by_target(summaries: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for s in summaries:
        groups.setdefault(s["target"], []).append(s)
    return {t: sorted(rows, key=lambda r: r["x"]) for t, rows in groups.items()}


def _axis_label(summaries: list[dict]) -> str:
    return "request rate (req/s)" if summaries[0]["request_rate"] is not None else "concurrency"


def _style_x(ax, summaries: list[dict]) -> None:
    ax.set_xlabel(_axis_label(summaries))
    xs = sorted({s["x"] for s in summaries})
    if summaries[0]["request_rate"] is None and len(xs) > 2:
        ax.set_xscale("log", base=2)  # concurrency sweeps double: 1, 2, 4, ... 64
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.grid(alpha=0.3)


def _series(rows: list[dict], key: str, stat: str | None = None) -> tuple[list, list]:
    xs = [r["x"] for r in rows]
    ys = [(r[key] or {}).get(stat) if stat else r[key] for r in rows]
    return xs, [np.nan if y is None else y for y in ys]


def plot_throughput(plt, summaries: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for target, rows in _by_target(summaries).items():
        axes[0].plot(*_series(rows, "output_throughput"), marker="o", label=target)
        axes[1].plot(*_series(rows, "request_throughput"), marker="o", label=target)
    for ax, title in zip(axes, ("output tokens/s", "requests/s")):
        ax.set_title(title)
        _style_x(ax, summaries)
        ax.legend()
    _save(plt, fig, path)


def plot_latency(plt, summaries: list[dict], path: Path) -> None:
    metrics = [("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)"), ("e2e_ms", "E2E latency (ms)")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
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
    _save(plt, fig, path)


def plot_cdf(plt, requests: list[dict], metric: str, path: Path) -> None:
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
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(levels) :]:
        ax.set_visible(False)
    _save(plt, fig, path)


def _values(requests: list[dict], target: str, level: str, metric: str) -> list[float]:
    ok = [r for r in requests if r["target"] == target and r["level"] == level and r["success"]]
    if metric == "ttft":
        return [r["ttft"] * 1e3 for r in ok]
    return [(b - a) * 1e3 for r in ok for a, b in zip(r["chunk_times"], r["chunk_times"][1:])]


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_serve_plots(doc: dict, out_dir: str | Path) -> list[Path]:
    """The four PNGs of a serving result document; returns their paths."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / n for n in ("throughput.png", "latency.png", "ttft_cdf.png", "itl_cdf.png")]
    plot_throughput(plt, doc["summaries"], paths[0])
    plot_latency(plt, doc["summaries"], paths[1])
    plot_cdf(plt, doc["requests"], "ttft", paths[2])
    plot_cdf(plt, doc["requests"], "itl", paths[3])
    return paths
