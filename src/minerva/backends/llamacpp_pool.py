"""A pool of llama.cpp contexts, each owned by one thread that runs one request at a time.

llama-cpp-python's ``Llama`` holds one sequence, so concurrency is a pool: ``llamacpp_contexts``
contexts (each with its own KV cache of n_ctx tokens; the weights are memory-mapped, so their
pages are shared) and a FIFO queue in front of them. A request waits in the queue until a context
is free, runs to its end there, and an abort (or a stop) ends its loop at the next token, which
frees the context for the next request.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from minerva.backends.llamacpp_options import sampler_kwargs
from minerva.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput, StepInfo
from minerva.sampling_params import SamplingParams
from minerva.tokenizer import IncrementalDetokenizer

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One request on its way through the pool."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    """Validated (request_validation), max_tokens resolved."""
    stream: bool
    emit: Callable[[RequestOutput], None]
    """Hands an output to the event loop (thread-safe)."""
    arrival_time: float
    aborted: threading.Event = field(default_factory=threading.Event)


class ContextPool:
    """Worker threads over ``contexts`` (llama_cpp.Llama objects); ``submit`` queues a Job."""

    def __init__(
        self,
        contexts: list[Any],
        tokenizer: Any,
        eos_token_ids: list[int],
        prefix_caching: bool,
        on_step: Callable[[StepInfo | None, RequestOutput | None], None],
    ) -> None:
        self.contexts = contexts
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.prefix_caching = prefix_caching
        self.on_step = on_step
        self._queue: queue.Queue[Job | Callable[[Any], None] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.num_running = 0
        self._active: set[int] = set()  # ids of the contexts running a request
        self.num_prefix_hits = 0
        self.num_prefix_queries = 0

    @property
    def max_concurrency(self) -> int:
        return len(self.contexts)

    @property
    def num_waiting(self) -> int:
        return self._queue.qsize()

    def tokens_in_use(self) -> int:
        """KV cells of the running requests (an idle context's cells are a prefix cache)."""
        with self._lock:
            return sum(llm.n_tokens for llm in self.contexts if id(llm) in self._active)

    def start(self) -> None:
        for i, llm in enumerate(self.contexts):
            t = threading.Thread(target=self._serve, args=(llm,), name=f"llamacpp-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def submit_call(self, fn: Callable[[Any], None]) -> None:
        """Run ``fn(llm)`` on the next free context (scoring); ``fn`` reports its own errors."""
        self._queue.put(fn)

    def stop(self, timeout: float = 30.0) -> None:
        """Let each thread finish its request, then end it (queued jobs are not run)."""
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout)

    def _serve(self, llm: Any) -> None:
        while (job := self._queue.get()) is not None:
            if not isinstance(job, Job):
                job(llm)
                continue
            try:
                final, last_step = self._run(llm, job)
            except Exception:  # noqa: BLE001 - one failed request must not end the thread
                logger.exception("llama.cpp failed on request %s", job.request_id)
                final, last_step = _final(job, CompletionOutput(0, finish_reason="abort")), None
            self.on_step(last_step, final)  # metrics see every request end, aborts included
            job.emit(final)

    def _run(self, llm: Any, job: Job) -> tuple[RequestOutput, StepInfo | None]:
        """The job's final output (the context is free again by then) and its last step."""
        comp = CompletionOutput(index=0)
        if job.aborted.is_set():  # aborted while it waited in the queue
            comp.finish_reason = "abort"
            return _final(job, comp), None
        with self._lock:
            self.num_running += 1
            self._active.add(id(llm))
        try:
            return self._generate(llm, job, comp, RequestMetrics(job.arrival_time))
        finally:
            with self._lock:
                self.num_running -= 1
                self._active.discard(id(llm))

    def _generate(
        self, llm: Any, job: Job, comp: CompletionOutput, m: RequestMetrics
    ) -> tuple[RequestOutput, StepInfo | None]:
        """Run the job to its end: the outputs before the last go out as they come; the final
        one (carrying the last token) and the step that made it are returned."""
        p = job.params
        detok = self._detokenizer(job)
        m.first_scheduled_time = time.monotonic()
        self._count_prefix(llm, job.prompt_token_ids)
        if not self.prefix_caching:
            llm.reset()  # no tokens kept: generate() cannot match a prefix
        llm.set_seed(_llama_seed(p.seed))
        tokens = llm.generate(job.prompt_token_ids, reset=True, **sampler_kwargs(p))
        step_start, num_prefill, step = time.perf_counter(), len(job.prompt_token_ids), None
        try:
            for token in tokens:
                now = time.perf_counter()
                if job.aborted.is_set():
                    comp.finish_reason = "abort"
                    break
                m.first_token_time = m.first_token_time or time.monotonic()
                comp.token_ids.append(token)
                comp.delta_token_ids.append(token)
                self._finish_reason(comp, token, detok, p)
                step = StepInfo(now - step_start, num_prefill, int(not num_prefill), 1)
                step_start, num_prefill = now, 0
                if comp.finished:
                    break
                out = _snapshot(job, comp, m) if job.stream else None
                self.on_step(step, out)
                step = None
                if out is not None:
                    job.emit(out)
                    comp.delta_text, comp.delta_token_ids = "", []
        finally:
            tokens.close()
        if not comp.finished:  # aborted before its first token
            comp.finish_reason = "abort"
        if detok is not None and not isinstance(comp.stop_reason, str):  # text held back
            tail = detok.flush()
            comp.text, comp.delta_text = comp.text + tail, comp.delta_text + tail
        return _final(job, comp, m), step

    def _detokenizer(self, job: Job) -> IncrementalDetokenizer | None:
        if self.tokenizer is None:
            return None
        p = job.params
        return IncrementalDetokenizer(
            self.tokenizer,
            job.prompt_token_ids,
            skip_special_tokens=p.skip_special_tokens,
            stop=p.stop,
            include_stop_str_in_output=p.include_stop_str_in_output,
        )

    def _finish_reason(
        self,
        comp: CompletionOutput,
        token: int,
        detok: IncrementalDetokenizer | None,
        p: SamplingParams,
    ) -> None:
        """Text for ``token``, then whether it ends the request (stop string, EOS, stop id,
        length), as the minerva engine decides it."""
        if detok is not None:
            delta, stop = detok.update([token])
            comp.text += delta
            comp.delta_text += delta
            if stop is not None:
                comp.finish_reason, comp.stop_reason = "stop", stop
                return
        if token in self.eos_token_ids and not p.ignore_eos:
            comp.finish_reason = "stop"
        elif token in (p.stop_token_ids or ()):
            comp.finish_reason, comp.stop_reason = "stop", token
        elif len(comp.token_ids) >= p.max_tokens:
            comp.finish_reason = "length"

    def _count_prefix(self, llm: Any, prompt: list[int]) -> None:
        """Prompt tokens whose KV the context still holds (what generate() will reuse)."""
        held = list(llm.input_ids[: llm.n_tokens]) if self.prefix_caching else []
        hit = 0
        for a, b in zip(held, prompt[:-1]):  # the last prompt token is always run again
            if a != b:
                break
            hit += 1
        with self._lock:
            self.num_prefix_queries += len(prompt)
            self.num_prefix_hits += hit


def _llama_seed(seed: int | None) -> int:
    """llama.cpp seeds are 32-bit; an unseeded request draws a fresh one."""
    if seed is None:
        return random.SystemRandom().randrange(2**32 - 1)
    return seed % (2**32 - 1)  # 0xFFFFFFFF is LLAMA_DEFAULT_SEED: "random"


def _snapshot(job: Job, comp: CompletionOutput, m: RequestMetrics) -> RequestOutput:
    """This moment's output: its own CompletionOutput (token_ids stays the live list)."""
    c = CompletionOutput(
        index=0, text=comp.text, token_ids=comp.token_ids, finish_reason=comp.finish_reason,
        stop_reason=comp.stop_reason, delta_text=comp.delta_text,
        delta_token_ids=list(comp.delta_token_ids),
    )  # fmt: skip
    return RequestOutput(job.request_id, job.prompt, job.prompt_token_ids, [c], metrics=m)


def _final(job: Job, comp: CompletionOutput, m: RequestMetrics | None = None) -> RequestOutput:
    out = _snapshot(job, comp, m or RequestMetrics(job.arrival_time))
    if not job.stream:  # the one output carries every token
        out.outputs[0].delta_text, out.outputs[0].delta_token_ids = comp.text, comp.token_ids
    out.finished = True
    out.metrics.finished_time = time.monotonic()
    return out
