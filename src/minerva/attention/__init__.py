"""Attention backends over the paged KV cache. The torch reference runs everywhere."""

from minerva.attention.metadata import AttentionMetadata
from minerva.attention.torch_paged import paged_attention, write_kv

__all__ = ["AttentionMetadata", "paged_attention", "write_kv"]
