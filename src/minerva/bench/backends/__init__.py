"""In-process engines for the offline benchmarks, behind one small interface (base.py).

A new engine (llama.cpp, mistral.rs, MLX, ...) is one file with an ``OfflineBackend`` subclass
plus one line here; its heavy imports stay inside that file, loaded only when chosen.
"""

from __future__ import annotations

import importlib

from minerva.bench.backends.base import OfflineBackend
from minerva.errors import ConfigError

BACKENDS: dict[str, str] = {
    "minerva": "minerva.bench.backends.minerva_backend:MinervaBackend",
    "transformers": "minerva.bench.backends.transformers_backend:TransformersBackend",
}
"""name -> 'module:class' of its OfflineBackend."""


def backend_class(name: str) -> type[OfflineBackend]:
    """The backend class registered as ``name`` (imported now); ConfigError if unknown."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise ConfigError(
            f"backend {name!r} needs the package {e.name!r}, which is not installed: "
            f"pip install {e.name}, or leave {name} out of --backend"
        ) from None


def load_backend(name: str, model: str, **kwargs) -> OfflineBackend:
    """Load ``model`` with backend ``name`` (kwargs: device, dtype, num_threads, options)."""
    return backend_class(name)(model, **kwargs)


__all__ = ["BACKENDS", "OfflineBackend", "backend_class", "load_backend"]
