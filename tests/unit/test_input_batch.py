"""The runner's persistent batch against a slow twin: the flat step inputs it builds from the
SchedulerOutput's plain data (new requests once, then deltas) equal those built directly from
the scheduler's own Request objects, step after step, through chunked prefill, preemption,
pipelined (async) steps, finished requests and a reused request id."""

from __future__ import annotations

import numpy as np
import pytest

from minerva.cache import KVCacheManager
from minerva.request import Request, SchedulerOutput
from minerva.runner.input_batch import HostInputs, InputBatch
from minerva.sampling_params import SamplingParams
from minerva.scheduler import Scheduler

BLOCK_SIZE = 4


def reference_inputs(s: Scheduler, out: SchedulerOutput) -> dict:
    """The slow twin: one request at a time from the scheduler's Requests."""
    reqs = [s.requests[rid] for rid in out.request_ids]
    width = max(len(r.block_ids) for r in reqs)
    ids, positions, slots, sampling, pending = [], [], [], [], []
    tables = np.zeros((len(reqs), width), dtype=np.int32)
    seq_lens = []
    for i, (r, n) in enumerate(zip(reqs, out.num_scheduled_tokens)):
        end = r.num_computed_tokens  # the scheduler has advanced it past this step
        start = end - n
        tables[i, : len(r.block_ids)] = r.block_ids
        for p in range(start, end):
            if p < r.num_tokens:
                ids.append(r.token_at(p))
            else:
                pending.append(len(ids))
                ids.append(0)
            positions.append(p)
            slots.append(r.block_ids[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE)
        seq_lens.append(end)
        if end >= r.num_tokens:
            sampling.append(i)
    return dict(
        input_ids=ids, positions=positions, slot_mapping=slots, block_tables=tables,
        seq_lens=seq_lens, sampling_rows=sampling, pending_indices=pending,
    )  # fmt: skip


def check(host: HostInputs, ref: dict) -> None:
    for name, expected in ref.items():
        got = getattr(host, name)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected), err_msg=name)
    counts = np.diff(host.query_start_loc)
    assert host.num_decodes == next((i for i, c in enumerate(counts) if c != 1), len(counts))
    assert host.logits_indices.tolist() == [
        host.query_start_loc[i + 1] - 1 for i in ref["sampling_rows"]
    ]


def token_for(request_id: str, index: int) -> int:
    return 3 + (sum(map(ord, request_id)) * 7 + index * 13) % 40  # never EOS (2)


@pytest.mark.parametrize("pipelined", [False, True])
def test_persistent_batch_equals_building_from_requests(pipelined):
    kv = KVCacheManager(14, BLOCK_SIZE, enable_prefix_caching=True)
    s = Scheduler(kv, max_num_seqs=4, max_num_batched_tokens=12, max_model_len=64)
    batch = InputBatch(BLOCK_SIZE, max_num_reqs=2, max_num_blocks=2)  # both grow
    lengths = [9, 3, 14, 5, 6, 11, 2, 7]
    for i, n in enumerate(lengths):
        params = SamplingParams(max_tokens=6 + i % 4, temperature=0, ignore_eos=True)
        prompt = [(5 * i + j) % 40 + 3 for j in range(n)]
        s.add_request(Request(f"r{i % 6}", prompt, params, max_tokens=6 + i % 4))  # ids reused
        if i % 6 == 5 or i == len(lengths) - 1:
            _run(s, batch, pipelined)
    assert kv.num_free_blocks == kv.num_blocks - 1 and s.num_preemptions > 0


def _run(s: Scheduler, batch: InputBatch, pipelined: bool) -> None:
    inflight = None
    for _ in range(500):
        if not s.has_unfinished() and inflight is None:
            return
        out = s.schedule()
        launched = None
        if not out.is_empty:
            ref = reference_inputs(s, out)
            batch.update(out)
            host = batch.prepare(out)
            check(host, ref)
            # Pending tokens come from the previous launch's sampled ids.
            for j, state in enumerate(host.sampling_states):
                state.sample_index = j
            launched = (out, host)
        if inflight is not None:
            _finish(s, *inflight)
        inflight = launched
        if launched is not None and not pipelined:
            _finish(s, *launched)
            inflight = None
    raise AssertionError("the requests did not finish")


def _finish(s: Scheduler, out: SchedulerOutput, host: HostInputs) -> None:
    """What ModelRunner.wait and the engine do with a step's tokens."""
    sampled = [[] for _ in out.request_ids]
    for state, row in zip(host.sampling_states, host.sampling_rows):
        token = token_for(state.request_id, state.num_output_tokens)
        state.output_token_ids.append(token)
        sampled[row].append(token)
    s.update(out, sampled)
