"""PNG bar charts of an offline benchmark: one file per metric, one bar per engine, side by side
(latency: TTFT, time per token, end-to-end, prefill and decode speed, peak RSS / GPU memory,
CPU use, energy per token; throughput: output tokens/s, requests/s, peak memory, CPU, energy;
consistency: each engine's coherence)."""

from __future__ import annotations

from pathlib import Path

from minerva.bench.plots import _pyplot

MIB = 2**20
METRICS: dict[str, list[tuple[str, str, float]]] = {
    "latency": [
        ("ttft_ms", "time to first token (ms)", 1.0),
        ("tpot_ms", "time per output token (ms)", 1.0),
        ("e2e_ms", "end-to-end (ms)", 1.0),
        ("prefill_tok_s", "prefill (tokens/s)", 1.0),
        ("decode_tok_s", "decode (tokens/s)", 1.0),
        ("peak_rss_bytes", "peak RSS (MiB)", 1 / MIB),
        ("peak_gpu_bytes", "peak GPU memory (MiB)", 1 / MIB),
        ("cpu_percent", "CPU use (% of one core)", 1.0),
        ("energy_per_token_j", "energy per token (J)", 1.0),
    ],
    "throughput": [
        ("output_throughput", "output tokens/s", 1.0),
        ("request_throughput", "requests/s", 1.0),
        ("peak_rss_bytes", "peak RSS (MiB)", 1 / MIB),
        ("peak_gpu_bytes", "peak GPU memory (MiB)", 1 / MIB),
        ("cpu_percent", "CPU use (% of one core)", 1.0),
        ("energy_per_token_j", "energy per token (J)", 1.0),
    ],
}
"""benchmark -> (row key, axis label, scale) of every chart; a metric no row has is skipped."""


def write_offline_plots(doc: dict, out_dir: str | Path) -> list[Path]:
    """The charts of one offline result document; returns their paths."""
    kind, out = doc["benchmark"], Path(out_dir)
    if kind == "consistency":
        rows = [r for r in doc.get("engines") or [] if r.get("coherence_ppl") is not None]
        named = [(r["name"], r["coherence_ppl"]) for r in rows]
        label = "coherence: perplexity under the reference (lower: closer)"
        return [_bars(out / "coherence.png", named, label, doc)] if named else []
    paths = []
    for key, label, scale in METRICS.get(kind, []):
        named = [(r["backend"], r[key] * scale) for r in doc["results"] if r.get(key) is not None]
        if named:
            paths.append(_bars(out / f"{kind}_{key}.png", named, label, doc))
    return paths


def _bars(path: Path, named: list[tuple[str, float]], label: str, doc: dict) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(named) + 2), 3.6))
    names, values = zip(*named)
    bars = ax.bar(range(len(values)), values, color=[f"C{i}" for i in range(len(values))])
    ax.bar_label(bars, [f"{v:.3g}" for v in values], fontsize="small")
    ax.set_xticks(range(len(names)), names, rotation=20 if len(names) > 4 else 0)
    ax.set_ylabel(label)
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    model = doc.get("config", {}).get("model") or doc.get("reference", {}) or ""
    fig.suptitle(f"minerva bench {doc['benchmark']}: {label}", fontsize="medium")
    fig.text(0.01, 0.005, f"model: {model} | {doc.get('date', '')}", fontsize="x-small",
             color="0.3", ha="left", va="bottom")  # fmt: skip
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
