"""The FastAPI app: middlewares, error handlers, /health, /metrics and the API routers.

The backend loads in the background after the server starts, so /health can say 503 "loading"
(and later "draining") while the port is already open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from minerva import __version__
from minerva.backends.base import Backend
from minerva.errors import EngineUnavailableError, MinervaError
from minerva.server.api_errors import APIError, error_response, routing_error, to_api_error
from minerva.server.background import in_daemon_thread
from minerva.server.body_timeout import BodyTimeoutMiddleware
from minerva.server.browser_guards import HostCheckMiddleware, JSONContentTypeMiddleware
from minerva.server.config import ServerConfig
from minerva.server.embedding_routes import router as embedding_router
from minerva.server.generation import ClientDisconnected
from minerva.server.host_metrics import HostCollector
from minerva.server.keep_alive import parse_keep_alive
from minerva.server.metrics import HTTPMetricsMiddleware, ServerMetrics, sum_stats
from minerva.server.model_dir import LocalModel
from minerva.server.model_metrics import ModelCollector
from minerva.server.model_registry import ModelRegistry
from minerva.server.ollama_model_routes import router as ollama_model_router
from minerva.server.ollama_routes import router as ollama_router
from minerva.server.openai_routes import router as openai_router
from minerva.server.openapi import openapi_document
from minerva.server.security import (
    APIKeyMiddleware,
    BodySizeLimitMiddleware,
    CORSMiddleware,
    cors_middleware_options,
)
from minerva.server.state import ModelLeaseMiddleware, ServerState
from minerva.server.thread_pool import start_thread_pool

logger = logging.getLogger(__name__)

UNGATED_PATHS = frozenset({"/health", "/metrics"})
"""Routes that keep answering while the server drains."""

DRAIN_RETRY_AFTER_S = 5
"""Retry-After of a draining server's 503: a restart or another instance takes seconds."""
SUPERVISE_PERIOD_S = 0.25
"""How often the app checks that its engine still runs (a crash or a hung step)."""
ENGINE_STOP_TIMEOUT_S = 0.5
"""How long the app waits for the engine thread at exit: it only has to finish one step."""


