"""The runner's persistent batch, and one step's flat input arrays built from it.

`InputBatch` keeps the runner's own copy of every request it holds (token ids it knows, seed,
sampling params) and their block tables as rows of one numpy array. A SchedulerOutput only
carries what changed (new requests once, then computed counts and new block ids), so a decode
step gathers its block tables in one numpy op instead of converting every request's list.

`InputBatch.prepare` turns a step into `HostInputs` (numpy), moved to the device in one copy per
array (`to_device`) or copied into a captured CUDA graph's static buffers. A token the previous
step sampled but the host has not read yet is left as a hole (`pending_indices`) that the
runner fills from the device (`pending_sources`: where in that step's sampled ids it is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from minerva.attention import AttentionMetadata
from minerva.platform import copy_to_device
from minerva.request import NewRequestData, SchedulerOutput, TokenSequence
from minerva.sampling_params import SamplingParams


@dataclass(eq=False)
class CachedRequestState(TokenSequence):
    """The runner's copy of one request; its block table is row `row` of the InputBatch."""

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    """Every token this runner sampled for it (appended when a step's ids are read)."""
    sampling_params: SamplingParams
    seed: int
    eos_token_ids: frozenset[int]
    num_computed_tokens: int
    row: int
    block_ids: list[int] = field(default_factory=list)
    """Its block table (also row `row` of InputBatch.block_table)."""
    sample_index: int = -1
    """Its row in the latest launch's sampled ids (where a pending token of it is)."""
    plain_greedy: bool = field(init=False)
    """Argmax of the raw logits (SamplingParams.plain_greedy), fixed for its lifetime."""
    pooling: bool = field(init=False)
    """Samples nothing: its prompt's final hidden states are summed into `pooled_sum`."""
    pooled_sum: torch.Tensor | None = None
    """[hidden] float32 on the device: the sum over the prompt chunks computed so far."""
    matcher: Any = None
    """Its structured.TokenMatcher (grammar / token healing), None when unconstrained."""

    def __post_init__(self) -> None:
        self.plain_greedy = self.sampling_params.plain_greedy
        self.pooling = self.sampling_params.pooling is not None


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
    sampling_states: list[CachedRequestState]  # the requests that sample, in logits order
    sampling_rows: list[int]  # their row in the SchedulerOutput
    pending_indices: list[int]  # input_ids slots whose token the previous step sampled
    pending_sources: list[int]  # where each is in the previous step's sampled ids
    num_logits: list[int] | None = None
    """Logits rows of each sampling request (k + 1 where it verifies k draft tokens, in
    logits_indices order); None when every one has a single row."""
    draft_token_ids: list[list[int]] | None = None
    """Each sampling request's draft tokens (empty lists for the others); None without drafts."""
    pooling: PoolingRows | None = None  # pooling requests' tokens this step (None: none)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    @property
    def is_pure_decode(self) -> bool:
        """Every sequence computes one token and samples (the CUDA-graph case)."""
        return self.num_decodes == self.num_seqs == len(self.sampling_states)


@dataclass
class PoolingRows:
    """The pooling requests of a step: whose hidden states to keep and which of them end."""

    states: list[CachedRequestState]
    token_indices: np.ndarray  # [num_pooling_tokens] int64: their tokens in the flat batch
    counts: list[int]  # tokens of each request this step (token_indices in runs of these)
    finishes: list[bool]  # this step computes the request's last prompt token


@dataclass
class StepInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    logits_indices: torch.Tensor


