"""BPE merges equivalent to llama.cpp's SentencePiece tokenizer, built from token scores.

llama.cpp's SPM tokenizer repeatedly merges the adjacent pair whose concatenation is the
vocabulary token with the highest score. A BPE model does the same given every pair (a, b) with
a, b and a+b in the vocabulary, ranked by the score of a+b: BPE takes the lowest rank first.
"""

from __future__ import annotations


def spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """All (left, right) splits of each token into two tokens, best-scored result first.

    Equal scores are ordered by token id; llama.cpp instead merges the leftmost of two pairs
    with equal scores, so vocabularies with tied scores may differ there.
    """
    ids = {t: i for i, t in enumerate(tokens)}
    ranked: list[tuple[float, int, int, str, str]] = []
    for token_id, token in enumerate(tokens):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            left_id, right_id = ids.get(left), ids.get(right)
            if left_id is not None and right_id is not None:
                ranked.append((-scores[token_id], token_id, left_id, left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]
