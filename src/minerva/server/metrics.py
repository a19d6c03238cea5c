"""Prometheus metrics (prometheus-client), one CollectorRegistry per app.

Request and step histograms are fed on the engine thread by ``on_step`` (the Backend's step
observer); gauges and the engine's own counters are read from ``Backend.stats()`` when
scraped; HTTP counts and durations come from a pure ASGI middleware.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from minerva.backends.base import Backend, BackendStats, RequestOutput, StepInfo

# fmt: off
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 120.0)
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Read from Backend.stats() at scrape time: (name, help, BackendStats field).
ENGINE_GAUGES = [
    ("minerva_requests_running", "Sequences running in the engine.", "num_running"),
    ("minerva_requests_waiting", "Sequences waiting to be scheduled.", "num_waiting"),
    ("minerva_kv_cache_usage_ratio", "Fraction of KV cache blocks in use (0..1).",
     "kv_cache_usage"),
    ("minerva_kv_cache_blocks_total", "KV cache blocks allocated at start.", "num_kv_blocks"),
]
ENGINE_COUNTERS = [  # exported with a _total suffix
    ("minerva_prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
     "prefix_cache_queries"),
    ("minerva_prefix_cache_hits", "Prompt tokens served from the prefix cache.",
     "prefix_cache_hits"),
    ("minerva_preemptions", "Requests preempted (KV blocks taken back).", "num_preemptions"),
    ("minerva_spec_decode_verify_steps", "Request-steps that verified draft tokens.",
     "spec_verify_steps"),
    ("minerva_spec_decode_draft_tokens", "Draft tokens proposed and verified.",
     "spec_draft_tokens"),
    ("minerva_spec_decode_accepted_tokens", "Draft tokens the target model accepted.",
     "spec_accepted_tokens"),
    ("minerva_spec_decode_emitted_tokens", "Tokens emitted by verify steps (accepted + 1 each).",
     "spec_emitted_tokens"),
]
# ServerMetrics attribute -> (name, help, buckets)
HISTOGRAMS = {
    "ttft": ("minerva_time_to_first_token_seconds", "Arrival to the first generated token.",
             LATENCY_BUCKETS),
    "itl": ("minerva_inter_token_latency_seconds", "Between two outputs of a request.",
            LATENCY_BUCKETS),
    "e2e": ("minerva_e2e_request_latency_seconds", "Arrival to the last token.", LATENCY_BUCKETS),
    "queue_time": ("minerva_request_queue_time_seconds", "Arrival to first being scheduled.",
                   LATENCY_BUCKETS),
    "prefill_duration": ("minerva_prefill_duration_seconds",
                         "Engine steps that ran prompt tokens (prefill or mixed).", STEP_BUCKETS),
    "decode_duration": ("minerva_decode_duration_seconds",
                        "Engine steps that ran only decode tokens.", STEP_BUCKETS),
    "batch_size": ("minerva_batch_size", "Sequences per engine step.", BATCH_BUCKETS),
}
# fmt: on


class _EngineCollector(Collector):
    """Gauges and cumulative engine counters, read at scrape time."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        stats = self.metrics.backend_stats()
        for name, doc, attr in ENGINE_GAUGES:
            yield GaugeMetricFamily(name, doc, value=getattr(stats, attr))
        for name, doc, attr in ENGINE_COUNTERS:
            yield CounterMetricFamily(name, doc, value=getattr(stats, attr))
        yield from _spec_decode_metrics(stats)
        yield GaugeMetricFamily(
            "minerva_device_memory_used_bytes",
            "Device memory this process uses (CUDA/MPS allocated, or RSS on CPU).",
            value=stats.device_memory_used,
        )
        yield GaugeMetricFamily(
            "minerva_device_memory_total_bytes",
            "Device memory (host RAM on CPU).",
            value=stats.device_memory_total,
        )


def _spec_decode_metrics(stats: BackendStats) -> Iterator[Metric]:
    """Acceptance rate (overall and per draft position) and mean accepted length."""
    yield GaugeMetricFamily(
        "minerva_spec_decode_acceptance_ratio",
        "Draft tokens accepted / proposed (0 without speculation).",
        value=stats.spec_acceptance_rate,
    )
    yield GaugeMetricFamily(
        "minerva_spec_decode_mean_accepted_length",
        "Tokens emitted per verify step (accepted drafts + 1; 0 without speculation).",
        value=stats.spec_mean_accepted_length,
    )
    by_position = CounterMetricFamily(
        "minerva_spec_decode_accepted_tokens_per_position",
        "Draft tokens accepted at each draft position (0-based).",
        labels=["position"],
    )
    drafted = CounterMetricFamily(
        "minerva_spec_decode_draft_tokens_per_position",
        "Draft tokens verified at each draft position (0-based).",
        labels=["position"],
    )
    for j, (a, d) in enumerate(
        zip(stats.spec_accepted_per_position, stats.spec_drafts_per_position)
    ):
        by_position.add_metric([str(j)], a)
        drafted.add_metric([str(j)], d)
    yield by_position
    yield drafted


