"""The app in-process (httpx's ASGI transport, the lifespan run by hand): /health while the
model loads and after it failed, CORS only when asked for, errors shaped per API."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

from minerva.backends.base import Backend
from minerva.backends.minerva import MinervaBackend
from minerva.config import EngineConfig
from minerva.engine.llm_engine import LLMEngine
from minerva.errors import ModelLoadError
from minerva.server.app import build_app
from minerva.server.config import ServerConfig
from tests.e2e.tiny_server_model import MODEL_NAME, build_server_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_server_model(tmp_path_factory.mktemp("tiny"))


def _backend(model_dir) -> Backend:
    config = EngineConfig.from_kwargs(
        model=str(model_dir), device="cpu", dtype="float32", num_kv_blocks=256, num_threads=1
    )
    return MinervaBackend(LLMEngine(config, progress=False))


async def _with_app(app, fn):
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            return await fn(client)


def test_health_is_503_while_loading_then_200(model_dir):
    release = threading.Event()

    def slow_load() -> Backend:
        assert release.wait(60)  # the test releases it after its checks
        return _backend(model_dir)

    app = build_app(ServerConfig(served_model_name=MODEL_NAME), load_backend=slow_load)

    async def check(client):
        loading = await client.get("/health")
        models = await client.get("/v1/models")
        tags = await client.get("/api/tags")
        release.set()
        deadline = time.monotonic() + 60  # a hang guard, not a speed check
        while (ready := await client.get("/health")).status_code != 200:
            assert time.monotonic() < deadline, ready.json()
            await asyncio.sleep(0.02)
        after = await client.get("/v1/models")
        return loading, models, tags, ready, after

    loading, models, tags, ready, after = asyncio.run(_with_app(app, check))
    assert loading.status_code == 503 and loading.json() == {"status": "loading"}
    assert models.status_code == 503 and models.headers["retry-after"] == "5"
    assert models.json()["error"]["type"] == "service_unavailable_error"
    assert tags.status_code == 503 and isinstance(tags.json()["error"], str)
    assert ready.status_code == 200 and after.json()["data"][0]["id"] == MODEL_NAME


def test_a_failed_load_is_reported():
    errors = []

    def broken() -> Backend:
        raise ModelLoadError("model path '/nope' does not exist")

    app = build_app(ServerConfig(served_model_name="m"), load_backend=broken, on_load_error=errors.append)  # fmt: skip

    async def check(client):
        deadline = time.monotonic() + 60  # a hang guard, not a speed check
        while not errors and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return await client.get("/health")

    health = asyncio.run(_with_app(app, check))
    assert health.status_code == 503 and health.json()["status"] == "failed"
    assert "/nope" in health.json()["error"] and isinstance(errors[0], ModelLoadError)


@pytest.mark.parametrize("origins", [[], ["http://app.example"]])
def test_cors_only_when_configured(origins):
    app = build_app(ServerConfig(served_model_name="m", cors_origins=origins))

    async def check(client):
        return await client.options(
            "/v1/models",
            headers={"Origin": "http://app.example", "Access-Control-Request-Method": "GET"},
        )

    r = asyncio.run(_with_app(app, check))
    if origins:
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "http://app.example"
    else:
        assert "access-control-allow-origin" not in r.headers


def test_unknown_routes_use_each_apis_error_shape():
    app = build_app(ServerConfig(served_model_name="m"))

    async def check(client):
        return await client.get("/v1/nope"), await client.get("/api/nope")

    openai_404, ollama_404 = asyncio.run(_with_app(app, check))
    assert openai_404.status_code == 404 and openai_404.json()["error"]["code"] == "not_found"
    assert "/v1/embeddings" in openai_404.json()["error"]["message"]  # names what exists
    assert ollama_404.status_code == 404 and set(ollama_404.json()) == {"error"}
    assert ollama_404.json()["error"].startswith("Unknown route GET /api/nope: this server serves")


def test_ollama_model_management_answers_in_ollama_shape():
    app = build_app(ServerConfig(served_model_name="m"))

    async def check(client):
        return [
            await client.post("/api/pull", json={"model": "m"}),
            await client.post("/api/pull", json={"model": "m:latest", "stream": False}),
            await client.post("/api/pull", json={"model": "llama3"}),
            await client.post("/api/push", json={"model": "m"}),
            await client.post("/api/copy", json={"source": "m", "destination": "n"}),
            await client.request("DELETE", "/api/delete", json={"model": "m"}),
            await client.post("/api/create", json={"model": "n", "from": "m"}),
            await client.get("/v1/chat/completions"),
        ]

    stream, single, other, *refused, wrong_method = asyncio.run(_with_app(app, check))
    lines = [json.loads(line) for line in stream.text.splitlines()]
    assert stream.status_code == 200 and lines == [
        {"status": "m is already available"},
        {"status": "success"},
    ]
    assert single.status_code == 200 and single.json() == {"status": "success"}
    assert other.status_code == 400
    assert other.json()["error"].startswith("pull is not supported, models are loaded from local")
    for r, what in zip(refused, ("push", "copy", "delete", "create")):
        assert r.status_code == 400 and r.json()["error"].startswith(f"{what} is not supported")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["message"] == (
        "GET is not allowed on /v1/chat/completions; use POST"
    )
