"""StepWatchdog: notices an engine step that has run past ``step_timeout`` (a hung engine).

The engine thread stamps the start and end of each step; any thread may ask ``is_hung``, which
is evaluated on the spot, so /health sees a hang the moment the timeout has passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from minerva.errors import EngineDeadError


class StepTimeoutError(EngineDeadError):
    """An engine step ran past ``step_timeout``: the engine is hung."""


class StepWatchdog:
    """``step_timeout`` seconds (0: never hung) on ``clock`` (injectable for tests)."""

    def __init__(self, step_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.step_timeout = step_timeout
        self.clock = clock
        self._started: float | None = None  # written by the engine thread only

    def step_started(self) -> None:
        self._started = self.clock()

    def step_ended(self) -> None:
        self._started = None

    @property
    def is_hung(self) -> bool:
        started = self._started
        if self.step_timeout <= 0 or started is None:
            return False
        return self.clock() - started > self.step_timeout

    def message(self) -> str:
        return (
            f"an engine step ran for more than step_timeout={self.step_timeout:g}s: the engine "
            "is hung; restart the server"
        )
