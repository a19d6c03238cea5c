"""llama.cpp as a Backend, through llama-cpp-python (``pip install "minerva-llm[llamacpp]"``).

Requests are tokenized with Minerva's reader of the GGUF vocabulary (the same ids llama.cpp's
tokenizer gives: tests/model/test_llama_cpp_tokens.py), so the server, chat templates, stop
strings and metrics are Minerva's; llama.cpp runs the forward passes and samples. Concurrency is
a pool of contexts behind a FIFO queue (llamacpp_pool.py): ``max_concurrency`` requests run at
once, ``max_queued_requests`` more wait, past that QueueFullError.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from minerva.backends.base import BackendStats, StepObserver
from minerva.backends.llamacpp_files import gguf_for
from minerva.backends.llamacpp_info import describe_model, doctor
from minerva.backends.llamacpp_options import Placement, check_supported, llama_kwargs, placement
from minerva.backends.llamacpp_pool import ContextPool, Job
from minerva.backends.llamacpp_score import score_tokens
from minerva.backends.model_facts import ModelFacts
from minerva.config import EngineConfig
from minerva.demo import resolve_model_arg
from minerva.engine.async_engine import RequestStream
from minerva.engine.outputs import RequestOutput, StepInfo
from minerva.engine.request_validation import check_token_ids, validate_request
from minerva.errors import (
    EngineDeadError,
    EngineDrainingError,
    ModelLoadError,
    NotSupportedError,
    QueueFullError,
    RequestError,
)
from minerva.loader import ModelSource, open_model
from minerva.platform import default_num_threads, resolve_platform
from minerva.request import Logprobs
from minerva.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

__all__ = ["LlamaCppBackend", "doctor", "load"]


def load(
    config: EngineConfig, *, max_queued_requests: int = 256, progress: bool = False
) -> LlamaCppBackend:
    """Open (or convert) the GGUF file and create ``llamacpp_contexts`` llama.cpp contexts."""
    import llama_cpp  # noqa: PLC0415 - the optional engine

    model = resolve_model_arg(config.model.model)
    path = gguf_for(model, config.model.quantization, config)
    source = open_model(path, config.model.tokenizer)
    n_ctx = config.model.max_model_len or source.config.max_position_embeddings
    where = placement(config, bool(llama_cpp.llama_supports_gpu_offload()))
    threads = config.device.num_threads or default_num_threads()
    kwargs = llama_kwargs(config, str(path), n_ctx, where, threads)
    if config.model.dtype != "auto":
        msg = "llamacpp: dtype=%s has no effect (llama.cpp computes in the file's types)"
        logger.warning(msg, config.model.dtype)
    try:
        contexts = [llama_cpp.Llama(**kwargs) for _ in range(config.llamacpp.llamacpp_contexts)]
    except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
        raise ModelLoadError(f"llama.cpp could not load {path}: {e}") from None
    return LlamaCppBackend(config, model, source, contexts, where, max_queued_requests)


class LlamaCppBackend(ModelFacts):
    """Implements backends.base.Backend over a pool of llama_cpp.Llama contexts."""

    def __init__(
        self,
        config: EngineConfig,
        model: Path,
        source: ModelSource,
        contexts: list[Any],
        where: Placement,
        max_queued_requests: int = 256,
    ) -> None:
        info = describe_model(model, source, contexts[0], where)
        self._init_facts(source, source.tokenizer, source.eos_token_ids, info)
        self._contexts = contexts
        self._n_ctx = contexts[0].n_ctx()
        self._observer: StepObserver | None = None
        self._observer_lock = threading.Lock()  # the pool's threads report concurrently
        self.pool = ContextPool(
            contexts, self._tokenizer, self._eos_token_ids,
            config.cache.enable_prefix_caching, self._on_step,
        )  # fmt: skip
        self.max_queued_requests = max_queued_requests
        self._seed_rng = random.Random(config.model.seed)
        self._platform = resolve_platform("cpu")  # RSS: llama.cpp's memory is not torch's
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[str, RequestStream] = {}
        self._jobs: dict[str, Job] = {}
        self._idle: asyncio.Event | None = None
        self._draining = False
        self._stopped = False

    @property
    def max_concurrency(self) -> int:
        """Requests that run at once (the pool's contexts); more wait in its queue."""
        return self.pool.max_concurrency

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        self.pool.start()

    async def drain(self, timeout: float) -> int:
        self._draining = True
        if await self._wait_idle(timeout):
            return 0
        remaining = list(self._streams)
        for request_id in remaining:
            self._abort_job(request_id)  # streams stay registered: they get the final output
        await self._wait_idle(0.5)  # bounded: the shutdown's whole wait is the timeout's
        return len(remaining)

    async def shutdown(self, timeout: float = 5.0) -> bool:
        self._stopped = True
        for job in self._jobs.values():
            job.aborted.set()
        stopped = True
        if self._loop is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(self.pool.stop), timeout)
            except asyncio.TimeoutError:  # a context stuck inside llama.cpp: leave it
                stopped = False
        for stream in list(self._streams.values()):
            stream.put(EngineDeadError("the engine was shut down"))
            self._release(stream.request_id)
        if stopped:
            for llm in self._contexts:
                llm.close()
        return stopped

    @property
    def is_running(self) -> bool:
        return self._loop is not None and not self._stopped

    async def _wait_idle(self, timeout: float) -> bool:
        assert self._idle is not None, "start() was not called"
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # -- requests ---------------------------------------------------------------------
    async def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        request_id: str | None = None,
        prompt_token_ids: list[int] | None = None,
        arrival_time: float | None = None,
        stream: bool = True,
    ) -> RequestStream:
        self._check_admission()
        ids = prompt_token_ids if prompt_token_ids is not None else self._prompt_ids(prompt)
        valid = validate_request(ids, params, self.vocab_size, self._n_ctx)
        check_supported(valid.params)
        params = dataclasses.replace(valid.params, max_tokens=valid.max_tokens)
        if params.seed is None:  # the server's seed picks the seeds of unseeded requests
            params.seed = self._seed_rng.randrange(2**32 - 1)
        request_id = request_id or f"req-{uuid.uuid4().hex}"
        if request_id in self._streams:
            raise RequestError(f"request id {request_id!r} is already in use", param="request_id")
        out = RequestStream(request_id, 1, self._abort_stream)
        job = Job(
            request_id, prompt if isinstance(prompt, str) else None, valid.prompt_token_ids,
            params, stream, self._emit, arrival_time or time.monotonic(),
        )  # fmt: skip
        self._streams[request_id], self._jobs[request_id] = out, job
        self._idle.clear()  # type: ignore[union-attr]
        self.pool.submit(job)
        return out

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.encode(prompt)
        return check_token_ids(prompt, self.vocab_size, "prompt", "prompt token")

    def check_capacity(self, num_seqs: int = 1, pending: int = 0) -> None:
        self._check_admission(num_seqs - 1 + pending)

    def _check_admission(self, more: int = 0) -> None:
        if not self.is_running:
            raise EngineDeadError("the engine is not running")
        if self._draining:
            raise EngineDrainingError(
                "the server is shutting down; retry on another instance", retry_after=5
            )
        if len(self._streams) + more >= self.max_concurrency + self.max_queued_requests:
            raise QueueFullError(
                f"the server is at capacity ({self.max_concurrency} running, "
                f"{self.max_queued_requests} queued); retry later",
                retry_after=1,
            )

    def abort(self, request_id: str) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.abort()

    def _abort_stream(self, stream: RequestStream) -> None:
        """The client's abort: it no longer counts against capacity (as in AsyncEngine); its
        context is free at the job's next token."""
        self._abort_job(stream.request_id)
        self._release(stream.request_id)

    def _abort_job(self, request_id: str) -> None:
        """Stop the job at its next token (or before it starts); its context is then free."""
        job = self._jobs.get(request_id)
        if job is not None:
            job.aborted.set()

    def _emit(self, out: RequestOutput) -> None:
        """Pool thread -> loop: deliver one output."""
        try:
            self._loop.call_soon_threadsafe(self._dispatch, out)  # type: ignore[union-attr]
        except RuntimeError:  # the loop is closed: the process is exiting
            pass

    def _dispatch(self, out: RequestOutput) -> None:
        stream = self._streams.get(out.request_id)
        if stream is None:
            return
        if not stream.finished or out.finished:  # an aborted stream wants nothing more
            stream.put(out)
        if out.finished:
            self._release(out.request_id)

    def _release(self, request_id: str) -> None:
        self._streams.pop(request_id, None)
        self._jobs.pop(request_id, None)
        if not self._streams and self._idle is not None:
            self._idle.set()

    async def score(self, token_ids: list[int]) -> list[float]:
        ids = check_token_ids(token_ids, self.vocab_size, "input", "token")
        if not 2 <= len(ids) <= self._n_ctx:
            raise RequestError(f"scoring needs 2 to {self._n_ctx} tokens, got {len(ids)}")
        return await self._on_a_context(lambda llm: score_tokens(llm, ids))

    async def _on_a_context(self, fn) -> Any:
        """fn(llm) on the next free context (in the queue's order)."""
        if not self.is_running:
            raise EngineDeadError("the engine is not running")
        done = self._loop.create_future()  # type: ignore[union-attr]

        def settle(result: Any = None, error: BaseException | None = None) -> None:
            if not done.done():
                done.set_exception(error) if error else done.set_result(result)

        def call(llm: Any) -> None:
            try:
                result = fn(llm)
            except Exception as e:  # noqa: BLE001 - goes to the caller
                self._loop.call_soon_threadsafe(settle, None, e)  # type: ignore[union-attr]
            else:
                self._loop.call_soon_threadsafe(settle, result)  # type: ignore[union-attr]

        self.pool.submit_call(call)
        return await done

    async def prompt_logprobs(self, token_ids: list[int], num_top: int = 0) -> list[Logprobs]:
        raise NotSupportedError(
            "the llamacpp backend does not return prompt logprobs (echo with logprobs): "
            "serve the model with --backend minerva"
        )

    def set_observer(self, observer: StepObserver | None) -> None:
        self._observer = observer

    def _on_step(self, info: StepInfo | None, out: RequestOutput | None) -> None:
        observer = self._observer
        if observer is None:
            return
        with self._observer_lock:
            try:
                observer.on_step(info, [out] if out is not None else [])
            except Exception:  # noqa: BLE001 - metrics must never stop generation
                logger.exception("step observer failed")

    # -- what it serves ---------------------------------------------------------------
    def stats(self) -> BackendStats:
        held = self.pool.tokens_in_use()
        return BackendStats(
            num_running=self.pool.num_running,
            num_waiting=self.pool.num_waiting,
            num_requests_in_flight=len(self._streams),
            kv_cache_usage=held / (self._n_ctx * len(self._contexts)),
            prefix_cache_queries=self.pool.num_prefix_queries,
            prefix_cache_hits=self.pool.num_prefix_hits,
            device_memory_used=self._platform.memory_used(),
            device_memory_total=self._platform.memory()[1],
        )

    @property
    def max_model_len(self) -> int:
        return self._n_ctx

    def default_sampling_params(self, **overrides: Any) -> SamplingParams:
        values = {k: v for k, v in self._source.generation_defaults.items() if v is not None}
        return SamplingParams(**{**values, **overrides})
