"""N-gram prompt lookup: the per-request index against the plain scan, and chosen matches."""

from __future__ import annotations

import random

import pytest

from minerva.request import Request
from minerva.sampling_params import SamplingParams
from minerva.spec import NgramProposer
from minerva.spec.ngram_proposer import NgramIndex, lookup_slow


def lookup(ids: list[int], lo: int, hi: int, k: int) -> list[int]:
    return NgramIndex(lo, hi).lookup(ids, k)


def test_a_fresh_index_matches_the_slow_twin_on_random_sequences():
    rng = random.Random(0)
    for _ in range(400):
        ids = [rng.randrange(4) for _ in range(rng.randrange(1, 40))]
        lo = rng.randrange(1, 4)
        hi = rng.randrange(lo, 6)
        k = rng.randrange(1, 9)
        assert lookup(ids, lo, hi, k) == lookup_slow(ids, lo, hi, k), (ids, lo, hi, k)


def test_longest_suffix_wins_and_the_continuation_follows_it():
    # "3 4" occurs twice; the 3-gram "2 3 4" only once, followed by 9 9.
    ids = [3, 4, 7, 7, 2, 3, 4, 9, 9, 1, 2, 3, 4]
    assert lookup(ids, 1, 3, 2) == [9, 9]
    assert lookup(ids, 1, 1, 3) == [9, 9, 1]  # "4": latest earlier match with 3 tokens after
    assert lookup([1, 2, 3], 1, 3, 4) == []  # nothing occurred before
    assert lookup([5, 5, 5, 5, 5], 1, 2, 3) == [5, 5, 5]  # a run: a full continuation


def test_proposer_asks_per_request_budget():
    prop = NgramProposer(1, 3)
    params = SamplingParams()
    a = Request("a", [1, 2, 3, 1, 2], params)
    b = Request("b", [8, 9], params)
    a.output_token_ids = [3, 1]
    assert prop.propose([a, b], [2, 4]) == [[2, 3], []]
    with pytest.raises(ValueError):
        NgramProposer(3, 2)


def test_the_index_answers_like_the_search_as_the_sequence_grows():
    rng = random.Random(1)
    for _ in range(60):
        lo = rng.randrange(1, 4)
        hi = rng.randrange(lo, 6)
        index = NgramIndex(lo, hi)
        ids = [rng.randrange(4) for _ in range(rng.randrange(1, 5))]
        for _ in range(30):  # a request's tokens arrive one or several (accepted drafts) a step
            k = rng.randrange(1, 9)
            assert index.lookup(ids, k) == lookup_slow(ids, lo, hi, k), (ids, lo, hi, k)
            ids = ids + [rng.randrange(4) for _ in range(rng.randrange(1, 4))]


def test_a_replaced_sequence_is_indexed_again():
    index = NgramIndex(1, 2)
    assert index.lookup([1, 2, 3, 1, 2], 2) == [3, 1]
    assert index.lookup([7, 8, 9, 7], 2) == [8, 9]  # not an extension: rebuilt


def test_the_proposer_forgets_finished_requests():
    prop = NgramProposer(1, 2)
    a = Request("a", [1, 2, 3, 1], SamplingParams())
    assert prop.propose([a], [2]) == [[2, 3]]
    prop.forget(["a"])
    assert prop._indexes == {}


def test_the_proposer_reads_a_growing_request_like_the_search_of_its_whole_text():
    """The proposer reads the request's prompt and output in slices (no copy of the whole
    text per step): the same proposals as the scan of prompt + output, step after step."""
    rng = random.Random(2)
    for _ in range(40):
        lo = rng.randrange(1, 4)
        hi = rng.randrange(lo, 6)
        prop = NgramProposer(lo, hi)
        req = Request("r", [rng.randrange(4) for _ in range(rng.randrange(1, 6))], SamplingParams())
        for _ in range(25):
            k = rng.randrange(1, 9)
            want = lookup_slow(req.prompt_token_ids + req.output_token_ids, lo, hi, k)
            assert prop.propose([req], [k]) == [want]
            req.output_token_ids.extend(rng.randrange(4) for _ in range(rng.randrange(1, 4)))
