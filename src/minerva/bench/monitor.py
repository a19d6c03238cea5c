"""Resource sampling during a run: a process's RSS and CPU, system CPU, GPU memory and load.

A background thread samples every ``interval`` seconds. RSS and CPU cover the process and its
children (a server may fork workers). GPU figures come from NVML (``nvidia-ml-py``) when it is
installed: device-wide memory used and utilisation, which is what a server in another process
shows; else from torch for this process when torch is already loaded with CUDA.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import psutil


@dataclass
class Sample:
    t: float
    rss: int | None
    cpu_percent: float | None
    system_cpu_percent: float
    gpu_memory: int | None
    gpu_util: float | None


@dataclass
class MonitorSummary:
    """Peak and mean of what was sampled (None where nothing could be measured)."""

    num_samples: int = 0
    peak_rss_bytes: int | None = None
    mean_rss_bytes: float | None = None
    mean_cpu_percent: float | None = None
    mean_system_cpu_percent: float | None = None
    peak_gpu_memory_bytes: int | None = None
    mean_gpu_memory_bytes: float | None = None
    mean_gpu_util_percent: float | None = None
    samples: list[Sample] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "samples"}


def _peak(values: list) -> int | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


class _Gpu:
    """NVML if importable, else torch's view of this process, else nothing."""

    def __init__(self) -> None:
        self.handles: list = []
        self.nvml = None
        try:
            import pynvml  # noqa: PLC0415 - optional (nvidia-ml-py)

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self.nvml = pynvml
        except Exception:  # noqa: BLE001 - no NVML, no driver or no GPU: fall back
            self.nvml = None

    def read(self) -> tuple[int | None, float | None]:
        if self.nvml is not None and self.handles:
            used = sum(self.nvml.nvmlDeviceGetMemoryInfo(h).used for h in self.handles)
            util = _mean([self.nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self.handles])
            return int(used), util
        torch = sys.modules.get("torch")  # never import torch just to look
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            return int(torch.cuda.memory_reserved()), None
        return None, None


class ResourceMonitor:
    """``with ResourceMonitor(pid) as mon: ...`` then ``mon.summary``."""

    def __init__(self, pid: int | None = None, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.summary = MonitorSummary()
        self._proc = _process(pid)
        self._gpu = _Gpu()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: list[Sample] = []
        self._known: dict[int, psutil.Process] = {}  # cpu_percent needs the same objects

    def start(self) -> ResourceMonitor:
        psutil.cpu_percent(None)  # the first call only sets the reference point
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="bench-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> MonitorSummary:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        s = self._samples
        self.summary = MonitorSummary(
            num_samples=len(s),
            peak_rss_bytes=_peak([x.rss for x in s]),
            mean_rss_bytes=_mean([x.rss for x in s]),
            mean_cpu_percent=_mean([x.cpu_percent for x in s[1:]]),
            mean_system_cpu_percent=_mean([x.system_cpu_percent for x in s[1:]]),
            peak_gpu_memory_bytes=_peak([x.gpu_memory for x in s]),
            mean_gpu_memory_bytes=_mean([x.gpu_memory for x in s]),
            mean_gpu_util_percent=_mean([x.gpu_util for x in s]),
            samples=s,
        )
        return self.summary

    @property
    def num_samples(self) -> int:
        """Samples taken so far (the start's included)."""
        return len(self._samples)

    def __enter__(self) -> ResourceMonitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        rss = cpu = None
        if self._proc is not None:
            try:
                procs = [self._proc, *self._proc.children(recursive=True)]
                procs = [self._known.setdefault(p.pid, p) for p in procs]
                rss = sum(p.memory_info().rss for p in procs)
                # Percent of one core (200 = two cores busy), process and children together.
                cpu = sum(p.cpu_percent(None) for p in procs)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                self._proc = None
        gpu_mem, gpu_util = self._gpu.read()
        self._samples.append(
            Sample(time.monotonic(), rss, cpu, psutil.cpu_percent(None), gpu_mem, gpu_util)
        )


def _process(pid: int | None) -> psutil.Process | None:
    if pid is None:
        return None
    try:
        return psutil.Process(pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def find_server_pid(url: str) -> int | None:
    """The PID listening on a local URL's port (None if remote, unknown or not permitted)."""
    parsed = urlparse(url)
    if parsed.hostname not in ("localhost", "127.0.0.1", "::1", "0.0.0.0"):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    except (psutil.AccessDenied, OSError):
        return None
    return None