class ServerMetrics:
    """Every metric of the server, registered in its own registry."""

    ttft: Histogram
    itl: Histogram
    e2e: Histogram
    queue_time: Histogram
    prefill_duration: Histogram
    decode_duration: Histogram
    batch_size: Histogram

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests_rejected = Counter(
            "minerva_requests_rejected",
            "Requests refused with 503 (queue full, draining, not ready), by reason.",
            ["reason"],
            registry=r,
        )
        self.requests_finished = Counter(
            "minerva_requests_finished", "Requests finished, by reason.", ["finish_reason"],
            registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "minerva_prompt_tokens",
            "Prompt tokens of requests that started generating, and of embedded inputs.",
            registry=r,
        )  # fmt: skip
        self.generation_tokens = Counter(
            "minerva_generation_tokens", "Tokens generated.", registry=r
        )
        for attr, (name, doc, buckets) in HISTOGRAMS.items():
            setattr(self, attr, Histogram(name, doc, buckets=buckets, registry=r))
        self.http_requests = Counter(
            "minerva_http_requests", "HTTP requests by route and status.",
            ["method", "route", "status"], registry=r,
        )  # fmt: skip
        self.http_duration = Histogram(
            "minerva_http_request_duration_seconds",
            "HTTP request time (the whole stream for streaming responses).",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        for reason in ("queue_full", "draining", "unavailable", "dead"):  # export zeros too
            self.requests_rejected.labels(reason)
        for reason in ("stop", "length", "abort"):
            self.requests_finished.labels(reason)
        r.register(_EngineCollector(self))
        self._stats: Callable[[], BackendStats] | None = None
        self._last_token_time: dict[str, float] = {}  # engine thread only

    def attach(self, backend: Backend) -> None:
        """Read gauges from this backend from now on (it calls ``on_step`` itself)."""
        self._stats = backend.stats

    def attach_stats(self, stats: Callable[[], BackendStats]) -> None:
        """Read gauges from ``stats`` (e.g. the sum over several loaded models)."""
        self._stats = stats

    def backend_stats(self) -> BackendStats:
        return self._stats() if self._stats is not None else BackendStats()  # loading: zeros

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)

    def on_step(self, info: StepInfo | None, outputs: list[RequestOutput]) -> None:
        """Engine-thread hook: step timings and per-request latencies."""
        now = time.monotonic()
        if info is not None:
            hist = self.prefill_duration if info.num_prefill_tokens else self.decode_duration
            hist.observe(info.duration)
            self.batch_size.observe(info.num_seqs)
        for out in outputs:
            self._on_output(out, now)

    def _on_output(self, out: RequestOutput, now: float) -> None:
        rid, m = out.request_id, out.metrics
        new_tokens = sum(len(c.delta_token_ids) for c in out.outputs)
        if new_tokens:
            self.generation_tokens.inc(new_tokens)
            last = self._last_token_time.get(rid)
            if last is None and m is not None:
                first = m.first_token_time or now
                self.ttft.observe(max(first - m.arrival_time, 0.0))
                scheduled = m.first_scheduled_time or first
                self.queue_time.observe(max(scheduled - m.arrival_time, 0.0))
                self.prompt_tokens.inc(len(out.prompt_token_ids))
            elif last is not None:
                self.itl.observe(now - last)
            self._last_token_time[rid] = now
        if out.embedding is not None:  # a pooling request: its prompt ran, nothing sampled
            self.prompt_tokens.inc(len(out.prompt_token_ids))
        if out.finished:
            self._last_token_time.pop(rid, None)
            if m is not None:
                self.e2e.observe(max((m.finished_time or now) - m.arrival_time, 0.0))
            reasons = {c.finish_reason for c in out.outputs if c.finish_reason}
            reason = min(reasons) if reasons else "unknown"
            self.requests_finished.labels(
                finish_reason=reason if reason in FINISH_REASONS else "other"
            ).inc()


def sum_stats(all_stats: list[BackendStats]) -> BackendStats:
    """Several backends' stats as one: counts add up, KV usage is over all blocks, device memory
    (the process's) is the largest report."""
    if len(all_stats) == 1:
        return all_stats[0]
    summed = {}
    for f in dataclasses.fields(BackendStats):
        values = [getattr(s, f.name) for s in all_stats]
        if f.name.startswith("device_memory"):
            summed[f.name] = max(values, default=0)
        elif isinstance(f.default, (int, float)) and not isinstance(f.default, bool):
            summed[f.name] = sum(values)
        else:  # per-position lists
            summed[f.name] = [sum(col) for col in itertools.zip_longest(*values, fillvalue=0)]
    blocks = summed["num_kv_blocks"]
    used = sum(s.kv_cache_usage * s.num_kv_blocks for s in all_stats)
    summed["kv_cache_usage"] = used / blocks if blocks else 0.0
    return BackendStats(**summed)


# Every label takes values from a fixed set: a client must not be able to mint new series
# (1,000 made-up HTTP methods once grew /metrics from 15 KB to 2 MB).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
FINISH_REASONS = frozenset({"stop", "length", "abort", "error", "tool_calls", "unknown"})


def method_label(method: str) -> str:
    return method if method in HTTP_METHODS else "other"


def status_label(status: int) -> str:
    return str(status) if isinstance(status, int) and 100 <= status <= 599 else "other"


class HTTPMetricsMiddleware:
    """Counts requests and times them by route template (pure ASGI: streams stay streams)."""

    def __init__(self, app, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_watch(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"  # templates only, never raw paths
            method = method_label(scope.get("method", ""))
            self.metrics.http_requests.labels(method, path, status_label(status)).inc()
            self.metrics.http_duration.labels(method, path).observe(time.perf_counter() - start)
