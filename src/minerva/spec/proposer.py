"""The proposer protocol: draft tokens for requests that are about to sample.

A proposer is deterministic given a request's tokens (its draft distribution is one-hot at the
proposed token), which is what makes the verification rule in rejection_sampler exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from minerva.request import Request


class Proposer(Protocol):
    def propose(self, requests: Sequence[Request], num_tokens: Sequence[int]) -> list[list[int]]:
        """Up to ``num_tokens[i]`` draft tokens to follow ``requests[i]``'s known tokens
        (empty: nothing worth verifying). Every request has all its tokens computed but the
        last one (it samples next step)."""
        ...

    def forget(self, request_ids: Iterable[str]) -> None:
        """Drop any state kept for requests that ended or were preempted."""
        ...
