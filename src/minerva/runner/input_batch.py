"""SchedulerOutput -> the flat arrays of one forward step (ids, positions, attention metadata).

Built on the host with numpy (`HostInputs`), then moved to the device in one copy per array
(`to_device`), or copied into a captured CUDA graph's static buffers. A token the previous
step sampled but the host has not read yet is left as a hole (`pending_indices`) that the
runner fills on the device.
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
    pending_indices: list[int]  # input_ids slots whose token the previous step sampled
    pending_requests: list[Request]  # whose pending token goes there (same order)

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
    input_ids = np.zeros(total, dtype=np.int64)
    positions = np.empty(total, dtype=np.int64)
    slot_mapping = np.empty(total, dtype=np.int64)
    max_blocks = max(len(r.block_ids) for r in out.requests)
    block_tables = np.zeros((num_seqs, max_blocks), dtype=np.int32)
    seq_lens = np.empty(num_seqs, dtype=np.int32)
    query_start_loc = np.zeros(num_seqs + 1, dtype=np.int32)
    logits_indices: list[int] = []
    sampling_requests: list[Request] = []
    sampling_rows: list[int] = []
    pending_indices: list[int] = []
    pending_requests: list[Request] = []
    num_decodes = 0
    offset = 0
    for i, (req, n) in enumerate(zip(out.requests, out.num_scheduled_tokens)):
        start = out.start(i)
        end = start + n
        known = req.num_tokens
        block_ids = req.block_ids
        block_tables[i, : len(block_ids)] = block_ids
        if n == 1:  # decode (or a one-token chunk): scalar work, no temporaries
            if start < known:
                input_ids[offset] = req.token_at(start)
            else:  # sampled by the previous step, still on the device
                pending_indices.append(offset)
                pending_requests.append(req)
            positions[offset] = start
            slot_mapping[offset] = block_ids[start // block_size] * block_size + start % block_size
        else:
            ids = req.token_slice(start, min(end, known))
            input_ids[offset : offset + len(ids)] = ids
            if end > known:
                pending_indices.append(offset + n - 1)
                pending_requests.append(req)
            pos = np.arange(start, end, dtype=np.int64)
            positions[offset : offset + n] = pos
            table = block_tables[i].astype(np.int64)
            slot_mapping[offset : offset + n] = table[pos // block_size] * block_size + (
                pos % block_size
            )
        seq_lens[i] = end
        offset += n
        query_start_loc[i + 1] = offset
        if n == 1 and num_decodes == i:
            num_decodes += 1
        if end >= known:  # caught up: this request samples its next token
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
        pending_indices=pending_indices,
        pending_requests=pending_requests,
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
