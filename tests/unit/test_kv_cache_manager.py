"""KV cache manager: block tables, ref counts, LRU eviction and automatic prefix caching.

The scheduler is simulated by hand: ``get_computed_blocks`` -> ``allocate_slots`` -> the step
"runs" (``num_computed_tokens`` advances, maybe a token is sampled) -> ``free``.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from minerva.cache import NONE_HASH, KVCacheManager, hash_block, hash_block_tokens
from minerva.errors import ConfigError
from minerva.request import Request
from minerva.sampling_params import SamplingParams

BS = 4


def make_req(rid: str, prompt: list[int]) -> Request:
    return Request(request_id=rid, prompt_token_ids=list(prompt), sampling_params=SamplingParams())


def prefill(kv: KVCacheManager, req: Request, sample: int | None = None) -> list[int]:
    """Schedule the whole remaining prompt in one step, run it, optionally sample a token."""
    hit_ids, num_hit = kv.get_computed_blocks(req)
    assert kv.allocate_slots(req, req.num_tokens - num_hit, hit_ids, num_hit)
    req.num_computed_tokens = req.num_tokens
    if sample is not None:
        req.output_token_ids.append(sample)
    return hit_ids


def decode(kv: KVCacheManager, req: Request, sample: int) -> None:
    assert kv.allocate_slots(req, 1)
    req.num_computed_tokens += 1
    req.output_token_ids.append(sample)


def free_order(kv: KVCacheManager) -> list[int]:
    return list(kv.block_pool.free_queue)


def snapshot(kv: KVCacheManager, *reqs: Request) -> tuple:
    pool = kv.block_pool
    return (
        free_order(kv),
        [(b.ref_cnt, b.block_hash) for b in pool.blocks],
        {h: b.block_id for h, b in pool.cached_blocks.items()},
        [(list(r.block_ids), list(r.block_hashes)) for r in reqs],
        dict(kv._req_cached),
    )


# ---- prefix hashes ---------------------------------------------------------------------------


def test_hash_is_chained_and_stable():
    a = hash_block(None, [1, 2, 3, 4])
    assert a == hash_block(NONE_HASH, [1, 2, 3, 4])
    # Known answer: the hash must not change between processes, platforms or releases.
    assert a == 15182397311128831956
    assert hash_block(a, [5, 6, 7, 8], ("lora", 1)) == 3061370196000540381
    assert 0 <= a < 2**64
    assert hash_block(a, [5, 6, 7, 8]) != hash_block(hash_block(None, [0, 2, 3, 4]), [5, 6, 7, 8])
    assert hash_block(a, [5, 6, 7, 8]) != hash_block(a, [5, 6, 7, 8], ("lora", 1))
    assert hash_block(None, [1, 2]) != hash_block(None, [1, 2, 0])
    assert hash_block_tokens(list(range(11)), 4) == [
        hash_block(None, [0, 1, 2, 3]),
        hash_block(hash_block(None, [0, 1, 2, 3]), [4, 5, 6, 7]),
    ]


def test_hash_same_in_another_process():
    code = "from minerva.cache import hash_block; print(hash_block(7, [3, 1, 4, 1, 5]))"
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert int(out.stdout) == hash_block(7, [3, 1, 4, 1, 5])


# ---- allocation and ref counts ---------------------------------------------------------------


def test_allocate_and_free_ref_counts():
    kv = KVCacheManager(num_blocks=10, block_size=BS)
    assert kv.num_blocks == 10 and kv.num_free_blocks == 9 and kv.usage == 0.0
    req = make_req("a", range(100, 110))  # 10 tokens -> 3 blocks
    assert kv.allocate_slots(req, 10)
    assert req.block_ids == [1, 2, 3]
    assert [kv.block_pool.blocks[i].ref_cnt for i in range(10)] == [0, 1, 1, 1] + [0] * 6
    assert kv.num_free_blocks == 6 and kv.usage == pytest.approx(3 / 9)
    req.num_computed_tokens = 10
    kv.free(req)
    assert req.block_ids == [] and kv.num_free_blocks == 9 and kv.usage == 0.0
    assert all(b.ref_cnt == 0 for b in kv.block_pool.blocks)
    assert len(req.block_hashes) == 2  # kept for a preempted request's recompute
    before = snapshot(kv, req)
    kv.free(req)  # idempotent
    assert snapshot(kv, req) == before


def test_block_zero_never_allocated_and_pool_exhaustion():
    kv = KVCacheManager(num_blocks=6, block_size=BS)
    reqs = [make_req(str(i), [i] * 5) for i in range(2)]  # 2 blocks each
    assert kv.allocate_slots(reqs[0], 5) and kv.allocate_slots(reqs[1], 5)
    last = make_req("x", [9])
    assert kv.allocate_slots(last, 1)
    assert sorted(reqs[0].block_ids + reqs[1].block_ids + last.block_ids) == [1, 2, 3, 4, 5]
    assert kv.usage == 1.0 and not kv.allocate_slots(make_req("y", [8]), 1)


def test_num_blocks_needed_and_config_errors():
    kv = KVCacheManager(num_blocks=4, block_size=16)
    assert [kv.num_blocks_needed(n) for n in (0, 1, 16, 17, 32)] == [0, 1, 1, 2, 2]
    with pytest.raises(ConfigError, match="num_blocks"):
        KVCacheManager(num_blocks=1, block_size=16)
    with pytest.raises(ConfigError, match="block_size"):
        KVCacheManager(num_blocks=8, block_size=0)


def test_decode_allocates_new_block_exactly_at_boundary():
    kv = KVCacheManager(num_blocks=10, block_size=BS)
    req = make_req("a", range(6))
    prefill(kv, req, sample=50)  # 6 computed, 7 known
    table_sizes = []
    for tok in range(51, 58):
        decode(kv, req, tok)  # computes token num_computed, i.e. positions 6..12
        table_sizes.append((req.num_computed_tokens, len(req.block_ids)))
    assert table_sizes == [(7, 2), (8, 2), (9, 3), (10, 3), (11, 3), (12, 3), (13, 4)]
    assert req.block_ids == [1, 2, 3, 4]


# ---- prefix sharing --------------------------------------------------------------------------


def test_shared_prefix_shares_physical_blocks():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    shared = list(range(10, 18))  # 2 full blocks
    a, b, c = (
        make_req(r, shared + tail) for r, tail in (("a", [1, 2, 3]), ("b", [4, 5]), ("c", [6]))
    )
    assert prefill(kv, a) == []
    assert prefill(kv, b) == a.block_ids[:2]
    assert b.block_ids[:2] == a.block_ids[:2] and b.block_ids[2] != a.block_ids[2]
    pool = kv.block_pool
    assert [pool.blocks[i].ref_cnt for i in a.block_ids] == [2, 2, 1]
    assert b.block_hashes == a.block_hashes[:2]
    kv.free(a)
    kv.free(b)
    assert all(blk.ref_cnt == 0 for blk in pool.blocks)
    assert prefill(kv, c) == c.block_ids[:2] == [1, 2]
    assert [pool.blocks[i].ref_cnt for i in c.block_ids[:2]] == [1, 1]


def test_hit_never_covers_whole_prompt():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    prompt = list(range(8))  # exactly 2 blocks
    first = make_req("a", prompt)
    prefill(kv, first)
    kv.free(first)
    again = make_req("b", prompt)
    hit_ids, num_hit = kv.get_computed_blocks(again)
    assert (hit_ids, num_hit) == ([1], 4)  # the last block is recomputed to get logits
    assert kv.allocate_slots(again, 4, hit_ids, num_hit)
    assert again.block_ids[0] == 1 and len(again.block_ids) == 2
    longer = make_req("c", prompt + [99])
    assert kv.get_computed_blocks(longer) == ([1, 2], 8)


def test_counters_in_tokens():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    prefill(kv, make_req("a", range(10)))  # 10 queried, 0 hit
    prefill(kv, make_req("b", range(10)))  # 10 queried, 8 hit
    prefill(kv, make_req("c", range(8)))  # 8 queried, 4 hit (capped)
    assert (kv.prefix_cache_queries, kv.prefix_cache_hits) == (28, 12)


def test_output_tokens_fill_blocks_and_get_hashed():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    first = make_req("a", range(6))
    prefill(kv, first, sample=100)
    for tok in range(101, 107):
        decode(kv, first, tok)
    assert first.num_computed_tokens == 12 and first.num_tokens == 13
    tokens = first.all_token_ids
    assert first.block_hashes == hash_block_tokens(tokens[:12], BS)
    second = make_req("b", tokens)  # its PROMPT is the first's prompt + output
    assert kv.get_computed_blocks(second) == (first.block_ids[:3], 12)


def test_prefix_caching_off():
    kv = KVCacheManager(num_blocks=16, block_size=BS, enable_prefix_caching=False)
    a, b = make_req("a", range(9)), make_req("b", range(9))
    assert prefill(kv, a) == [] and prefill(kv, b) == []
    assert set(a.block_ids).isdisjoint(b.block_ids)
    assert a.block_hashes == [] == b.block_hashes
    assert kv.block_pool.cached_blocks == {} and kv.num_cached_blocks == 0
    kv.free(a)
    assert kv.get_computed_blocks(make_req("c", range(9))) == ([], 0)
    assert (kv.prefix_cache_queries, kv.prefix_cache_hits) == (0, 0)


def test_duplicate_content_keeps_first_mapping():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    a, b = make_req("a", range(9)), make_req("b", range(9))
    # Both look up before either allocates: no hit, both compute the same blocks.
    assert kv.get_computed_blocks(a) == ([], 0) == kv.get_computed_blocks(b)
    assert kv.allocate_slots(a, 9) and kv.allocate_slots(b, 9)
    a.num_computed_tokens = b.num_computed_tokens = 9
    cached = {h: blk.block_id for h, blk in kv.block_pool.cached_blocks.items()}
    assert cached == dict(zip(a.block_hashes, a.block_ids[:2], strict=True))
    assert all(kv.block_pool.blocks[i].block_hash is None for i in b.block_ids)
    kv.free(b)
    kv.free(a)
    assert kv.get_computed_blocks(make_req("c", range(9))) == ([1, 2], 8)


def test_unwritten_blocks_are_not_cached():
    """Blocks are registered at allocation; if the step never runs they must not be reused."""
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    aborted = make_req("a", range(9))
    assert kv.allocate_slots(aborted, 9)
    assert kv.num_cached_blocks == 2
    kv.free(aborted)  # num_computed_tokens still 0: nothing was written
    assert kv.num_cached_blocks == 0
    assert kv.get_computed_blocks(make_req("b", range(9))) == ([], 0)
    # Hits were written by an earlier request: they stay cached when a hitter is aborted.
    writer = make_req("c", range(9))
    prefill(kv, writer)
    kv.free(writer)
    hitter = make_req("d", list(range(8)) + [5, 5, 5])
    hit_ids, num_hit = kv.get_computed_blocks(hitter)
    assert num_hit == 8 and kv.allocate_slots(hitter, 3, hit_ids, num_hit)
    kv.free(hitter)  # num_computed_tokens never advanced
    assert kv.get_computed_blocks(make_req("e", range(9))) == (hit_ids, 8)


def test_lookahead_slots_beyond_known_tokens_are_not_hashed():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    req = make_req("a", range(6))
    assert kv.allocate_slots(req, 10)  # slots for 4 tokens whose ids are not known yet
    assert len(req.block_ids) == 3 and kv.num_cached_blocks == 1
    assert req.block_hashes == hash_block_tokens(list(range(6)), BS)
    req.num_computed_tokens = 6
    req.output_token_ids.extend([40, 41, 42])
    assert kv.allocate_slots(req, 3)
    assert req.block_hashes == hash_block_tokens(req.all_token_ids, BS)
    assert kv.num_cached_blocks == 2


def test_reset_prefix_cache():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    a = make_req("a", range(9))
    prefill(kv, a)
    assert not kv.reset_prefix_cache() and kv.num_cached_blocks == 2
    kv.free(a)
    assert kv.reset_prefix_cache() and kv.num_cached_blocks == 0
    assert kv.get_computed_blocks(make_req("b", range(9))) == ([], 0)


def test_get_computed_blocks_rejects_request_with_blocks():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    a = make_req("a", range(9))
    prefill(kv, a)
    with pytest.raises(RuntimeError, match="already holds blocks"):
        kv.get_computed_blocks(a)


# ---- eviction order --------------------------------------------------------------------------


def test_free_order_tail_block_first():
    kv = KVCacheManager(num_blocks=10, block_size=BS)
    a = make_req("a", range(14))  # blocks 1,2,3 full (cached), 4 partial (no hash)
    prefill(kv, a)
    assert free_order(kv) == [5, 6, 7, 8, 9]
    kv.free(a)
    # The partial block holds nothing reusable: recycled first. Cached blocks go to the tail
    # last-block-first, so the sequence's tail is evicted before its (more shareable) head.
    assert free_order(kv) == [4, 5, 6, 7, 8, 9, 3, 2, 1]
    big = make_req("b", [7] * 28)  # 7 blocks: takes 4..9 then evicts block 3
    assert kv.allocate_slots(big, 28)
    assert big.block_ids == [4, 5, 6, 7, 8, 9, 3]
    hits, _ = kv.get_computed_blocks(make_req("c", range(14)))
    assert hits == [1, 2]  # block 3's hash was evicted with it


def test_lru_recently_used_block_evicted_last():
    kv = KVCacheManager(num_blocks=5, block_size=BS)  # usable blocks 1..4
    a, b = make_req("a", [1, 2, 3, 4]), make_req("b", [5, 6, 7, 8])
    prefill(kv, a)
    prefill(kv, b)
    assert (a.block_ids, b.block_ids) == ([1], [2])
    kv.free(a)
    kv.free(b)
    assert free_order(kv) == [3, 4, 1, 2]  # a's block is the older one
    d = make_req("d", [1, 2, 3, 4, 9])  # touches a's block again
    assert prefill(kv, d) == [1]
    assert kv.block_pool.blocks[1].ref_cnt == 1 and 1 not in kv.block_pool.free_queue
    kv.free(d)
    assert free_order(kv) == [3, 4, 2, 1]  # now b's block is the least recently used
    e = make_req("e", range(20, 32))  # 3 blocks: 3, 4 and the LRU cached block 2
    assert kv.allocate_slots(e, 12)
    assert e.block_ids == [3, 4, 2]
    assert kv.get_computed_blocks(make_req("b2", [5, 6, 7, 8, 0])) == ([], 0)  # evicted
    assert kv.get_computed_blocks(make_req("a2", [1, 2, 3, 4, 0])) == ([1], 4)  # survived


def test_allocate_failure_leaves_state_unchanged():
    kv = KVCacheManager(num_blocks=5, block_size=BS)
    a = make_req("a", range(8))
    prefill(kv, a)
    kv.free(a)
    x = make_req("x", [50, 51, 52])
    assert kv.allocate_slots(x, 3)
    assert x.block_ids == [3] and kv.num_free_blocks == 3
    r = make_req("r", list(range(8)) + list(range(60, 68)))
    hit_ids, num_hit = kv.get_computed_blocks(r)
    assert (hit_ids, num_hit) == ([1, 2], 8)
    # 2 new blocks fit in 3 free ones, but the two hits are free cached blocks too: 4 > 3.
    before = snapshot(kv, a, x, r)
    assert not kv.allocate_slots(r, 8, hit_ids, num_hit)
    assert snapshot(kv, a, x, r) == before
    # Growing a running request past the pool fails the same way.
    assert not kv.allocate_slots(x, 17)
    assert snapshot(kv, a, x, r) == before
    kv.free(x)
    assert kv.allocate_slots(r, 8, hit_ids, num_hit)
    assert r.block_ids[:2] == [1, 2] and len(r.block_ids) == 4


# ---- randomized workload against a slow twin -------------------------------------------------


def expected_hit_tokens(resident: set[tuple[int, ...]], tokens: list[int], bs: int) -> int:
    """Slow twin: longest full-block prefix, short of the last token, some request computed."""
    k = 0
    while k < (len(tokens) - 1) // bs and tuple(tokens[: (k + 1) * bs]) in resident:
        k += 1
    return k * bs


def check_invariants(kv: KVCacheManager, live: list[Request], kv_content: dict) -> None:
    pool = kv.block_pool
    holders = [0] * kv.num_blocks
    for req in live:
        assert 0 not in req.block_ids
        assert len(req.block_ids) >= kv.num_blocks_needed(req.num_computed_tokens)
        for pos in range(req.num_computed_tokens):  # what attention would read is intact
            bid = req.block_ids[pos // kv.block_size]
            assert kv_content.get((bid, pos % kv.block_size)) == req.token_at(pos)
        for bid in req.block_ids:
            holders[bid] += 1
    assert [b.ref_cnt for b in pool.blocks] == holders
    assert set(pool.free_queue) == {i for i in range(1, kv.num_blocks) if holders[i] == 0}
    hashed = {b.block_id for b in pool.blocks if b.block_hash is not None}
    assert hashed == {b.block_id for b in pool.cached_blocks.values()}
    assert all(b.block_hash == h for h, b in pool.cached_blocks.items())


def run_workload(
    seed: int, num_blocks: int, num_requests: int, twin: bool
) -> tuple[KVCacheManager, int]:
    """Seeded admit / chunked prefill / decode / abort / preempt; checks every step.

    With ``twin`` the pool is big enough that nothing is evicted, so every hit must equal the
    slow twin's longest computed full-block prefix.
    """
    rng = random.Random(seed)
    kv = KVCacheManager(num_blocks=num_blocks, block_size=BS)
    stems = [[rng.randrange(50) for _ in range(rng.randrange(1, 20))] for _ in range(4)]
    waiting = [
        make_req(
            str(i),
            rng.choice(stems)[: rng.randrange(0, 20)] + [rng.randrange(50)] * rng.randrange(1, 12),
        )
        for i in range(num_requests)
    ]
    live: list[Request] = []
    resident: set[tuple[int, ...]] = set()
    kv_content: dict[tuple[int, int], int] = {}
    num_twin_checks = 0

    def run_step(req: Request, n: int) -> None:
        for pos in range(req.num_computed_tokens, req.num_computed_tokens + n):
            kv_content[(req.block_ids[pos // BS], pos % BS)] = req.token_at(pos)
        req.num_computed_tokens += n
        known = min(req.num_computed_tokens, req.num_tokens)
        resident.update(tuple(req.token_slice(0, j)) for j in range(BS, known + 1, BS))
        if req.num_computed_tokens == req.num_tokens:
            req.output_token_ids.append(rng.randrange(50))

    while waiting or live:
        action = rng.random()
        if waiting and (action < 0.3 or not live):
            req = waiting.pop(0)
            hit_ids, num_hit = kv.get_computed_blocks(req)
            if twin:
                assert num_hit == expected_hit_tokens(resident, req.all_token_ids, BS)
                num_twin_checks += 1
            for j, bid in enumerate(hit_ids):  # hits really hold this prefix's KV
                assert [kv_content[(bid, o)] for o in range(BS)] == req.token_slice(
                    j * BS, (j + 1) * BS
                )
            n = rng.randrange(1, req.num_tokens - num_hit + 1)
            before = snapshot(kv, req)
            if not kv.allocate_slots(req, n, hit_ids, num_hit):
                assert snapshot(kv, req) == before
                waiting.insert(0, req)
                victim = live.pop(rng.randrange(len(live)))  # preempt to make room
                kv.free(victim)
                victim.num_computed_tokens = 0
                waiting.insert(1, victim)
            else:
                req.num_computed_tokens = num_hit
                run_step(req, n)
                live.append(req)
        else:
            req = rng.choice(live)
            n = rng.randrange(1, req.num_tokens - req.num_computed_tokens + 1)
            before = snapshot(kv, req)
            if not kv.allocate_slots(req, n):
                assert snapshot(kv, req) == before
                live.remove(req)
                kv.free(req)
                req.num_computed_tokens = 0
                waiting.insert(0, req)
            elif action < 0.4:  # aborted after scheduling, before its step ran
                live.remove(req)
                kv.free(req)
            else:
                run_step(req, n)
                if req.num_output_tokens >= 6 or action > 0.9:
                    live.remove(req)
                    kv.free(req)
        check_invariants(kv, live, kv_content)

    if twin:  # every computed prefix is still cached
        assert kv.num_cached_blocks == len(resident)
    return kv, num_twin_checks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_randomized_no_eviction_matches_slow_twin(seed):
    kv, num_checks = run_workload(seed, num_blocks=2000, num_requests=120, twin=True)
    assert num_checks == 120 and kv.prefix_cache_hits > 0
    assert kv.num_free_blocks == kv.num_blocks - 1
    assert all(b.ref_cnt == 0 for b in kv.block_pool.blocks)


@pytest.mark.parametrize("seed", [3, 4, 5, 6])
def test_randomized_under_pressure_no_leak(seed):
    kv, _ = run_workload(seed, num_blocks=12, num_requests=150, twin=False)
    assert kv.num_free_blocks == kv.num_blocks - 1 and kv.usage == 0.0
    assert all(b.ref_cnt == 0 for b in kv.block_pool.blocks)
    assert 0 not in kv.block_pool.free_queue
