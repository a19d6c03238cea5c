"""thread_pool.py: every thread runs from the start, so a burst of blocking calls starts none
(the soak's late memory steps were threads started at rare peaks). Counts, not time."""

from __future__ import annotations

import asyncio
import threading

from minerva.server.thread_pool import start_thread_pool


def _pool_threads() -> int:
    return sum(t.name.startswith("minerva-io") for t in threading.enumerate())


def test_all_threads_start_up_front_and_a_burst_adds_none():
    async def main() -> tuple[int, int, int]:
        before = _pool_threads()
        pool = await start_thread_pool(5)
        started = _pool_threads() - before
        gate = threading.Event()
        # A burst wider than the pool: every thread busy at once, the rest queued.
        burst = [asyncio.to_thread(gate.wait, 30) for _ in range(12)]
        tasks = [asyncio.ensure_future(b) for b in burst]
        await asyncio.sleep(0)
        during = _pool_threads() - before
        gate.set()
        await asyncio.gather(*tasks)
        pool.shutdown(wait=True)
        return started, during, _pool_threads() - before

    started, during, after = asyncio.run(main())
    assert started == 5
    assert during == 5
    assert after == 0


def test_the_asyncio_default_pool_starts_threads_only_when_busy():
    # The slow twin: asyncio's default pool starts with no thread and adds them under load.
    def default_pool_threads() -> int:
        return sum(t.name.startswith("asyncio_") for t in threading.enumerate())

    async def main() -> int:
        before = default_pool_threads()
        await asyncio.to_thread(lambda: None)
        return default_pool_threads() - before

    assert asyncio.run(main()) == 1
