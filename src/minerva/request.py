"""Request state and the plain-data contracts between scheduler, runner and engine. No torch.

The one rule: a request's ``num_computed_tokens`` catches up with ``num_tokens`` (prompt plus
output). A step computes some of the missing tokens; when it catches up, the request samples.
The scheduler advances ``num_computed_tokens`` when it schedules a step; a token sampled by a
step whose results the host has not read yet is *pending*: the next step can already compute it
(the runner feeds it from the device), which lets the engine launch step N+1 before reading N.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

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


@dataclass(eq=False)
class Request:
    """One sequence being generated. The engine owns it; scheduler and runner read it."""

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

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished


@dataclass
class SchedulerOutput:
    """What to run this step: request i computes tokens
    ``[num_computed_tokens[i], num_computed_tokens[i] + num_scheduled_tokens[i])`` and samples
    its next token when that range reaches past its known tokens."""

    requests: list[Request] = field(default_factory=list)
    num_scheduled_tokens: list[int] = field(default_factory=list)
    num_computed_tokens: list[int] = field(default_factory=list)
    """Each request's computed tokens before this step: where its scheduled tokens start
    (empty: read ``request.num_computed_tokens``, for hand-built steps)."""
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0
    preempted_request_ids: list[str] = field(default_factory=list)

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(self.num_scheduled_tokens)

    @property
    def is_empty(self) -> bool:
        return not self.requests

    def start(self, i: int) -> int:
        """Where request i's scheduled tokens start."""
        if self.num_computed_tokens:
            return self.num_computed_tokens[i]
        return self.requests[i].num_computed_tokens


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
    """What one forward step produced: a sampled token (or None) per scheduled request."""

    request_ids: list[str] = field(default_factory=list)
    sampled_token_ids: list[int | None] = field(default_factory=list)
    logprobs: list[Logprobs | None] = field(default_factory=list)
