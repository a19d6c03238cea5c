"""Ctrl-C while BlockingBackend waits for the next output (the CLI's chat) cancels that wait:
the request is aborted and nothing is left pending on the loop (no "Exception ignored ... Event
loop is closed" at exit)."""

from __future__ import annotations

import asyncio

import pytest

from minerva.backends.blocking import BlockingBackend


class NeverAnswers:
    """A request stream whose next output never comes."""

    def __init__(self) -> None:
        self.cancelled = self.aborted = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    def abort(self) -> None:
        self.aborted = True


class FakeBackend:
    def __init__(self) -> None:
        self.stream = NeverAnswers()

    def start(self) -> None:
        pass

    async def add_request(self, prompt, params, **kwargs):
        return self.stream

    async def shutdown(self) -> None:
        pass


def _ctrl_c() -> None:
    raise KeyboardInterrupt  # what the SIGINT handler raises in the main thread


def test_ctrl_c_while_waiting_cancels_the_wait_and_aborts():
    backend = FakeBackend()
    runner = BlockingBackend(backend)
    runner._loop.call_later(0.01, _ctrl_c)
    outputs = runner.stream("hi", None)
    with pytest.raises(KeyboardInterrupt):
        next(outputs)
    outputs.close()
    assert backend.stream.cancelled and backend.stream.aborted
    assert not [t for t in asyncio.all_tasks(runner._loop) if not t.done()]
    runner.close()
