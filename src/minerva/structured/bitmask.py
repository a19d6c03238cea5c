"""One step's token bitmask for a batch: rows with a matcher get its mask, others allow all.
Grammar rows are computed in parallel by llguidance's thread pool. No torch."""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

from minerva.structured.matcher import GrammarMatcher, TokenMatcher

logger = logging.getLogger(__name__)
_PARALLEL_FROM = 4  # fewer grammar rows than this are cheaper one by one


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def fill_bitmask(matchers: list[TokenMatcher | None], vocab_size: int) -> np.ndarray | None:
    """int32 [len(matchers), ceil(vocab / 32)], or None when no row is constrained."""
    if all(m is None for m in matchers):
        return None
    bitmask = np.full((len(matchers), bitmask_words(vocab_size)), -1, dtype=np.int32)
    grammar_rows = [
        (m.matcher, row)
        for row, m in enumerate(matchers)
        if isinstance(m, GrammarMatcher) and not m.failed
    ]
    parallel = len(grammar_rows) >= _PARALLEL_FROM and _fill_parallel(grammar_rows, bitmask)
    for row, m in enumerate(matchers):
        if m is not None and not (parallel and isinstance(m, GrammarMatcher) and not m.failed):
            m.fill_bitmask(bitmask, row)
    if parallel:  # a matcher that went into error while computing allows only EOS
        for row, m in enumerate(matchers):
            if isinstance(m, GrammarMatcher) and m.matcher.is_error():
                m.fill_bitmask(bitmask, row)
    return bitmask


def _fill_parallel(rows: list[tuple[Any, int]], bitmask: np.ndarray) -> bool:
    try:
        _executor().unsafe_compute_mask_ptr(
            rows, bitmask.ctypes.data, bitmask.shape[1] * 4, bitmask.shape[0]
        )
        return True
    except Exception:
        logger.exception("parallel grammar masks failed; computing them one by one")
        return False


@functools.cache
def _executor() -> Any:
    import llguidance

    return llguidance.LLExecutor()
