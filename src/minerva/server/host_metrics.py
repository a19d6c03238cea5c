"""Host and device metrics beyond the engine's: the process's CPU time and resident memory,
and compute utilisation (the process's share of its CPUs; each NVIDIA GPU's, through NVML
when the nvidia-ml-py package is installed)."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


def resident_memory() -> int:
    """Bytes of this process's resident memory (Linux: now; elsewhere: the peak)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if os.uname().sysname == "Darwin" else peak * 1024  # macOS: bytes, else KiB


def _cpus() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def gpu_utilization() -> list[float]:
    """Each NVIDIA GPU's utilisation (0..1) from NVML; [] without NVML or a GPU."""
    try:
        import pynvml  # optional: nvidia-ml-py

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        return [pynvml.nvmlDeviceGetUtilizationRates(h).gpu / 100 for h in handles]
    except Exception:  # noqa: BLE001 - not installed, no driver, no GPU: nothing to report
        return []


class HostCollector(Collector):
    """CPU utilisation is measured between two scrapes (the first: since the app was built)."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), time.process_time())

    def collect(self) -> Iterator[Metric]:
        cpu = time.process_time()
        yield CounterMetricFamily(
            "minerva_process_cpu_seconds", "CPU time of this process (all threads).", value=cpu
        )
        yield GaugeMetricFamily(
            "minerva_host_memory_rss_bytes", "Resident memory of this process (host RAM).",
            value=resident_memory(),
        )  # fmt: skip
        util = GaugeMetricFamily(
            "minerva_compute_utilization_ratio",
            "Busy share of the compute device (cpu: this process's CPU time over its CPUs, "
            "since the last scrape; cuda:N: NVML's GPU utilisation).",
            labels=["device"],
        )
        util.add_metric(["cpu"], self._cpu_share(cpu))
        for i, value in enumerate(gpu_utilization()):
            util.add_metric([f"cuda:{i}"], value)
        yield util

    def _cpu_share(self, cpu: float) -> float:
        now = time.monotonic()
        last_wall, last_cpu = self._last
        self._last = (now, cpu)
        wall = now - last_wall
        return min(max((cpu - last_cpu) / (wall * _cpus()), 0.0), 1.0) if wall > 0 else 0.0
