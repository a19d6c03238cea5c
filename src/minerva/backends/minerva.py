"""Minerva's own engine as a Backend: an adapter over AsyncEngine.

An adapter rather than AsyncEngine itself: the engine layer sits below backends/ and cannot
name ModelInfo or BackendStats, and the facts ModelInfo needs (the ModelSource's format,
quantization and digest, the platform) are the loaded model's, not the step loop's. Requests
pass straight through to AsyncEngine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Sequence
from typing import Any

import torch

from minerva.backends.base import BackendStats, ModelInfo, StepObserver
from minerva.config import EngineConfig
from minerva.engine.async_engine import AsyncEngine, RequestStream
from minerva.engine.llm_engine import EngineStats, LLMEngine
from minerva.engine.outputs import RequestOutput, StepInfo
from minerva.errors import RequestError
from minerva.loader import ModelSource
from minerva.loader.hf_config import CONFIG_FILE
from minerva.models.registry import count_weight_bytes
from minerva.request import Logprobs
from minerva.sampling_params import SamplingParams


def load(
    config: EngineConfig, *, max_queued_requests: int = 256, progress: bool = False
) -> MinervaBackend:
    """Load the model of ``config`` (blocking: weights, KV cache, graphs, warm-up)."""
    return MinervaBackend(LLMEngine(config, progress=progress), max_queued_requests)


class _StepBridge:
    """AsyncEngine's observer hook, forwarded without the engine's own stats type."""

    def __init__(self, observer: StepObserver) -> None:
        self.observer = observer

    def on_step(self, info: StepInfo | None, outputs: list[RequestOutput], stats: EngineStats):
        self.observer.on_step(info, outputs)


class MinervaBackend:
    """Implements backends.base.Backend over an LLMEngine driven by an AsyncEngine."""

    def __init__(self, engine: LLMEngine, max_queued_requests: int = 256) -> None:
        limits = engine.config.scheduler
        self._engine = AsyncEngine(
            engine, max_queued_requests, step_timeout=limits.step_timeout,
            queue_timeout=limits.queue_timeout, request_timeout=limits.request_timeout,
        )  # fmt: skip
        self._platform = engine.platform
        self._tokenizer = engine.tokenizer
        self._eos_token_ids = list(engine.eos_token_ids)
        self._source = _device_side(engine).source
        self._dummy = engine.config.model.load_format == "dummy"
        self._info = _model_info(engine)  # all but the digest, which reads every weight byte
        self._info_lock = threading.Lock()
        self._model_memory = _model_memory(engine)

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

    # -- what it serves ---------------------------------------------------------------
    def stats(self) -> BackendStats:
        s = self._engine.stats()
        spec = s.spec_decode
        spec_fields = {} if spec is None else dict(
            spec_verify_steps=spec.num_verify_steps,
            spec_draft_tokens=spec.num_draft_tokens,
            spec_accepted_tokens=spec.num_accepted_tokens,
            spec_emitted_tokens=spec.num_emitted_tokens,
            spec_drafts_per_position=list(spec.drafts_per_position),
            spec_accepted_per_position=list(spec.accepted_per_position),
        )  # fmt: skip
        return BackendStats(
            num_running=s.num_running,
            num_waiting=s.num_waiting,
            num_requests_in_flight=self._engine.num_requests_in_flight,
            kv_cache_usage=s.kv_cache_usage,
            num_kv_blocks=s.num_kv_blocks,
            prefix_cache_queries=s.prefix_cache_queries,
            prefix_cache_hits=s.prefix_cache_hits,
            num_preemptions=s.num_preemptions,
            device_memory_used=self._platform.memory_used(),
            device_memory_total=self._platform.memory()[1],
            model_memory_bytes=self._model_memory,
            **spec_fields,
        )

    def model_info(self, digest: bool = True) -> ModelInfo:
        if not digest:
            return self._info
        with self._info_lock:  # one hash, however many threads ask
            if not self._info.digest:
                digest = _digest(self._source, self._dummy)
                self._info = dataclasses.replace(self._info, digest=digest)
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
        template = self._source.chat_template  # the tokenizer's, or the file's own (GGUF)
        if isinstance(template, dict):  # named templates: the default one, else the first
            template = template.get("default", next(iter(template.values()), None))
        return template

    @property
    def eos_token_ids(self) -> list[int]:
        return list(self._eos_token_ids)

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
        return self._engine.default_sampling_params(**overrides)

    def _need_tokenizer(self, fix: str, param: str):
        if self._tokenizer is None:
            raise RequestError(f"this model has no tokenizer: {fix}", param=param)
        return self._tokenizer


def _model_info(engine: LLMEngine) -> ModelInfo:
    """The loaded model's facts, from its ModelSource; the digest is left for later."""
    loaded = _device_side(engine)
    hf, source = engine.model_config, loaded.source
    assert source is not None, "the engine loads every model through a ModelSource"
    dtype = str(loaded.dtype).removeprefix("torch.")
    architectures = getattr(hf, "architectures", None) or ["unknown"]
    stamp_file = source.path / CONFIG_FILE if source.path.is_dir() else source.path
    dummy = engine.config.model.load_format == "dummy"  # random weights: nothing read from disk
    return ModelInfo(
        name=source.path.name if source.path.is_dir() else source.path.stem,
        source=str(source.path),
        format="dummy" if dummy else source.format,
        quantization=_quantization(source, engine.config.model.quantization, dtype),
        dtype=dtype,
        # Of the dense architecture: a quantized layout's numel is not its parameter count.
        parameter_count=count_weight_bytes(hf, torch.float32) // 4,
        weight_bytes=loaded.weight_bytes,
        digest="",
        context_length=engine.max_model_len,
        vocab_size=hf.vocab_size,
        architecture=architectures[0],
        family=getattr(hf, "model_type", None) or "llama",
        device=engine.platform.kind,
        modified_at=stamp_file.stat().st_mtime if stamp_file.is_file() else None,
        hidden_size=hf.hidden_size,
        num_layers=hf.num_hidden_layers,
        num_attention_heads=hf.num_attention_heads,
        num_kv_heads=hf.num_key_value_heads,
    )


def _model_memory(engine: LLMEngine) -> int:
    """Weights + KV cache + activation reserve of the model and its draft model, if any."""
    workers = [_device_side(engine)]
    workers += [w for w in [getattr(workers[0], "draft_worker", None)] if w is not None]
    return sum(
        w.weight_bytes + w.kv_cache_bytes + getattr(w, "activation_reserve", 0) for w in workers
    )


def _device_side(engine: LLMEngine) -> Any:
    """What built the model: the engine's Worker (source, dtype, weight_bytes)."""
    return engine.worker


def _quantization(source: ModelSource, in_situ: str | None, dtype: str) -> str:
    """The file's scheme (Q4_K_M), else the one applied while loading, else the load dtype."""
    return source.quantization or (in_situ.upper() if in_situ else dtype.upper())


def _digest(source: ModelSource, dummy: bool) -> str:
    if dummy and source.path.is_dir():  # weight files may not exist: hash the config instead
        config = source.path / CONFIG_FILE
        return "sha256:" + hashlib.sha256(config.read_bytes()).hexdigest()
    return source.digest()  # a GGUF file is its own config
