"""Token healing: a prompt ending mid-word ("The answer is inter") ends on a token the model
rarely saw there, so the continuation is biased. Back the prompt up over its trailing token(s)
while their text is a proper prefix of longer vocabulary entries, and constrain the first
generated token(s) to start with (or spell a prefix of) the removed bytes. The output text then
drops those bytes again: it never repeats or loses them. No torch.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass

import numpy as np

from minerva.structured.matcher import set_only
from minerva.structured.vocab import Vocabulary

MAX_HEALED_TOKENS = 3
"""At most this many prompt tokens are backed up."""


class PrefixIndex:
    """Token bytes sorted, so "tokens starting with these bytes" is one bisect."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        pairs = sorted(
            (b, i)
            for i, b in enumerate(vocabulary.token_bytes)
            if b and i not in vocabulary.special_ids
        )
        self.sorted_bytes = [b for b, _ in pairs]
        self.sorted_ids = np.array([i for _, i in pairs], dtype=np.int64)
        self.by_bytes: dict[bytes, list[int]] = {}
        for b, i in pairs:
            self.by_bytes.setdefault(b, []).append(i)
        self.vocab_size = vocabulary.size

    def starting_with(self, prefix: bytes) -> np.ndarray:
        """Ids of the tokens whose bytes start with ``prefix`` (``prefix`` itself included)."""
        lo = bisect.bisect_left(self.sorted_bytes, prefix)
        hi = lo
        while hi < len(self.sorted_bytes) and self.sorted_bytes[hi].startswith(prefix):
            hi += 1
        return self.sorted_ids[lo:hi]

    def has_longer(self, prefix: bytes) -> bool:
        """True when some token's bytes start with ``prefix`` and go on past it."""
        lo = bisect.bisect_left(self.sorted_bytes, prefix)
        for b in self.sorted_bytes[lo : lo + 2]:
            if b.startswith(prefix) and len(b) > len(prefix):
                return True
        return False

    def allowed(self, rest: bytes) -> list[int]:
        """Tokens that can come next while ``rest`` must still be spelled: those starting
        with it, and those spelling a non-empty prefix of it."""
        ids = self.starting_with(rest).tolist()
        for n in range(1, len(rest)):
            ids += self.by_bytes.get(rest[:n], [])
        return ids


@functools.lru_cache(maxsize=8)
def prefix_index(vocabulary: Vocabulary) -> PrefixIndex:
    return PrefixIndex(vocabulary)


@dataclass(frozen=True)
class HealedPrompt:
    prompt_token_ids: list[int]
    """The prompt without the backed-up tokens."""
    removed_bytes: bytes
    """What the first generated token(s) must spell (b"" when nothing was healed)."""


def heal_prompt(prompt_token_ids: list[int], vocabulary: Vocabulary) -> HealedPrompt:
    """Back up trailing tokens whose joined bytes are a proper prefix of a longer token."""
    index = prefix_index(vocabulary)
    removed, n = b"", 0
    while n < min(MAX_HEALED_TOKENS, len(prompt_token_ids) - 1):
        token = prompt_token_ids[-1 - n]
        if token in vocabulary.special_ids or not 0 <= token < vocabulary.size:
            break
        candidate = vocabulary.token_bytes[token] + removed
        if not index.has_longer(candidate):
            break
        removed, n = candidate, n + 1
    if n == 0:
        return HealedPrompt(list(prompt_token_ids), b"")
    return HealedPrompt(list(prompt_token_ids[:-n]), removed)


class HealingMatcher:
    """Constrains the first token(s) to spell ``removed``; unconstrained after that."""

    def __init__(self, removed: bytes, vocabulary: Vocabulary) -> None:
        self.rest = removed
        self.vocabulary = vocabulary

    @property
    def done(self) -> bool:
        return not self.rest

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        if self.done:
            bitmask[row] = -1
        else:
            set_only(bitmask, row, prefix_index(self.vocabulary).allowed(self.rest))

    def fill_bitmask_with_drafts(
        self, bitmask: np.ndarray, row: int, draft_token_ids: list[int]
    ) -> None:
        rest = self.rest
        for j, token in enumerate([None, *draft_token_ids]):
            if token is not None:
                self.accept(token)
            self.fill_bitmask(bitmask, row + j)
        self.rest = rest

    def accept(self, token_id: int) -> None:
        spelled = self.vocabulary.token_bytes[token_id] if token_id < self.vocabulary.size else b""
        if spelled and self.rest.startswith(spelled):
            self.rest = self.rest[len(spelled) :]
        else:
            self.rest = b""
