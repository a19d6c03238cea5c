"""CUDA graphs for speculative verify steps: every row padded to q = K + 1 query tokens.

A verify step runs, per request, its last known token and up to K drafts (a request without
drafts runs one token). Padding every row to q tokens gives one shape per batch bucket, so the
step replays a graph like a decode step does. Padded tokens get slot -1 (no KV write) and
position 0, and sit after the row's real tokens: attention is causal inside the row (a query at
position p sees keys <= p), so real tokens never see them; each row's seq_len counts them, so
its queries keep their positions. Padding rows get seq_len 0. All b * q logits rows come out;
the runner keeps the real ones. Only the Triton varlen kernel runs (num_decodes = 0).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from minerva.attention import AttentionMetadata
from minerva.platform import copy_to_device
from minerva.runner.cuda_graphs import StagedGraphs, graph_buckets
from minerva.runner.input_batch import HostInputs

logger = logging.getLogger(__name__)

MAX_VERIFY_BATCH = 64
"""Largest batch bucket captured: beyond it a verify step's b * q tokens are compute-bound
and run eagerly (and speculation pays least there)."""


class VerifyGraphRunner(StagedGraphs):
    """One graph per batch bucket b, each running b rows of q tokens."""

    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[torch.Tensor],
        block_size: int,
        num_query_tokens: int,
        max_num_seqs: int,
        max_model_len: int,
        device: torch.device,
        pool=None,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.device = device
        self.q = q = num_query_tokens
        self.buckets = graph_buckets(min(max_num_seqs, MAX_VERIFY_BATCH))
        n = self.buckets[-1]
        # Padded queries look up to q - 1 positions past a row's real ones: room in the table.
        max_blocks = math.ceil((max_model_len + q) / block_size)
        super().__init__(
            {
                "input_ids": torch.zeros(n * q, dtype=torch.int64, device=device),
                "positions": torch.zeros(n * q, dtype=torch.int64, device=device),
                "slot_mapping": torch.full((n * q,), -1, dtype=torch.int64, device=device),
                "seq_lens": torch.zeros(n, dtype=torch.int32, device=device),
                "block_tables": torch.zeros(n, max_blocks, dtype=torch.int32, device=device),
            },
            pool,
        )
        self.query_start_loc = torch.arange(0, n * q + 1, q, dtype=torch.int32, device=device)
        self.logits_indices = torch.arange(n * q, dtype=torch.int64, device=device)
        self.num_replays = 0

    def _forward(self, b: int) -> torch.Tensor:
        s, q = self.static, self.q
        meta = AttentionMetadata(
            slot_mapping=s["slot_mapping"][: b * q],
            block_tables=s["block_tables"][:b],
            seq_lens=s["seq_lens"][:b],
            query_start_loc=self.query_start_loc[: b + 1],
            num_decodes=0,
            max_query_len=q,
            seq_lens_cpu=[0] * b,  # only its length is read on this path
            query_start_loc_cpu=list(range(0, b * q + 1, q)),
        )
        return self.model(
            s["input_ids"][: b * q], s["positions"][: b * q], self.kv_caches, meta,
            self.logits_indices[: b * q],
        )  # fmt: skip

    @torch.inference_mode()
    def capture(self) -> None:
        for b in reversed(self.buckets):
            self.capture_one(b, self._forward)
        torch.cuda.synchronize(self.device)
        logger.info("captured CUDA graphs for verify steps of %d tokens x %s", self.q, self.buckets)

    def bucket_for(self, host: HostInputs) -> int | None:
        """A bucket for a step whose rows all sample (none still prefilling), each with at most
        q tokens and no token pending on the device; else None (eager)."""
        n = host.num_seqs
        if host.pending_indices or len(host.sampling_states) != n:
            return None
        if int(np.diff(host.query_start_loc).max()) > self.q:
            return None
        return next((b for b in self.buckets if b >= n), None)

    def run(self, host: HostInputs, bucket: int) -> torch.Tensor:
        """Replay bucket's graph for the step; returns the logits rows of host.logits_indices,
        [num_logits, vocab], as eager would."""
        n, b, q = host.num_seqs, bucket, self.q
        rows = pad_rows(host, q, b)
        stage = self.staging[self._turn]
        self._turn ^= 1
        for name in ("input_ids", "positions", "slot_mapping", "seq_lens"):
            stage[name][: len(rows[name])].numpy()[:] = rows[name]
        width = host.block_tables.shape[1]
        stage["block_tables"][:n, :width].numpy()[:] = host.block_tables
        regions = dict.fromkeys(("input_ids", "positions", "slot_mapping"), (slice(0, b * q),))
        regions["seq_lens"] = (slice(0, b),)
        regions["block_tables"] = (slice(0, n), slice(0, width))
        keep = copy_to_device(torch.from_numpy(rows["keep"]), self.device)
        self.num_replays += 1
        return self.replay(b, stage, regions, None)[keep]


def pad_rows(host: HostInputs, q: int, b: int) -> dict[str, np.ndarray]:
    """A step's flat inputs with each of its rows padded to q tokens and b - num_seqs padding
    rows: input_ids, positions, slot_mapping [b * q] (padding: 0, 0, -1), seq_lens [b] (each
    row's context plus q; padding rows 0) and keep [num_logits], the padded index of each of
    host.logits_indices."""
    n, qsl = host.num_seqs, host.query_start_loc
    counts = np.diff(qsl)  # [n]
    row = np.repeat(np.arange(n), counts)  # [num_tokens]: each token's row
    padded = row * q + (np.arange(len(row)) - qsl[row])  # [num_tokens]: its index in b * q
    out = {}
    for name, values, pad in (
        ("input_ids", host.input_ids, 0),
        ("positions", host.positions, 0),
        ("slot_mapping", host.slot_mapping, -1),
    ):
        out[name] = np.full(b * q, pad, dtype=np.int64)
        out[name][padded] = values
    seq_lens = np.zeros(b, dtype=np.int32)
    seq_lens[:n] = host.seq_lens - counts + q
    out["seq_lens"] = seq_lens
    out["keep"] = padded[host.logits_indices]
    return out
