"""The Grafana dashboard's panels drawn with matplotlib from a live Prometheus (Grafana itself
is not installable here): each panel's queries over a time range, laid out like the rows."""

from __future__ import annotations

import math
from pathlib import Path

from tests.e2e.prometheus_runner import Prometheus, concrete, dashboard_panels

UNITS = {"bytes": (2**20, "MiB"), "s": (1e-3, "ms"), "percentunit": (0.01, "%")}


def render_dashboard(prom: Prometheus, start: float, end: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = dashboard_panels()
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 5.2, rows * 2.9), squeeze=False)
    step = max((end - start) / 200, 1.0)
    for ax, panel in zip(axes.flat, panels):
        scale, unit = UNITS.get(panel["fieldConfig"]["defaults"].get("unit", ""), (1, ""))
        for target in panel["targets"]:
            for series in prom.query_range(concrete(target["expr"]), start, end, step):
                t = [float(x) - start for x, _ in series["values"]]
                v = [float(y) / scale for _, y in series["values"]]
                ax.plot(t, v, linewidth=1.2, label=_legend(target["legendFormat"], series))
        ax.set_title(panel["title"] + (f" ({unit})" if unit else ""), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.supxlabel("seconds since the start of the load", fontsize=9)
    fig.suptitle("Minerva dashboard (deploy/grafana-dashboard.json) from a live Prometheus")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(out, dpi=80)
    plt.close(fig)


def _legend(fmt: str, series: dict) -> str:
    """Grafana's ``{{label}}`` legend format, filled from the series' labels."""
    text = fmt
    for key, value in series["metric"].items():
        text = text.replace("{{" + key + "}}", value)
    return text[:40]
