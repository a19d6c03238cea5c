"""Structured outputs under tensor / pipeline parallelism: the grammar matchers (llguidance
objects that do not pickle) live in rank 0's process only. The other ranks get this placeholder
in their copy of each constrained request; at every step that needs a token bitmask, rank 0's
bitmask is broadcast to every rank (TokenMasks.share), so all ranks sample the same ids."""

from __future__ import annotations

import dataclasses

import numpy as np

from minerva.request import SchedulerOutput


class MirroredMatcher:
    """Allows every token: its bitmask rows are overwritten by rank 0's; advancing is rank 0's."""

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        pass

    def accept(self, token_id: int) -> None:
        pass

    def fill_bitmask_with_drafts(
        self, bitmask: np.ndarray, row: int, draft_token_ids: list[int]
    ) -> None:
        pass


class MirroredPlan:
    """What a constrained request's StructuredPlan becomes on the other ranks."""

    def new_matcher(self, output_token_ids: list[int]) -> MirroredMatcher:
        return MirroredMatcher()


MIRRORED = MirroredPlan()


def without_matchers(scheduled: SchedulerOutput) -> SchedulerOutput:
    """`scheduled` as the other ranks get it: each new request's plan replaced by MIRRORED
    (a copy only when some request has one)."""
    if all(new.structured is None for new in scheduled.new_requests):
        return scheduled
    new_requests = [
        new if new.structured is None else dataclasses.replace(new, structured=MIRRORED)
        for new in scheduled.new_requests
    ]
    return dataclasses.replace(scheduled, new_requests=new_requests)