class InputBatch:
    """Every request the runner holds, updated from each SchedulerOutput's deltas."""

    def __init__(self, block_size: int, max_num_reqs: int = 64, max_num_blocks: int = 64) -> None:
        self.block_size = block_size
        self.requests: dict[str, CachedRequestState] = {}
        # Grown (doubled) when a request or a block table outgrows them.
        self.block_table = np.zeros((max_num_reqs, max_num_blocks), dtype=np.int32)
        self._free_rows = list(range(max_num_reqs - 1, -1, -1))
        self.num_pooling = 0  # pooling requests held: their steps take the mixed path
        self.num_matchers = 0  # grammar requests held: a step may need token masks

    def update(self, out: SchedulerOutput) -> None:
        """Drop ended and preempted requests, add new ones, apply the per-step deltas."""
        for request_id in out.finished_request_ids:
            self.remove(request_id)
        for request_id in out.preempted_request_ids:
            self.remove(request_id)
        for new in out.new_requests:
            self.add(new)
        cached, requests = out.cached_requests, self.requests
        for request_id, start, block_ids in zip(
            cached.request_ids, cached.num_computed_tokens, cached.new_block_ids
        ):
            state = requests[request_id]
            state.num_computed_tokens = start
            if block_ids:
                self._append_blocks(state, block_ids)

    def add(self, new: NewRequestData) -> CachedRequestState:
        self.remove(new.request_id)  # a stale row (preempted in a step that never ran)
        if not self._free_rows:
            self._grow_rows()
        row = self._free_rows.pop()
        state = CachedRequestState(
            request_id=new.request_id,
            prompt_token_ids=new.prompt_token_ids,
            output_token_ids=list(new.output_token_ids),
            sampling_params=new.sampling_params,
            seed=new.seed,
            eos_token_ids=new.eos_token_ids,
            num_computed_tokens=new.num_computed_tokens,
            row=row,
        )
        if new.structured is not None:
            state.matcher = new.structured.new_matcher(state.output_token_ids)
        self.requests[new.request_id] = state
        self.num_pooling += state.pooling
        self.num_matchers += state.matcher is not None
        self.block_table[row] = 0  # padding past its blocks, as a fresh table has
        self._append_blocks(state, new.block_ids)
        return state

    def remove(self, request_id: str) -> None:
        """Forget a request (no-op if unknown); its row is reused."""
        state = self.requests.pop(request_id, None)
        if state is not None:
            self._free_rows.append(state.row)
            self.num_pooling -= state.pooling
            self.num_matchers -= state.matcher is not None

    def _append_blocks(self, state: CachedRequestState, block_ids: list[int]) -> None:
        row, n = state.row, len(state.block_ids)
        state.block_ids.extend(block_ids)
        end = n + len(block_ids)
        if end > self.block_table.shape[1]:
            width = max(end, 2 * self.block_table.shape[1])
            grown = np.zeros((self.block_table.shape[0], width), dtype=np.int32)
            grown[:, : self.block_table.shape[1]] = self.block_table
            self.block_table = grown
        self.block_table[row, n:end] = block_ids

    def _grow_rows(self) -> None:
        rows = self.block_table.shape[0]
        self.block_table = np.concatenate([self.block_table, np.zeros_like(self.block_table)])
        self._free_rows.extend(range(2 * rows - 1, rows - 1, -1))

    def prepare(self, out: SchedulerOutput) -> HostInputs:
        """The flat arrays of one step, in the SchedulerOutput's order (call `update` first)."""
        requests = self.requests
        states = [requests[request_id] for request_id in out.request_ids]
        counts = out.num_scheduled_tokens
        if len(counts) == sum(counts) and not self.num_pooling:
            return self._prepare_decode(states)
        return self._prepare_mixed(states, counts, out.scheduled_spec_token_ids)

    def _block_tables(self, rows: list[int], width: int) -> np.ndarray:
        """[len(rows), width] int32 (width: the widest of their tables), gathered in one op."""
        return self.block_table[np.array(rows, dtype=np.intp), :width]

    def _prepare_decode(self, states: list[CachedRequestState]) -> HostInputs:
        """One token per sequence (the usual step): a few scalar operations per row, which
        cost less than the fixed cost of numpy calls at small batches."""
        bs, num_seqs, width = self.block_size, len(states), 0
        ids, positions, slots, rows = [], [], [], []
        pending_indices, pending_sources = [], []
        logits_indices, sampling_states = [], []
        for i, state in enumerate(states):
            start = state.num_computed_tokens
            known = len(state.prompt_token_ids) + len(state.output_token_ids)
            rows.append(state.row)
            positions.append(start)
            block_ids = state.block_ids
            slots.append(block_ids[start // bs] * bs + start % bs)
            if len(block_ids) > width:
                width = len(block_ids)
            if start < known:
                ids.append(state.token_at(start))
            else:  # sampled by the previous step, still on the device
                ids.append(0)
                pending_indices.append(i)
                pending_sources.append(state.sample_index)
            if start + 1 >= known:  # caught up: this request samples its next token
                logits_indices.append(i)
                sampling_states.append(state)
        # One conversion for the three per-token arrays (each row is contiguous).
        ids_positions_slots = np.array([ids, positions, slots], dtype=np.int64)  # [3, num_seqs]
        return HostInputs(
            input_ids=ids_positions_slots[0],
            positions=ids_positions_slots[1],
            slot_mapping=ids_positions_slots[2],
            block_tables=self._block_tables(rows, width),
            seq_lens=np.array(positions, dtype=np.int32) + 1,
            query_start_loc=np.arange(num_seqs + 1, dtype=np.int32),
            logits_indices=np.array(logits_indices, dtype=np.int64),
            num_decodes=num_seqs,
            sampling_states=sampling_states,
            sampling_rows=logits_indices,
            pending_indices=pending_indices,
            pending_sources=pending_sources,
        )

    def _prepare_mixed(
        self,
        states: list[CachedRequestState],
        counts: list[int],
        spec: dict[str, list[int]] | None = None,
    ) -> HostInputs:
        """Prefill chunks or draft tokens among the rows: positions and slots with numpy.

        A row verifying k draft tokens ends with them (they follow its last known token) and
        gets k + 1 logits rows: the target's distribution after each of its last k + 1 inputs."""
        num_seqs, total = len(states), sum(counts)
        num_logits: list[int] | None = [] if spec else None
        drafts_of: list[list[int]] | None = [] if spec else None
        input_ids = np.zeros(total, dtype=np.int64)
        rows, starts = [], []
        logits_indices, sampling_states, sampling_rows = [], [], []
        pending_indices, pending_sources = [], []
        pooling: list[tuple[CachedRequestState, int, int, bool]] = []
        num_decodes = offset = width = 0
        for i, (state, n) in enumerate(zip(states, counts)):
            drafts = spec.get(state.request_id, ()) if spec else ()
            k, start = len(drafts), state.num_computed_tokens
            m = n - k  # inputs the request knows (or has pending); the drafts follow them
            end, known = start + m, state.num_tokens
            rows.append(state.row)
            starts.append(start)
            width = max(width, len(state.block_ids))
            if end > known:  # the last input was sampled by the previous step, still on device
                pending_indices.append(offset + m - 1)
                pending_sources.append(state.sample_index)
                if m > 1:
                    input_ids[offset : offset + m - 1] = state.token_slice(start, end - 1)
            elif m == 1:  # decode: scalar work, no temporaries
                input_ids[offset] = state.token_at(start)
            else:
                input_ids[offset : offset + m] = state.token_slice(start, end)
            if k:
                input_ids[offset + m : offset + n] = drafts
            offset += n
            if n == 1 and num_decodes == i:
                num_decodes += 1
            if state.pooling:  # keeps its hidden states, samples nothing
                pooling.append((state, offset - n, n, end >= known))
            elif end >= known:  # caught up: this request samples its next token (k + 1 of them)
                logits_indices.extend(range(offset - k - 1, offset))
                sampling_states.append(state)
                sampling_rows.append(i)
                if num_logits is not None:
                    num_logits.append(k + 1)
                    drafts_of.append(list(drafts))
        starts_np, counts_np = np.array(starts, dtype=np.int64), np.array(counts, dtype=np.int64)
        query_start_loc = np.zeros(num_seqs + 1, dtype=np.int32)
        np.cumsum(counts_np, out=query_start_loc[1:])
        token_seq = np.repeat(np.arange(num_seqs), counts_np)  # [total]: each token's row
        positions = starts_np[token_seq] + (np.arange(total) - query_start_loc[token_seq])
        block_tables = self._block_tables(rows, width)  # [num_seqs, width], a copy
        bs = self.block_size
        slot_mapping = block_tables[token_seq, positions // bs].astype(np.int64) * bs
        slot_mapping += positions % bs
        return HostInputs(
            input_ids=input_ids,
            positions=positions,
            slot_mapping=slot_mapping,
            block_tables=block_tables,
            seq_lens=(starts_np + counts_np).astype(np.int32),
            query_start_loc=query_start_loc,
            logits_indices=np.asarray(logits_indices, dtype=np.int64),
            num_decodes=num_decodes,
            sampling_states=sampling_states,
            sampling_rows=sampling_rows,
            pending_indices=pending_indices,
            pending_sources=pending_sources,
            num_logits=num_logits,
            draft_token_ids=drafts_of,
            pooling=_pooling_rows(pooling) if pooling else None,
        )


def _pooling_rows(pooling: list[tuple[CachedRequestState, int, int, bool]]) -> PoolingRows:
    """(state, first flat index, count, finishes) per pooling request -> PoolingRows."""
    token_indices = np.concatenate([np.arange(s, s + n) for _, s, n, _ in pooling])
    return PoolingRows(
        states=[state for state, *_ in pooling],
        token_indices=token_indices.astype(np.int64),
        counts=[n for _, _, n, _ in pooling],
        finishes=[done for *_, done in pooling],
    )


def _max_query_len(host: HostInputs) -> int:
    if host.num_decodes == len(host.seq_lens):  # decode rows only: one token each
        return 1
    return int(np.diff(host.query_start_loc).max())


def to_device(host: HostInputs, device: torch.device) -> StepInputs:
    def move(a: np.ndarray) -> torch.Tensor:
        return copy_to_device(torch.from_numpy(a), device)

    meta = AttentionMetadata(
        slot_mapping=move(host.slot_mapping),
        block_tables=move(host.block_tables),
        seq_lens=move(host.seq_lens),
        query_start_loc=move(host.query_start_loc),
        num_decodes=host.num_decodes,
        max_query_len=_max_query_len(host),
        seq_lens_cpu=host.seq_lens.tolist(),
        query_start_loc_cpu=host.query_start_loc.tolist(),
        verify_rows=host.num_logits is not None,
    )
    return StepInputs(
        input_ids=move(host.input_ids),
        positions=move(host.positions),
        meta=meta,
        logits_indices=move(host.logits_indices),
    )
