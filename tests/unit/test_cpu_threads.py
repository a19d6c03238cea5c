"""The default CPU thread count leaves busy cores out, and `doctor` says what it measured."""

from __future__ import annotations

import pytest

from minerva import doctor, platform


@pytest.mark.parametrize(
    "cpus, physical, busy, expected",
    [(2, 2, 0, 2), (2, 2, 1, 1), (2, 2, 9, 1), (16, 8, 0, 8), (16, 8, 10, 6), (4, 8, 0, 4)],
)
def test_default_threads_are_physical_cores_less_the_busy_ones(
    monkeypatch, cpus, physical, busy, expected
):
    monkeypatch.setattr(platform, "available_cpus", lambda: cpus)
    monkeypatch.setattr(platform.psutil, "cpu_count", lambda logical=True: physical)
    assert platform.default_num_threads(busy=busy) == expected


def test_unset_num_threads_gets_the_default(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(platform, "default_num_threads", lambda busy=None: 1)
    try:
        platform.set_num_threads(None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _scan(configured, speeds, default=2):
    measured = [{"threads": t, "matvec_per_s": s} for t, s in speeds.items()]
    best = max(measured, key=lambda m: m["matvec_per_s"])["threads"]
    return {"available_cpus": 2, "load_average": 3.0, "default": default,
            "configured": configured, "measured": measured, "best": best}  # fmt: skip


def test_doctor_names_the_thread_count_to_set():
    text = doctor.thread_advice(_scan(None, {1: 5000.0, 2: 400.0}))
    assert "set --num-threads 1" in text and "12.5x faster than 2" in text and "load 3.0" in text
    assert "set --num-threads" not in doctor.thread_advice(_scan(None, {1: 5000.0, 2: 4900.0}))
    assert "(--num-threads)" in doctor.thread_advice(_scan(1, {1: 5000.0, 2: 400.0}))


def test_doctor_scan_restores_the_thread_count():
    import torch

    before = torch.get_num_threads()
    scan = doctor.thread_scan(None, repeats=1)
    assert torch.get_num_threads() == before
    assert [m["threads"] for m in scan["measured"]][0] == 1
    assert scan["best"] in {m["threads"] for m in scan["measured"]}
