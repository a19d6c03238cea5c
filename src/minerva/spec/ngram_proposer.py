"""N-gram prompt lookup: propose the tokens that followed the latest earlier occurrence of the
request's last n tokens (n from ngram_max down to ngram_min) in its own prompt and output."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Protocol

from minerva.request import Request


class Tokens(Protocol):
    """A request's tokens as the index reads them: a count and slices (a Request is one; its
    prompt and output are two lists, which ``all_token_ids`` would copy into one every step)."""

    @property
    def num_tokens(self) -> int: ...

    def token_slice(self, start: int, end: int) -> list[int]: ...

    def token_at(self, index: int) -> int: ...


class TokenList:
    """A plain list of tokens as ``Tokens``."""

    def __init__(self, token_ids: Sequence[int]) -> None:
        self.token_ids = token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def token_slice(self, start: int, end: int) -> list[int]:
        return list(self.token_ids[start:end])

    def token_at(self, index: int) -> int:
        return self.token_ids[index]


class NgramProposer:
    """Host-side and model-free: pays off where the output copies its input (rewrites, code
    edits, quoting), costs little where it finds no match. Each request keeps an index of its
    n-grams (NgramIndex), extended by the tokens that arrived since its last proposal, so a
    step costs a few dictionary lookups per request rather than a scan of its whole text."""

    def __init__(self, ngram_min: int, ngram_max: int) -> None:
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {ngram_min}, {ngram_max}")
        self.ngram_min = ngram_min
        self.ngram_max = ngram_max
        self._indexes: dict[str, NgramIndex] = {}

    def propose(self, requests: Sequence[Request], num_tokens: Sequence[int]) -> list[list[int]]:
        out = []
        for req, k in zip(requests, num_tokens):
            if k <= 0:
                out.append([])
                continue
            index = self._indexes.get(req.request_id)
            if index is None:
                index = self._indexes[req.request_id] = NgramIndex(self.ngram_min, self.ngram_max)
            out.append(index.lookup(req, k))
        return out

    def forget(self, request_ids: Iterable[str]) -> None:
        """Drop the indexes of finished, aborted or preempted requests."""
        for rid in request_ids:
            self._indexes.pop(rid, None)


class NgramIndex:
    """The start positions of every n-gram (ngram_min <= n <= ngram_max) of one token sequence
    that only grows, indexed up to the one before its last token; ``lookup`` answers like the
    reference scan ``lookup_slow``."""

    def __init__(self, ngram_min: int, ngram_max: int) -> None:
        self.ngram_min, self.ngram_max = ngram_min, ngram_max
        self._reset()

    def _reset(self) -> None:
        self._starts: list[dict[tuple[int, ...], list[int]]] = [
            {} for _ in range(self.ngram_max + 1)
        ]
        self._num = 0  # tokens indexed so far (every n-gram ending before position _num)
        self._last: int | None = None  # the last of them, to tell a sequence that was replaced

    def lookup(self, tokens: Tokens | Sequence[int], k: int) -> list[int]:
        if not hasattr(tokens, "token_slice"):
            tokens = TokenList(tokens)
        num = tokens.num_tokens
        if num < self.ngram_min + 1:
            return []
        self._extend(tokens)
        longest = min(self.ngram_max, num - 1)
        tail = tokens.token_slice(num - longest, num)
        for n in range(longest, self.ngram_min - 1, -1):
            hits = self._starts[n].get(tuple(tail[longest - n :]))
            if hits:
                # The latest start followed by k tokens, else the earliest (hits ascend).
                i = bisect_right(hits, num - n - k) - 1
                start = (hits[i] if i >= 0 else hits[0]) + n
                return tokens.token_slice(start, min(start + k, num))
        return []

    def _extend(self, tokens: Tokens) -> None:
        """Index every n-gram that ends before the last token (the suffix looked up may only
        match an earlier occurrence). Rebuilds where the sequence is not an extension of the
        one indexed (checked at its last token: a request's tokens only grow)."""
        end = tokens.num_tokens - 1
        if self._num > end or (self._num and tokens.token_at(self._num - 1) != self._last):
            self._reset()
        if end <= self._num:
            return
        # the new tokens and the ngram_max - 1 before them: every new n-gram lies in there
        base = max(0, self._num - self.ngram_max + 1)
        window = tokens.token_slice(base, end)
        for j in range(self._num, end):  # the n-grams ending at position j
            for n in range(self.ngram_min, min(self.ngram_max, j + 1) + 1):
                self._starts[n].setdefault(
                    tuple(window[j - n + 1 - base : j + 1 - base]), []
                ).append(j - n + 1)
        self._num, self._last = end, window[-1]


def lookup_slow(token_ids: list[int], ngram_min: int, ngram_max: int, k: int) -> list[int]:
    """The slow twin of ``NgramIndex.lookup``, a scan of the whole sequence: up to k tokens
    after an earlier match of the longest suffix n-gram that has one (n in [ngram_min,
    ngram_max]): the latest match followed by k tokens, else the earliest (the longest
    continuation; a repeated token's latest match is followed by one token only). [] when no
    suffix of those lengths occurred before."""
    num = len(token_ids)
    for n in range(min(ngram_max, num - 1), ngram_min - 1, -1):
        suffix = token_ids[num - n :]
        hits = [s for s in range(num - n) if token_ids[s : s + n] == suffix]
        if hits:
            full = [s for s in hits if s + n + k <= num]
            start = (full[-1] if full else hits[0]) + n
            return token_ids[start : start + k]
    return []
