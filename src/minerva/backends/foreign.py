"""ForeignBackend: the Backend protocol over a TokenEngine (another engine's sampling loop).

AsyncEngine drives the TokenEngine exactly as it drives Minerva's LLMEngine (one engine thread,
per-request output queues, admission, drain), so queueing, streaming, abort and the step
metrics behave the same whatever engine samples. The model's facts (tokenizer, chat template,
generation defaults, digest) come from Minerva's own ModelSource of the same files.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from minerva.backends.base import BackendStats, ModelInfo
from minerva.backends.engine_backend import EngineBackend
from minerva.backends.token_engine import TokenEngine
from minerva.loader import ModelSource
from minerva.loader.hf_config import CONFIG_FILE


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


class ForeignBackend(EngineBackend):
    """Implements backends.base.Backend for a TokenEngine; ``info`` is the loaded model's
    ModelInfo without its digest (computed on first ask)."""

    def __init__(self, engine: TokenEngine, info: ModelInfo, max_queued_requests: int = 256):
        self.engine = engine
        super().__init__(engine, engine.source, info, max_queued_requests)

    async def shutdown(self, timeout: float = 5.0) -> bool:
        stopped = await super().shutdown(timeout)
        if stopped:  # else its thread may still be inside the other engine: leave it be
            self.engine.close()
        return stopped

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
