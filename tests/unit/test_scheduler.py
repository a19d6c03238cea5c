"""Scheduler rules without a model: token budget, chunking, FCFS, preemption order, stops."""

from __future__ import annotations

from minerva.cache import KVCacheManager
from minerva.request import Request, RequestStatus
from minerva.sampling_params import SamplingParams
from minerva.scheduler import Scheduler


def make(num_blocks=64, block_size=4, max_num_seqs=8, budget=32, chunked=True, max_model_len=256):
    kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching=True)
    return Scheduler(kv, max_num_seqs, budget, max_model_len, enable_chunked_prefill=chunked)


def req(rid, n_prompt, max_tokens=8, start=0, **params):
    return Request(
        request_id=rid,
        prompt_token_ids=list(range(start, start + n_prompt)),
        sampling_params=SamplingParams(max_tokens=max_tokens, **params),
        eos_token_ids=frozenset({2}),
        max_tokens=max_tokens,
    )


def run_step(s: Scheduler, token=7):
    """Schedule, then pretend the model sampled `token` for every request that caught up."""
    out = s.schedule()
    sampled = [
        [token] if s.requests[rid].num_computed_tokens >= s.requests[rid].num_tokens else []
        for rid in out.request_ids
    ]
    s.update(out, sampled)
    return out


def starts(out) -> dict[str, int]:
    """Where each scheduled request's tokens start, from the output's plain data."""
    new = {r.request_id: r.num_computed_tokens for r in out.new_requests}
    cached = out.cached_requests
    return new | dict(zip(cached.request_ids, cached.num_computed_tokens))


def test_budget_chunks_prefill_and_decodes_go_first():
    s = make(budget=16)
    a, b = req("a", 10), req("b", 30, start=100)
    s.add_request(a)
    s.add_request(b)
    out = run_step(s)
    assert out.num_scheduled_tokens == [10, 6]  # a whole, b chunked to the remaining budget
    out = run_step(s)
    # a now decodes (1 token, listed first); b gets the rest of the budget
    assert out.request_ids == ["a", "b"]
    assert out.num_scheduled_tokens == [1, 15]
    assert b.num_computed_tokens == 21 and b.num_output_tokens == 0
    assert out.total_num_scheduled_tokens <= 16


def test_no_chunking_waits_for_a_whole_prompt():
    s = make(budget=16, chunked=False)
    s.add_request(req("a", 10))
    s.add_request(req("b", 12, start=50))
    out = run_step(s)
    assert out.request_ids == ["a"]  # b (12) does not fit the 6 left


def test_max_num_seqs_and_fcfs():
    s = make(max_num_seqs=2, budget=100)
    for i in range(4):
        s.add_request(req(f"r{i}", 5, start=10 * i))
    out = run_step(s)
    assert out.request_ids == ["r0", "r1"]
    assert s.num_waiting == 2


def test_preempts_newest_first_and_recomputes():
    # 9 usable blocks of 4 tokens; three requests of 8 prompt tokens grow until blocks run out.
    s = make(num_blocks=10, block_size=4, budget=64, max_num_seqs=8)
    reqs = [req(f"r{i}", 8, max_tokens=20, start=20 * i) for i in range(3)]
    for r in reqs:
        s.add_request(r)
    preempted = []
    for _ in range(300):
        if not s.has_unfinished():
            break
        out = run_step(s)
        preempted += out.preempted_request_ids
    assert preempted and preempted[0] == "r2"  # the newest goes first
    assert all(r.status == RequestStatus.FINISHED_LENGTH for r in reqs)
    assert all(r.num_output_tokens == 20 for r in reqs)
    assert s.kv.num_free_blocks == s.kv.num_blocks - 1


def test_stop_conditions():
    s = make()
    eos = req("eos", 4, max_tokens=10)
    s.add_request(eos)
    run_step(s, token=2)
    assert eos.status == RequestStatus.FINISHED_STOPPED
    held = req("min", 4, max_tokens=10, min_tokens=3)
    s.add_request(held)
    run_step(s, token=2)
    assert not held.is_finished  # EOS ignored under min_tokens
    ign = req("ign", 4, max_tokens=3, ignore_eos=True)
    s.add_request(ign)
    for _ in range(3):
        run_step(s, token=2)
    assert ign.status == RequestStatus.FINISHED_LENGTH and ign.num_output_tokens == 3
    st = req("stoptok", 4, max_tokens=10, stop_token_ids=[9])
    s.add_request(st)
    run_step(s, token=9)
    assert st.status == RequestStatus.FINISHED_STOPPED and st.stop_reason == 9


