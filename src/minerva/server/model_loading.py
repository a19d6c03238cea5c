"""How ``minerva serve --models-dir`` loads one of its models: the engine config of the command
line with the model's path, and the memory limit the loaded models share."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minerva.errors import ConfigError
from minerva.server.config import ServerConfig
from minerva.server.heap import freeze_heap, frozen, thaw_heap
from minerva.server.model_dir import LocalModel

if TYPE_CHECKING:
    from minerva.backends.base import Backend
    from minerva.config import EngineConfig


def directory_app_options(engine: EngineConfig, server: ServerConfig) -> dict[str, Any]:
    """build_app's keyword arguments for serving ``server.models_dir``."""
    if engine.model.model is not None:
        raise ConfigError(
            f"give --model ({engine.model.model}) or --models-dir ({server.models_dir}), not both"
        )
    if not Path(str(server.models_dir)).is_dir():
        raise ConfigError(f"models_dir {server.models_dir!r} is not a folder: create it or fix it")
    return {
        "load_model": lambda model: load_model(engine, server, model),
        "memory_limit": memory_limit(engine),
        "after_unload": release_memory,
    }


def load_model(engine: EngineConfig, server: ServerConfig, model: LocalModel) -> Backend:
    """Load ``model`` with the command line's engine settings (blocking)."""
    from minerva.backends import load_backend

    config = dataclasses.replace(
        engine, model=dataclasses.replace(engine.model, model=str(model.path))
    )
    return frozen(
        load_backend(config.model.backend, config, max_queued_requests=server.max_queued_requests)
    )


def memory_limit(engine: EngineConfig) -> int:
    """What the loaded models may hold together: memory_limit, else memory_fraction of the
    device's memory."""
    if engine.cache.memory_limit is not None:
        return engine.cache.memory_limit
    from minerva.platform import resolve_platform

    total = resolve_platform(engine.device.device).memory()[1]
    return int(total * engine.cache.memory_fraction)


def release_memory() -> None:
    """After an unload: collect the engine's cycles (frozen with the rest of the heap after its
    load), freeze the models still loaded again and hand cached CUDA memory back."""
    thaw_heap()
    freeze_heap()
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
