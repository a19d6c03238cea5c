"""Per-request token matchers: which tokens may come next, and advancing by the sampled one.

A matcher writes its allowed tokens as bits into one row of an int32 bitmask ``[rows,
ceil(vocab / 32)]`` (bit ``t % 32`` of word ``t // 32`` set = token t allowed) and never raises:
a token the grammar refuses (which the mask prevents) leaves it allowing only EOS, so the
request ends instead of the engine thread failing. No torch.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)


class TokenMatcher(Protocol):
    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        """Write the allowed next tokens into ``bitmask[row]`` (int32 [rows, words])."""

    def accept(self, token_id: int) -> None:
        """Advance past a sampled token."""

    def fill_bitmask_with_drafts(
        self, bitmask: np.ndarray, row: int, draft_token_ids: list[int]
    ) -> None:
        """Rows ``row .. row + k``: what may follow each prefix of the k draft tokens (a
        verification step); rows past a draft the grammar refuses allow only EOS, so the
        draft is rejected there. The matcher itself does not advance."""


def set_only(bitmask: np.ndarray, row: int, token_ids: list[int] | tuple[int, ...]) -> None:
    """Allow exactly ``token_ids`` in ``bitmask[row]``."""
    words = bitmask[row].view(np.uint32)
    words[:] = 0
    for t in token_ids:
        words[t // 32] |= np.uint32(1 << (t % 32))


class GrammarMatcher:
    """An llguidance LLMatcher behind the TokenMatcher interface."""

    def __init__(self, matcher: Any, eos_token_ids: tuple[int, ...]) -> None:
        self.matcher = matcher
        self.eos_token_ids = eos_token_ids
        self.failed = False

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        if not self.failed:
            try:
                v = bitmask[row]
                self.matcher.unsafe_compute_mask_ptr(v.ctypes.data, v.nbytes)
                if not self.matcher.is_error():
                    return
            except Exception:  # API misuse only; never let it reach the engine loop
                logger.exception("grammar mask failed")
            self._fail()
        set_only(bitmask, row, self.eos_token_ids)

    def accept(self, token_id: int) -> None:
        if self.failed or token_id in self.eos_token_ids:
            return
        try:
            ok = self.matcher.consume_token(token_id)
        except Exception:
            ok = False
        if not ok:
            self._fail()

    def fill_bitmask_with_drafts(
        self, bitmask: np.ndarray, row: int, draft_token_ids: list[int]
    ) -> None:
        self.fill_bitmask(bitmask, row)
        consumed = 0
        for j, token in enumerate(draft_token_ids, start=1):
            ok = not self.failed and self._try_consume(token)
            if not ok:
                for k in range(j, len(draft_token_ids) + 1):
                    set_only(bitmask, row + k, self.eos_token_ids)
                break
            consumed += 1
            self.fill_bitmask(bitmask, row + j)
        if consumed:
            self.matcher.rollback(consumed)

    def _try_consume(self, token: int) -> bool:
        """Advance by one token only if the grammar takes it (no error state otherwise)."""
        if token in self.eos_token_ids:
            return False
        try:
            return self.matcher.try_consume_tokens([token]) == 1
        except Exception:
            return False

    def _fail(self) -> None:
        if not self.failed:
            logger.warning("grammar matcher stopped: %s", self.matcher.get_error())
        self.failed = True