def test_abort_frees_waiting_and_running():
    s = make(max_num_seqs=1)
    a, b = req("a", 6), req("b", 6, start=40)
    s.add_request(a)
    s.add_request(b)
    run_step(s)
    s.finish_requests(["a", "b"], RequestStatus.FINISHED_ABORTED)
    assert not s.has_unfinished()
    assert a.status == b.status == RequestStatus.FINISHED_ABORTED
    assert s.kv.num_free_blocks == s.kv.num_blocks - 1


def test_pipelined_steps_compute_the_pending_token_and_skip_the_last_one():
    # Async scheduling: step N+1 is scheduled before step N's token reaches the host.
    s = make()
    a = req("a", 5, max_tokens=3)
    s.add_request(a)
    out1 = s.schedule()
    assert out1.num_scheduled_tokens == [5] and a.num_computed_tokens == 5
    assert a.num_pending_tokens == 1  # the token step 1 samples
    out2 = s.schedule()  # computes that pending token (position 5) before it is known
    assert starts(out2) == {"a": 5} and out2.num_scheduled_tokens == [1]
    assert a.num_pending_tokens == 2
    s.update(out1, [[7]])
    assert a.output_token_ids == [7] and a.num_pending_tokens == 1
    out3 = s.schedule()
    assert starts(out3) == {"a": 6}
    s.update(out2, [[8]])
    # Its pending token (step 3's) is the third and last: no step computes it.
    assert s.schedule().is_empty
    s.update(out3, [[9]])
    assert a.status == RequestStatus.FINISHED_LENGTH and a.output_token_ids == [7, 8, 9]
    assert s.kv.num_free_blocks == s.kv.num_blocks - 1


def test_pipelined_results_of_finished_requests_are_dropped():
    s = make()
    a = req("a", 4, max_tokens=10)
    s.add_request(a)
    out1 = s.schedule()
    out2 = s.schedule()
    s.update(out1, [[2]])  # EOS: finished while step 2 still computes for it
    assert a.status == RequestStatus.FINISHED_STOPPED
    s.update(out2, [[5]])
    assert a.output_token_ids == [2] and not s.has_unfinished()
    assert s.kv.num_free_blocks == s.kv.num_blocks - 1


def test_preempted_request_waits_for_its_pending_token():
    # 3 usable blocks of 4 tokens: b's growth preempts a while a's token is still pending.
    s = make(num_blocks=4, block_size=4, budget=64)
    a, b = req("a", 4, max_tokens=8), req("b", 4, max_tokens=8, start=50)
    s.add_request(a)
    s.add_request(b)
    out1 = s.schedule()  # a and b: 4 tokens (1 block) each; both sample a pending token
    out2 = s.schedule()  # both need a 2nd block for their pending token; only one is free
    assert out2.request_ids == ["a"] and out2.preempted_request_ids == ["b"]
    assert b.num_pending_tokens == 1 and b.num_computed_tokens == 0
    # A free block is there again, but b is not resumed while its token is in flight.
    assert "b" not in s.schedule().request_ids and s.num_waiting == 1
    s.update(out1, [[7], [8]])
    assert b.output_token_ids == [8] and b.num_pending_tokens == 0
    s.update(out2, [[9]])
    assert a.output_token_ids == [7, 9]


def test_the_runner_gets_a_request_once_then_deltas_and_finished_ids():
    # Blocks of 4 tokens: a's 6 prompt tokens take 2 blocks; its 9th token needs a third.
    s = make(block_size=4)
    a = req("a", 6, max_tokens=3)
    s.add_request(a)
    out = run_step(s)
    assert [r.request_id for r in out.new_requests] == ["a"] and not out.cached_requests.request_ids
    new = out.new_requests[0]
    assert new.prompt_token_ids == a.prompt_token_ids and new.block_ids == a.block_ids[:2]
    assert new.num_computed_tokens == 0 and new.output_token_ids == []
    out = run_step(s)  # computes position 6: no new block
    assert not out.new_requests and out.cached_requests.request_ids == ["a"]
    assert out.cached_requests.num_computed_tokens == [6]
    assert out.cached_requests.new_block_ids == [[]]
    out = run_step(s)  # computes position 7; the token it samples (the 3rd) ends a by length
    assert out.cached_requests.new_block_ids == [[]] and a.is_finished
    b = req("b", 9, start=50)
    s.add_request(b)
    out = run_step(s)
    assert out.finished_request_ids == ["a"] and out.request_ids == ["b"]
    out = run_step(s)
    assert out.finished_request_ids == [] and out.cached_requests.new_block_ids == [[]]
    s.finish_requests(["b"], RequestStatus.FINISHED_ABORTED)
    s.add_request(req("c", 2, start=90))
    assert run_step(s).finished_request_ids == ["b"]


