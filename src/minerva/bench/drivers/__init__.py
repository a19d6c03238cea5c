"""Drivers: how the offline benchmarks run an engine in this process (base.py).

Every registered Backend (``minerva.backends.BACKENDS``) is benchmarked through the Backend
protocol by one generic driver (backend_driver.py); Hugging Face transformers, the reference
every engine is compared to, has a driver of its own. The ``--backend`` flag names either.
"""

from __future__ import annotations

import importlib

from minerva.backends import BACKENDS as SERVING_BACKENDS
from minerva.backends import BackendNotInstalled
from minerva.bench.drivers.base import OfflineDriver
from minerva.errors import ConfigError

REFERENCE_DRIVERS: dict[str, str] = {
    "transformers": "minerva.bench.drivers.transformers_driver:TransformersDriver",
}
"""name -> 'module:class' of an OfflineDriver for an engine that is not a Backend."""

DRIVERS: list[str] = [*SERVING_BACKENDS, *REFERENCE_DRIVERS]
"""Every name ``--backend`` accepts."""


def installed_drivers() -> list[str]:
    """The engines a bare --backend runs: Minerva's own and the reference drivers whose
    package is importable (other backends run when named: they may need a format conversion)."""
    import importlib.util  # noqa: PLC0415

    def importable(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError, AttributeError):  # e.g. sys.modules[name] is None
            return False

    return ["minerva", *(n for n in REFERENCE_DRIVERS if importable(n))]


def load_driver(name: str, model: str, **kwargs) -> OfflineDriver:
    """Load ``model`` with engine ``name`` (kwargs: device, dtype, num_threads, options)."""
    if name in SERVING_BACKENDS:
        from minerva.bench.drivers.backend_driver import BackendDriver  # noqa: PLC0415

        return BackendDriver(name, model, **kwargs)
    if name not in REFERENCE_DRIVERS:
        raise ConfigError(f"unknown backend {name!r}: choose from {', '.join(DRIVERS)}")
    module, _, cls = REFERENCE_DRIVERS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)(model, **kwargs)
    except ImportError as e:
        if e.name is None or e.name.startswith("minerva"):  # a bug of ours, not a missing package
            raise
        raise BackendNotInstalled(
            f"backend {name!r} needs the package {e.name!r}, which is not installed: "
            f"pip install {e.name}, or leave {name} out of --backend"
        ) from None


__all__ = ["DRIVERS", "BackendNotInstalled", "OfflineDriver", "installed_drivers", "load_driver"]
