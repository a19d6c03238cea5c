"""Host metrics against references: resident memory against psutil, CPU time against
time.process_time, utilisation within [0, 1] and above 0 after work; no GPU here: no samples."""

from __future__ import annotations

import time

import psutil
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from minerva.server.host_metrics import HostCollector, gpu_utilization, resident_memory


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_resident_memory_matches_psutil():
    rss = psutil.Process().memory_info().rss
    assert abs(resident_memory() - rss) <= 0.05 * rss


def test_collector_reports_cpu_time_memory_and_utilisation():
    registry = CollectorRegistry()
    registry.register(HostCollector())
    before = time.process_time()
    sum(i * i for i in range(300_000))  # some CPU work between the start and the scrape
    m = _samples(registry)
    after = time.process_time()
    assert before <= m["minerva_process_cpu_seconds_total"] <= after
    assert 0 < m["minerva_compute_utilization_ratio{device=cpu}"] <= 1
    assert m["minerva_host_memory_rss_bytes"] > 0
    gpus = [k for k in m if "cuda:" in k]
    assert len(gpus) == len(gpu_utilization())  # one sample per GPU NVML reports (none here)
