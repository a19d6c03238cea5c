"""SchedulerOutput -> the flat tensors of one forward step (ids, positions, attention metadata)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from minerva.attention import AttentionMetadata
from minerva.request import Request, SchedulerOutput


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # [num_sampling] int64: last token of each sampling request
    sampling_requests: list[Request]  # the requests that sample this step, in logits order
    sampling_rows: list[int]  # their row in the SchedulerOutput


def prepare_inputs(out: SchedulerOutput, block_size: int, device: torch.device) -> StepInputs:
    """Build the step's tensors on the host with numpy, then move them in one go per tensor."""
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

    def to_dev(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        if device.type == "cuda":
            return t.pin_memory().to(device, non_blocking=True)
        return t.to(device)

    query_lens = [int(x) for x in out.num_scheduled_tokens]
    meta = AttentionMetadata(
        slot_mapping=to_dev(slot_mapping),
        block_tables=to_dev(block_tables),
        seq_lens=to_dev(seq_lens),
        query_start_loc=to_dev(query_start_loc),
        num_decodes=num_decodes,
        max_query_len=max(query_lens),
        max_seq_len=int(seq_lens.max()),
        seq_lens_cpu=seq_lens.tolist(),
        query_start_loc_cpu=query_start_loc.tolist(),
    )
    return StepInputs(
        input_ids=to_dev(input_ids),
        positions=to_dev(positions),
        meta=meta,
        logits_indices=to_dev(np.asarray(logits_indices, dtype=np.int64)),
        sampling_requests=sampling_requests,
        sampling_rows=sampling_rows,
    )
