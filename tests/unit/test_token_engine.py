"""TokenEngine (what the mlx and mistralrs backends build on) over a scripted fake engine that
"samples" fixed token lists: Minerva's stop rules, stop strings, abort, n > 1, a sequence the
other engine ends itself, a start that fails and a request the other engine fails, all through
ForeignBackend + AsyncEngine as the server drives them."""

from __future__ import annotations

import asyncio
import time

import pytest

from minerva.backends.base import Backend
from minerva.backends.blocking import BlockingBackend
from minerva.backends.foreign import ForeignBackend, source_model_info
from minerva.backends.token_engine import StepSummary, TokenEngine, TokenEvent
from minerva.config import EngineConfig
from minerva.demo import demo_model_path
from minerva.errors import RequestError
from minerva.loader import open_model
from minerva.request import Request
from minerva.sampling_params import SamplingParams


class ScriptedEngine(TokenEngine):
    """Each sequence emits ``script`` one token per step, over and over (or once, then ends
    itself, if ``ends``)."""

    name = "scripted"

    def __init__(self, script: list[int], ends: bool = False, **config) -> None:
        source = open_model(demo_model_path())
        super().__init__(EngineConfig.from_kwargs(device="cpu", **config), source, 512)
        self.script, self.ends = script, ends
        self.running: dict[str, int] = {}
        self.cancelled: list[str] = []
        self.fail_start = self.fail_next = False
        self.hold_after: int | None = None  # emit no more than this many tokens per sequence

    def _start(self, request: Request) -> None:
        if self.fail_start:
            raise RuntimeError("no room")
        self.running[request.request_id] = 0

    def _cancel(self, request: Request) -> None:
        self.running.pop(request.request_id, None)
        self.cancelled.append(request.request_id)

    def _advance(self) -> list[TokenEvent]:
        events = []
        for rid, i in list(self.running.items()):
            if self.hold_after is not None and i >= self.hold_after:
                continue
            if self.fail_next:
                self.fail_next = False
                self.fail_request(rid, "boom")
                continue
            last = self.ends and i == len(self.script) - 1
            events.append(TokenEvent(rid, self.script[i % len(self.script)], finished=last))
            self.running[rid] = i + 1
            if last:
                del self.running[rid]
        self.last_scheduler_output = StepSummary(0, len(events), len(events))
        if not events:
            time.sleep(0.001)  # held: let the engine thread take its commands (no hot spin)
        return events


def _backend(engine: ScriptedEngine) -> BlockingBackend:
    info = source_model_info(
        engine.source, max_model_len=512, quantization="X", dtype="float32", device="cpu"
    )
    backend = ForeignBackend(engine, info)
    assert isinstance(backend, Backend)
    return BlockingBackend(backend)


@pytest.fixture
def text_ids():
    tok = open_model(demo_model_path()).tokenizer
    return tok.encode("the cat sat on the mat and then the dog", add_special_tokens=False)


def test_stop_rules_are_minervas(text_ids):
    engine = ScriptedEngine(text_ids)
    b = _backend(engine)
    eos = engine.eos_token_ids[0]
    try:
        (out,) = b.generate([[5, 6]], [SamplingParams(max_tokens=4)])
        assert out.token_ids == text_ids[:4] and out.finish_reason == "length"
        engine.script = [7, 8, eos, 9]
        (out,) = b.generate([[5]], [SamplingParams(max_tokens=9)])
        assert out.token_ids == [7, 8, eos] and out.finish_reason == "stop"
        assert out.outputs[0].stop_reason is None
        (out,) = b.generate([[5]], [SamplingParams(max_tokens=5, ignore_eos=True)])
        assert out.token_ids == [7, 8, eos, 9, 7]
        (out,) = b.generate([[5]], [SamplingParams(max_tokens=9, stop_token_ids=[8])])
        assert out.token_ids == [7, 8] and out.outputs[0].stop_reason == 8
        (out,) = b.generate([[5]], [SamplingParams(max_tokens=9, min_tokens=3, stop_token_ids=[8])])
        assert out.token_ids == [7, 8, eos]  # neither stops before min_tokens; EOS then does
        assert engine.cancelled and not engine.running  # every early stop cancelled its sequence
    finally:
        b.close()


def test_stop_strings_and_deltas(text_ids):
    engine = ScriptedEngine(text_ids)
    b = _backend(engine)
    try:
        full = b.backend.decode(text_ids)
        (out,) = b.generate([[5]], [SamplingParams(max_tokens=20, stop=[" the dog"])])
        assert out.text == full[: full.find(" the dog")] and out.finish_reason == "stop"
        outs = list(b.stream([5], SamplingParams(max_tokens=len(text_ids))))
        assert "".join(o.outputs[0].delta_text for o in outs) == full
        assert [t for o in outs for t in o.outputs[0].delta_token_ids] == text_ids
    finally:
        b.close()


def test_n_children_abort_and_an_engine_that_ends_a_sequence(text_ids):
    engine = ScriptedEngine(text_ids, ends=True)
    b = _backend(engine)
    try:
        (out,) = b.generate([[5]], [SamplingParams(n=3, max_tokens=100)])
        assert [c.token_ids for c in out.outputs] == [text_ids] * 3
        assert {c.finish_reason for c in out.outputs} == {"length"}  # ended by the engine
        engine.hold_after = 2  # it cannot finish before the abort arrives
        stream = b.stream([5], SamplingParams(max_tokens=100))
        next(stream)
        stream.close()
        for _ in range(1000):  # the engine thread applies the abort (hang guard, not a timer)
            if not engine.running:
                break
            b.run(asyncio.sleep(0.01))
        assert not engine.running and not engine.has_unfinished_requests()
        assert len(engine.cancelled) == 1
    finally:
        b.close()


def test_a_failed_start_leaves_nothing_and_a_failed_request_ends_alone(text_ids):
    engine = ScriptedEngine(text_ids)
    b = _backend(engine)
    try:
        engine.fail_start = True
        with pytest.raises(RuntimeError, match="no room"):
            b.generate([[5]], [SamplingParams(n=2, max_tokens=3)])
        assert not engine.has_unfinished_requests() and not engine.output_processor.parents
        engine.fail_start = False
        engine.fail_next = True
        outs = b.generate([[5], [6]], [SamplingParams(max_tokens=3)] * 2)
        assert sorted(o.finish_reason for o in outs) == ["abort", "length"]
        (out,) = b.generate([[5]], [SamplingParams(max_tokens=2)])  # still serving
        assert out.token_ids == text_ids[:2]
    finally:
        b.close()


def test_unsupported_fields_are_400s_naming_the_backend():
    b = _backend(ScriptedEngine([1]))
    try:
        for params in (
            SamplingParams(pooling="mean", max_tokens=1),
            SamplingParams(token_healing=True),
        ):
            with pytest.raises(RequestError, match="not supported by the scripted backend"):
                b.generate([[5]], [params])
        with pytest.raises(RequestError, match="maximum context length"):
            b.generate([[5] * 600], [SamplingParams(max_tokens=1)])
    finally:
        b.close()


def test_a_request_past_request_timeout_ends_with_abort(text_ids):
    """AsyncEngine's deadline reaches a foreign engine's sequence: cancelled there too."""
    engine = ScriptedEngine(text_ids, request_timeout=0.05)
    engine.hold_after = 1  # it never finishes by itself
    b = _backend(engine)
    try:
        (out,) = b.generate([[5]], [SamplingParams(max_tokens=100)])
        assert out.finish_reason == "abort" and out.token_ids == text_ids[:1]
        assert engine.cancelled and not engine.running
    finally:
        b.close()
