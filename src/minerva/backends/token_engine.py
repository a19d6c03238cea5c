"""TokenEngine: LLMEngine's contract (what AsyncEngine drives) over another engine that turns
prompt ids into a stream of sampled token ids (MLX, mistral.rs).

The other engine only samples; everything a user sees stays Minerva's: request validation, the
stop rules (EOS, stop token ids, stop strings, max_tokens), incremental detokenization and the
RequestOutputs (engine/output_processor.py), so every backend answers the same request alike.
A subclass starts, advances and cancels sequences; the base class does the rest. Not
thread-safe: AsyncEngine's thread is its only caller.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from minerva.engine.output_processor import OutputProcessor
from minerva.engine.outputs import RequestOutput
from minerva.engine.request_validation import validate_request
from minerva.errors import NotSupportedError, RequestError
from minerva.request import Logprobs, Request, RequestStatus
from minerva.sampling_params import SamplingParams

if TYPE_CHECKING:
    from minerva.config import EngineConfig
    from minerva.loader import ModelSource

logger = logging.getLogger(__name__)


@dataclass
class TokenEvent:
    """One token the other engine sampled for one sequence."""

    request_id: str
    """The child sequence's id (Request.request_id)."""
    token: int | None
    """None: the other engine ended the sequence without a new token (``finished`` is set)."""
    logprobs: Logprobs | None = None
    finished: bool = False
    """The other engine ended the sequence itself (its own length limit): cancel nothing."""


@dataclass
class StepSummary:
    """What AsyncEngine reads of LLMEngine.last_scheduler_output, for the step metrics."""

    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0
    num_seqs: int = 0

    @property
    def is_empty(self) -> bool:
        return self.num_seqs == 0 and self.num_prefill_tokens == 0


@dataclass
class TokenEngineStats:
    """EngineStats' fields that a foreign engine can tell (the rest stay 0)."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    num_kv_blocks: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_preemptions: int = 0
    spec_decode: Any = None


class _NoConstraints:
    """AsyncEngine precompiles structured outputs through ``engine.constraints``."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def precompile(self, params: SamplingParams) -> None:
        raise RequestError(
            f"structured outputs are not supported by the {self.backend} backend: "
            "use --backend minerva for them",
            code="unsupported_by_backend",
            param="response_format",
        )


