"""Draft-model proposer: a small model with its own paged KV cache, addressed through the
target's block tables, proposes K tokens per request by greedy decoding.

Its K/V for a request's known tokens stays valid from step to step; after a verify step it
catches up on the tokens it has not computed (the accepted drafts it fed itself are kept), then
runs K - 1 one-token steps. The scheduler keeps K lookahead slots per request, so the draft's
writes past the known tokens land in blocks the request owns. Greedy drafts are one-hot
proposals, which the verification rule (rejection_sampler) needs to be exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from minerva.attention import AttentionMetadata
from minerva.platform import copy_to_device
from minerva.request import Request

DecodeGraph = Callable[
    [list[int], list[int], list[int], list[list[int]], list[int]], "torch.Tensor | None"
]
"""(input_ids, positions, slots, block tables, seq_lens) of a one-token-per-row draft step ->
its logits from a captured CUDA graph, or None where no graph fits (the step runs eagerly)."""

CATCH_UP_TOKENS = 2
"""Most tokens per row of a catch-up pass. After a verify step the draft has not yet run the
corrected or bonus token, nor, where every draft was accepted, the last draft it proposed
(never fed back): one or two tokens per request."""

CatchUpGraph = Callable[
    [list[int], list[int], list[int], list[list[int]], list[int], list[int]],
    "torch.Tensor | None",
]
"""The same with query starts, for rows of up to CATCH_UP_TOKENS tokens (a catch-up pass):
the logits after each row's last token, or None (eager)."""


@dataclass
class _DraftState:
    """What the draft's cache holds for one request: K/V of its first ``num_valid`` tokens,
    then of ``drafts`` (fed at the following positions; valid as far as they were accepted)."""

    num_preemptions: int
    num_valid: int = 0
    drafts: list[int] = field(default_factory=list)


@dataclass
class _Row:
    token_ids: list[int]  # inputs of this pass
    start: int  # position of the first
    block_ids: list[int]


class DraftModelProposer:
    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[torch.Tensor],
        block_size: int,
        device: torch.device,
        vocab_size: int,
        decode_graph: DecodeGraph | None = None,
        catch_up_graph: CatchUpGraph | None = None,
    ) -> None:
        """vocab_size: the target's; the draft's argmax never picks an id past it.
        decode_graph: replays the draft's decode graphs for its one-token steps (CUDA);
        catch_up_graph: its graphs of rows of up to two tokens, for the first pass after a
        verify step (an eager pass there cost as much as the rest of the step)."""
        self.decode_graph = decode_graph
        self.catch_up_graph = catch_up_graph
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self.vocab_size = vocab_size
        self._states: dict[str, _DraftState] = {}

    @torch.inference_mode()
    def propose(self, requests: Sequence[Request], num_tokens: Sequence[int]) -> list[list[int]]:
        rows, states = [], []
        for req in requests:
            state = self._state(req)
            start = min(state.num_valid, req.num_tokens - 1)  # the last token always runs
            rows.append(_Row(req.token_slice(start, req.num_tokens), start, req.block_ids))
            states.append(state)
        proposals: list[list[int]] = [[] for _ in requests]
        active = list(range(len(requests)))
        for j in range(max(num_tokens)):
            tokens = self._greedy([rows[i] for i in active])
            still = []
            for i, token in zip(active, tokens):
                proposals[i].append(token)
                row = rows[i]
                if j + 1 < num_tokens[i]:  # feed it back: one more token for this request
                    rows[i] = _Row([token], row.start + len(row.token_ids), row.block_ids)
                    still.append(i)
            active = still
        for req, state, drafts in zip(requests, states, proposals):
            state.num_valid = req.num_tokens
            state.drafts = drafts[:-1]  # the last one was never fed
        return proposals

    def forget(self, request_ids: Iterable[str]) -> None:
        for rid in request_ids:
            self._states.pop(rid, None)

    def _state(self, req: Request) -> _DraftState:
        """The request's state with num_valid advanced past its accepted drafts (reset after a
        preemption: its blocks were freed)."""
        state = self._states.get(req.request_id)
        if state is None or state.num_preemptions != req.num_preemptions:
            state = self._states[req.request_id] = _DraftState(req.num_preemptions)
            return state
        n, known = state.num_valid, req.num_tokens
        for draft in state.drafts:
            if n >= known or req.token_at(n) != draft:
                break
            n += 1
        state.num_valid, state.drafts = n, []
        return state

    def _greedy(self, rows: list[_Row]) -> list[int]:
        """One draft forward over `rows` (any query lengths); the argmax after each row's last
        input, in the rows' order."""
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].token_ids) != 1)
        ids, positions, slots, seq_lens, starts, tables = [], [], [], [], [0], []
        bs = self.block_size
        for i in order:
            row = rows[i]
            n = len(row.token_ids)
            ids.extend(row.token_ids)
            span = range(row.start, row.start + n)
            positions.extend(span)
            slots.extend(row.block_ids[p // bs] * bs + p % bs for p in span)
            seq_lens.append(row.start + n)
            starts.append(starts[-1] + n)
            tables.append(row.block_ids)
        # The blocks the context covers (a table may hold lookahead blocks past them).
        width = -(-max(seq_lens) // bs)
        padded = [t[:width] + [0] * (width - len(t[:width])) for t in tables]
        num_decodes = sum(1 for i in order if len(rows[i].token_ids) == 1)
        logits = None
        if num_decodes == len(rows) and self.decode_graph is not None:
            logits = self.decode_graph(ids, positions, slots, padded, seq_lens)
        longest = max(len(r.token_ids) for r in rows)
        catch_up = num_decodes < len(rows) and longest <= CATCH_UP_TOKENS  # else decode / prefill
        if catch_up and self.catch_up_graph is not None:
            logits = self.catch_up_graph(ids, positions, slots, padded, seq_lens, starts)
        if logits is None:
            logits = self._eager(
                ids, positions, slots, padded, seq_lens, starts, num_decodes, catch_up
            )
        picked = logits[:, : self.vocab_size].argmax(dim=-1).tolist()
        out = [0] * len(rows)
        for k, i in enumerate(order):
            out[i] = picked[k]
        return out

    def _eager(
        self, ids, positions, slots, padded, seq_lens, starts, num_decodes, catch_up=False
    ) -> torch.Tensor:
        """One eager draft forward; logits after each row's last input [num_rows, vocab]. A
        catch-up pass (rows of one or two tokens) runs as a verify step does, logits after
        every token: the CPU's whole-step kernel then takes it (a decode row per token)."""
        move = self._move
        meta = AttentionMetadata(
            slot_mapping=move(slots, torch.int64),
            block_tables=move(padded, torch.int32),
            seq_lens=move(seq_lens, torch.int32),
            query_start_loc=move(starts, torch.int32),
            num_decodes=num_decodes,
            max_query_len=max(b - a for a, b in zip(starts, starts[1:])),
            seq_lens_cpu=seq_lens,
            query_start_loc_cpu=starts,
            verify_rows=catch_up,
        )
        last = move([s - 1 for s in starts[1:]], torch.int64)
        wanted = move(list(range(starts[-1])), torch.int64) if catch_up else last
        logits = self.model(
            move(ids, torch.int64), move(positions, torch.int64), self.kv_caches, meta, wanted
        )  # [len(wanted), draft vocab]
        return logits[last] if catch_up else logits

    def _move(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        return copy_to_device(torch.tensor(values, dtype=dtype), self.device)
