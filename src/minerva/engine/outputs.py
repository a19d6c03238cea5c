"""What the engine hands back: per-request outputs with cumulative and delta text."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from minerva.request import Logprobs


@dataclass
class CompletionOutput:
    """One of the n completions of a request."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    """Every token so far. In an unfinished output this is the live list, which keeps growing
    while the request runs: copy it to keep a snapshot; delta_token_ids is what is new."""
    finish_reason: str | None = None
    """'stop' | 'length' | 'abort' once finished, else None."""
    stop_reason: int | str | None = None
    """The stop token id or stop string that ended it (None for EOS or length)."""
    logprobs: list[Logprobs] | None = None
    """Per token, when asked for; live like token_ids."""
    delta_text: str = ""
    """Text added since the previous output of this request (for streaming)."""
    delta_token_ids: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class RequestOutput:
    """Outputs of one request (its n completions) so far."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    num_cached_tokens: int = 0
    """Prompt tokens served from the prefix cache."""
    metrics: RequestMetrics | None = None
    embedding: list[float] | None = None
    """A pooling request's vector (SamplingParams.pooling), in its final output."""

    # The common n == 1 case reads like a completion.
    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason


@dataclass
class StepInfo:
    """What one engine step did, for metrics."""

    duration: float
    """Wall seconds of the step (it ends with the host sync of the sampled ids)."""
    num_prefill_tokens: int
    num_decode_tokens: int
    num_seqs: int
    """Sequences in the batch."""


def coalesce(older: RequestOutput, newer: RequestOutput) -> RequestOutput:
    """One output carrying both: ``newer``'s state with the deltas of both, in order.

    A reader that fell behind then gets one chunk for several steps instead of one snapshot
    per step (each unread snapshot holds its own copy of the text so far)."""
    merged = {c.index: c for c in older.outputs}
    for c in newer.outputs:
        before = merged.get(c.index)
        if before is None:
            merged[c.index] = c
            continue
        merged[c.index] = dataclasses.replace(
            c,
            delta_text=before.delta_text + c.delta_text,
            delta_token_ids=before.delta_token_ids + c.delta_token_ids,
        )
    return dataclasses.replace(newer, outputs=[merged[i] for i in sorted(merged)])
