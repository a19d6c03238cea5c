"""Request deadlines and queue timeouts (queue_timeout, request_timeout), on an injected clock:
a request that never started within queue_timeout fails with a 503 QueueTimeoutError and
frees its place; a running one is never queue-expired; request_timeout aborts a running one.
"""

from __future__ import annotations

import asyncio

import pytest

from minerva.config import EngineConfig
from minerva.engine.async_engine import AsyncEngine
from minerva.engine.llm_engine import LLMEngine
from minerva.errors import QueueTimeoutError
from minerva.sampling_params import SamplingParams
from minerva.server.api_errors import to_api_error

PROMPT = [1, 20, 30, 40, 50]
LONG = SamplingParams(max_tokens=60_000, temperature=0, ignore_eos=True)  # minutes of decoding


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _engine(model_dir, clock: FakeClock, **timeouts: float) -> AsyncEngine:
    config = EngineConfig.from_kwargs(
        model=str(model_dir), device="cpu", dtype="float32", num_threads=1, max_num_seqs=1,
        max_model_len=65536, num_kv_blocks=8192,
    )  # fmt: skip
    return AsyncEngine(LLMEngine(config, progress=False), clock=clock, **timeouts)


def test_queue_timeout_fails_only_requests_that_never_started(tiny_model):
    clock = FakeClock()

    async def main():
        engine = _engine(tiny_model, clock, queue_timeout=5.0)
        engine.start()
        running = await engine.add_request(PROMPT, LONG, "running", arrival_time=clock.now)
        await running.__anext__()  # it is scheduled
        clock.now += 10  # "running" is now 10 s old, but it started long ago
        late = await engine.add_request(PROMPT, LONG, "late", arrival_time=clock.now - 6)
        with pytest.raises(QueueTimeoutError) as e:
            async for _ in late:
                pass
        still = await running.__anext__()  # the running one goes on
        in_flight = engine.num_requests_in_flight
        running.abort()
        await engine.shutdown()
        return e.value, still, in_flight

    error, still, in_flight = asyncio.run(main())
    assert still.finish_reason is None and in_flight == 1  # the late one's place is free
    api = to_api_error(error)
    assert api.status == 503 and api.code == "queue_timeout" and api.headers["Retry-After"] == "1"
    print(
        "\n[reliability] queue timeout: the never-started request got 503 queue_timeout, the running one ran"
    )


def test_request_timeout_aborts_a_running_request(tiny_model):
    clock = FakeClock()

    async def main():
        engine = _engine(tiny_model, clock, request_timeout=30.0)
        engine.start()
        stream = await engine.add_request(PROMPT, LONG, "slow", arrival_time=clock.now)
        await stream.__anext__()
        clock.now += 31
        outs = [o async for o in stream]
        stats = engine.stats()
        await engine.shutdown()
        return outs, stats

    outs, stats = asyncio.run(main())
    assert outs[-1].finished and outs[-1].finish_reason == "abort"
    assert len(outs[-1].outputs[0].token_ids) < LONG.max_tokens
    print(
        "\n[reliability] request timeout: a 60,000-token request ended with finish_reason abort at its deadline"
    )
