"""Energy over a benchmark run, from the hardware's cumulative counters: NVML's total energy per
NVIDIA GPU (millijoules since the driver loaded) and RAPL's per-package counters on the CPU
(``/sys/class/powercap/intel-rapl:N/energy_uj``, microjoules, wrapping at
``max_energy_range_uj``; often readable by root only). Reading a counter before and after a run
gives its energy without sampling; a source that cannot be read is reported "not available",
never guessed.

Both are whole-device figures: another process on the same CPU or GPU is counted too, so on a
shared machine they bound this run's energy from above.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NOT_AVAILABLE = "not available"
POWERCAP = Path("/sys/class/powercap")


@dataclass
class _Reading:
    t: float
    cpu_uj: list[int] | None
    gpu_mj: list[int] | None


class RaplCounters:
    """The CPU packages' RAPL energy counters (top-level zones only: their subzones, core and
    uncore, are parts of the same package)."""

    def __init__(self, root: Path = POWERCAP) -> None:
        zones = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
        self.zones = [z for z in zones if _readable(z / "energy_uj")]
        self.ranges = [_int(z / "max_energy_range_uj") or 2**32 for z in self.zones]

    @property
    def available(self) -> bool:
        return bool(self.zones)

    def read(self) -> list[int] | None:
        if not self.zones:
            return None
        return [_int(z / "energy_uj") or 0 for z in self.zones]

    def joules(self, before: list[int], after: list[int]) -> float:
        """Energy between two readings; a counter that wrapped once is unwrapped."""
        total = 0
        for b, a, span in zip(before, after, self.ranges):
            total += a - b if a >= b else a + span - b
        return total / 1e6


class NvmlCounters:
    """Every NVIDIA GPU's total-energy counter (Volta and newer), through nvidia-ml-py."""

    def __init__(self, nvml: Any = None) -> None:
        self.nvml, self.handles = None, []
        try:
            if nvml is None:
                import pynvml as nvml  # noqa: PLC0415 - optional (nvidia-ml-py)

                nvml.nvmlInit()
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            for h in handles:
                nvml.nvmlDeviceGetTotalEnergyConsumption(h)  # raises where unsupported
            self.nvml, self.handles = nvml, handles
        except Exception:  # noqa: BLE001 - no NVML, no driver, no GPU or an old one
            self.nvml, self.handles = None, []

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def read(self) -> list[int] | None:
        if not self.handles:
            return None
        return [int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self.handles]


class EnergyMeter:
    """``with EnergyMeter() as m: run()`` then ``m.result(num_tokens)``."""

    def __init__(self, rapl: RaplCounters | None = None, nvml: NvmlCounters | None = None):
        self.rapl = rapl if rapl is not None else RaplCounters()
        self.nvml = nvml if nvml is not None else NvmlCounters()
        self._start: _Reading | None = None
        self._end: _Reading | None = None

    def _read(self) -> _Reading:
        return _Reading(time.perf_counter(), self.rapl.read(), self.nvml.read())

    def __enter__(self) -> EnergyMeter:
        self._start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        self._end = self._read()

    def result(self, num_tokens: int) -> dict[str, Any]:
        """Joules, mean watts and joules per generated token, per source ("not available"
        where a counter cannot be read)."""
        assert self._start is not None and self._end is not None, "use as a context manager"
        s, e = self._start, self._end
        seconds = max(e.t - s.t, 1e-9)
        cpu = self.rapl.joules(s.cpu_uj, e.cpu_uj) if s.cpu_uj and e.cpu_uj else None
        gpu = (
            sum(b - a for a, b in zip(s.gpu_mj, e.gpu_mj)) / 1e3 if s.gpu_mj and e.gpu_mj else None
        )
        out: dict[str, Any] = {"duration_s": seconds}
        for name, joules, source in (("cpu", cpu, "rapl"), ("gpu", gpu, "nvml")):
            out[f"{name}_source"] = source if joules is not None else NOT_AVAILABLE
            out[f"{name}_energy_j"] = joules
            out[f"{name}_power_w"] = joules / seconds if joules is not None else None
        known = [j for j in (cpu, gpu) if j is not None]
        total = sum(known) if known else None
        out["energy_j"] = total
        out["energy_per_token_j"] = total / num_tokens if total is not None and num_tokens else None
        return out


def _readable(path: Path) -> bool:
    try:
        path.read_text()
        return True
    except OSError:
        return False


def _int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