def test_a_preempted_request_comes_back_as_new_with_its_outputs():
    s = make(num_blocks=4, block_size=4, budget=64)
    a, b = req("a", 4, max_tokens=8), req("b", 4, max_tokens=8, start=50)
    s.add_request(a)
    s.add_request(b)
    run_step(s)  # both prefill (1 block each) and sample
    out = run_step(s)  # both need a 2nd block; only one is free: b is preempted
    assert out.preempted_request_ids == ["b"] and out.request_ids == ["a"]
    for _ in range(50):
        out = run_step(s)
        if b in s.running:
            break
    resumed = next(r for r in out.new_requests if r.request_id == "b")
    assert resumed.output_token_ids == [7] and resumed.block_ids == b.block_ids


def test_draft_tokens_are_verified_and_rejected_ones_rolled_back():
    s = make(block_size=4)
    a = req("a", 4, max_tokens=10)
    s.add_request(a)
    run_step(s)  # prefill; samples 7
    a.spec_token_ids = [11, 12, 13]  # a proposer's drafts for positions 5..7
    out = s.schedule()
    # Position 4 (the known token 7) plus the three drafts; each position samples a token.
    assert out.num_scheduled_tokens == [4] and out.scheduled_spec_token_ids == {"a": [11, 12, 13]}
    assert a.num_computed_tokens == 8 and a.spec_token_ids == []
    assert s.schedule().is_empty  # nothing to compute until the verdict is in
    # The verifier accepted 11 and 12, rejected 13 and sampled 9 in its place.
    s.update(out, [[11, 12, 9]])
    assert a.output_token_ids == [7, 11, 12, 9] and a.num_pending_tokens == 0
    assert a.num_computed_tokens == 7  # position 7 held the rejected draft: recompute it
    out = s.schedule()
    assert out.cached_requests.num_computed_tokens == [7] and out.num_scheduled_tokens == [1]
    s.update(out, [[5]])
    a.spec_token_ids = [1, 2]
    out = s.schedule()
    s.update(out, [[4]])  # both rejected: only the verifier's own token
    assert a.num_computed_tokens == 9 and a.num_tokens == 10


def test_drafts_stop_at_max_tokens_and_a_stop_token_cuts_the_accepted_ones():
    s = make(block_size=4)
    a = req("a", 4, max_tokens=4)
    s.add_request(a)
    run_step(s)
    a.spec_token_ids = [11, 12, 13, 14]
    out = s.schedule()
    assert out.scheduled_spec_token_ids == {"a": [11, 12]}  # 1 output + 1 + 2 drafts = 4
    s.add_request(b := req("b", 4, max_tokens=10, start=40))
    run_step(s)
    b.spec_token_ids = [11, 2, 13]  # 2 is EOS
    out_b = s.schedule()
    assert out_b.scheduled_spec_token_ids == {"b": [11, 2, 13]}
    updated = s.update(out_b, [[11, 2, 13, 6]])
    assert updated == [(b, [11, 2])] and b.status == RequestStatus.FINISHED_STOPPED
    assert b.output_token_ids == [7, 11, 2]
    s.update(out, [[11, 12, 3]])
    assert a.status == RequestStatus.FINISHED_LENGTH and a.output_token_ids == [7, 11, 12, 3]


def test_a_request_that_needs_host_tokens_waits_for_its_pending_token():
    s = make()
    a = req("a", 4, max_tokens=5, repetition_penalty=1.3)
    b = req("b", 4, max_tokens=5, start=40)
    assert a.needs_host_tokens and not b.needs_host_tokens
    s.add_request(a)
    s.add_request(b)
    out1 = s.schedule()
    out2 = s.schedule()  # b computes its pending token from the device; a waits for its own
    assert out2.request_ids == ["b"]
    s.update(out1, [[7], [7]])
    # a's token is known now; b computes step 2's token, still pending, from the device.
    assert s.schedule().request_ids == ["a", "b"]
