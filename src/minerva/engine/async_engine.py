"""AsyncEngine: one background thread owns an LLMEngine and steps it; asyncio code adds requests
and reads each request's outputs from its own queue.

The engine is not thread-safe, so only the engine thread touches it. The event loop hands it
commands (add, abort, score) through a list guarded by a condition; the thread applies them between
steps, sleeps on the condition when there is nothing to do (never spins) and sends each step's
outputs back with ``loop.call_soon_threadsafe``. Everything on the loop side (streams, the
in-flight count) is touched only by the loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, Protocol

from minerva.engine.fault_injection import FaultInjector
from minerva.engine.llm_engine import EngineStats, LLMEngine
from minerva.engine.outputs import RequestOutput, StepInfo
from minerva.engine.request_stream import MAX_BUFFERED_OUTPUTS, RequestStream
from minerva.engine.step_watchdog import StepTimeoutError, StepWatchdog
from minerva.errors import (
    EngineDeadError,
    EngineDrainingError,
    EngineUnavailableError,
    QueueFullError,
    QueueTimeoutError,
    RequestError,
)
from minerva.request import Logprobs
from minerva.sampling_params import SamplingParams, StructuredOutputs

logger = logging.getLogger(__name__)

__all__ = [
    "AsyncEngine",
    "EngineDeadError",
    "EngineDrainingError",
    "EngineObserver",
    "EngineUnavailableError",
    "QueueFullError",
    "RequestStream",
    "StepInfo",
    "StepTimeoutError",
]

ABORT_GRACE_S = 0.5
"""How long a drain waits for its aborts to land after its timeout: a healthy engine applies
them within one step, and a hung one never will, so the wait stays short and bounded."""


class EngineObserver(Protocol):
    def on_step(self, info: StepInfo | None, outputs: list[RequestOutput], stats: EngineStats):
        """Called on the engine thread after each step (info None when nothing was scheduled)."""


class AsyncEngine:
    """Drives an LLMEngine from a background thread for asyncio callers.

    Admission control: at most ``max_num_seqs`` sequences run and ``max_queued_requests``
    more wait; past that ``add_request`` raises QueueFullError at once. A request counts until
    its reader has taken its final output or aborted it.

    Watchdog: a step running longer than ``step_timeout`` seconds (0: never) marks the engine
    hung: ``is_running`` turns False and every request in flight fails with StepTimeoutError.
    Deadlines (0: none): a request not started ``queue_timeout`` s after its arrival fails
    with QueueTimeoutError (503); one older than ``request_timeout`` s is aborted.
    ``clock`` is injectable for tests; ``faults`` (default: MINERVA_FAULT_INJECT) make a step
    hang or raise.
    """

    def __init__(
        self,
        engine: LLMEngine,
        max_queued_requests: int = 256,
        observer: EngineObserver | None = None,
        *,
        step_timeout: float = 0.0,
        queue_timeout: float = 0.0,
        request_timeout: float = 0.0,
        max_buffered_outputs: int = MAX_BUFFERED_OUTPUTS,
        clock: Callable[[], float] = time.monotonic,
        faults: FaultInjector | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len
        self.vocab_size: int = engine.model_config.vocab_size
        self.max_num_seqs = engine.config.scheduler.max_num_seqs
        self.max_queued_requests = max_queued_requests
        self.observer = observer
        self.watchdog = StepWatchdog(step_timeout, clock)
        self.queue_timeout = queue_timeout
        self.request_timeout = request_timeout
        self.max_buffered_outputs = max_buffered_outputs
        self.faults = faults if faults is not None else FaultInjector.from_env()
        self._clock = clock
        self._watch_task: asyncio.Task | None = None
        self._cond = threading.Condition()
        self._commands: list[tuple[str, Any]] = []  # guarded by _cond
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats = engine.stats()  # replaced (never mutated) by the engine thread
        self._error: BaseException | None = None
        # Loop-thread state.
        self._streams: dict[str, RequestStream] = {}
        self._pending: dict[str, asyncio.Future] = {}  # adds the engine has not answered yet
        self._num_seqs_in_flight = 0
        self._draining = False
        self._idle: asyncio.Event | None = None

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Start the engine thread; call from the event loop that will use this engine."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="minerva-engine", daemon=True)
        self._thread.start()
        if self.watchdog.step_timeout > 0:
            self._watch_task = asyncio.ensure_future(self._watch())

    async def drain(self, timeout: float) -> int:
        """Refuse new requests, let in-flight ones finish for up to ``timeout`` seconds, then
        abort the rest (their streams end with finish_reason "abort"). Returns how many."""
        self._draining = True
        if not await self._wait_idle(timeout):
            remaining = list(self._streams)
            logger.warning("shutdown timeout: aborting %d request(s)", len(remaining))
            self._submit("abort", remaining)  # streams stay registered: they get the final output
            await self._wait_idle(ABORT_GRACE_S)
            return len(remaining)
        return 0

    async def shutdown(self, timeout: float = 5.0) -> bool:
        """Stop the engine thread, waiting for it at most ``timeout`` seconds; requests still
        in flight end with EngineDeadError. False when the thread is still inside a step."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._watch_task is not None:
            self._watch_task.cancel()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout)
        self._fail_all(EngineDeadError("the engine was shut down"))
        return self._thread is None or not self._thread.is_alive()

    # -- watchdog -----------------------------------------------------------------------
    @property
    def is_hung(self) -> bool:
        """A step has run past ``step_timeout`` (evaluated now, so /health sees it at once)."""
        return isinstance(self._error, StepTimeoutError) or self.watchdog.is_hung

    def check_watchdog(self) -> bool:
        """On the loop: fail every request once the engine is hung; True when it is."""
        if not self.is_hung:
            return False
        if self._error is None:
            self._error = StepTimeoutError(self.watchdog.message())
            logger.error("%s", self._error)
            self._fail_all(self._error)
        return True

    async def _watch(self) -> None:
        period = min(1.0, self.watchdog.step_timeout / 4)
        while not self._stopping and not self.check_watchdog():
            await asyncio.sleep(period)

    async def _wait_idle(self, timeout: float) -> bool:
        assert self._idle is not None, "AsyncEngine.start() was not called"
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # -- state ------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        alive = self._thread is not None and self._thread.is_alive()
        return alive and not self._stopping and self._error is None and not self.is_hung

    @property
    def is_draining(self) -> bool:
        return self._draining

    @property
    def num_requests_in_flight(self) -> int:
        return len(self._streams)

    def stats(self) -> EngineStats:
        """The engine's counters as of the end of the last step (safe from any thread)."""
        return self._stats

    def default_sampling_params(self, **overrides: Any) -> SamplingParams:
        """SamplingParams with the model's generation_config.json defaults applied."""
        return self.engine.default_sampling_params(**overrides)

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
        """Queue a request; returns its output stream once the engine accepted it.
        stream=False: the stream yields only the final output (no per-step detokenizing).

        Raises QueueFullError / EngineDrainingError / EngineDeadError (all 503) at once, and
        RequestError (400, e.g. context_length_exceeded) when the engine refuses it.
        """
        if not isinstance(params, SamplingParams):
            raise RequestError(f"params must be a SamplingParams, got {type(params).__name__}")
        self._check_admission(params.n)
        if isinstance(params.structured, StructuredOutputs):  # compiled off the engine thread
            await asyncio.to_thread(self.engine.constraints.precompile, params)  # (a cache hit)
        request_id = request_id or f"req-{uuid.uuid4().hex}"
        if request_id in self._streams:
            raise RequestError(f"request id {request_id!r} is already in use", param="request_id")
        out = RequestStream(
            request_id, params.n, self._abort_stream, self._release, self.max_buffered_outputs
        )
        self._register(out)
        accepted = self._loop.create_future()  # type: ignore[union-attr]
        self._pending[request_id] = accepted
        arrival = arrival_time or time.monotonic()
        add = partial(
            self.engine.add_request, prompt, params, request_id, prompt_token_ids, arrival, stream
        )
        self._submit("call", (add, accepted))
        try:
            await accepted
        except asyncio.CancelledError:
            self._release(out)
            self._submit("abort", [request_id])  # the engine may have taken it meanwhile
            raise
        except BaseException:
            self._release(out)
            raise
        finally:
            self._pending.pop(request_id, None)
        return out

    async def score(self, token_ids: list[int]) -> list[float]:
        """log p(token i+1 | tokens ..i) for each i, computed on the engine thread between
        steps (LLMEngine.score). Raises RequestError for a bad sequence."""
        return await self._between_steps(lambda: self.engine.score(list(token_ids)))

    async def prompt_logprobs(self, token_ids: list[int], num_top: int = 0) -> list[Logprobs]:
        """score with ranks and top alternatives (LLMEngine.prompt_logprobs), between steps."""
        return await self._between_steps(
            lambda: self.engine.prompt_logprobs(list(token_ids), num_top)
        )

    async def _between_steps(self, fn: Callable[[], Any]) -> Any:
        """fn() on the engine thread between two steps; its result or its exception."""
        if not self.is_running:
            raise EngineDeadError("the engine is not running")
        done = self._loop.create_future()  # type: ignore[union-attr]
        key = f"#score-{id(done)}"  # in _pending so that a dying engine fails it too
        self._pending[key] = done
        self._submit("call", (fn, done))
        try:
            return await done
        finally:
            self._pending.pop(key, None)

    async def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        request_id: str | None = None,
        prompt_token_ids: list[int] | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Add a request and yield its outputs; closing or cancelling the iterator aborts it."""
        stream = await self.add_request(prompt, params, request_id, prompt_token_ids)
        try:
            async for out in stream:
                yield out
        finally:
            stream.abort()

    def abort(self, request_id: str) -> None:
        """Abort a request by id (loop thread); its stream is dropped at once."""
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.abort()

    def check_capacity(self, num_seqs: int = 1, pending: int = 0) -> None:
        """Raise what add_request would raise now for ``num_seqs`` more sequences, with
        ``pending`` sequences on their way in (cheap: callers check before tokenizing). Only
        ``num_seqs`` can be too many for the server (400); the pending ones make it full (503)."""
        self._check_admission(num_seqs, pending)

    def _check_admission(self, num_seqs: int, pending: int = 0) -> None:
        if not self.is_running:
            raise EngineDeadError("the engine is not running")
        if self._draining:
            raise EngineDrainingError(
                "the server is shutting down; retry on another instance", retry_after=5
            )
        capacity = self.max_num_seqs + self.max_queued_requests
        if num_seqs > capacity:
            raise RequestError(
                f"n={num_seqs} sequences are more than this server runs and queues at once "
                f"({capacity}); lower n",
                param="n",
            )
        if self._num_seqs_in_flight + num_seqs + pending > capacity:
            raise QueueFullError(
                f"the server is at capacity ({self.max_num_seqs} running, "
                f"{self.max_queued_requests} queued); retry later",
                retry_after=1,
            )

    def _register(self, stream: RequestStream) -> None:
        self._streams[stream.request_id] = stream
        self._num_seqs_in_flight += stream.num_seqs
        self._idle.clear()  # type: ignore[union-attr]

    def _release(self, stream: RequestStream) -> None:
        if self._streams.pop(stream.request_id, None) is not None:
            self._num_seqs_in_flight -= stream.num_seqs
        if not self._streams:
            self._idle.set()  # type: ignore[union-attr]

    def _abort_stream(self, stream: RequestStream) -> None:
        self._release(stream)
        self._submit("abort", [stream.request_id])

    def _submit(self, kind: str, payload: Any) -> None:
        with self._cond:
            self._commands.append((kind, payload))
            self._cond.notify()

    # -- loop side of the hand-off -------------------------------------------------------
    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:  # aborted by its client: nobody listens
                continue
            stream.put(out)  # released once its reader takes the final output

    def _fail_all(self, error: BaseException) -> None:
        for future in list(self._pending.values()):
            _settle(future, error)
        self._fail_streams(list(self._streams), error)

    def _fail_streams(self, request_ids: list[str], error: BaseException) -> None:
        for request_id in request_ids:
            stream = self._streams.get(request_id)
            if stream is not None:
                stream.put(error)
                self._release(stream)

    def _call_soon(self, fn: Callable, *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)  # type: ignore[union-attr]
        except RuntimeError:  # the loop is closed: the process is exiting
            pass

    # -- engine thread ----------------------------------------------------------------
    def _run(self) -> None:
        busy = False
        try:
            while True:
                with self._cond:
                    while not (self._commands or busy or self._stopping):
                        self._cond.wait()
                    if self._stopping or self._error is not None:
                        return
                    commands, self._commands = self._commands, []
                aborted = self._apply(commands)
                if self.queue_timeout > 0 or self.request_timeout > 0:
                    aborted |= self._expire()
                if busy or aborted or self.engine.has_unfinished_requests():
                    self._step()
                busy = self.engine.has_unfinished_requests()
        except BaseException as e:  # noqa: BLE001 - the thread must report, never die silently
            logger.exception("the engine thread failed; no more requests can run")
            self._error = e
            self._call_soon(self._fail_all, EngineDeadError(f"the engine failed: {e!r}"))

    def _apply(self, commands: list[tuple[str, Any]]) -> bool:
        """Apply queued aborts and calls in order; True if anything was aborted."""
        aborted = False
        for kind, payload in commands:
            if kind == "abort":
                self.engine.abort_request(payload)
                aborted = True
                continue
            fn, future = payload  # "call": an add, or a score between steps
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001 - RequestError and friends go to the caller
                self._call_soon(_settle, future, e)
            else:
                self._call_soon(_settle, future, None, result)
        return aborted

    def _expire(self) -> bool:
        """Drop the requests past their deadlines (engine thread); True if any."""
        queued, late = self.engine.overdue_requests(
            self._clock(), self.queue_timeout, self.request_timeout
        )
        if queued:
            self.engine.abort_request(queued)
            error = QueueTimeoutError(
                f"the request waited more than queue_timeout={self.queue_timeout:g}s without "
                "starting: the server is overloaded; retry later",
                retry_after=1,
            )
            self._call_soon(self._fail_streams, queued, error)
        if late:
            self.engine.abort_request(late)  # their final outputs say finish_reason "abort"
        return bool(queued or late)

    def _step(self) -> None:
        start = time.perf_counter()
        self.watchdog.step_started()
        if self.faults is not None:
            self.faults.before_step()
        outputs = self.engine.step()
        self.watchdog.step_ended()
        duration = time.perf_counter() - start
        self._stats = self.engine.stats()
        if outputs:
            self._call_soon(self._dispatch, outputs)
        if self.observer is not None:
            sched, info = self.engine.last_scheduler_output, None
            if sched is not None and not sched.is_empty:
                info = StepInfo(
                    duration, sched.num_prefill_tokens, sched.num_decode_tokens, sched.num_seqs
                )
            try:
                self.observer.on_step(info, outputs, self._stats)
            except Exception:  # noqa: BLE001 - metrics must never stop generation
                logger.exception("engine observer failed")


def _settle(future: asyncio.Future, error: BaseException | None, result: Any = None) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
