"""Energy counters: RAPL read from a powercap tree (a wrapped counter unwrapped, subzones left
out), NVML's per-GPU millijoules summed, and "not available" where neither can be read."""

from __future__ import annotations

import pytest

from minerva.bench.energy import NOT_AVAILABLE, EnergyMeter, NvmlCounters, RaplCounters


def _zone(root, name: str, energy: int, span: int = 1000_000_000) -> None:
    zone = root / name
    zone.mkdir()
    (zone / "energy_uj").write_text(f"{energy}\n")
    (zone / "max_energy_range_uj").write_text(f"{span}\n")


class FakeNvml:
    def __init__(self, counters: list[int]) -> None:
        self.counters = counters

    def nvmlDeviceGetCount(self) -> int:
        return len(self.counters)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        return self.counters[h]


def test_rapl_and_nvml_counters_give_joules_per_token(tmp_path):
    _zone(tmp_path, "intel-rapl:0", 999_000_000)  # wraps at 1e9 during the run
    _zone(tmp_path, "intel-rapl:1", 5_000_000)
    _zone(tmp_path, "intel-rapl:0:0", 0)  # a subzone: part of package 0 already
    rapl, nvml = RaplCounters(tmp_path), NvmlCounters(FakeNvml([1000, 50_000]))
    with EnergyMeter(rapl, nvml) as meter:
        (tmp_path / "intel-rapl:0" / "energy_uj").write_text("1000000\n")  # +2 J
        (tmp_path / "intel-rapl:1" / "energy_uj").write_text("8000000\n")  # +3 J
        (tmp_path / "intel-rapl:0:0" / "energy_uj").write_text("7000000\n")
        nvml.nvml.counters[:] = [3000, 60_000]  # +2 J, +10 J
    r = meter.result(num_tokens=17)
    assert (r["cpu_source"], r["gpu_source"]) == ("rapl", "nvml")
    assert r["cpu_energy_j"] == pytest.approx(5.0) and r["gpu_energy_j"] == pytest.approx(12.0)
    assert r["energy_per_token_j"] == pytest.approx(17.0 / 17)
    assert r["cpu_power_w"] == pytest.approx(5.0 / r["duration_s"])


def test_unreadable_counters_are_reported_not_available(tmp_path):
    class NoNvml(FakeNvml):
        def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    with EnergyMeter(RaplCounters(tmp_path / "missing"), NvmlCounters(NoNvml([0]))) as meter:
        pass
    r = meter.result(num_tokens=10)
    assert r["cpu_source"] == r["gpu_source"] == NOT_AVAILABLE
    assert r["energy_j"] is None and r["energy_per_token_j"] is None
