"""AsyncEngine in-process: same tokens as the sync engine, abort frees KV blocks, admission
control, drain, errors reach the caller, and an idle engine thread sleeps (no busy spin).

No test depends on the machine's speed: a request that must still be running is held by a
StepGate (the engine thread waits before its next step until an abort is submitted)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable

import pytest

from minerva.config import EngineConfig
from minerva.engine.async_engine import (
    AsyncEngine,
    EngineDeadError,
    EngineDrainingError,
    QueueFullError,
    StepInfo,
)
from minerva.engine.llm_engine import LLMEngine
from minerva.errors import RequestError
from minerva.sampling_params import SamplingParams
from tests.e2e.tiny_server_model import build_server_model

PROMPT = [1, 20, 30, 40, 50]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_server_model(tmp_path_factory.mktemp("tiny"))


def make_engine(model_dir, **kwargs) -> LLMEngine:
    config = EngineConfig.from_kwargs(
        model=str(model_dir), device="cpu", dtype="float32", num_kv_blocks=256, num_threads=1,
        **{"max_num_seqs": 2, **kwargs},
    )  # fmt: skip
    return LLMEngine(config, progress=False)


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


class Recorder:
    def __init__(self) -> None:
        self.steps: list[StepInfo] = []

    def on_step(self, info, outputs, stats) -> None:
        if info is not None:
            self.steps.append(info)


def run(coro):
    return asyncio.run(coro)


class StepGate:
    """Once ``hold(outputs)`` was true after a step, the engine thread runs one more step per
    command the caller submits (so adds are still taken) and runs freely once an abort was
    submitted: the requests in flight cannot run to their end before they are aborted."""

    def __init__(self, engine: AsyncEngine, hold: Callable[[list], bool]) -> None:
        self.outputs: list = []
        self._holding = False
        self._aborted = threading.Event()
        self._tickets = threading.Semaphore(0)  # one step per submitted command
        step, submit = engine.engine.step, engine._submit

        def gated_step():
            if self._holding and not self._aborted.is_set():
                self._tickets.acquire(timeout=60)  # a hang guard; the tests always abort
            outputs = step()
            self.outputs.extend(outputs)
            self._holding = self._holding or hold(outputs)
            return outputs

        def gated_submit(kind, payload):
            submit(kind, payload)
            if kind == "abort":
                self._aborted.set()
            self._tickets.release()

        engine.engine.step = gated_step
        engine._submit = gated_submit


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition``; the 60 s bound is a hang guard, not a speed check."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.01)


def test_streams_match_the_sync_engine_and_report_steps(model_dir):
    expected = make_engine(model_dir)
    expected.add_request(PROMPT, greedy(12), "ref")
    ref = None
    while expected.has_unfinished_requests():
        ref = next((o for o in expected.step() if o.finished), ref)

    async def main():
        recorder = Recorder()
        engine = AsyncEngine(make_engine(model_dir), max_queued_requests=4, observer=recorder)
        engine.start()
        outs = [out async for out in engine.generate(PROMPT, greedy(12), "a")]
        await engine.shutdown()
        return outs, recorder

    outs, recorder = run(main())
    deltas = [t for o in outs for t in o.outputs[0].delta_token_ids]
    assert deltas == ref.outputs[0].token_ids and outs[-1].finish_reason == "length"
    assert outs[-1].outputs[0].token_ids == ref.outputs[0].token_ids
    # One prefill step (5 prompt tokens), then 11 decode steps of one sequence each.
    assert recorder.steps[0].num_prefill_tokens == 5
    assert [s.num_decode_tokens for s in recorder.steps[1:]] == [1] * 11
    assert all(s.num_seqs == 1 and s.duration > 0 for s in recorder.steps)


def test_abort_frees_kv_and_admission_is_bounded(model_dir):
    async def main():
        engine = AsyncEngine(make_engine(model_dir), max_queued_requests=1)
        StepGate(engine, hold=bool)  # nothing finishes before the aborts below
        engine.start()
        streams = [await engine.add_request(PROMPT, greedy(200), f"r{i}") for i in range(3)]
        with pytest.raises(QueueFullError) as e:  # 2 running + 1 queued: full
            await engine.add_request(PROMPT, greedy(4), "r3")
        assert e.value.retry_after >= 1
        with pytest.raises(RequestError, match="n=4"):  # could never fit: a 400, not a 503
            await engine.add_request(PROMPT, SamplingParams(n=4, max_tokens=2), "big")
        with pytest.raises(QueueFullError):  # others being tokenized fill it: 503, not "n=4"
            engine.check_capacity(1, pending=3)
        await streams[0].__anext__()
        assert engine.stats().kv_cache_usage > 0
        for s in streams:
            s.abort()
        added = await engine.add_request(PROMPT, greedy(2), "after")  # room again at once
        outs = [o async for o in added]

        def settled() -> bool:
            stats = engine.stats()
            return stats.num_running == stats.num_waiting == 0

        await wait_until(settled, "nothing runs or waits")
        stats = engine.stats()
        await engine.shutdown()
        return outs, stats

    outs, stats = run(main())
    assert outs[-1].finish_reason == "length" and len(outs[-1].outputs[0].token_ids) == 2
    assert stats.num_running == stats.num_waiting == 0 and stats.kv_cache_usage == 0


def test_request_errors_reach_the_caller(model_dir):
    async def main():
        engine = AsyncEngine(make_engine(model_dir, max_model_len=64))
        engine.start()
        with pytest.raises(RequestError) as e:
            await engine.add_request(PROMPT, SamplingParams(max_tokens=100), "long")
        assert e.value.code == "context_length_exceeded"
        with pytest.raises(RequestError):
            await engine.add_request([1, 10**6], SamplingParams(max_tokens=2), "oov")
        assert engine.num_requests_in_flight == 0
        await engine.shutdown()
        with pytest.raises(EngineDeadError):
            await engine.add_request(PROMPT, greedy(2), "late")

    run(main())


def test_drain_finishes_short_requests_and_aborts_long_ones(model_dir):
    def short_finished(outputs) -> bool:
        return any(o.request_id == "short" and o.finished for o in outputs)

    async def main():
        engine = AsyncEngine(make_engine(model_dir))
        StepGate(engine, hold=short_finished)  # "long" cannot finish before it is aborted
        engine.start()
        short = await engine.add_request(PROMPT, greedy(3), "short")
        long = await engine.add_request(PROMPT, greedy(1500), "long")
        drained = asyncio.create_task(engine.drain(timeout=600))  # outlived by the one below
        await asyncio.sleep(0)
        with pytest.raises(EngineDrainingError):
            await engine.add_request(PROMPT, greedy(2), "late")
        short_outs = [o async for o in short]  # finishes while the engine drains
        still_draining = not drained.done()
        # A drain whose timeout has run out (here at once) aborts what is still in flight.
        aborted = await engine.drain(timeout=0)
        long_outs = [o async for o in long]
        first_aborted = await drained
        await engine.shutdown()
        return short_outs, long_outs, still_draining, aborted, first_aborted

    short_outs, long_outs, still_draining, aborted, first_aborted = run(main())
    assert short_outs[-1].finish_reason == "length"
    assert len(short_outs[-1].outputs[0].token_ids) == 3
    assert still_draining  # the drain waited for "long"
    assert long_outs[-1].finish_reason == "abort" and aborted == 1 and first_aborted == 0
    assert len(long_outs[-1].outputs[0].token_ids) < 1500


def _parked_in_wait(thread: threading.Thread) -> bool:
    """The thread's innermost Python frame is Condition.wait, called by the engine loop itself
    (a wait inside a step, e.g. for a step's output, is not the idle park)."""
    frame = sys._current_frames().get(thread.ident)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return names[:2] == ["wait", "_run"]


def test_idle_engine_thread_sleeps(model_dir):
    async def main():
        llm = make_engine(model_dir)
        loops = 0
        has_unfinished = llm.has_unfinished_requests

        def counted() -> bool:  # the engine loop asks once per turn
            nonlocal loops
            loops += 1
            return has_unfinished()

        llm.has_unfinished_requests = counted
        engine = AsyncEngine(llm)
        engine.start()
        _ = [o async for o in engine.generate(PROMPT, greedy(2))]
        thread = next(t for t in threading.enumerate() if t.name == "minerva-engine")
        await wait_until(lambda: _parked_in_wait(thread), "the engine thread waits")
        before = loops
        await asyncio.sleep(0.2)  # a spinning loop would turn here; a parked one cannot
        after, parked = loops, _parked_in_wait(thread)
        await engine.shutdown()
        return before, after, parked

    before, after, parked = run(main())
    assert before > 0 and after == before and parked


def test_cancelling_the_consumer_aborts_the_request(model_dir):
    async def main():
        engine = AsyncEngine(make_engine(model_dir))
        gate = StepGate(engine, hold=bool)  # "c" cannot finish before it is aborted
        engine.start()
        first = asyncio.Event()

        async def consume():
            async for _ in engine.generate(PROMPT, greedy(1500), "c"):
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        assert engine.stats().num_running == 1
        task.cancel()
        await wait_until(lambda: engine.stats().num_running == 0, "the request is gone")
        stats = engine.stats()
        await engine.shutdown()
        return stats, gate.outputs

    stats, outputs = run(main())
    assert stats.num_running == 0 and stats.kv_cache_usage == 0
    assert all(o.finish_reason != "length" for o in outputs)  # aborted, never ran out


def test_engine_failure_reaches_every_waiter(model_dir):
    async def main():
        llm = make_engine(model_dir)

        def boom():
            raise RuntimeError("kaboom")

        llm.step = boom
        engine = AsyncEngine(llm)
        engine.start()
        stream = await engine.add_request(PROMPT, greedy(4), "x")
        with pytest.raises(EngineDeadError, match="kaboom"):
            async for _ in stream:
                pass
        assert not engine.is_running
        with pytest.raises(EngineDeadError):
            await engine.add_request(PROMPT, greedy(4), "y")
        await engine.shutdown()

    run(main())


def test_score_runs_on_the_engine_thread_and_a_bad_one_does_not_kill_it(model_dir):
    expected = make_engine(model_dir).score(PROMPT)

    async def main():
        engine = AsyncEngine(make_engine(model_dir))
        engine.start()
        scores = await engine.score(PROMPT)
        with pytest.raises(RequestError):
            await engine.score([1])  # too short to score
        final = [out async for out in engine.generate(PROMPT, greedy(3))][-1]
        await engine.shutdown()
        return scores, final

    scores, final = run(main())
    assert scores == pytest.approx(expected, abs=1e-6) and final.finish_reason == "length"


def test_stream_false_yields_only_the_final_output(model_dir):
    async def main():
        engine = AsyncEngine(make_engine(model_dir))
        engine.start()
        streamed = [o async for o in await engine.add_request(PROMPT, greedy(6), "s")]
        once = [o async for o in await engine.add_request(PROMPT, greedy(6), "o", stream=False)]
        await engine.shutdown()
        return streamed, once

    streamed, once = run(main())
    assert len(streamed) == 6 and len(once) == 1 and once[0].finished
    assert once[0].outputs[0].token_ids == streamed[-1].outputs[0].token_ids
