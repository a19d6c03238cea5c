"""What the routes share: settings, metrics and the Backend once it is loaded.

Its own module so that app.py (which builds the app and includes the routers) and the route
modules (which read the state) both import it and not each other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request

from minerva.backends.base import Backend, ModelInfo
from minerva.errors import EngineDrainingError, EngineUnavailableError
from minerva.server.api_errors import model_not_found
from minerva.server.background import in_daemon_thread
from minerva.server.config import ServerConfig
from minerva.server.metrics import ServerMetrics

if TYPE_CHECKING:
    from minerva.server.model_registry import ModelRegistry

logger = logging.getLogger(__name__)
LEASES = "minerva.leases"
"""The ASGI scope key of the model leases a request holds (released by ModelLeaseMiddleware)."""


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
    registry: ModelRegistry | None = None
    """Set with --models-dir: models by name, loaded on demand (``backend`` stays None)."""
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

    async def backend_for(
        self, request: Request, name: str, keep_alive: float | int | str | None = None
    ) -> Backend:
        """The backend serving model ``name`` for this request: the one model (404 for another
        name), or with --models-dir that model, loaded if needed and held until the response
        ends. ``keep_alive``: Ollama's, for --models-dir."""
        if self.registry is None:
            backend = self.ready_backend()
            self.check_model(name)
            return backend
        if self.draining:
            raise EngineDrainingError("the server is shutting down; retry on another instance")
        lease = await self.registry.acquire(name, keep_alive)
        leases = request.scope.get(LEASES)
        if leases is None:  # no middleware to release it (a bare app): release at once
            lease.release()
        else:
            leases.append(lease)
        return lease.backend

    def response_name(self, name: str) -> str:
        """The model name responses carry: the served name, or the one the client asked for."""
        return self.model_name if self.registry is None else name

    def backends(self) -> list[Backend]:
        """Every backend in memory."""
        if self.registry is not None:
            return [m.backend for m in self.registry.loaded()]
        return [self.backend] if self.backend is not None else []

    def check_model(self, name: str) -> None:
        """404 model_not_found unless ``name`` is the served model (":latest" tag allowed)."""
        if name not in (self.model_name, f"{self.model_name}:latest"):
            raise model_not_found(name, self.model_name)


def get_state(request: Request) -> ServerState:
    return request.app.state.minerva


class ModelLeaseMiddleware:
    """Releases the model leases a request took once its response is sent (the whole stream):
    --models-dir unloads a model only when no response still uses it."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[LEASES] = leases = []
        try:
            await self.app(scope, receive, send)
        finally:
            for lease in leases:
                lease.release()


def _log_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("reading the model's details failed: %s", future.exception())
