"""llama.cpp's SentencePiece (SPM) tokenizer for ``tokenizers``: merges from scores, and an
exact splitter for the vocabularies merges cannot express.

llama.cpp repeatedly merges the adjacent pair whose concatenation is the vocabulary token with
the highest score, the leftmost pair on equal scores; a final piece that is not a token is split
back along its merges, and a character that never was a token becomes ``<0xNN>`` byte tokens.
A BPE model does the same when given every split (a, b) of every token a+b, ranked by score,
as long as no two merge results share a score: BPE cannot rank two merges equally and take the
leftmost. Ties among runs of one character (Llama's "▁▁", "▁▁▁", ...) are safe when the longer
run ranks first; for other ties (converters that write one score for every token)
:class:`SpmSplitter` runs llama.cpp's algorithm in Python as a pre-tokenizer.
"""

from __future__ import annotations

import heapq
from collections import defaultdict

from tokenizers import NormalizedString, PreTokenizedString


def spm_merges(tokens: list[str], scores: list[float]) -> tuple[list[tuple[str, str]], bool]:
    """All (left, right) splits of each token into two tokens, best score first (ties: longer
    token, then lower id); and whether BPE with them tokenizes exactly as llama.cpp."""
    ids = {t: i for i, t in enumerate(tokens)}
    ranked: list[tuple[float, int, int, int, str, str]] = []
    for token_id, token in enumerate(tokens):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            left_id = ids.get(left)
            if left_id is not None and right in ids:
                ranked.append((-scores[token_id], -len(token), token_id, left_id, left, right))
    ranked.sort()
    merged_by_score: dict[float, set[str]] = defaultdict(set)
    for score, _, token_id, *_ in ranked:
        merged_by_score[score].add(tokens[token_id])
    exact = all(
        len(group) == 1 or all(len(set(t)) == 1 for t in group)
        for group in merged_by_score.values()
    )
    return [(left, right) for *_, left, right in ranked], exact


class SpmSplitter:
    """A ``tokenizers`` pre-tokenizer that cuts normalized text ("▁"-escaped) into llama.cpp's
    final SPM pieces; the BPE model after it (ignore_merges) maps each piece to its id, and an
    unknown character to its byte tokens."""

    def __init__(self, tokens: list[str], scores: list[float]) -> None:
        self.scores = {t: s for t, s in zip(tokens, scores)}

    def pre_tokenize(self, pretok: PreTokenizedString) -> None:
        pretok.split(self._split)

    def _split(self, _index: int, text: NormalizedString) -> list[NormalizedString]:
        bounds = spm_pieces(str(text), self.scores)
        return [text[start:end] for start, end in bounds]


def spm_pieces(text: str, scores: dict[str, float]) -> list[tuple[int, int]]:
    """(start, end) character spans of llama.cpp's SPM pieces of ``text``. Every merge makes a
    token, so a final piece is a token or a single character (llama.cpp's byte fallback)."""
    if not text:
        return []
    ends = list(range(1, len(text) + 1))  # ends[i]: end of the piece starting at i
    alive = [True] * len(text)
    nxt = list(range(1, len(text))) + [-1]
    prv = list(range(-1, len(text) - 1))
    queue: list[tuple[float, int, int]] = []  # (-score, left start, merged length)

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0:
            score = scores.get(text[left : ends[right]])
            if score is not None:
                heapq.heappush(queue, (-score, left, ends[right] - left))

    for i in range(len(text) - 1):
        push(i, i + 1)
    while queue:
        _, left, length = heapq.heappop(queue)
        right = nxt[left]
        if not alive[left] or right < 0 or ends[right] - left != length:
            continue  # stale: a side was merged since this pair was queued
        ends[left], alive[right] = ends[right], False
        nxt[left] = nxt[right]
        if nxt[left] >= 0:
            prv[nxt[left]] = left
        push(prv[left], left)
        push(left, nxt[left])
    return [(i, ends[i]) for i in range(len(text)) if alive[i]]
