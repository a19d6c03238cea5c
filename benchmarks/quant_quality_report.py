"""The Markdown table and the plot of benchmarks/quant_quality.py's results."""

from __future__ import annotations

from pathlib import Path


def _ref_ppl(rows: list[dict]) -> float:
    return next(r["perplexity"] for r in rows if r["type"] == "f32")


def write_markdown(results: list[dict], path: Path) -> None:
    lines = ["# Quantization quality vs the float32 model", ""]
    for block in results:
        rows, demo = block["rows"], block["model"] == "demo"
        ref = _ref_ppl(rows)
        lines += [f"## {block['model']} ({rows[0]['num_scored']} scored tokens)", ""]
        head = "| type | source | bits/weight | mean KL | top-1 agree |"
        rule = "|---|---|---:|---:|---:|"
        if demo:
            head += " perplexity | Δ ppl |"
            rule += "---:|---:|"
        lines += [head, rule]
        for r in rows:
            line = (
                f"| {r['type']} | {r['source']} | {r['bits_per_weight']:.2f} | "
                f"{max(r['mean_kl'], 0.0):.5f} | {100 * r['top1_agreement']:.1f}% |"
            )
            if demo:
                line += f" {r['perplexity']:.3f} | {r['perplexity'] - ref:+.3f} |"
            lines.append(line)
        lines.append("")
    path.write_text("\n".join(lines))


def write_plot(results: list[dict], path: Path) -> None:
    """Mean KL (log scale) for every model, and the demo's perplexity delta, vs bits/weight."""
    import matplotlib  # noqa: PLC0415 - optional, only for the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax_kl, ax_ppl) = plt.subplots(1, 2, figsize=(12, 5))
    markers = {"minerva": "o", "rounded": "s", "llama.cpp file in minerva": "x", "llama.cpp": "+"}
    for block in results:
        rows, demo = block["rows"], block["model"] == "demo"
        ref = _ref_ppl(rows)
        for source, marker in markers.items():
            pts = [r for r in rows if r["source"] == source and r["mean_kl"] > 0]
            if not pts:
                continue
            label = f"{block['model']}: {source}"
            x = [r["bits_per_weight"] for r in pts]
            ax_kl.scatter(x, [r["mean_kl"] for r in pts], marker=marker, label=label)
            if demo:
                dppl = [r["perplexity"] - ref for r in pts]
                ax_ppl.scatter(x, dppl, marker=marker, label=source)
                if source == "minerva":
                    for r, y in zip(pts, dppl, strict=True):
                        ax_ppl.annotate(r["type"], (r["bits_per_weight"], y), fontsize=7)
            if source == "minerva":
                for r in pts:
                    ax_kl.annotate(r["type"], (r["bits_per_weight"], r["mean_kl"]), fontsize=7)
    ax_kl.set(xlabel="bits per weight", ylabel="mean KL(f32 || quantized), nats", yscale="log")
    ax_kl.set_title("next-token KL divergence vs float32")
    ax_ppl.set(xlabel="bits per weight", ylabel="perplexity - f32 perplexity", yscale="symlog")
    ax_ppl.set_title("demo model: held-out perplexity delta")
    for ax in (ax_kl, ax_ppl):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
