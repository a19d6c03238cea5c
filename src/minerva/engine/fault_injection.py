"""Test-only faults in the engine's step loop: a step that hangs or one that raises.

The reliability suite proves the watchdog, crash handling and bounded shutdown on a real
server, so the fault must be reachable from outside the process: ``MINERVA_FAULT_INJECT`` holds
``hang@N`` or ``crash@N`` (N: the 1-based step that misbehaves). Unset, nothing is injected.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from minerva.errors import ConfigError

FAULT_ENV_VAR = "MINERVA_FAULT_INJECT"
_SPEC = re.compile(r"^(hang|crash)@([1-9][0-9]*)$")


class InjectedFault(RuntimeError):
    """The crash a ``crash@N`` fault raises inside step N."""


@dataclass
class FaultInjector:
    """Makes step ``at_step`` hang (until ``release()``) or raise InjectedFault."""

    kind: str
    at_step: int
    num_steps: int = 0
    _released: threading.Event = field(default_factory=threading.Event, repr=False)

    @classmethod
    def parse(cls, spec: str) -> FaultInjector:
        match = _SPEC.match(spec.strip().lower())
        if match is None:
            raise ConfigError(
                f"{FAULT_ENV_VAR}={spec!r} is not a fault: use hang@N or crash@N (N >= 1)"
            )
        return cls(match.group(1), int(match.group(2)))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FaultInjector | None:
        spec = (os.environ if env is None else env).get(FAULT_ENV_VAR, "")
        return cls.parse(spec) if spec.strip() else None

    def before_step(self) -> None:
        """Called by the engine thread before each step."""
        self.num_steps += 1
        if self.num_steps != self.at_step:
            return
        if self.kind == "crash":
            raise InjectedFault(f"injected crash in step {self.at_step}")
        self._released.wait()  # a hung step: only release() (a test's teardown) ends it

    def release(self) -> None:
        self._released.set()
