"""uvicorn's HTTP protocol with the limits a connection needs before the app sees it.

- header timeout: a connection that has not sent a whole request head within ``header_timeout``
  seconds of connecting (or of its previous response) is closed (slowloris, idle sockets);
- write timeout: a connection whose send buffer stays above uvicorn's high-water mark for
  ``write_timeout`` seconds (a client that stopped reading) is aborted; the app sees a client
  disconnect, so the response's request is aborted and its KV blocks and admission slot freed;
- a malformed or oversized request head gets a JSON 400 (OpenAI's error shape) instead of
  uvicorn's plain text.

Both of uvicorn's implementations (h11, httptools) expose the hooks used here: ``connection_made``,
``connection_lost``, ``on_response_complete``, ``pause_writing`` / ``resume_writing``,
``send_400_response`` and ``self.cycle`` (the request whose head was read), ``self.loop``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

MAX_HEAD_BYTES = 16 * 1024
"""uvicorn's h11 limit on a request head (headers included); a larger one is a 400."""

_BAD_HEAD = (
    "The request head is malformed or larger than this server's limit of 16 KiB of headers: "
    "send fewer or shorter headers"
)


def bad_request_bytes(message: str = _BAD_HEAD) -> bytes:
    """A whole HTTP/1.1 400 response with a JSON body in OpenAI's error shape."""
    error = {"message": message, "type": "invalid_request_error", "param": None}
    body = json.dumps({"error": error | {"code": "invalid_http_request"}}).encode()
    head = (
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def base_protocol_class() -> type:
    """The class uvicorn's ``http="auto"`` picks: httptools when installed, else h11."""
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def protocol_class(header_timeout: float, write_timeout: float, base: type | None = None) -> type:
    """A subclass of uvicorn's protocol with these limits (0 turns one off)."""
    base = base or base_protocol_class()

    class LimitedHTTPProtocol(base):  # type: ignore[misc, valid-type]
        _head_timer: asyncio.TimerHandle | None = None
        _write_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_timers()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_timer()

        def pause_writing(self) -> None:
            super().pause_writing()
            if write_timeout > 0 and self._write_timer is None:
                self._write_timer = self.loop.call_later(write_timeout, self._abort)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

        def send_400_response(self, msg: str) -> None:
            if not self.transport.is_closing():
                self.transport.write(bad_request_bytes())
                self.transport.close()

        def _arm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            if header_timeout > 0 and not self.transport.is_closing():
                self._head_timer = self.loop.call_later(header_timeout, self._head_late, self.cycle)

        def _head_late(self, cycle_then: Any) -> None:
            self._head_timer = None
            waiting = cycle_then is None or cycle_then.response_complete  # not mid-request
            if waiting and self.cycle is cycle_then:  # and no new request head arrived since
                self._abort()

        def _abort(self) -> None:
            self._cancel_timers()
            self.transport.abort()  # close() would wait to flush to a reader that stalls

        def _cancel_timers(self) -> None:
            for timer in (self._head_timer, self._write_timer):
                if timer is not None:
                    timer.cancel()
            self._head_timer = self._write_timer = None

    return LimitedHTTPProtocol
