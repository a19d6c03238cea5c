"""The in-process harness of the input-hardening scenarios (test_input_*, test_model_files_*):
the app over a real tiny model or the fake backend, driven through httpx's ASGI transport with
the lifespan run by hand, and the one figure line each scenario prints."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from minerva.backends.base import Backend
from minerva.backends.minerva import MinervaBackend
from minerva.config import EngineConfig
from minerva.engine.llm_engine import LLMEngine
from minerva.server.app import build_app
from minerva.server.config import ServerConfig
from tests.e2e.tiny_server_model import MODEL_NAME

GENERATION_ROUTES = {  # route -> a minimal valid body
    "/v1/chat/completions": {
        "model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
    },
    "/v1/completions": {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 2},
    "/api/generate": {"model": MODEL_NAME, "prompt": "hi", "stream": False,
                      "options": {"num_predict": 2}},
    "/api/chat": {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}],
                  "stream": False, "options": {"num_predict": 2}},
}  # fmt: skip
EMBEDDING_ROUTES = {
    "/v1/embeddings": {"model": MODEL_NAME, "input": "hi"},
    "/api/embed": {"model": MODEL_NAME, "input": "hi"},
}


def figure(scenario: str, text: str) -> None:
    """The scenario's one figure line (docs/reliability.md quotes the latest)."""
    print(f"\n[reliability] {scenario}: {text}")


def tiny_backend(model_dir: Path) -> Backend:
    config = EngineConfig.from_kwargs(
        model=str(model_dir), device="cpu", dtype="float32", num_kv_blocks=256, num_threads=1
    )
    return MinervaBackend(LLMEngine(config, progress=False))


def serve(
    backend: Backend,
    fn: Callable[[httpx.AsyncClient], Awaitable[Any]],
    config: ServerConfig | None = None,
    base_url: str = "http://localhost",
) -> Any:
    """``fn(client)`` against the app over a started ``backend``; the backend is shut down after."""
    app = build_app(config or ServerConfig(served_model_name=MODEL_NAME), backend=backend)

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
                return await fn(client)

    return asyncio.run(main())


def api_shaped(path: str, response: httpx.Response) -> bool:
    """True when an error answer is JSON in the route's API shape (Ollama: {"error": "..."};
    OpenAI: {"error": {"message", "type", "param", "code"}})."""
    if not response.headers.get("content-type", "").startswith("application/json"):
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    if path.startswith("/api/"):
        return isinstance(error, str) and bool(error)
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)
