"""Request state and the plain-data contracts between scheduler, runner and engine. No torch.

The one rule: a request's ``num_computed_tokens`` catches up with ``num_tokens`` (prompt plus
output). A step computes some of the missing tokens; when it catches up, the request samples.
The scheduler advances ``num_computed_tokens`` when it schedules a step; a token sampled by a
step whose results the host has not read yet is *pending*: the next step can already compute it
(the runner feeds it from the device), which lets the engine launch step N+1 before reading N.

Draft tokens (speculative decoding) are tokens to compute like any other: a caught-up request
schedules its known last token plus k drafts and samples up to k + 1 tokens (the accepted
drafts, then one more). The scheduler rolls ``num_computed_tokens`` back by the rejected
drafts, whose K/V was computed from wrong inputs. The runner never reads a Request: it gets the
plain data below (SchedulerOutput) and keeps its own copy.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from minerva.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return {
            RequestStatus.FINISHED_STOPPED: "stop",
            RequestStatus.FINISHED_LENGTH: "length",
            RequestStatus.FINISHED_ABORTED: "abort",
        }.get(self)


class TokenSequence:
    """Prompt plus output token ids, read by position (shared by the scheduler's Request and
    the runner's copy of it)."""

    prompt_token_ids: list[int]
    output_token_ids: list[int]

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_at(self, index: int) -> int:
        n = len(self.prompt_token_ids)
        return self.prompt_token_ids[index] if index < n else self.output_token_ids[index - n]

    def token_slice(self, start: int, end: int) -> list[int]:
        n = len(self.prompt_token_ids)
        if end <= n:
            return self.prompt_token_ids[start:end]
        if start >= n:
            return self.output_token_ids[start - n : end - n]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - n]


def needs_host_tokens(params: SamplingParams) -> bool:
    """True when a request's next step cannot be queued before its previous sampled token is
    on the host (penalties count the output tokens on the host when the step is launched; token
    healing's matcher is kept off that path). A grammar does not need it: the runner queues
    the step's forward and samples it once the previous token has advanced the matcher."""
    return params.has_penalties or params.token_healing


@dataclass(eq=False)
class Request(TokenSequence):
    """One sequence being generated. The engine owns it; the scheduler reads and advances it.
    The runner never sees it: it gets a NewRequestData once and per-step deltas after that."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    max_tokens: int = 16
    """Resolved from sampling_params.max_tokens and max_model_len by the engine."""
    seed: int = 0
    """Resolved seed for the counter-based sampling noise (distinct per child when n > 1)."""
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_pending_tokens: int = 0
    """Tokens sampled on the device by scheduled steps but not yet appended (0, 1 or 2)."""
    status: RequestStatus = RequestStatus.WAITING
    block_ids: list[int] = field(default_factory=list)
    """The block table: KV blocks holding this request's tokens, in order."""
    block_hashes: list[int] = field(default_factory=list)
    """Chained hashes of this request's full blocks (filled by the KV cache manager)."""
    num_cached_tokens: int = -1
    """Prompt tokens served from the prefix cache on first schedule (-1 = not scheduled yet)."""
    num_preemptions: int = 0
    stop_reason: int | str | None = None
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    spec_token_ids: list[int] = field(default_factory=list)
    """Draft tokens proposed for the next step (a proposer fills it; empty today)."""
    num_runner_blocks: int = -1
    """Blocks of the block table the runner holds (-1: the runner does not hold the request)."""
    structured: Any = None
    """The engine's constraint plan (structured.StructuredPlan: compiled grammar, healed
    prefix), handed to the runner opaquely; None for an unconstrained request."""
    needs_host_tokens: bool = field(init=False)
    """See ``needs_host_tokens()``; fixed for the request's lifetime."""
    pooling: bool = field(init=False)
    """Samples nothing: the runner pools its prompt's hidden states (embeddings), which needs
    every prompt token computed (no prefix-cache hits)."""

    def __post_init__(self) -> None:
        self.needs_host_tokens = needs_host_tokens(self.sampling_params)
        self.pooling = self.sampling_params.pooling is not None

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished


@dataclass
class NewRequestData:
    """A request the runner does not hold yet (first schedule, or resumed after preemption):
    everything it needs, sent once. The runner keeps its own copy from then on."""

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    """Tokens already generated (a resumed request recomputes them)."""
    sampling_params: SamplingParams
    seed: int
    eos_token_ids: frozenset[int]
    block_ids: list[int]
    num_computed_tokens: int
    """Where this step's tokens start (past any prefix-cache hit)."""
    structured: Any = None
    """Request.structured: the runner builds the request's token matcher from it."""


@dataclass
class CachedRequestData:
    """Per-step deltas of requests the runner already holds, one entry per request."""

    request_ids: list[str] = field(default_factory=list)
    num_computed_tokens: list[int] = field(default_factory=list)
    """Where each request's tokens start this step (lower than the runner's count after a
    rollback of rejected draft tokens)."""
    new_block_ids: list[list[int]] = field(default_factory=list)
    """Blocks appended to each block table since the last step (usually none)."""


@dataclass
class SchedulerOutput:
    """What to run this step, as plain data: request ``request_ids[i]`` computes
    ``num_scheduled_tokens[i]`` tokens from its ``num_computed_tokens`` on (decode rows first)
    and samples when that range reaches past its known tokens. Its ``num_computed_tokens`` and
    block table come from ``new_requests`` (first time) or ``cached_requests`` (every step)."""

    request_ids: list[str] = field(default_factory=list)
    num_scheduled_tokens: list[int] = field(default_factory=list)
    new_requests: list[NewRequestData] = field(default_factory=list)
    cached_requests: CachedRequestData = field(default_factory=CachedRequestData)
    scheduled_spec_token_ids: dict[str, list[int]] = field(default_factory=dict)
    """Draft tokens each request verifies this step (the last ones of its scheduled tokens);
    empty when nothing is speculated."""
    finished_request_ids: list[str] = field(default_factory=list)
    """Requests that ended since the last step: the runner drops their rows."""
    preempted_request_ids: list[str] = field(default_factory=list)
    """Requests preempted by this step's schedule: the runner drops their rows too (they come
    back as new requests)."""
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0
    step_id: int = -1
    """The scheduler's number for this step (matches an output to its update)."""

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(self.num_scheduled_tokens)

    @property
    def num_seqs(self) -> int:
        return len(self.request_ids)

    @property
    def is_empty(self) -> bool:
        return not self.request_ids


@dataclass
class Logprobs:
    """Logprob of the sampled token and the top alternatives at one position."""

    token_id: int
    logprob: float
    rank: int
    top_token_ids: list[int] = field(default_factory=list)
    top_logprobs: list[float] = field(default_factory=list)


@dataclass
class RunnerOutput:
    """What one step produced, in the SchedulerOutput's order: the tokens each request sampled
    (none while a prefill is chunked; one per step today; up to 1 + its draft tokens when it
    verifies drafts: the accepted drafts, then one more) and, if it asked, their logprobs;
    a pooling request samples nothing and gets its vector once its whole prompt has run."""

    request_ids: list[str] = field(default_factory=list)
    sampled_token_ids: list[list[int]] = field(default_factory=list)
    logprobs: list[list[Logprobs] | None] = field(default_factory=list)
    """One Logprobs per sampled token where the request asked for logprobs, else None."""
    pooled: dict[str, list[float]] = field(default_factory=dict)
    """Pooling requests whose prompt this step finished: request id -> the pooled vector."""
