"""A hung or crashing engine step (issue #15 items 2 and 10), through the fault-injection hook
(MINERVA_FAULT_INJECT): the watchdog turns /health 503 and fails what is in flight, a crash does
the same at once, and in both cases the server exits 1 so a supervisor restarts it. Shutdown
never waits on a hung engine for longer than its timeout plus a short, fixed grace.

The in-process test uses an injected clock; the server tests measure nothing against a
threshold (their waits are polls with hang guards) and only print the times they saw.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import httpx
import pytest

from minerva.config import EngineConfig
from minerva.engine.async_engine import AsyncEngine, StepTimeoutError
from minerva.engine.fault_injection import FAULT_ENV_VAR, FaultInjector, InjectedFault
from minerva.engine.llm_engine import LLMEngine
from minerva.errors import ConfigError
from minerva.sampling_params import SamplingParams
from tests.e2e.conftest import start_server
from tests.e2e.tiny_server_model import MODEL_NAME

PROMPT = [1, 20, 30, 40, 50]
HANG_GUARD = 120.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _poll(condition, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def test_fault_specs_parse_and_bad_ones_name_the_fix():
    assert FaultInjector.from_env({}) is None
    fault = FaultInjector.from_env({FAULT_ENV_VAR: "crash@2"})
    assert (fault.kind, fault.at_step) == ("crash", 2)
    fault.before_step()  # step 1 passes
    with pytest.raises(InjectedFault):
        fault.before_step()
    with pytest.raises(ConfigError, match="hang@N or crash@N"):
        FaultInjector.parse("hang@0")


def test_watchdog_fails_requests_of_a_hung_step_on_an_injected_clock(tiny_model):
    config = EngineConfig.from_kwargs(
        model=str(tiny_model), device="cpu", dtype="float32", num_kv_blocks=256, num_threads=1
    )
    clock, fault = FakeClock(), FaultInjector("hang", 3)

    async def main():
        engine = AsyncEngine(LLMEngine(config, progress=False), step_timeout=5.0, clock=clock,
                             faults=fault)  # fmt: skip
        engine.start()
        stream = await engine.add_request(PROMPT, SamplingParams(max_tokens=50, ignore_eos=True))
        await stream.__anext__()  # step 1 ran
        await asyncio.to_thread(_poll, lambda: fault.num_steps == 3, "step 3 hangs")
        before = (engine.is_running, engine.check_watchdog())
        clock.now += 5.5  # past step_timeout, on the engine's own clock
        after = (engine.is_running, engine.check_watchdog())
        with pytest.raises(StepTimeoutError, match="step_timeout=5s"):
            async for _ in stream:
                pass
        in_flight = engine.num_requests_in_flight
        stopped = await engine.shutdown(timeout=0.1)  # the thread is still inside the step
        fault.release()
        return before, after, in_flight, stopped

    before, after, in_flight, stopped = asyncio.run(main())
    assert before == (True, False) and after == (False, True)
    assert in_flight == 0 and stopped is False
    print(
        "\n[reliability] hung step: watchdog fired at step_timeout + 0.5 s (injected clock), 1 request failed"
    )


def _serve(tiny_model, tmp_path, monkeypatch, fault: str, *args: str):
    monkeypatch.setenv(FAULT_ENV_VAR, fault)
    return start_server(tiny_model, tmp_path / "server.log", *args, served_name=MODEL_NAME)


def _stream_lines(srv, max_tokens: int = 200):
    client = httpx.Client(base_url=srv.url, timeout=HANG_GUARD)
    body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0, "stream": True, "logprobs": 0}  # fmt: skip
    # logprobs: one event per token, even where a token ends inside a UTF-8 character
    return client, client.stream("POST", "/v1/completions", json=body)


def _read_events(response) -> list:
    events = []
    try:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    except httpx.HTTPError:
        events.append({"error": "connection closed"})
    return events


def _wait_exit(proc: subprocess.Popen) -> int:
    return proc.wait(HANG_GUARD)


@pytest.mark.parametrize("fault", ["hang@3", "crash@3"])
def test_a_broken_engine_fails_requests_and_exits_1(tiny_model, tmp_path, monkeypatch, fault):
    srv = _serve(tiny_model, tmp_path, monkeypatch, fault, "--step-timeout", "1")
    try:
        client, request = _stream_lines(srv)
        start = time.monotonic()
        with request as response:
            events = _read_events(response)
        health_503 = None
        try:
            health = httpx.get(f"{srv.url}/health", timeout=10)
            health_503 = health.status_code == 503
        except httpx.HTTPError:
            health_503 = True  # already gone: it exited
        code = _wait_exit(srv.proc)
        took = time.monotonic() - start
        client.close()
    finally:
        srv.proc.kill() if srv.proc.poll() is None else None
    assert code == 1, srv.log()
    assert any("error" in e for e in events), events  # the request ended with an error
    assert health_503
    assert "Traceback" not in srv.log() or fault.startswith("crash")  # a hang logs no trace
    print(
        f"\n[reliability] {fault.split('@')[0]} step: request failed, /health 503, exit {code} after {took:.1f} s"
    )


def test_sigterm_with_a_hung_step_ends_within_its_timeout(tiny_model, tmp_path, monkeypatch):
    srv = _serve(tiny_model, tmp_path, monkeypatch, "hang@3", "--shutdown-timeout", "1")
    try:
        client, request = _stream_lines(srv)
        with request as response:
            lines = response.iter_lines()
            tokens = 0
            while tokens < 2:  # steps 1 and 2 ran; step 3 hangs (step_timeout stays 600 s)
                tokens += next(lines).startswith("data: ")
            start = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            code = _wait_exit(srv.proc)
            took = time.monotonic() - start
        client.close()
    finally:
        srv.proc.kill() if srv.proc.poll() is None else None
    assert code == 1, srv.log()  # it could not stop its engine: not a clean exit
    print(
        f"\n[reliability] SIGTERM with a hung step: exit {code} after {took:.1f} s (shutdown_timeout 1 s)"
    )
