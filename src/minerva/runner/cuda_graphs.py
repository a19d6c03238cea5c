"""CUDA graphs for decode steps: one graph per batch-size bucket, all sharing one memory pool.

A decode step launches hundreds of small kernels; replaying a captured graph removes their
launch cost. Inputs go into static buffers (padding rows get seq_len 0 and slot -1, which the
Triton kernels skip); the graph writes logits into a static output. Prefill and mixed steps
run eagerly.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from minerva.attention import AttentionBackend, AttentionMetadata
from minerva.runner.input_batch import HostInputs

logger = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


def graph_buckets(max_num_seqs: int) -> list[int]:
    buckets = [b for b in BUCKETS if b < max_num_seqs]
    return buckets + [max_num_seqs]


class StagedGraphs:
    """What both graph runners share: static device inputs, two sets of pinned host staging
    used in turn, and graphs captured into one memory pool and replayed with those inputs."""

    def __init__(self, static: dict[str, torch.Tensor], pool=None) -> None:
        self.static = static
        # Two sets, used in turn: a step's host writes never touch buffers whose copy to the
        # device may still be queued (the engine queues step N+1 before step N has finished).
        self.staging = [
            {k: torch.empty_like(v, device="cpu").pin_memory() for k, v in static.items()}
            for _ in range(2)
        ]
        self._turn = 0
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = pool

    def stage_tokens(self, host: HostInputs, size: int) -> dict[str, torch.Tensor]:
        """The pinned staging set for this step (the other one may still be in flight), its
        per-token inputs filled up to `size` rows; padding rows get token 0, position 0 and
        slot -1 (no KV write)."""
        stage = self.staging[self._turn]
        self._turn ^= 1
        fill_padded(stage["input_ids"], host.input_ids, size, 0)
        fill_padded(stage["positions"], host.positions, size, 0)
        fill_padded(stage["slot_mapping"], host.slot_mapping, size, -1)
        return stage

    def capture_one(self, key: int, forward) -> None:
        """Warm forward(key) up (compiles kernels, settles the allocator), then capture it."""
        forward(key)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = forward(key)
        if self.pool is None:
            self.pool = graph.pool()
        self.graphs[key], self.outputs[key] = graph, out

    def replay(
        self,
        key: int,
        stage: dict[str, torch.Tensor],
        regions: dict[str, tuple],
        pending: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """Copy stage[name][region] to the static inputs (non-blocking), put the pending
        tokens (input positions, ids on the device) into input_ids, replay graph `key`."""
        for name, region in regions.items():
            self.static[name][region].copy_(stage[name][region], non_blocking=True)
        if pending is not None:
            self.static["input_ids"].index_copy_(0, *pending)
        self.graphs[key].replay()
        return self.outputs[key]


class CudaGraphRunner(StagedGraphs):
    """Captures the model's decode forward for each bucket; `run` replays the smallest that fits."""

    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[torch.Tensor],
        block_size: int,
        max_num_seqs: int,
        max_model_len: int,
        device: torch.device,
        attention: AttentionBackend,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.device = device
        self.buckets = graph_buckets(max_num_seqs)
        self.attention = attention  # asked to fix its per-step plan for each bucket
        self.max_model_len = max_model_len
        n, max_blocks = self.buckets[-1], math.ceil(max_model_len / block_size)
        super().__init__(
            {
                "input_ids": torch.zeros(n, dtype=torch.int64, device=device),
                "positions": torch.zeros(n, dtype=torch.int64, device=device),
                "slot_mapping": torch.full((n,), -1, dtype=torch.int64, device=device),
                "seq_lens": torch.zeros(n, dtype=torch.int32, device=device),
                "block_tables": torch.zeros(n, max_blocks, dtype=torch.int32, device=device),
            }
        )
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.logits_indices = torch.arange(n, dtype=torch.int64, device=device)

    def _meta(self, b: int) -> AttentionMetadata:
        s = self.static
        meta = AttentionMetadata(
            slot_mapping=s["slot_mapping"][:b],
            block_tables=s["block_tables"][:b],
            seq_lens=s["seq_lens"][:b],
            query_start_loc=self.query_start_loc[: b + 1],
            num_decodes=b,
            max_query_len=1,
            seq_lens_cpu=[0] * b,  # only its length is read on this path
            query_start_loc_cpu=list(range(b + 1)),
        )
        num_kv_heads = self.kv_caches[0].shape[3]
        self.attention.plan_decode_graph(meta, num_kv_heads, self.max_model_len)
        return meta

    def _forward(self, b: int) -> torch.Tensor:
        return self.model(
            self.static["input_ids"][:b],
            self.static["positions"][:b],
            self.kv_caches,
            self._meta(b),
            self.logits_indices[:b],
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first so smaller graphs reuse its pool."""
        for b in reversed(self.buckets):
            self.capture_one(b, self._forward)
        torch.cuda.synchronize(self.device)
        logger.info("captured CUDA graphs for decode batch sizes %s", self.buckets)

    def bucket_for(self, num_seqs: int) -> int | None:
        return next((b for b in self.buckets if b >= num_seqs), None)

    def run(
        self,
        host: HostInputs,
        bucket: int,
        pending: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Replay the graph of `bucket` (bucket_for) for a pure-decode step; returns logits
        [num_seqs, vocab]. pending: (input positions, token ids on the device) to fill in."""
        n, b = host.num_seqs, bucket
        width = host.block_tables.shape[1]
        stage = self.stage_tokens(host, b)
        fill_padded(stage["seq_lens"], host.seq_lens, b, 0)
        stage["block_tables"][:n, :width].numpy()[:] = host.block_tables
        rows = (slice(0, b),)
        regions = dict.fromkeys(("input_ids", "positions", "slot_mapping", "seq_lens"), rows)
        regions["block_tables"] = (slice(0, n), slice(0, width))
        return self.replay(b, stage, regions, pending)[:n]


def fill_padded(buffer: torch.Tensor, values: np.ndarray, size: int, pad: int) -> None:
    """buffer[:size] = values, then `pad` up to size (pinned host staging of a graph input)."""
    view = buffer[:size].numpy()
    view[: len(values)] = values
    view[len(values) :] = pad
