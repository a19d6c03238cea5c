"""runner/openmp_pools.py: the CPU Worker builds (loads, repacks, warms up) in a thread that
has exited by the time the engine steps, so that thread's OpenMP pool is gone."""

from __future__ import annotations

import threading

import pytest

from minerva import LLM
from minerva.runner import openmp_pools
from minerva.runner.worker import Worker
from tests.tiny_models import build_tiny_model


def test_in_passing_thread_returns_the_result_from_another_thread_that_ends():
    seen: list[threading.Thread] = []

    def work() -> int:
        seen.append(threading.current_thread())
        return 42

    assert openmp_pools.in_passing_thread(work) == 42
    assert seen[0] is not threading.current_thread()
    assert not seen[0].is_alive()


def test_in_passing_thread_raises_the_error_on_the_callers_thread():
    def fail() -> None:
        raise ValueError("bad weights")

    with pytest.raises(ValueError, match="bad weights"):
        openmp_pools.in_passing_thread(fail)


def test_the_cpu_worker_builds_off_the_callers_thread(tmp_path, monkeypatch):
    build_tiny_model(tmp_path, "llama", seed=1)
    builders: list[threading.Thread] = []
    build = Worker._build

    def recording(self, *args):
        builders.append(threading.current_thread())
        return build(self, *args)

    monkeypatch.setattr(Worker, "_build", recording)
    llm = LLM(model=str(tmp_path), device="cpu", progress=False)
    assert len(builders) == 1 and builders[0] is not threading.current_thread()
    assert not builders[0].is_alive()
    assert llm.generate([[3, 4, 5]])[0].outputs[0].token_ids  # and the engine runs here

    monkeypatch.setattr(openmp_pools, "LOAD_IN_PASSING_THREAD", False)
    LLM(model=str(tmp_path), device="cpu", progress=False)
    assert builders[1] is threading.current_thread()  # the switch the benchmark compares
