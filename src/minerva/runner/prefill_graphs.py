"""CUDA graphs for single-sequence prefill steps, one per token-count bucket.

An eager prefill launches ~10 kernels per layer from Python; for a 7B model on an H100 the host
needs longer to launch a 512-token step than the GPU needs to run it (the GPU sat idle for a
fifth of the step), and a short chunk (a prefix-cache hit, a new chat turn) costs as much as a
long one. A step that prefills one sequence (the latency-critical case: one new prompt) is
padded to the next bucket and replayed instead. Padding rows get slot -1 (no KV write) and sit
beyond the sequence's query length, so attention ignores them; every other op is row-wise, so
they never touch real rows. Steps with several sequences run eagerly.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from minerva.attention import AttentionMetadata
from minerva.runner.cuda_graphs import StagedGraphs
from minerva.runner.input_batch import HostInputs

logger = logging.getLogger(__name__)

PREFILL_BUCKETS = (64, 128, 256, 512, 1024, 2048)


class PrefillGraphRunner(StagedGraphs):
    """Captures the model's one-sequence prefill for each bucket; `run` replays the best fit."""

    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[torch.Tensor],
        block_size: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        device: torch.device,
        pool=None,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        # A bucket never exceeds max_model_len: capture reads the block table up to its length.
        limit = min(max_num_batched_tokens, max_model_len, PREFILL_BUCKETS[-1])
        self.buckets = [b for b in PREFILL_BUCKETS if b <= limit]
        n = self.buckets[-1] if self.buckets else 0
        max_blocks = math.ceil(max_model_len / block_size)
        static = {
            "input_ids": torch.zeros(n, dtype=torch.int64, device=device),
            "positions": torch.zeros(n, dtype=torch.int64, device=device),
            "slot_mapping": torch.full((n,), -1, dtype=torch.int64, device=device),
            "block_tables": torch.zeros(1, max_blocks, dtype=torch.int32, device=device),
            "seq_lens": torch.zeros(1, dtype=torch.int32, device=device),
            "query_start_loc": torch.zeros(2, dtype=torch.int32, device=device),
            "logits_indices": torch.zeros(1, dtype=torch.int64, device=device),
        }
        super().__init__(static, pool)
        self.num_replays = 0

    def _forward(self, t: int) -> torch.Tensor:
        s = self.static
        meta = AttentionMetadata(
            slot_mapping=s["slot_mapping"][:t],
            block_tables=s["block_tables"],
            seq_lens=s["seq_lens"],
            query_start_loc=s["query_start_loc"],
            num_decodes=0,
            max_query_len=t,  # the grid covers the bucket; rows past the query length exit
            seq_lens_cpu=[t],  # only its length is read on this path
            query_start_loc_cpu=[0, t],
        )
        return self.model(
            s["input_ids"][:t], s["positions"][:t], self.kv_caches, meta, s["logits_indices"]
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first, into the shared pool."""
        s = self.static
        for t in reversed(self.buckets):
            s["seq_lens"].fill_(t)  # reads the null block: harmless, nothing is written
            s["query_start_loc"][1] = t
            self.capture_one(t, self._forward)
        torch.cuda.synchronize()
        logger.info("captured CUDA graphs for one-sequence prefill of %s tokens", self.buckets)

    def bucket_for(self, host: HostInputs) -> int | None:
        """The bucket a step fits, or None: one sequence, more than one token, not too long."""
        if host.num_seqs != 1 or host.num_decodes:
            return None
        n = len(host.input_ids)
        return next((b for b in self.buckets if b >= n), None)

    def run(
        self,
        host: HostInputs,
        bucket: int,
        pending: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Replay the graph of `bucket` (bucket_for) for a one-sequence step; returns logits
        [1, vocab] of its last token."""
        n, t = len(host.input_ids), bucket
        stage = self.stage_tokens(host, t)
        width = host.block_tables.shape[1]
        stage["block_tables"][:, :width].numpy()[:] = host.block_tables
        stage["seq_lens"].numpy()[:] = host.seq_lens
        stage["query_start_loc"].numpy()[:] = host.query_start_loc
        stage["logits_indices"][0] = n - 1
        rows, whole = (slice(0, t),), (slice(None),)
        regions = dict.fromkeys(("input_ids", "positions", "slot_mapping"), rows)
        regions |= dict.fromkeys(("seq_lens", "query_start_loc", "logits_indices"), whole)
        regions["block_tables"] = (slice(None), slice(0, width))
        self.num_replays += 1
        return self.replay(t, stage, regions, pending)
