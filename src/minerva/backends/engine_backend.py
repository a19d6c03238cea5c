"""The Backend protocol over an AsyncEngine, for any engine it can drive (Minerva's LLMEngine,
a TokenEngine over another engine's sampler): lifecycle and requests pass straight through to
AsyncEngine, the model's facts come from ModelFacts. Subclasses add what differs: stats, the
digest, shutdown."""

from __future__ import annotations

from typing import Any

from minerva.backends.base import ModelInfo, StepObserver
from minerva.backends.model_facts import ModelFacts
from minerva.engine.async_engine import AsyncEngine, RequestStream
from minerva.engine.outputs import RequestOutput, StepInfo
from minerva.loader import ModelSource
from minerva.request import Logprobs
from minerva.sampling_params import SamplingParams


class _StepBridge:
    """AsyncEngine's observer hook, forwarded without the engine's own stats type."""

    def __init__(self, observer: StepObserver) -> None:
        self.observer = observer

    def on_step(self, info: StepInfo | None, outputs: list[RequestOutput], stats: Any) -> None:
        self.observer.on_step(info, outputs)


class EngineBackend(ModelFacts):
    def __init__(
        self, engine: Any, source: ModelSource, info: ModelInfo, max_queued_requests: int = 256
    ) -> None:
        limits = engine.config.scheduler
        self._engine = AsyncEngine(
            engine, max_queued_requests, step_timeout=limits.step_timeout,
            queue_timeout=limits.queue_timeout, request_timeout=limits.request_timeout,
        )  # fmt: skip
        self._init_facts(source, engine.tokenizer, engine.eos_token_ids, info)

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        self._engine.start()

    async def drain(self, timeout: float) -> int:
        return await self._engine.drain(timeout)

    async def shutdown(self, timeout: float = 5.0) -> bool:
        return await self._engine.shutdown(timeout)

    @property
    def is_running(self) -> bool:
        return self._engine.is_running

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
        return await self._engine.add_request(
            prompt, params, request_id, prompt_token_ids, arrival_time, stream
        )

    def abort(self, request_id: str) -> None:
        self._engine.abort(request_id)

    def check_capacity(self, num_seqs: int = 1, pending: int = 0) -> None:
        self._engine.check_capacity(num_seqs, pending)

    async def score(self, token_ids: list[int]) -> list[float]:
        return await self._engine.score(token_ids)

    async def prompt_logprobs(self, token_ids: list[int], num_top: int = 0) -> list[Logprobs]:
        return await self._engine.prompt_logprobs(token_ids, num_top)

    def set_observer(self, observer: StepObserver | None) -> None:
        self._engine.observer = _StepBridge(observer) if observer is not None else None

    def default_sampling_params(self, **overrides: Any) -> SamplingParams:
        return self._engine.default_sampling_params(**overrides)
