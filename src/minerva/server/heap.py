"""The serving process's Python heap, kept out of the cycle collector's way once a model is loaded.

CPython runs a full collection only when the objects promoted since the last one exceed a
quarter of the old generation. After loading torch, the model and the web stack that generation
holds ~200k objects, so the reference cycles each request leaves behind (exception tracebacks,
closed connections, task groups) waited thousands of requests for a full collection, and every
page they pushed the heap to stayed resident: most of the soak's memory slope
(docs/reliability.md). Freezing the startup heap keeps the old generation to what serving
created, so full collections come every few hundred requests and cost little.
"""

from __future__ import annotations

import gc
from typing import TypeVar

T = TypeVar("T")


def freeze_heap() -> None:
    """Move every live object out of the collector's view (call it with nothing in flight)."""
    gc.collect()
    gc.freeze()
    # The old generation's size, which gates the next full collection, is counted at the end
    # of one: counting it again now, with the startup heap frozen, makes it the few objects left.
    gc.collect()


def frozen(value: T) -> T:
    """``value``, after freeze_heap(): for the end of a model load."""
    freeze_heap()
    return value


def thaw_heap() -> None:
    """Let the collector see the frozen objects again, e.g. an unloaded model's cycles."""
    gc.unfreeze()
