"""SchedulerOutput -> the flat arrays of one forward step (ids, positions, attention metadata).

Built on the host with numpy (`HostInputs`), then moved to the device in one copy per array
(`to_device`), or copied into a captured CUDA graph's static buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from minerva.attention import AttentionMetadata
from minerva.platform import copy_to_device
from minerva.request import Request, SchedulerOutput


@dataclass
class HostInputs:
    input_ids: np.ndarray  # [num_tokens] int64
    positions: np.ndarray  # [num_tokens] int64
    slot_mapping: np.ndarray  # [num_tokens] int64
    block_tables: np.ndarray  # [num_seqs, max_blocks] int32
    seq_lens: np.ndarray  # [num_seqs] int32
    query_start_loc: np.ndarray  # [num_seqs + 1] int32
    logits_indices: np.ndarray  # [num_sampling] int64: last token of each sampling request
    num_decodes: int
    sampling_requests: list[Request]  # the requests that sample this step, in logits order
    sampling_rows: list[int]  # their row in the SchedulerOutput

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    @property
    def is_pure_decode(self) -> bool:
        """Every sequence computes one token and samples (the CUDA-graph case)."""
        return self.num_decodes == self.num_seqs == len(self.sampling_requests)


@dataclass
class StepInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    logits_indices: torch.Tensor


def build_host_inputs(out: SchedulerOutput, block_size: int) -> HostInputs:
    num_seqs = len(out.requests)
    total = out.total_num_scheduled_tokens
    input_ids = np.empty(total, dtype=np.int64)
    positions = np.empty(total, dtype=np.int64)
    slot_mapping = np.empty(total, dtype=np.int64)
    max_blocks = max(len(r.block_ids) for r in out.requests)
    block_tables = np.zeros((num_seqs, max_blocks), dtype=np.int32)
    seq_lens = np.empty(num_seqs, dtype=np.int32)
    query_start_loc = np.zeros(num_seqs + 1, dtype=np.int32)
    logits_indices: list[int] = []
    sampling_requests: list[Request] = []
    sampling_rows: list[int] = []
    num_decodes = 0
    offset = 0
    for i, (req, n) in enumerate(zip(out.requests, out.num_scheduled_tokens)):
        start = req.num_computed_tokens
        end = start + n
        input_ids[offset : offset + n] = req.token_slice(start, end)
        pos = np.arange(start, end, dtype=np.int64)
        positions[offset : offset + n] = pos
        table = np.asarray(req.block_ids, dtype=np.int64)
        slot_mapping[offset : offset + n] = table[pos // block_size] * block_size + pos % block_size
        block_tables[i, : len(req.block_ids)] = table
        seq_lens[i] = end
        offset += n
        query_start_loc[i + 1] = offset
        if n == 1 and num_decodes == i:
            num_decodes += 1
        if end == req.num_tokens:  # caught up: this request samples its next token
            logits_indices.append(offset - 1)
            sampling_requests.append(req)
            sampling_rows.append(i)
    return HostInputs(
        input_ids=input_ids,
        positions=positions,
        slot_mapping=slot_mapping,
        block_tables=block_tables,
        seq_lens=seq_lens,
        query_start_loc=query_start_loc,
        logits_indices=np.asarray(logits_indices, dtype=np.int64),
        num_decodes=num_decodes,
        sampling_requests=sampling_requests,
        sampling_rows=sampling_rows,
    )


def to_device(host: HostInputs, device: torch.device) -> StepInputs:
    def move(a: np.ndarray) -> torch.Tensor:
        return copy_to_device(torch.from_numpy(a), device)

    meta = AttentionMetadata(
        slot_mapping=move(host.slot_mapping),
        block_tables=move(host.block_tables),
        seq_lens=move(host.seq_lens),
        query_start_loc=move(host.query_start_loc),
        num_decodes=host.num_decodes,
        max_query_len=int(np.diff(host.query_start_loc).max()),
        seq_lens_cpu=host.seq_lens.tolist(),
        query_start_loc_cpu=host.query_start_loc.tolist(),
    )
    return StepInputs(
        input_ids=move(host.input_ids),
        positions=move(host.positions),
        meta=meta,
        logits_indices=move(host.logits_indices),
    )
