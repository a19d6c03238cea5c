"""What /api/tags, /api/ps and /v1/models list: the served model, or every model of the
models directory (loaded ones with their engine's details, others from their files)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from minerva.backends.base import Backend, ModelInfo
from minerva.server.model_dir import LocalModel
from minerva.server.model_registry import LoadedModel
from minerva.server.state import ServerState

FOREVER_STAMP = 32503680000.0  # 3000-01-01: Ollama's "never expires" is a far-future time


@dataclass(frozen=True)
class ListedModel:
    name: str
    source: str
    size: int
    """Bytes on disk (/api/tags) of weights; in memory for /api/ps."""
    digest: str
    modified_at: float
    format: str
    family: str
    quantization: str
    parameter_count: int | None = None
    context_length: int | None = None


@dataclass(frozen=True)
class RunningModel:
    listed: ListedModel
    size: int
    """Bytes the loaded model holds (weights + KV cache + activation reserve)."""
    size_vram: int
    """Of those, on a GPU (0 on CPU)."""
    expires_at: float | None
    """Unix time it unloads if no request comes (None while loading)."""
    loading: bool = False


def from_info(name: str, info: ModelInfo, created: float) -> ListedModel:
    stamp = info.modified_at if info.modified_at is not None else created
    return ListedModel(
        name, info.source, info.weight_bytes, info.digest, stamp, info.format, info.family,
        info.quantization, info.parameter_count, info.context_length,
    )  # fmt: skip


def from_files(model: LocalModel, digest: str, loaded: LoadedModel | None) -> ListedModel:
    """A directory model: the engine's details once loaded, else what its files say."""
    if loaded is not None:
        info = loaded.info()
        return ListedModel(
            model.name, str(model.path), model.size, digest, model.modified_at, info.format,
            info.family, info.quantization, info.parameter_count, info.context_length,
        )  # fmt: skip
    return ListedModel(
        model.name, str(model.path), model.size, digest, model.modified_at, model.format,
        model.family, model.quantization,
    )  # fmt: skip


async def list_models(state: ServerState) -> list[ListedModel]:
    """Every model this server can serve."""
    registry = state.registry
    if registry is None:
        return [from_info(state.model_name, await state.model_info(), state.created)]
    loaded = {m.name: m for m in registry.loaded()}
    return [
        from_files(model, await registry.digest(model), loaded.get(name))
        for name, model in registry.models().items()
    ]


async def running_models(state: ServerState) -> list[RunningModel]:
    """The models in memory, most recently used first."""
    registry = state.registry
    if registry is None:
        backend = state.ready_backend()
        info = await state.model_info()
        stats = backend.stats()
        size = stats.model_memory_bytes or info.weight_bytes
        listed = from_info(state.model_name, info, state.created)
        return [RunningModel(listed, size, size if info.device != "cpu" else 0, FOREVER_STAMP)]
    out = []
    for m in registry.loaded():
        listed = from_files(m.model, await registry.digest(m.model), m)
        on_gpu = m.info().device != "cpu"
        expires = registry.expires_at(m)
        expires = FOREVER_STAMP if math.isinf(expires) else expires
        out.append(RunningModel(listed, m.size, m.size if on_gpu else 0, expires))
    models = registry.models()
    for name in registry.loading():  # size: the weights on disk, until the engine measures
        if (model := models.get(name)) is not None:
            listed = from_files(model, "", None)
            out.append(RunningModel(listed, model.size, 0, None, loading=True))
    return out


async def model_info_for(state: ServerState, backend: Backend, name: str) -> ModelInfo:
    """The ModelInfo of the backend serving ``name`` (digest included)."""
    if state.registry is None:
        return await state.model_info()
    model = state.registry.find(name)
    digest = await state.registry.digest(model)
    return dataclasses.replace(backend.model_info(digest=False), digest=digest)
