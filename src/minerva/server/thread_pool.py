"""The event loop's thread pool (tokenizing, chat templates, structured-output compiles), with
all its threads started up front.

asyncio's default pool starts a thread only when every running one is busy, so under steady
load the last threads appeared at rare peaks thousands of requests in, each adding its stack and
malloc arena to the resident memory: a step in the soak's memory curve (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

START_TIMEOUT_S = 30.0  # a guard only: the threads wait for each other, not for work


def default_num_threads() -> int:
    """asyncio's own default size."""
    return min(32, (os.cpu_count() or 1) + 4)


async def start_thread_pool(num_threads: int | None = None) -> ThreadPoolExecutor:
    """A pool of ``num_threads`` running threads, made the running loop's default executor."""
    num_threads = num_threads or default_num_threads()
    pool = ThreadPoolExecutor(num_threads, thread_name_prefix="minerva-io")
    # Each task blocks until all have started, so every submit finds no idle thread and starts
    # a new one.
    barrier = threading.Barrier(num_threads)
    loop = asyncio.get_running_loop()

    def wait() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(START_TIMEOUT_S)

    await asyncio.gather(*(loop.run_in_executor(pool, wait) for _ in range(num_threads)))
    loop.set_default_executor(pool)
    return pool
