"""Engines behind one protocol (base.py): the server, the CLI and the benchmarks drive a
``Backend`` and never know which engine runs. A new engine is one module with a
``load(config, *, max_queued_requests, progress) -> Backend`` function plus one line in
BACKENDS; its heavy imports stay inside that module, loaded only when chosen. The module may
also define ``doctor() -> dict[str, str]``: what the engine can do on this machine (``minerva
doctor`` shows it)."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

from minerva.errors import ConfigError

if TYPE_CHECKING:
    from minerva.backends.base import Backend
    from minerva.config import EngineConfig


@dataclass(frozen=True)
class BackendSpec:
    """Where a backend's loader lives and what it needs installed."""

    loader: str
    """'module:function' that loads a model and returns its Backend."""
    package: str | None = None
    """The import name of the engine's package (None: part of Minerva's own install)."""
    extra: str | None = None
    """The ``pip install "minerva-llm[EXTRA]"`` extra that installs ``package``."""
    summary: str = ""


BACKENDS: dict[str, BackendSpec] = {
    "minerva": BackendSpec("minerva.backends.minerva:load", summary="Minerva's own engine"),
    "llamacpp": BackendSpec(
        "minerva.backends.llamacpp:load", "llama_cpp", "llamacpp",
        "llama.cpp through llama-cpp-python (GGUF files; an HF folder is converted to F16 GGUF)",
    ),
    "mistralrs": BackendSpec(
        "minerva.backends.mistralrs:load", "mistralrs", "mistralrs",
        "mistral.rs through the mistralrs package (safetensors folders and GGUF files)",
    ),
    "mlx": BackendSpec(
        "minerva.backends.mlx:load", "mlx_lm", "mlx", "MLX through mlx-lm (Apple Silicon; CPU on Linux)"
    ),
}  # fmt: skip
"""name -> its loader; the names are config.BACKEND_NAMES (``--backend``, ``[model] backend``)."""


class BackendNotInstalled(ConfigError):
    """A backend's engine package is missing: the message names the pip extra to install."""


def install_hint(name: str) -> str:
    """How to install backend ``name``'s package."""
    spec = BACKENDS[name]
    return f'pip install "minerva-llm[{spec.extra}]"' if spec.extra else "pip install minerva-llm"


def is_installed(name: str) -> bool:
    """True when backend ``name``'s engine package can be imported here (cheap: no import)."""
    spec = BACKENDS.get(name)
    if spec is None:
        return False
    if spec.package is None:
        return True
    try:
        return importlib.util.find_spec(spec.package) is not None
    except (ImportError, ValueError, AttributeError):  # e.g. sys.modules[name] is None
        return False


def probe_backend(name: str) -> dict[str, str]:
    """What ``minerva doctor`` shows for backend ``name``: whether it is installed and, if its
    module has a ``doctor()``, what it reports (a failing probe is reported, not raised)."""
    if not is_installed(name):
        return {"installed": "no", "install": install_hint(name)}
    module = BACKENDS[name].loader.partition(":")[0]
    try:
        probe = getattr(importlib.import_module(module), "doctor", None)
        return {"installed": "yes", **(probe() if probe is not None else {})}
    except Exception as e:  # noqa: BLE001 - a broken engine install is a finding, not a crash
        return {"installed": "yes", "problem": f"{type(e).__name__}: {e}"}


def load_backend(
    name: str, config: EngineConfig, *, max_queued_requests: int = 256, progress: bool = False
) -> Backend:
    """Load ``config``'s model with backend ``name`` (blocking). ConfigError if unknown;
    BackendNotInstalled (a ConfigError) naming the extra if its package is missing."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")
    spec = BACKENDS[name]
    if not is_installed(name) and spec.package is not None:
        raise BackendNotInstalled(
            f"backend {name!r} needs the package {spec.package!r}, which is not installed: "
            f"{install_hint(name)}, or choose another backend"
        )
    module, _, function = spec.loader.partition(":")
    try:
        factory = getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise ConfigError(f"backend {name!r} is not part of this Minerva version") from None
    return factory(config, max_queued_requests=max_queued_requests, progress=progress)


__all__ = [
    "BACKENDS",
    "BackendNotInstalled",
    "BackendSpec",
    "install_hint",
    "is_installed",
    "probe_backend",
    "load_backend",
]
