"""Per-request timings and their summary: TTFT, TPOT, ITL, E2E, throughput, goodput.

Definitions (the ones vLLM's and llama.cpp's serving benchmarks use):

* TTFT: from sending the request to the first chunk that carries generated text;
* ITL: the gaps between successive text chunks (a chunk may hold more than one token);
* TPOT: ``(E2E - TTFT) / (output_tokens - 1)`` per request, i.e. decode time per token;
* E2E: from sending the request to the end of its stream;
* throughputs: tokens (or requests) completed in a run divided by the run's wall time;
* goodput: completed requests per second that met every SLO given (``--slo ttft=200ms``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from minerva.errors import ConfigError

PERCENTILES = (50, 90, 99)
SLO_METRICS = ("ttft", "tpot", "e2e")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "": 1e-3}  # a bare number is milliseconds


@dataclass
class RequestRecord:
    """Client-side timing of one request (seconds; ``start`` relative to its run's start)."""

    target: str
    level: str
    repeat: int
    index: int
    start: float = 0.0
    success: bool = False
    error: str | None = None
    ttft: float | None = None
    e2e: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    """Arrival of each text chunk, seconds after the request was sent."""
    prompt_tokens: int | None = None
    output_tokens: int = 0
    usage_reported: bool = False
    """True when the token counts come from the server (usage / eval_count), not chunk counts."""
    output_text: str = ""

    @property
    def itl(self) -> list[float]:
        t = self.chunk_times
        return [b - a for a, b in zip(t, t[1:])]

    @property
    def tpot(self) -> float | None:
        if not self.success or self.output_tokens < 2 or self.ttft is None or self.e2e is None:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "tpot": self.tpot}


def distribution(values: list[float], scale: float = 1e3) -> dict[str, float | None]:
    """mean, std, median, p90, p99, min, max of ``values`` times ``scale`` (default: s -> ms)."""
    if not values:
        return {k: None for k in ("mean", "std", "median", "p90", "p99", "min", "max")}
    a = np.asarray(values, dtype=np.float64) * scale
    p50, p90, p99 = np.percentile(a, PERCENTILES)  # linear interpolation between ranks
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "median": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def parse_duration(text: str) -> float:
    """'200ms' -> 0.2, '1.5s' -> 1.5, '800us' -> 0.0008, '50' -> 0.05 (bare = ms)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(us|ms|s|)\s*", text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 200ms, 1.5s or 800us")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_slo(text: str | None) -> dict[str, float]:
    """'ttft=200ms,tpot=50ms' -> {'ttft': 0.2, 'tpot': 0.05} (seconds); ConfigError if bad."""
    slo: dict[str, float] = {}
    for item in filter(None, (text or "").split(",")):
        key, eq, value = item.partition("=")
        key = {"e2el": "e2e"}.get(key.strip().lower(), key.strip().lower())
        if not eq or key not in SLO_METRICS:
            raise ConfigError(
                f"--slo {item!r}: use metric=duration with metric one of "
                f"{', '.join(SLO_METRICS)}, e.g. --slo ttft=200ms,tpot=50ms"
            )
        try:
            slo[key] = parse_duration(value)
        except ValueError as e:
            raise ConfigError(f"--slo {item!r}: {e}") from None
    return slo


def meets_slo(record: RequestRecord, slo: dict[str, float]) -> bool:
    """A successful request whose TTFT, TPOT and E2E are within the given bounds."""
    if not record.success:
        return False
    values = {"ttft": record.ttft, "tpot": record.tpot or 0.0, "e2e": record.e2e}
    return all(values[k] is not None and values[k] <= bound for k, bound in slo.items())


def summarize(
    records: list[RequestRecord], duration: float, slo: dict[str, float] | None = None
) -> dict:
    """Aggregate metrics of one or more runs of ``duration`` wall seconds in total."""
    ok = [r for r in records if r.success]
    duration = max(duration, 1e-9)
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens or 0 for r in ok)
    summary = {
        "num_requests": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "failure_reasons": dict(Counter(r.error or "unknown" for r in records if not r.success)),
        "duration_s": duration,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration,
        "output_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        "usage_reported": all(r.usage_reported for r in ok) if ok else False,
        "ttft_ms": distribution([r.ttft for r in ok if r.ttft is not None]),
        "tpot_ms": distribution([t for r in ok if (t := r.tpot) is not None]),
        "itl_ms": distribution([g for r in ok for g in r.itl]),
        "e2e_ms": distribution([r.e2e for r in ok if r.e2e is not None]),
    }
    if slo:
        good = sum(meets_slo(r, slo) for r in records)
        summary["slo"] = {k: v * 1e3 for k, v in slo.items()}
        summary["goodput"] = good / duration
        summary["goodput_fraction"] = good / len(records) if records else math.nan
    return summary
