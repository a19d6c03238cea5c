"""AttentionMetadata: how a flat batch of tokens maps onto sequences and the paged KV cache.

Built once per step by the runner and shared by every layer. Decode rows (one query token)
come first in the batch, prefill chunks after; the reference attention relies on that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor
    """[num_tokens] int64: cache slot (block_id * block_size + offset) of each new token's K/V."""
    block_tables: torch.Tensor
    """[num_seqs, max_blocks] int32: block ids per sequence, padded with 0 (the null block)."""
    seq_lens: torch.Tensor
    """[num_seqs] int32: context length of each sequence after this step's tokens."""
    query_start_loc: torch.Tensor
    """[num_seqs + 1] int32: where each sequence's query tokens start in the flat batch."""
    num_decodes: int
    """The first num_decodes sequences have exactly one query token."""
    max_query_len: int
    seq_lens_cpu: list[int]
    query_start_loc_cpu: list[int]
    verify_rows: bool = False
    """Every row is short (speculative verify rows: the last token and its drafts): a backend
    may run each query token as a decode row over its own causal prefix."""
    extras: dict = field(default_factory=dict)
    """Per-step values a backend computes once and reuses in every layer (masks, plans)."""

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)
