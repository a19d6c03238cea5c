"""Draft tokens in the scheduler and the KV cache manager: rejected drafts never reach the
prefix cache, aborting mid-verification frees every block, lookahead slots for a draft model."""

from __future__ import annotations

from minerva.cache import KVCacheManager
from minerva.cache.prefix_hash import hash_block
from minerva.request import Request, RequestStatus
from minerva.sampling_params import SamplingParams
from minerva.scheduler import Scheduler

BS = 4


def make(num_blocks=64, lookahead=0):
    kv = KVCacheManager(num_blocks, BS, enable_prefix_caching=True)
    return Scheduler(kv, 8, 64, 256, num_lookahead_tokens=lookahead)


def req(rid, prompt, max_tokens=32):
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens), max_tokens=max_tokens)


def true_hashes(r: Request) -> set[int]:
    """Hashes of the full blocks of the request's real tokens (prompt + accepted output)."""
    out, parent = set(), None
    for i in range(r.num_tokens // BS):
        parent = hash_block(parent, r.token_slice(i * BS, (i + 1) * BS))
        out.add(parent)
    return out


def test_blocks_of_rejected_drafts_are_never_registered():
    s = make()
    a = req("a", [1, 2, 3, 4, 5, 6])  # 6 tokens: block 1 half full
    s.add_request(a)
    out = s.schedule()
    s.update(out, [[7]])
    for drafts, sampled in [
        ([50, 51, 52, 53, 54], [8]),  # all rejected: blocks 1 and 2 held only drafts past 7
        ([9, 60, 61], [9, 10]),  # one accepted
        ([11, 12, 13, 14, 15, 16], [11, 12, 13, 14, 15, 16, 17]),  # all accepted
    ]:
        a.spec_token_ids = drafts
        out = s.schedule()
        assert out.scheduled_spec_token_ids == {"a": drafts}
        registered = set(s.kv.block_pool.cached_blocks)
        assert registered <= true_hashes(a)  # at schedule: known tokens only
        s.update(out, [sampled])
        assert a.num_computed_tokens == a.num_tokens - 1
    out = s.schedule()
    s.update(out, [[3]])
    assert set(s.kv.block_pool.cached_blocks) <= true_hashes(a)
    assert a.output_token_ids == [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 3]


def test_aborting_mid_verification_frees_every_block():
    s = make(num_blocks=32, lookahead=4)
    free_before = s.kv.num_free_blocks
    a, b = req("a", list(range(10, 19))), req("b", list(range(40, 45)))
    s.add_request(a)
    s.add_request(b)
    out = s.schedule()
    s.update(out, [[7], [8]])
    a.spec_token_ids, b.spec_token_ids = [1, 2, 3, 4], [5, 6]
    out = s.schedule()  # a verify step in flight
    assert set(out.scheduled_spec_token_ids) == {"a", "b"}
    s.finish_requests(["a", "b"], RequestStatus.FINISHED_ABORTED)
    assert s.kv.num_free_blocks == free_before and s.kv.usage == 0.0
    assert s.update(out, [[1, 2, 9], [5, 0]]) == []  # late results of aborted requests
    s.add_request(req("c", [1, 2]))
    nxt = s.schedule()
    assert nxt.finished_request_ids == ["a", "b"]  # the runner drops their rows


def test_lookahead_slots_cover_the_draft_models_writes():
    s = make(lookahead=4)
    a = req("a", [1, 2, 3, 4, 5, 6, 7])
    s.add_request(a)
    out = s.schedule()
    # 7 prompt tokens + 4 lookahead slots: 3 blocks.
    assert len(a.block_ids) == 3
    s.update(out, [[9]])
    # A draft model proposing 4 tokens writes positions 7..10 (token 9 and three drafts).
    assert len(a.block_ids) * BS >= a.num_computed_tokens + 4
    a.spec_token_ids = [1, 1, 1, 1]
    out = s.schedule()
    s.update(out, [[1, 1, 1, 1, 1]])
    assert len(a.block_ids) * BS >= a.num_computed_tokens + 4


def test_preemption_drops_the_drafts_of_the_victim():
    s = make(num_blocks=6)  # 5 usable blocks of 4 tokens
    a, b = req("a", list(range(10, 18))), req("b", list(range(40, 47)))
    s.add_request(a)
    s.add_request(b)
    out = s.schedule()
    s.update(out, [[7], [8]])
    a.spec_token_ids, b.spec_token_ids = [1, 2, 3, 4], [5, 6, 7, 8]
    out = s.schedule()  # b (newest) is preempted to make room for a's drafts
    assert out.preempted_request_ids == ["b"] and "b" not in out.scheduled_spec_token_ids
    assert b.spec_token_ids == [] and b.num_computed_tokens == 0
    assert out.scheduled_spec_token_ids == {"a": [1, 2, 3, 4]}


def test_lookahead_never_reaches_past_max_model_len():
    kv = KVCacheManager(64, BS, enable_prefix_caching=True)
    s = Scheduler(kv, 8, 64, 12, num_lookahead_tokens=8)
    a = req("a", [1, 2, 3, 4, 5, 6, 7, 8, 9], max_tokens=3)
    s.add_request(a)
    s.schedule()
    assert len(a.block_ids) == 3  # 12 tokens, not 9 + 8
