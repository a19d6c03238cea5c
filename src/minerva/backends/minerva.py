"""Minerva's own engine as a Backend: an adapter over AsyncEngine.

An adapter rather than AsyncEngine itself: the engine layer sits below backends/ and cannot
name ModelInfo or BackendStats, and the facts ModelInfo needs (the ModelSource's format,
quantization and digest, the platform) are the loaded model's, not the step loop's. Requests
pass straight through to AsyncEngine.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from minerva.backends.base import BackendStats, ModelInfo
from minerva.backends.engine_backend import EngineBackend
from minerva.config import EngineConfig
from minerva.engine.llm_engine import LLMEngine
from minerva.loader import ModelSource
from minerva.loader.hf_config import CONFIG_FILE
from minerva.models.registry import count_weight_bytes


def load(
    config: EngineConfig, *, max_queued_requests: int = 256, progress: bool = False
) -> MinervaBackend:
    """Load the model of ``config`` (blocking: weights, KV cache, graphs, warm-up)."""
    return MinervaBackend(LLMEngine(config, progress=progress), max_queued_requests)


class MinervaBackend(EngineBackend):
    """Implements backends.base.Backend over an LLMEngine driven by an AsyncEngine."""

    def __init__(self, engine: LLMEngine, max_queued_requests: int = 256) -> None:
        source = _device_side(engine).source
        super().__init__(engine, source, _model_info(engine), max_queued_requests)
        self._platform = engine.platform
        self._dummy = engine.config.model.load_format == "dummy"
        self._model_memory = _model_memory(engine)

    def _compute_digest(self) -> str:
        return _digest(self._source, self._dummy)

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
