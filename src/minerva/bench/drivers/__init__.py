"""Drivers: how the offline benchmarks run an engine in this process (base.py).

Every registered Backend (``minerva.backends.BACKENDS``) is benchmarked through the Backend
protocol by one generic driver (backend_driver.py); Hugging Face transformers, the reference
every engine is compared to, has a driver of its own. The ``--backend`` flag names either.
"""

from __future__ import annotations

import importlib

from minerva.backends import BACKENDS as SERVING_BACKENDS
from minerva.bench.drivers.base import OfflineDriver
from minerva.errors import ConfigError

REFERENCE_DRIVERS: dict[str, str] = {
    "transformers": "minerva.bench.drivers.transformers_driver:TransformersDriver",
}
"""name -> 'module:class' of an OfflineDriver for an engine that is not a Backend."""

DRIVERS: list[str] = [*SERVING_BACKENDS, *REFERENCE_DRIVERS]
"""Every name ``--backend`` accepts."""


def load_driver(name: str, model: str, **kwargs) -> OfflineDriver:
    """Load ``model`` with engine ``name`` (kwargs: device, dtype, num_threads, options)."""
    if name in SERVING_BACKENDS:
        from minerva.bench.drivers.backend_driver import BackendDriver  # noqa: PLC0415

        return BackendDriver(name, model, **kwargs)
    if name not in REFERENCE_DRIVERS:
        raise ConfigError(f"unknown backend {name!r}: choose from {', '.join(DRIVERS)}")
    module, _, cls = REFERENCE_DRIVERS[name].partition(":")
    try:
        driver = getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise ConfigError(
            f"backend {name!r} needs the package {e.name!r}, which is not installed: "
            f"pip install {e.name}, or leave {name} out of --backend"
        ) from None
    return driver(model, **kwargs)


__all__ = ["DRIVERS", "OfflineDriver", "load_driver"]
