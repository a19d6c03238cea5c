"""Engines behind one protocol (base.py): the server, the CLI and the benchmarks drive a
``Backend`` and never know which engine runs. A new engine is one module with a
``load(config, *, max_queued_requests, progress) -> Backend`` function plus one line here; its
heavy imports stay inside that module, loaded only when chosen."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from minerva.errors import ConfigError

if TYPE_CHECKING:
    from minerva.backends.base import Backend
    from minerva.config import EngineConfig

BACKENDS: dict[str, str] = {
    "minerva": "minerva.backends.minerva:load",
    "mlx": "minerva.backends.mlx:load",
}
"""name -> 'module:function' that loads a model and returns its Backend."""


def load_backend(
    name: str, config: EngineConfig, *, max_queued_requests: int = 256, progress: bool = False
) -> Backend:
    """Load ``config``'s model with backend ``name`` (blocking). ConfigError if unknown, or if
    the backend's package is not installed."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")
    module, _, function = BACKENDS[name].partition(":")
    try:
        factory = getattr(importlib.import_module(module), function)
    except ImportError as e:
        raise ConfigError(
            f"backend {name!r} needs the package {e.name!r}, which is not installed: "
            f"pip install {e.name}, or choose another backend"
        ) from None
    return factory(config, max_queued_requests=max_queued_requests, progress=progress)


__all__ = ["BACKENDS", "load_backend"]
