"""The result document of a serving benchmark: runs pooled per (target, level), plus raw data.

Repeats of a (target, level) are pooled: latencies over all their requests, throughputs as
total work over total wall time; each repeat's output throughput is kept to show the spread.
"""

from __future__ import annotations

import time

from minerva.bench.load import RunResult
from minerva.bench.metrics import summarize


def _max(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def summarize_runs(runs: list[RunResult], slo: dict[str, float] | None = None) -> list[dict]:
    """One summary per (target, level), in the order targets and levels first ran."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.target, run.level.label), []).append(run)
    summaries = []
    for (target, label), group in groups.items():
        level = group[0].level
        records = [r for run in group for r in run.records]
        summary = summarize(records, sum(run.duration for run in group), slo)
        mons = [run.monitor for run in group]
        summaries.append(
            {
                "target": target,
                "level": label,
                "concurrency": level.concurrency,
                "request_rate": None if level.request_rate == float("inf") else level.request_rate,
                "x": level.x,
                "sweep": level.sweep,
                "repeats": len(group),
                "output_throughput_per_repeat": [
                    summarize(run.records, run.duration)["output_throughput"] for run in group
                ],
                **summary,
                "peak_rss_bytes": _max([m.peak_rss_bytes for m in mons]),
                "mean_rss_bytes": _mean([m.mean_rss_bytes for m in mons]),
                "mean_cpu_percent": _mean([m.mean_cpu_percent for m in mons]),
                "peak_gpu_memory_bytes": _max([m.peak_gpu_memory_bytes for m in mons]),
                "mean_gpu_util_percent": _mean([m.mean_gpu_util_percent for m in mons]),
            }
        )
    return summaries


def serve_document(
    runs: list[RunResult],
    targets: list[dict],
    config: dict,
    system: dict,
    slo: dict[str, float] | None = None,
    command: str = "",
) -> dict:
    """Everything a serving benchmark measured, JSON-ready (raw per-request timings included)."""
    return {
        "benchmark": "serve",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "system": system,
        "config": config,
        "targets": targets,
        "summaries": summarize_runs(runs, slo),
        "runs": [
            {
                "target": run.target,
                "level": run.level.label,
                "repeat": run.repeat,
                "duration_s": run.duration,
                "num_requests": len(run.records),
                "monitor": run.monitor.to_dict(),
            }
            for run in runs
        ],
        "requests": [r.to_dict() for run in runs for r in run.records],
    }
