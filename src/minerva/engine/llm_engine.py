"""LLMEngine: the synchronous engine. add_request() queues; step() = schedule -> run -> update.

With async scheduling (on CUDA) a step queues its GPU work and then reads the *previous* step's
tokens, so the host's scheduling, input building and output processing overlap the GPU. A step
with grammar rows does too: its forward is queued first, and its sampling (which needs masks from
the matchers advanced by the previous step's tokens) once the previous step has been read.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from dataclasses import dataclass

from minerva.cache import KVCacheManager
from minerva.config import EngineConfig
from minerva.engine.constraints import Constraints
from minerva.engine.output_processor import OutputProcessor
from minerva.engine.outputs import RequestOutput
from minerva.engine.request_validation import check_token_ids, validate_request
from minerva.errors import RequestError
from minerva.request import Logprobs, Request, RequestStatus, RunnerOutput, SchedulerOutput
from minerva.runner.model_runner import LaunchedStep
from minerva.runner.parallel_worker import create_worker
from minerva.sampling_params import SamplingParams
from minerva.scheduler import Scheduler
from minerva.spec import NgramProposer, SpecDecodeStats, SpeculationGovernor, Speculator

logger = logging.getLogger(__name__)


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_kv_blocks: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    spec_decode: SpecDecodeStats | None = None
    """Speculative decoding's counters while it is on (the live object: read, don't keep)."""


class LLMEngine:
    """Owns the scheduler and a Worker (the model, KV cache and graphs on the device), which
    it drives through the step contract. Not thread-safe: one owner steps it."""

    def __init__(self, config: EngineConfig, progress: bool = True) -> None:
        self.config = config
        self.worker = create_worker(config, progress=progress)  # a TP group: one per rank
        worker = self.worker
        self.platform = worker.platform
        self.tokenizer = worker.tokenizer
        self.model_config = worker.model_config
        self.max_model_len = worker.max_model_len
        self.generation_defaults = worker.generation_defaults
        self.eos_token_ids = worker.eos_token_ids
        self.kv_cache_manager = KVCacheManager(
            worker.num_kv_blocks, config.cache.block_size, config.cache.enable_prefix_caching
        )
        self.speculator = self._build_speculator()
        self.scheduler = Scheduler(
            self.kv_cache_manager,
            max_num_seqs=config.scheduler.max_num_seqs,
            max_num_batched_tokens=config.scheduler.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            enable_chunked_prefill=config.scheduler.enable_chunked_prefill,
            num_lookahead_tokens=worker.num_lookahead_tokens,
        )
        mode = config.scheduler.async_scheduling
        self.async_scheduling = mode == "on" or (mode == "auto" and self.platform.is_cuda)
        self._inflight: LaunchedStep | None = None  # launched, tokens not read yet
        self.output_processor = OutputProcessor(self.tokenizer)
        self.constraints = Constraints(
            self.tokenizer, self.model_config.vocab_size, list(self.eos_token_ids)
        )
        self._seed_rng = random.Random(config.model.seed)
        self._ids = itertools.count()
        self.last_scheduler_output: SchedulerOutput | None = None
        """What the latest step() ran (for step metrics); None before the first step."""

    def _build_speculator(self) -> Speculator | None:
        """Speculative decoding's proposer: the worker's draft model or n-gram lookup."""
        spec = self.config.speculative
        if spec.num_speculative_tokens == 0:
            return None
        if spec.speculative_method == "ngram":
            proposer = NgramProposer(spec.ngram_min, spec.ngram_max)
        else:
            proposer = self.worker.draft_proposer
        governor = SpeculationGovernor() if spec.speculative_adaptive else None
        return Speculator(proposer, spec.num_speculative_tokens, self.max_model_len, governor)

    # -- requests ---------------------------------------------------------------------
    def default_sampling_params(self, **overrides) -> SamplingParams:
        """SamplingParams with the model's generation_config.json defaults applied."""
        values = {k: v for k, v in self.generation_defaults.items() if v is not None}
        values.update(overrides)
        return SamplingParams(**values)

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise RequestError("this model has no tokenizer: pass token ids instead of text")
            return self.tokenizer.encode(prompt)
        return list(prompt)

    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        prompt_token_ids: list[int] | None = None,
        arrival_time: float | None = None,
        stream: bool = True,
    ) -> str:
        """Queue a prompt (text or token ids); returns its request id. Raises RequestError.
        stream=False: step() reports the request once, when it has finished.

        Every field is checked here (request_validation): nothing a request carries may raise
        later, on the step."""
        params = params or self.default_sampling_params()
        request_id = request_id or f"req-{next(self._ids)}"
        if not isinstance(request_id, str):
            raise RequestError("request_id must be a string", param="request_id")
        if request_id in self.output_processor:
            raise RequestError(f"request id {request_id!r} is already in use", param="request_id")
        if prompt_token_ids is None and not isinstance(prompt, (str, list, tuple)):
            raise RequestError("the prompt must be text or a list of token ids", param="prompt")
        ids = prompt_token_ids if prompt_token_ids is not None else self.encode_prompt(prompt)
        checked = validate_request(ids, params, self.model_config.vocab_size, self.max_model_len)
        ids, params, max_tokens = checked.prompt_token_ids, checked.params, checked.max_tokens
        constrained = self.constraints.prepare(ids, params)
        ids = constrained.prompt_token_ids
        seed = params.seed if params.seed is not None else self._seed_rng.getrandbits(63)
        eos = frozenset(self.eos_token_ids)
        arrival = arrival_time or time.monotonic()
        children = [
            Request(
                request_id=request_id if params.n == 1 else f"{request_id}#{i}",
                prompt_token_ids=ids,
                sampling_params=params,
                eos_token_ids=eos,
                max_tokens=max_tokens,
                seed=(seed + i * 0x9E3779B97F4A7C15) % (1 << 63),
                arrival_time=arrival,
                structured=constrained.plan,
            )
            for i in range(params.n)
        ]
        self.output_processor.add(
            prompt if isinstance(prompt, str) else None,
            ids,
            children,
            request_id,
            stream,
            healed_text=constrained.healed_text,
        )
        for child in children:
            self.scheduler.add_request(child)
        return request_id

    def score(self, token_ids: list[int]) -> list[float]:
        """Log-probabilities of tokens 1..n-1 given their prefixes (perplexity, bench checks).

        Runs between steps as one prefill on blocks borrowed from the KV pool."""
        return self._on_borrowed_blocks(token_ids, self.worker.score)

    def prompt_logprobs(self, token_ids: list[int], num_top: int = 0) -> list[Logprobs]:
        """score, with each token's rank and its `num_top` (0-20) likeliest alternatives."""
        if not 0 <= num_top <= 20:
            raise RequestError(f"logprobs must be between 0 and 20, got {num_top}")
        run = lambda ids, blocks: self.worker.prompt_logprobs(ids, blocks, num_top)  # noqa: E731
        return self._on_borrowed_blocks(token_ids, run)

    def _on_borrowed_blocks(self, token_ids: list[int], run):
        """run(token_ids, block_ids) on KV blocks allocated for one prefill, then freed."""
        n = len(token_ids)
        if not 2 <= n <= self.max_model_len:
            raise RequestError(f"score needs 2 to {self.max_model_len} tokens, got {n}")
        token_ids = check_token_ids(token_ids, self.model_config.vocab_size, "prompt", "token")
        req = Request(f"score-{next(self._ids)}", token_ids, SamplingParams(max_tokens=1))
        if not self.kv_cache_manager.allocate_slots(req, n):
            raise RequestError(f"not enough free KV cache blocks to score {n} tokens now")
        try:
            return run(req.prompt_token_ids, req.block_ids)
        finally:
            self.kv_cache_manager.free(req)

    def abort_request(self, request_ids: str | list[str]) -> None:
        """Finish requests at once (queued, prefilling or decoding); their blocks are freed."""
        for rid in [request_ids] if isinstance(request_ids, str) else request_ids:
            children = self.output_processor.children(rid)
            live = [c.request_id for c in children if not c.is_finished]
            for child in self.scheduler.finish_requests(live, RequestStatus.FINISHED_ABORTED):
                self.output_processor.on_finished(child)
            if self.speculator is not None:
                self.speculator.forget(live)

    def overdue_requests(
        self, now: float, queue_timeout: float, request_timeout: float
    ) -> tuple[list[str], list[str]]:
        """Request ids never scheduled for over ``queue_timeout`` s, and the other ones older
        than ``request_timeout`` s (0: no limit); ``now`` on the arrival times' clock."""
        queued: set[str] = set()
        late: set[str] = set()
        for req in (*self.scheduler.waiting, *self.scheduler.running):
            age = now - req.arrival_time
            parent = self.output_processor.child_to_parent.get(req.request_id)
            if parent is None:
                continue
            if 0 < queue_timeout < age and req.first_scheduled_time is None:
                queued.add(parent[0].request_id)
            elif 0 < request_timeout < age:
                late.add(parent[0].request_id)
        return sorted(queued), sorted(late - queued)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished() or self._inflight is not None

    # -- the step ---------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one step of the engine; returns the outputs that changed.

        Async scheduling: queue this step, then read the previous one's tokens while the GPU
        runs. While a request needs its previous token on the host (`Request.needs_host_tokens`:
        penalties, token healing) the step reads it first, so that request keeps one token per
        step. So does a step that speculates (proposals start from every request's last token)
        and the step after a verify step (how many drafts were accepted is known only then); a
        step the governor keeps plain stays asynchronous. Grammar rows stay asynchronous: the
        worker queues this step's forward, the previous step is read (its tokens advance the
        matchers), then `worker.sample` queues this step's sampling with the masks they give;
        a row whose request ended meanwhile samples a token that the update drops."""
        speculator = self.speculator
        speculate = False
        if speculator is not None:
            started = time.perf_counter()
            speculate = speculator.decide(self.scheduler.running)
        inflight = self._inflight
        if inflight is not None and (
            speculate or inflight.out.scheduled_spec_token_ids or self._needs_host_tokens()
        ):
            self._finish(inflight)
            self._inflight = None
        if speculate:
            speculator.fill(self.scheduler.running)
        scheduled = self.scheduler.schedule()
        if self.speculator is not None and scheduled.preempted_request_ids:
            self.speculator.forget(scheduled.preempted_request_ids)
        self.last_scheduler_output = scheduled
        launched = None if scheduled.is_empty else self.worker.launch(scheduled)
        if self._inflight is not None:
            self._finish(self._inflight)
        if launched is not None:
            self.worker.sample(launched)  # where its grammar masks waited for those tokens
        self._inflight = launched
        if launched is not None and not self.async_scheduling:
            self._finish(launched)
            self._inflight = None
        if speculator is not None:
            speculator.end_step(time.perf_counter() - started)
        return self.output_processor.collect()

    def _needs_host_tokens(self) -> bool:
        return any(r.needs_host_tokens for r in self.scheduler.running)

    def _finish(self, launched: LaunchedStep) -> None:
        self._update(launched.out, self.worker.wait(launched))

    def _update(self, scheduled: SchedulerOutput, result: RunnerOutput) -> None:
        has_logprobs = any(lp is not None for lp in result.logprobs)
        logprobs = dict(zip(result.request_ids, result.logprobs)) if has_logprobs else {}
        on_token = self.output_processor.on_token
        speculator = self.speculator
        if speculator is not None:
            speculator.observe(scheduled, result)
        for req, tokens in self.scheduler.update(scheduled, result.sampled_token_ids):
            if len(tokens) == 1 and not has_logprobs:  # the usual step
                stop = on_token(req, tokens[0], None)
            else:
                stop = self._on_tokens(req, tokens, logprobs.get(req.request_id))
            if stop is not None and not req.is_finished:
                self.scheduler.finish_requests([req.request_id], RequestStatus.FINISHED_STOPPED)
            if req.is_finished:
                self.output_processor.on_finished(req, stop)
                if speculator is not None:
                    speculator.forget([req.request_id])
        if result.pooled:
            for req in self.scheduler.finish_pooled(result.pooled):
                self.output_processor.on_pooled(req, result.pooled[req.request_id])
                self.output_processor.on_finished(req)

    def _on_tokens(self, req: Request, tokens, logprobs: list | None) -> str | None:
        """Hand several tokens to the output processor; stops at the first stop string."""
        for k, token in enumerate(tokens):
            stop = self.output_processor.on_token(req, token, logprobs[k] if logprobs else None)
            if stop is not None:
                return stop
        return None

    def close(self) -> None:
        """Stop a tensor-parallel group's other ranks (nothing to do on one device)."""
        close = getattr(self.worker, "close", None)
        if close is not None:
            close()

    def stats(self) -> EngineStats:
        kv = self.kv_cache_manager
        return EngineStats(
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            kv_cache_usage=kv.usage,
            num_kv_blocks=kv.num_blocks,
            prefix_cache_queries=kv.prefix_cache_queries,
            prefix_cache_hits=kv.prefix_cache_hits,
            num_preemptions=self.scheduler.num_preemptions,
            spec_decode=self.speculator.stats if self.speculator else None,
        )
