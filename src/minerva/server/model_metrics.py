"""Metrics of the loaded models (read at scrape time from the server state): how many are
loaded or loading, each one's memory, the memory limit, loads, load time and unloads."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from minerva.server.model_registry import RegistryCounters
from minerva.server.state import ServerState

LOAD_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
UNLOAD_REASONS = ("expired", "memory", "request", "deleted", "shutdown")


class ModelCollector(Collector):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state, registry = self.state, self.state.registry
        memory = GaugeMetricFamily(
            "minerva_model_memory_bytes",
            "Memory each loaded model holds (weights + KV cache + activation reserve).",
            labels=["model"],
        )
        if registry is None:  # one model, loaded at start: the same families
            backend = state.backend
            if backend is not None:
                memory.add_metric([state.model_name], backend.stats().model_memory_bytes)
            loading = int(backend is None and state.load_error is None)
            loaded, limit = int(backend is not None), 0
            counters = RegistryCounters(loads=loaded, load_failures=int(bool(state.load_error)))
        else:
            for m in registry.loaded():
                memory.add_metric([m.name], m.size)
            loaded, loading = len(registry.loaded()), len(registry.loading())
            limit, counters = registry.memory_limit or 0, registry.counters
        yield GaugeMetricFamily("minerva_models_loaded", "Models in memory.", value=loaded)
        yield GaugeMetricFamily("minerva_models_loading", "Models being loaded.", value=loading)
        yield memory
        yield GaugeMetricFamily(
            "minerva_models_memory_limit_bytes",
            "Memory the loaded models may hold together (0: no limit, or one model).",
            value=limit,
        )
        yield from _load_metrics(counters)


def _load_metrics(counters) -> Iterator[Metric]:
    yield CounterMetricFamily("minerva_model_loads", "Models loaded.", value=counters.loads)
    yield CounterMetricFamily(
        "minerva_model_load_failures", "Model loads that failed.", value=counters.load_failures
    )
    unloads = CounterMetricFamily("minerva_model_unloads", "Models unloaded.", labels=["reason"])
    for reason in UNLOAD_REASONS:
        unloads.add_metric([reason], counters.unloads.get(reason, 0))
    yield unloads
    seconds = counters.load_seconds
    buckets = [(str(b), sum(s <= b for s in seconds)) for b in LOAD_BUCKETS]
    buckets.append(("+Inf", len(seconds)))
    yield HistogramMetricFamily(
        "minerva_model_load_duration_seconds", "Time to load a model.",
        buckets=buckets, sum_value=sum(seconds),
    )  # fmt: skip
