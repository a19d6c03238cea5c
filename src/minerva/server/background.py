"""Blocking work (loading a model, hashing its weights) off the event loop, in daemon threads."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


LOAD_THREAD = "minerva-load"


def is_running(name: str) -> bool:
    """True while a thread of that name (started by in_daemon_thread) has not finished."""
    return any(t.name == name and t.is_alive() for t in threading.enumerate())


async def in_daemon_thread(fn: Callable[[], T], name: str = LOAD_THREAD) -> T:
    """``fn()`` in a new daemon thread. Unlike asyncio.to_thread's pool, a daemon thread does
    not hold up exiting on SIGTERM in the middle of a long model load or hash."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(value, error) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(value)

    def work() -> None:
        try:
            value, error = fn(), None
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            value, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=work, name=name, daemon=True).start()
    return await future