class TokenEngine(ABC):
    """The engine-thread side of a foreign backend; see the module docstring."""

    name: str = "foreign"
    """The backend's name, for messages."""

    def __init__(self, config: EngineConfig, source: ModelSource, max_model_len: int) -> None:
        self.config = config
        self.source = source
        self.tokenizer = source.tokenizer
        self.model_config = source.config
        self.max_model_len = max_model_len
        self.generation_defaults = source.generation_defaults
        self.eos_token_ids = source.eos_token_ids
        self.output_processor = OutputProcessor(self.tokenizer)
        self.constraints = _NoConstraints(self.name)
        self.last_scheduler_output: StepSummary | None = None
        self._live: dict[str, Request] = {}  # child id -> its sequence, until finished
        self._seed_rng = random.Random(config.model.seed)
        self._ids = itertools.count()

    # -- what a subclass implements --------------------------------------------------------
    @abstractmethod
    def _start(self, request: Request) -> None:
        """Begin generating ``request`` (its prompt, params, seed and max_tokens are set)."""

    @abstractmethod
    def _advance(self) -> list[TokenEvent]:
        """Run the other engine a little (one batched step, or wait briefly for its tokens);
        the tokens it produced, in order per sequence. Sets ``last_scheduler_output``."""

    @abstractmethod
    def _cancel(self, request: Request) -> None:
        """Stop generating ``request`` and free what it holds (it has not finished itself)."""

    def unsupported(self, params: SamplingParams) -> str | None:
        """The name of a request field this engine cannot honour, or None."""
        return None

    def check_prompt(self, prompt_token_ids: list[int]) -> None:
        """Raise RequestError for a prompt this engine cannot take (before it is tracked)."""
        return None

    def close(self) -> None:
        """Release the other engine (after the engine thread stopped)."""
        return None

    # -- LLMEngine's contract ---------------------------------------------------------------
    def default_sampling_params(self, **overrides: Any) -> SamplingParams:
        values = {k: v for k, v in self.generation_defaults.items() if v is not None}
        values.update(overrides)
        return SamplingParams(**values)

    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        prompt_token_ids: list[int] | None = None,
        arrival_time: float | None = None,
        stream: bool = True,
    ) -> str:
        """Validate and start a request (as LLMEngine.add_request); raises RequestError."""
        params = params or self.default_sampling_params()
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self.output_processor:
            raise RequestError(f"request id {request_id!r} is already in use", param="request_id")
        ids = prompt_token_ids if prompt_token_ids is not None else self._encode(prompt)
        checked = validate_request(ids, params, self.model_config.vocab_size, self.max_model_len)
        self._refuse_unsupported(checked.params)
        self.check_prompt(checked.prompt_token_ids)
        seed = checked.params.seed
        seed = seed if seed is not None else self._seed_rng.getrandbits(63)
        children = [
            Request(
                request_id=request_id if params.n == 1 else f"{request_id}#{i}",
                prompt_token_ids=checked.prompt_token_ids,
                sampling_params=checked.params,
                eos_token_ids=frozenset(self.eos_token_ids),
                max_tokens=checked.max_tokens,
                seed=(seed + i * 0x9E3779B97F4A7C15) % (1 << 63),
                arrival_time=arrival_time or time.monotonic(),
            )
            for i in range(checked.params.n)
        ]
        text = prompt if isinstance(prompt, str) else None
        self.output_processor.add(text, checked.prompt_token_ids, children, request_id, stream)
        try:
            for child in children:
                child.status = RequestStatus.RUNNING
                child.first_scheduled_time = time.monotonic()
                self._live[child.request_id] = child
                self._start(child)
        except BaseException:  # the caller gets the error; nothing of the request stays
            self._discard(request_id, children)
            raise
        return request_id

    def _discard(self, request_id: str, children: list[Request]) -> None:
        """Forget a request that failed to start (its started children are cancelled)."""
        for child in children:
            if self._live.pop(child.request_id, None) is not None:
                self._cancel(child)
        processor = self.output_processor
        processor.parents.pop(request_id, None)
        for child in children:
            processor.child_to_parent.pop(child.request_id, None)

    def fail_request(self, child_id: str, reason: str) -> None:
        """End one sequence the other engine failed (finish_reason "abort"), not the engine."""
        req = self._live.pop(child_id, None)
        if req is not None:
            logger.error("%s failed request %s: %s", self.name, child_id, reason)
            self._cancel(req)
            req.status = RequestStatus.FINISHED_ABORTED
            self.output_processor.on_finished(req)

    def abort_request(self, request_ids: str | list[str]) -> None:
        for rid in [request_ids] if isinstance(request_ids, str) else request_ids:
            for child in self.output_processor.children(rid):
                if self._live.pop(child.request_id, None) is not None:
                    self._cancel(child)
                    child.status = RequestStatus.FINISHED_ABORTED
                    self.output_processor.on_finished(child)

    def has_unfinished_requests(self) -> bool:
        return bool(self._live)

    def overdue_requests(
        self, now: float, queue_timeout: float, request_timeout: float
    ) -> tuple[list[str], list[str]]:
        """As LLMEngine's: (never started, older than ``request_timeout``). A request starts
        in the other engine as soon as it is added, so none counts as queued here."""
        late: set[str] = set()
        for req in self._live.values():
            parent = self.output_processor.child_to_parent.get(req.request_id)
            if parent is not None and 0 < request_timeout < now - req.arrival_time:
                late.add(parent[0].request_id)
        return [], sorted(late)

    def step(self) -> list[RequestOutput]:
        for event in self._advance():
            req = self._live.get(event.request_id)
            if req is None:  # finished or aborted meanwhile: a token already under way
                continue
            self._on_token(req, event)
        return self.output_processor.collect()

    def stats(self) -> TokenEngineStats:
        return TokenEngineStats(num_running=len(self._live))

    def score(self, token_ids: list[int]) -> list[float]:
        raise NotSupportedError(
            f"the {self.name} backend cannot score token sequences (perplexity): "
            "use --backend minerva"
        )

    def prompt_logprobs(self, token_ids: list[int], num_top: int = 0) -> list[Logprobs]:
        raise NotSupportedError(
            f"the {self.name} backend cannot return prompt logprobs (echo): use --backend minerva"
        )

    # -- internals --------------------------------------------------------------------------
    def _encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise RequestError("this model has no tokenizer: pass token ids instead of text")
            return self.tokenizer.encode(prompt)
        if not isinstance(prompt, (list, tuple)):
            raise RequestError("the prompt must be text or a list of token ids", param="prompt")
        return list(prompt)

    def _refuse_unsupported(self, params: SamplingParams) -> None:
        field = self.unsupported(params)
        if params.pooling is not None:
            field = "pooling"
        elif params.token_healing:
            field = "token_healing"
        if field is not None:
            raise RequestError(
                f"{field} is not supported by the {self.name} backend: leave it out, or "
                "use --backend minerva",
                code="unsupported_by_backend",
                param=field,
            )

    def _on_token(self, req: Request, event: TokenEvent) -> None:
        """Record one token and apply the stop rules (the scheduler's, then stop strings)."""
        if event.token is None:  # ended by the other engine with nothing new
            del self._live[req.request_id]
            req.status = RequestStatus.FINISHED_LENGTH
            self.output_processor.on_finished(req)
            return
        req.output_token_ids.append(event.token)
        stop_string = self.output_processor.on_token(req, event.token, event.logprobs)
        status = _stop_status(req, event.token)
        if stop_string is not None:
            status, req.stop_reason = RequestStatus.FINISHED_STOPPED, None
        elif status is None and event.finished:
            status = RequestStatus.FINISHED_LENGTH
        if status is None:
            return
        del self._live[req.request_id]
        if not event.finished:
            self._cancel(req)
        req.status = status
        self.output_processor.on_finished(req, stop_string)


def _stop_status(req: Request, token: int) -> RequestStatus | None:
    """Scheduler._check_stop's rules: EOS / stop ids after min_tokens, then the length."""
    params = req.sampling_params
    if req.num_output_tokens >= params.min_tokens:
        if token in req.eos_token_ids and not params.ignore_eos:
            req.stop_reason = None
            return RequestStatus.FINISHED_STOPPED
        if token in params.stop_token_ids:
            req.stop_reason = token
            return RequestStatus.FINISHED_STOPPED
    if req.num_output_tokens >= req.max_tokens:
        return RequestStatus.FINISHED_LENGTH
    return None
