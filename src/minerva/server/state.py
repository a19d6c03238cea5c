"""What the routes share: settings, metrics and the Backend once it is loaded.

Its own module so that app.py (which builds the app and includes the routers) and the route
modules (which read the state) both import it and not each other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from starlette.requests import Request

from minerva.backends.base import Backend, ModelInfo
from minerva.errors import EngineDrainingError, EngineUnavailableError
from minerva.server.api_errors import model_not_found
from minerva.server.background import in_daemon_thread
from minerva.server.config import ServerConfig
from minerva.server.metrics import ServerMetrics

logger = logging.getLogger(__name__)


@dataclass
class ServerState:
    """The app's shared state (``app.state.minerva``)."""

    config: ServerConfig
    metrics: ServerMetrics
    backend: Backend | None = None
    draining: bool = False
    load_error: str | None = None
    num_seqs_tokenizing: int = 0
    """Sequences of requests being tokenized: they count against admission already."""
    engine_failure: str | None = None
    """Why the engine stopped on its own (a crash or a hung step); the server exits non-zero."""
    engine_stuck: bool = False
    """The engine thread did not stop at shutdown (inside a hung step): exit without waiting."""
    created: int = field(default_factory=lambda: int(time.time()))
    _model_info: asyncio.Future | None = field(default=None, repr=False)

    @property
    def model_name(self) -> str:
        return self.config.served_model_name

    def ready_backend(self) -> Backend:
        """The backend, or 503 while loading, draining or after a failure."""
        if self.draining:
            raise EngineDrainingError(
                "the server is shutting down; retry on another instance", retry_after=5
            )
        if self.load_error is not None:
            raise EngineUnavailableError(f"the model failed to load: {self.load_error}")
        if self.backend is None:
            raise EngineUnavailableError("the model is still loading; retry shortly", retry_after=5)
        return self.backend

    def start_model_info(self) -> None:
        """Compute the backend's model_info() once, in the background: its digest reads every
        weight byte (seconds per GB), which must hold up neither readiness nor the loop."""
        if self._model_info is None and self.backend is not None:
            work = in_daemon_thread(self.backend.model_info, name="minerva-model-info")
            self._model_info = asyncio.ensure_future(work)
            self._model_info.add_done_callback(_log_failure)

    async def model_info(self) -> ModelInfo:
        """The backend's ModelInfo (503 until loaded); waits for the first computation."""
        self.ready_backend()
        self.start_model_info()
        assert self._model_info is not None
        return await asyncio.shield(self._model_info)  # a client going away cancels only itself

    def check_model(self, name: str) -> None:
        """404 model_not_found unless ``name`` is the served model (":latest" tag allowed)."""
        if name not in (self.model_name, f"{self.model_name}:latest"):
            raise model_not_found(name, self.model_name)


def get_state(request: Request) -> ServerState:
    return request.app.state.minerva


def _log_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("reading the model's details failed: %s", future.exception())
