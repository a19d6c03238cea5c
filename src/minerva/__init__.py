"""Minerva: a fast local LLM inference engine.

The public API is imported lazily so that light modules (config, request, scheduler) stay
importable without loading torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = [
    "LLM",
    "LLMEngine",
    "AsyncEngine",
    "SamplingParams",
    "EngineConfig",
    "RequestOutput",
    "__version__",
]

_LAZY = {
    "LLM": "minerva.engine.llm",
    "LLMEngine": "minerva.engine.llm_engine",
    "AsyncEngine": "minerva.engine.async_engine",
    "RequestOutput": "minerva.engine.outputs",
    "SamplingParams": "minerva.sampling_params",
    "EngineConfig": "minerva.config",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'minerva' has no attribute {name!r}")
