"""Log-probabilities of a token sequence under a llama.cpp context (perplexity, coherence).

llama-cpp-python keeps every position's logits only when a context is built with
``logits_all`` (an n_ctx x vocab float array for every request); scoring asks for them per
batch instead, through the context's own batch, and leaves the context empty afterwards.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def score_tokens(llm: Any, token_ids: list[int]) -> list[float]:
    """log p(token_ids[i+1] | token_ids[:i+1]) for every i, from one pass over the sequence."""
    n_vocab, n_batch = llm.n_vocab(), llm.n_batch
    llm.reset()
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)  # noqa: SLF001 - llama-cpp-python 0.3's context
    scores: list[float] = []
    try:
        for start in range(0, len(token_ids), n_batch):
            chunk = token_ids[start : start + n_batch]
            llm._batch.set_batch(batch=chunk, n_past=start, logits_all=True)  # noqa: SLF001
            llm._ctx.decode(llm._batch)  # noqa: SLF001
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(chunk) * n_vocab,))
            logits = logits.reshape(len(chunk), n_vocab).astype(np.float64)  # [chunk, vocab]
            top = logits.max(axis=1, keepdims=True)
            log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))  # [chunk]
            targets = token_ids[start + 1 : start + len(chunk) + 1]  # the last has none
            rows = np.arange(len(targets))
            scores += (logits[rows, targets] - log_z[rows]).tolist()
    finally:
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)  # noqa: SLF001 - nothing of it is reused
        llm.reset()
    return scores
