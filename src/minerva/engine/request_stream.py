"""RequestStream: the outputs of one request on their way to its reader, in a bounded buffer.

The engine never waits for a reader: when a reader falls ``max_buffered`` outputs behind, each
new output is merged into the newest unread one (outputs.coalesce), so a reader that stops
reading holds a fixed number of outputs however long the request runs. The request counts
against admission until its reader has taken the final output, or the stream is aborted.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from minerva.engine.outputs import RequestOutput, coalesce

MAX_BUFFERED_OUTPUTS = 16
"""Unread outputs a stream keeps apart before it merges new ones into the newest."""


class RequestStream:
    """The outputs of one request, in order. ``async for`` over it; ``abort()`` cancels it.
    Only the event loop's thread touches it."""

    def __init__(
        self,
        request_id: str,
        num_seqs: int,
        on_abort: Callable[[RequestStream], None],
        on_done: Callable[[RequestStream], None] | None = None,
        max_buffered: int = MAX_BUFFERED_OUTPUTS,
    ) -> None:
        self.request_id = request_id
        self.num_seqs = num_seqs
        self.finished = False
        """The final output (or an error) was read, or the stream was aborted."""
        self.max_buffered = max(1, max_buffered)
        self.complete = False
        """The final output (or an error) has arrived; the reader may not have taken it yet."""
        self._items: deque[RequestOutput | BaseException] = deque()
        self._ready = asyncio.Event()
        self._on_abort = on_abort
        self._on_done = on_done

    @property
    def num_buffered(self) -> int:
        """Outputs waiting for the reader."""
        return len(self._items)

    def put(self, item: RequestOutput | BaseException) -> None:
        """Hand the reader an output (merged into the newest unread one past the bound) or an
        error; ignored once the stream is finished (an aborted stream keeps nothing)."""
        if self.finished:
            return
        self.complete = self.complete or not isinstance(item, RequestOutput) or item.finished
        last = self._items[-1] if self._items else None
        full = len(self._items) >= self.max_buffered
        if full and isinstance(item, RequestOutput) and isinstance(last, RequestOutput):
            self._items[-1] = coalesce(last, item)
        else:
            self._items.append(item)
        self._ready.set()

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        while not self._items:
            if self.finished:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if isinstance(item, BaseException):
            self._finish()
            raise item
        if item.finished:
            self._finish()
        return item

    def abort(self) -> None:
        """Stop generating (no-op once finished); the KV blocks are freed between steps."""
        if not self.finished:
            self.finished = True
            self._items.clear()
            self._ready.set()  # a reader waiting for the next output ends
            self._on_abort(self)

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            if self._on_done is not None:
                self._on_done(self)
