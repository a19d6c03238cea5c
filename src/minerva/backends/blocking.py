"""BlockingBackend: a Backend driven from synchronous code (the CLI, the offline benchmarks).

It owns a private event loop and runs it only while the caller waits for something, so the
outputs arrive on the caller's thread and no second thread is needed on this side.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from minerva.backends.base import Backend, RequestOutput
from minerva.sampling_params import SamplingParams

T = TypeVar("T")


class BlockingBackend:
    """Starts ``backend`` on its own loop; ``close()`` shuts both down."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._loop = asyncio.new_event_loop()
        self.run(self._start())

    async def _start(self) -> None:
        self.backend.start()  # binds the backend to this loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one coroutine on the backend's loop until it is done."""
        return self._loop.run_until_complete(coro)

    def stream(
        self, prompt: str | list[int], params: SamplingParams, **kwargs: Any
    ) -> Iterator[RequestOutput]:
        """Yield a request's outputs as they come; closing the iterator aborts it."""
        out = self.run(self.backend.add_request(prompt, params, **kwargs))
        outputs = aiter(out)
        try:
            while True:
                try:
                    yield self._next(outputs)
                except StopAsyncIteration:
                    return
        finally:
            out.abort()

    def _next(self, outputs: Any) -> RequestOutput:
        """The next output; a Ctrl-C while waiting cancels the wait before it propagates, so no
        half-run coroutine is left on the loop."""
        task = self._loop.create_task(anext(outputs))
        try:
            return self._loop.run_until_complete(task)
        except BaseException:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    self._loop.run_until_complete(task)
            raise

    def generate(
        self, prompts: list[str | list[int]], params: list[SamplingParams]
    ) -> list[RequestOutput]:
        """All prompts at once (the engine batches them); each one's final output, in order."""

        async def one(prompt: str | list[int], sp: SamplingParams) -> RequestOutput:
            final = None
            async for out in await self.backend.add_request(prompt, sp, stream=False):
                final = out
            assert final is not None and final.finished, "a stream ended without its final output"
            return final

        async def every() -> list[RequestOutput]:
            return list(await asyncio.gather(*(one(p, sp) for p, sp in zip(prompts, params))))

        return self.run(every())

    def score(self, token_ids: list[int]) -> list[float]:
        return self.run(self.backend.score(token_ids))

    def close(self) -> None:
        """Shut the backend down (its requests end) and close the loop."""
        if self._loop.is_closed():
            return
        try:
            self.run(self.backend.shutdown())
        finally:
            self._loop.close()
