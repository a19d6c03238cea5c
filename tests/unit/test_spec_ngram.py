"""N-gram prompt lookup: the numpy search against its plain-Python twin, and chosen matches."""

from __future__ import annotations

import random

import pytest

from minerva.request import Request
from minerva.sampling_params import SamplingParams
from minerva.spec import NgramProposer
from minerva.spec.ngram_proposer import lookup, lookup_slow


def test_lookup_matches_the_slow_twin_on_random_sequences():
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