class DrainGateMiddleware:
    """While draining, new requests get 503 (in-flight ones were admitted before)."""

    def __init__(self, app, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.state.draining and scope["path"] not in UNGATED_PATHS:
            self.state.metrics.requests_rejected.labels("draining").inc()
            err = APIError(
                503, "the server is shutting down; retry on another instance", code="draining",
                headers={"Retry-After": str(DRAIN_RETRY_AFTER_S)},
            )  # fmt: skip
            await error_response(scope["path"], err)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _error_handler(state: ServerState):
    async def handle(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ClientDisconnected):
            return Response(status_code=499)  # nobody reads it; the status shows in metrics
        if isinstance(exc, EngineUnavailableError):
            state.metrics.requests_rejected.labels(exc.reason).inc()
        if isinstance(exc, StarletteHTTPException):
            err = routing_error(request.method, request.url.path, exc)
        else:
            err = to_api_error(exc)
        return error_response(request.url.path, err)

    return handle


def build_app(
    config: ServerConfig,
    backend: Backend | None = None,
    load_backend: Callable[[], Backend] | None = None,
    on_load_error: Callable[[BaseException], None] | None = None,
    *,
    load_model: Callable[[LocalModel], Backend] | None = None,
    memory_limit: int | None = None,
    clock: Callable[[], float] = time.time,
    reap_interval: float | None = 1.0,
    after_unload: Callable[[], None] = lambda: None,
    on_engine_failure: Callable[[str], None] | None = None,
) -> FastAPI:
    """The app over a loaded ``backend`` (started here), or one that loads it with
    ``load_backend`` (blocking, run in a thread) at startup; or, with ``config.models_dir``,
    the directory's models, each loaded by ``load_model`` on demand within ``memory_limit``
    (``clock``: keep_alive's time; ``reap_interval`` None: unload expired models only when
    ``registry.reap()`` is called). ``on_engine_failure`` is called once if the engine of a
    single-model server stops on its own (a crash or a hung step): the caller exits non-zero."""
    metrics = ServerMetrics()
    state = ServerState(config=config, metrics=metrics)
    if config.models_dir is not None:
        assert load_model is not None, "models_dir needs a load_model"
        state.registry = _registry(config, metrics, load_model, memory_limit, clock, after_unload)
        metrics.attach_stats(lambda: sum_stats([b.stats() for b in state.backends()]))
    metrics.registry.register(ModelCollector(state))
    metrics.registry.register(HostCollector())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        pool = await start_thread_pool()
        tasks = []
        if backend is not None:
            _install(state, backend)
        elif load_backend is not None:
            tasks.append(asyncio.create_task(_load(state, load_backend, on_load_error)))
        if state.registry is not None and reap_interval is not None:
            tasks.append(asyncio.create_task(state.registry.run_reaper(reap_interval)))
        tasks.append(asyncio.create_task(_supervise(state, on_engine_failure)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            if state.backend is not None:
                stopped = await state.backend.shutdown(ENGINE_STOP_TIMEOUT_S)
                state.engine_stuck = stopped is False
            if state.registry is not None:
                await state.registry.shutdown()
            pool.shutdown(wait=False)

    app = FastAPI(
        title="Minerva", version=__version__, lifespan=lifespan,
        docs_url=None, redoc_url=None, openapi_url=None,  # /openapi.json below, key-checked
    )  # fmt: skip
    app.state.minerva = state
    handler = _error_handler(state)
    handled = (APIError, MinervaError, ValidationError, ClientDisconnected)
    for exc_class in (*handled, StarletteHTTPException):
        app.add_exception_handler(exc_class, handler)
    # The catch-all: Starlette hands it to its outermost middleware, so even an error raised in
    # a middleware answers in the API's JSON shape instead of plain-text "Internal Server Error".
    app.add_exception_handler(Exception, handler)

    # add_middleware puts each one outside the previous: the last added runs first.
    app.add_middleware(BodyTimeoutMiddleware, timeout=config.body_timeout)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=config.max_body_bytes)
    if config.effective_api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=config.effective_api_key)
    app.add_middleware(ModelLeaseMiddleware)
    app.add_middleware(DrainGateMiddleware, state=state)
    app.add_middleware(JSONContentTypeMiddleware)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, **cors_middleware_options(config.cors_origins))
    if config.is_loopback:
        app.add_middleware(HostCheckMiddleware, allowed=config.allowed_hosts)
    app.add_middleware(HTTPMetricsMiddleware, metrics=metrics)

    app.include_router(openai_router)
    app.include_router(ollama_router)
    app.include_router(embedding_router)
    app.include_router(ollama_model_router)

    @app.get("/health")
    async def health() -> Response:
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if state.registry is not None:  # models load on demand: ready once listening
            return JSONResponse({"status": "ok"})
        if state.load_error is not None:
            return JSONResponse({"status": "failed", "error": state.load_error}, status_code=503)
        if state.backend is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        if not state.backend.is_running:
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:  # behind the API key when one is set
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app)
        return JSONResponse(app.openapi_schema)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _supervise(state: ServerState, on_failure: Callable[[str], None] | None) -> None:
    """Report once when the engine stops without being asked (crash, watchdog)."""
    while True:
        await asyncio.sleep(SUPERVISE_PERIOD_S)
        backend = state.backend
        if backend is None or state.draining or backend.is_running:
            continue
        state.engine_failure = "the engine stopped (a crash or a hung step; see the log above)"
        logger.error("%s: failing the server", state.engine_failure)
        if on_failure is not None:
            on_failure(state.engine_failure)
        return


def _registry(config, metrics, load_model, memory_limit, clock, after_unload) -> ModelRegistry:
    def install(backend: Backend) -> None:
        backend.set_observer(metrics)
        backend.start()

    return ModelRegistry(
        Path(config.models_dir), load_model, install=install, memory_limit=memory_limit,
        keep_alive=parse_keep_alive(config.keep_alive, 300.0),
        load_timeout=config.model_load_timeout, clock=clock, after_unload=after_unload,
    )  # fmt: skip


def _install(state: ServerState, backend: Backend) -> None:
    backend.set_observer(state.metrics)
    state.metrics.attach(backend)
    backend.start()
    state.backend = backend
    state.start_model_info()


async def _load(state: ServerState, load_backend: Callable[[], Backend], on_error) -> None:
    try:
        backend = await in_daemon_thread(load_backend)
    except Exception as e:  # noqa: BLE001 - reported on /health and by the CLI
        state.load_error = str(e)
        if on_error is not None:
            on_error(e)
        else:
            logger.error("loading the model failed: %s", e)
        return
    _install(state, backend)
    logger.info("model loaded; serving %r", state.model_name)
