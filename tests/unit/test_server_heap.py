"""heap.py: with the startup heap frozen, reference cycles that outlived the young generations
(a request's objects) are collected by the collector's own schedule, not thousands of requests
later; an unload still collects the cycles of what was frozen. Counts, not time."""

from __future__ import annotations

import gc
import weakref

import pytest

from minerva.server.heap import freeze_heap, thaw_heap
from minerva.server.model_loading import release_memory

BALLAST = 200_000  # long-lived objects, as torch, the model and the web stack leave behind
ROUNDS = 40  # requests, each leaving cycles that lived through young collections


class Cycle:
    """A request-like object in a reference cycle: only the cycle collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def old_heap():
    """A big old generation; the collector back to normal afterwards."""
    gc.collect()
    ballast = [[] for _ in range(BALLAST)]
    gc.collect()  # the ballast is old: the next full collection waits for a quarter of it
    try:
        yield ballast
    finally:
        gc.unfreeze()
        gc.enable()
        gc.collect()


def _garbage_left_after_serving() -> int:
    """Cycles still uncollected after ROUNDS requests, with only automatic collections."""
    refs = []
    for _ in range(ROUNDS):
        cycles = [Cycle() for _ in range(100)]
        refs += [weakref.ref(c) for c in cycles]
        gc.collect(1)  # they lived through young collections, as in-flight objects do
        del cycles  # the request ends: cyclic garbage in the old generation
        work = [[] for _ in range(3000)]  # the next request's objects drive the collector
        del work
    return sum(r() is not None for r in refs)


def test_cycles_left_by_requests_are_collected_once_the_heap_is_frozen(old_heap):
    freeze_heap()
    assert _garbage_left_after_serving() < ROUNDS * 100 // 4


def test_without_freezing_they_wait_for_a_quarter_of_the_old_heap(old_heap):
    # The slow twin, and why heap.py exists: none of the cycles is collected.
    assert _garbage_left_after_serving() == ROUNDS * 100


def test_release_memory_collects_cycles_frozen_with_an_unloaded_model(old_heap):
    model = Cycle()
    ref = weakref.ref(model)
    freeze_heap()  # after its load
    del model  # unloaded
    gc.collect()
    assert ref() is not None  # frozen: the collector does not look at it
    release_memory()
    assert ref() is None
    assert gc.get_freeze_count() > 0  # the models still loaded are frozen again


def test_thaw_heap_hands_frozen_objects_back_to_the_collector(old_heap):
    freeze_heap()
    assert gc.get_freeze_count() > BALLAST
    thaw_heap()
    assert gc.get_freeze_count() == 0
