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
            head += " perplexity | Δ ppl ± s.e. |"
            rule += "---:|---:|"
        lines += [head, rule]
        for r in rows:
            line = (
                f"| {r['type']} | {r['source']} | {r['bits_per_weight']:.2f} | "
                f"{max(r['mean_kl'], 0.0):.5f} | {100 * r['top1_agreement']:.1f}% |"
            )
            if demo:
                delta = f"{r['perplexity'] - ref:+.3f} ± {r['ppl_delta_stderr']:.3f}"
                line += f" {r['perplexity']:.3f} | {delta} |"
            lines.append(line)
        lines.append("")
        lines += _comparison(block.get("vs_llama_cpp", []))
    path.write_text("\n".join(lines))


def _comparison(rows: list[dict]) -> list[str]:
    """In-situ perplexity minus llama.cpp's quantization's (paired standard error)."""
    if not rows:
        return []
    lines = [
        "In-situ quantization vs llama.cpp's quantizer on the same weights: perplexity of "
        "Minerva's in-situ model minus that of llama.cpp's file (run by Minerva, and by "
        "llama.cpp), ± the paired standard error over the scored tokens.",
        "",
        "| type | in-situ − llama.cpp file in Minerva | in-situ − llama.cpp running its file |",
        "|---|---:|---:|",
    ]
    for r in rows:
        a, b = r["vs_file_in_minerva"], r["vs_llama_cpp"]
        lines.append(
            f"| {r['type']} | {a['ppl_difference']:+.3f} ± {a['stderr']:.3f} | "
            f"{b['ppl_difference']:+.3f} ± {b['stderr']:.3f} |"
        )
    return [*lines, ""]


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
    ax_kl.set_ylim(bottom=1e-6)  # f16 / bf16 of the demo round to ~0: off the scale
    ax_kl.set_title("next-token KL divergence vs float32")
    ax_ppl.set(xlabel="bits per weight", ylabel="perplexity - f32 perplexity", yscale="symlog")
    ax_ppl.set_title("demo model: held-out perplexity delta")
    for ax in (ax_kl, ax_ppl):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
