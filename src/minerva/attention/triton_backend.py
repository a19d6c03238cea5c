"""TritonAttention: the CUDA fast path, with the same calls as the torch reference.

    attn = TritonAttention(num_sms=props.multi_processor_count, pdl=platform.supports_pdl)
    attn.write_kv(kv_cache, k, v, meta.slot_mapping)
    out = attn.paged_attention(q, kv_cache, meta, scale, sliding_window)

Decode rows (the first meta.num_decodes, one query token each) go to the split-K decode kernel,
the rest to the varlen prefill kernel. triton is imported on first use, so importing this module
costs nothing on machines without it.

CUDA graphs: a decode-only step reads no host value except meta.num_decodes and the number of
splits. The graph runner calls plan_decode_graph per bucket (the splits for the longest context
the bucket may serve); without it the splits come from meta.seq_lens_cpu. pdl: every kernel is
launched with programmatic dependent launch (ops/pdl.py).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from functools import cache

import torch

from minerva.attention.metadata import AttentionMetadata

DECODE_SPLITS_KEY = "triton_decode_splits"


@cache
def triton_available() -> bool:
    """True when triton is installed and a CUDA GPU is visible."""
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


def _kernels():
    # Imported here: these modules need triton at import time.
    from minerva.attention import triton_decode, triton_kv_write, triton_prefill

    return triton_decode, triton_prefill, triton_kv_write


class TritonAttention:
    """Paged attention through Triton kernels (CUDA). Stateless apart from the SM count and
    the PDL setting."""

    name = "triton"
    graph_safe = True  # decode-only steps read no host values (see the module docstring)

    def __init__(self, num_sms: int | None = None, pdl: bool = False) -> None:
        self.num_sms = num_sms
        self.pdl = pdl

    def _sm_count(self, device: torch.device) -> int:
        if self.num_sms is None:
            self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count
        return self.num_sms

    def write_kv(
        self,
        kv_cache: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        """k, v [num_tokens, KVH, D] into kv_cache [2, num_blocks, block_size, KVH, D];
        slot -1 (padding) is skipped."""
        _kernels()[2].write_kv(kv_cache, k, v, slot_mapping, pdl=self.pdl)

    @property
    def rope_write_kv(self) -> Callable:
        """RoPE on q and k and the KV write in one kernel (triton_kv_write.rope_write_kv), with
        this backend's PDL setting bound in; the model keeps it from construction on."""
        fn = _kernels()[2].rope_write_kv
        return functools.partial(fn, pdl=True) if self.pdl else fn

    def splits_for(self, num_seqs: int, num_kv_heads: int, max_seq_len: int, device) -> int:
        """Split-K count for a decode batch whose contexts may reach max_seq_len (graph buckets)."""
        return _kernels()[0].choose_num_splits(
            num_seqs, num_kv_heads, max_seq_len, self._sm_count(device)
        )

    def plan_decode_graph(
        self, meta: AttentionMetadata, num_kv_heads: int, max_seq_len: int
    ) -> None:
        """Fix the split count of a captured decode step: the one for max_seq_len contexts."""
        device = meta.seq_lens.device
        meta.extras[DECODE_SPLITS_KEY] = self.splits_for(
            meta.num_seqs, num_kv_heads, max_seq_len, device
        )

    def decode_splits(self, meta: AttentionMetadata, num_kv_heads: int, device) -> int:
        """Splits for this step's decode rows, computed once per step and shared by all layers."""
        splits = meta.extras.get(DECODE_SPLITS_KEY)
        if splits is None:
            nd = meta.num_decodes
            longest = max(meta.seq_lens_cpu[:nd])
            splits = _kernels()[0].choose_num_splits(
                nd, num_kv_heads, longest, self._sm_count(device)
            )
            meta.extras[DECODE_SPLITS_KEY] = splits
        return splits

    def paged_attention(
        self,
        q: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        sliding_window: int | None = None,
    ) -> torch.Tensor:
        """q [num_tokens, H, D] against the cache (this step's K/V already written) ->
        [num_tokens, H, D], same contract as torch_paged.paged_attention."""
        decode, prefill, _ = _kernels()
        out = torch.empty_like(q)
        nd = meta.num_decodes
        if nd:
            splits = self.decode_splits(meta, kv_cache.shape[3], q.device)
            decode.decode_attention(
                q[:nd],
                kv_cache,
                meta.block_tables[:nd],
                meta.seq_lens[:nd],
                scale,
                sliding_window,
                num_splits=splits,
                out=out[:nd],
                pdl=self.pdl,
            )
        if meta.num_seqs > nd:
            prefill.prefill_attention(
                q,
                kv_cache,
                meta.block_tables,
                meta.seq_lens,
                meta.query_start_loc,
                first_seq=nd,
                num_seqs=meta.num_seqs - nd,
                max_query_len=meta.max_query_len,
                scale=scale,
                sliding_window=sliding_window,
                out=out,
            )
        return out
