"""Keep one OpenMP thread pool per process busy: CPU loading runs in a thread that then exits.

GNU OpenMP (libgomp, which torch's CPU wheels and Minerva's C kernels share) gives every thread
that starts a parallel region its own pool of workers, kept until that thread exits, and counts
all pools' workers together: once they outnumber the CPUs, every pool's workers stop spinning
between regions and sleep, so each parallel region pays a futex wake-up. A server loads a model
on one thread and steps it on another (AsyncEngine's), which made two pools on a 2-core
machine and its decode steps several times slower than with the loading pool gone
(`benchmarks/results/openmp_pools.json`). Loading in a thread that exits afterwards frees the
loading pool, so the thread that steps the engine owns the only one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

LOAD_IN_PASSING_THREAD = True
"""Off: the Worker loads on the caller's thread (benchmarks/openmp_pools.py measures both)."""


def in_passing_thread(fn: Callable[[], T], name: str = "minerva-load") -> T:
    """fn() run in a new thread that exits when it returns; its result, or its exception."""
    result: list = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            error.append(e)

    thread = threading.Thread(target=run, name=name, daemon=True)  # Ctrl-C still exits
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
