"""N-gram prompt lookup: propose the tokens that followed the latest earlier occurrence of the
request's last n tokens (n from ngram_max down to ngram_min) in its own prompt and output."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from minerva.request import Request


class NgramProposer:
    """Host-side and model-free: pays off where the output copies its input (rewrites, code
    edits, quoting), costs nothing where it finds no match."""

    def __init__(self, ngram_min: int, ngram_max: int) -> None:
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {ngram_min}, {ngram_max}")
        self.ngram_min = ngram_min
        self.ngram_max = ngram_max

    def propose(self, requests: Sequence[Request], num_tokens: Sequence[int]) -> list[list[int]]:
        return [
            lookup(req.all_token_ids, self.ngram_min, self.ngram_max, k) if k > 0 else []
            for req, k in zip(requests, num_tokens)
        ]

    def forget(self, request_ids: Iterable[str]) -> None:
        """Nothing is kept between steps."""


def lookup(token_ids: list[int], ngram_min: int, ngram_max: int, k: int) -> list[int]:
    """Up to k tokens after an earlier match of the longest suffix n-gram that has one (n in
    [ngram_min, ngram_max]): the latest match followed by k tokens, else the earliest (the
    longest continuation; a repeated token's latest match is followed by one token only).
    [] when no suffix of those lengths occurred before."""
    num = len(token_ids)
    if num < ngram_min + 1:
        return []
    ids = np.asarray(token_ids, dtype=np.int64)  # [num]
    for n in range(min(ngram_max, num - 1), ngram_min - 1, -1):
        # Windows starting at 0..num-n-1: every occurrence but the suffix itself.
        windows = sliding_window_view(ids[:-1], n)  # [num - n, n]
        hits = np.flatnonzero((windows == ids[num - n :]).all(axis=1))
        if hits.size:
            full = hits[hits + n + k <= num]
            start = int(full[-1] if full.size else hits[0]) + n
            return token_ids[start : start + k]
    return []


def lookup_slow(token_ids: list[int], ngram_min: int, ngram_max: int, k: int) -> list[int]:
    """The slow twin of ``lookup``: plain Python scans."""
    num = len(token_ids)
    for n in range(min(ngram_max, num - 1), ngram_min - 1, -1):
        suffix = token_ids[num - n :]
        hits = [s for s in range(num - n) if token_ids[s : s + n] == suffix]
        if hits:
            full = [s for s in hits if s + n + k <= num]
            start = (full[-1] if full else hits[0]) + n
            return token_ids[start : start + k]
    return []
