"""ForeignBackend: the Backend protocol over a TokenEngine (another engine's sampling loop).

AsyncEngine drives the TokenEngine exactly as it drives Minerva's LLMEngine (one engine thread,
per-request output queues, admission, drain), so queueing, streaming, abort and the step
metrics behave the same whatever engine samples. The model's facts (tokenizer, chat template,
generation defaults, digest) come from Minerva's own ModelSource of the same files.
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from minerva.backends.base import BackendStats, ModelInfo, StepObserver
from minerva.backends.token_engine import TokenEngine
from minerva.engine.async_engine import AsyncEngine, RequestStream
from minerva.engine.outputs import RequestOutput, StepInfo
from minerva.errors import RequestError
from minerva.loader import ModelSource
from minerva.loader.hf_config import CONFIG_FILE
from minerva.request import Logprobs
from minerva.sampling_params import SamplingParams


def import_optional(module: str, backend: str, extra: str) -> ModuleType:
    """``import module``, or BackendNotInstalled naming the extra that installs it (the
    registry checks the main package; this catches a missing or broken dependency of it)."""
    from minerva.backends import BackendNotInstalled  # noqa: PLC0415 - the package's own

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendNotInstalled(
            f"the {backend} backend needs the package {module!r}, which is not installed "
            f'({e}): pip install "minerva-llm[{extra}]", or choose another backend'
        ) from None


class _StepBridge:
    def __init__(self, observer: StepObserver) -> None:
        self.observer = observer

    def on_step(self, info: StepInfo | None, outputs: list[RequestOutput], stats: Any) -> None:
        self.observer.on_step(info, outputs)


class ForeignBackend:
    """Implements backends.base.Backend for a TokenEngine; ``info`` is the loaded model's
    ModelInfo without its digest (computed on first ask)."""

    def __init__(self, engine: TokenEngine, info: ModelInfo, max_queued_requests: int = 256):
        self.engine = engine
        limits = engine.config.scheduler
        self._engine = AsyncEngine(
            engine, max_queued_requests, step_timeout=limits.step_timeout,  # type: ignore[arg-type]
            queue_timeout=limits.queue_timeout, request_timeout=limits.request_timeout,
        )  # fmt: skip
        self._tokenizer = engine.tokenizer
        self._source = engine.source
        self._info = info
        self._info_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        self._engine.start()

    async def drain(self, timeout: float) -> int:
        return await self._engine.drain(timeout)

    async def shutdown(self, timeout: float = 5.0) -> bool:
        stopped = await self._engine.shutdown(timeout)
        if stopped:  # else its thread may still be inside the other engine: leave it be
            self.engine.close()
        return stopped

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

    # -- what it serves ---------------------------------------------------------------
    def stats(self) -> BackendStats:
        s = self._engine.stats()
        return BackendStats(
            num_running=s.num_running,
            num_waiting=s.num_waiting,
            num_requests_in_flight=self._engine.num_requests_in_flight,
            kv_cache_usage=s.kv_cache_usage,
            num_kv_blocks=s.num_kv_blocks,
            prefix_cache_queries=s.prefix_cache_queries,
            prefix_cache_hits=s.prefix_cache_hits,
            device_memory_used=_rss_bytes(),
        )

    def model_info(self, digest: bool = True) -> ModelInfo:
        if not digest:
            return self._info
        with self._info_lock:  # one hash, however many threads ask
            if not self._info.digest:
                self._info = dataclasses.replace(self._info, digest=self._source.digest())
            return self._info

    @property
    def max_model_len(self) -> int:
        return self._info.context_length

    @property
    def vocab_size(self) -> int:
        return self._info.vocab_size

    # -- tokenizer and chat template --------------------------------------------------
    @property
    def has_tokenizer(self) -> bool:
        return self._tokenizer is not None

    @property
    def chat_template(self) -> str | None:
        template = self._source.chat_template
        if isinstance(template, dict):  # named templates: the default one, else the first
            template = template.get("default", next(iter(template.values()), None))
        return template

    @property
    def eos_token_ids(self) -> list[int]:
        return list(self.engine.eos_token_ids)

    def encode(self, text: str) -> list[int]:
        return self._need_tokenizer("send token ids as the prompt", "prompt").encode(text)

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        tokenizer = self._need_tokenizer("read the output token ids instead", "prompt")
        return tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
    ) -> list[int]:
        tokenizer = self._need_tokenizer("so chat is not available", "messages")
        return tokenizer.encode_chat(messages, add_generation_prompt, tools)

    def default_sampling_params(self, **overrides: Any) -> SamplingParams:
        return self.engine.default_sampling_params(**overrides)

    def _need_tokenizer(self, fix: str, param: str):
        if self._tokenizer is None:
            raise RequestError(f"this model has no tokenizer: {fix}", param=param)
        return self._tokenizer


def source_model_info(
    source: ModelSource,
    *,
    max_model_len: int,
    quantization: str,
    dtype: str,
    device: str,
    weight_bytes: int | None = None,
) -> ModelInfo:
    """ModelInfo of a model another engine loaded, from Minerva's view of the same files."""
    hf = source.config
    architectures = getattr(hf, "architectures", None) or ["unknown"]
    stamp = source.path / CONFIG_FILE if source.path.is_dir() else source.path
    return ModelInfo(
        name=source.path.name if source.path.is_dir() else source.path.stem,
        source=str(source.path),
        format=source.format,
        quantization=quantization,
        dtype=dtype,
        parameter_count=_parameter_count(hf),
        weight_bytes=weight_bytes if weight_bytes is not None else source.num_bytes,
        digest="",
        context_length=max_model_len,
        vocab_size=hf.vocab_size,
        architecture=architectures[0],
        family=getattr(hf, "model_type", None) or "llama",
        device=device,
        modified_at=stamp.stat().st_mtime if stamp.is_file() else None,
        hidden_size=hf.hidden_size,
        num_layers=hf.num_hidden_layers,
        num_attention_heads=hf.num_attention_heads,
        num_kv_heads=hf.num_key_value_heads,
    )


def _parameter_count(hf: Any) -> int:
    """Of the dense architecture (a quantized file's numel is not its parameter count)."""
    import torch  # noqa: PLC0415 - the models layer counts in torch dtypes

    from minerva.models.registry import count_weight_bytes  # noqa: PLC0415

    try:
        return count_weight_bytes(hf, torch.float32) // 4
    except Exception:  # noqa: BLE001 - an architecture Minerva cannot build: unknown
        return 0


def _rss_bytes() -> int:
    import psutil  # noqa: PLC0415

    return int(psutil.Process().memory_info().rss)
