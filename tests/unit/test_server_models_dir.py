"""The app with ``models_dir`` over fake backends: the real ollama and openai clients list,
show and chat with two models at once; a request holds its model until its response has been
sent (an unload waits); keep_alive 0 and the empty-prompt unload; /metrics counts models."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading

import httpx
import ollama
import openai

from minerva.server.app import build_app
from minerva.server.config import ServerConfig
from tests.unit.test_model_registry import MB, Clock, Loader, SizedBackend, make_dir
from tests.unit.test_server_fake_backend import WORDS, FakeStream


class GatedStream(FakeStream):
    """Streams WORDS once ``gate`` is set (counted in flight until it finishes)."""

    def __init__(self, backend, *args) -> None:
        super().__init__(*args)
        self.backend = backend

    async def __aiter__(self):
        self.backend.in_flight += 1
        try:
            await self.backend.gate.wait()
            async for out in super().__aiter__():
                yield out
        finally:
            self.backend.in_flight -= 1


class GatedBackend(SizedBackend):
    def __init__(self, name: str, memory: int) -> None:
        super().__init__(name, memory)
        self.gate = asyncio.Event()
        self.gate.set()

    async def add_request(self, prompt, params, request_id=None, prompt_token_ids=None, *a, **k):
        await super().add_request(prompt, params, request_id, prompt_token_ids)
        ids = self.requests[-1][0]
        return GatedStream(self, request_id or "fake", ids, params.max_tokens or len(WORDS))


class GatedLoader(Loader):
    def __call__(self, model):
        self.loads.append(model.name)
        if self.gate is not None:
            assert self.gate.wait(60), "the test never opened the load gate"
        backend = GatedBackend(model.name, self.memory.get(model.name.split(":")[0], MB))
        self.backends[model.name] = backend
        return backend


def serve(tmp_path, fn, **config):
    loader, clock = GatedLoader({"a": 10 * MB, "b": 20 * MB}), Clock()
    make_dir(tmp_path, {"a": 10 * MB, "b": 20 * MB})
    app = build_app(
        ServerConfig(models_dir=str(tmp_path), **config),
        load_model=loader, clock=clock, reap_interval=None,
    )  # fmt: skip
    state = app.state.minerva

    async def main():
        async with app.router.lifespan_context(app):
            return await fn(httpx.ASGITransport(app=app), state.registry, loader)

    return asyncio.run(main())


def test_ollama_client_lists_shows_and_chats_with_two_models_at_once(tmp_path):
    async def check(transport, registry, loader):
        client = ollama.AsyncClient(host="http://localhost", transport=transport)
        before = await client.ps()
        chats = await asyncio.gather(
            *(client.chat(m, messages=[{"role": "user", "content": "hi"}]) for m in "abab")
        )
        return before, chats, await client.list(), await client.ps(), await client.show("b")

    before, chats, tags, ps, show = serve(tmp_path, check)
    assert before.models == []  # nothing loaded until asked
    assert [c.message.content for c in chats] == ["".join(WORDS)] * 4
    assert [c.model for c in chats] == list("abab")
    listed = {m.model: m for m in tags.models}
    assert sorted(listed) == ["a:latest", "b:latest"]
    assert listed["a:latest"].size == 10 * MB and listed["a:latest"].digest.startswith("sha256:")
    assert listed["a:latest"].digest != listed["b:latest"].digest
    running = {m.model: m for m in ps.models}
    # size: the backend's own figure; the fake runs on "cuda", so all of it is VRAM.
    assert running["b:latest"].size == running["b:latest"].size_vram == 20 * MB
    expires = running["a:latest"].expires_at
    assert expires == dt.datetime.fromtimestamp(Clock().now + 300, dt.timezone.utc)
    assert show.details.format == "gguf" and show.modelinfo["general.architecture"] == "mistral"


def test_openai_client_lists_and_names_the_model_asked_for(tmp_path):
    async def check(transport, registry, loader):
        http = httpx.AsyncClient(transport=transport)
        client = openai.AsyncOpenAI(base_url="http://localhost/v1", api_key="x", http_client=http)
        reply = await client.chat.completions.create(
            model="b", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        return reply, await client.models.list(), loader.loads

    reply, models, loads = serve(tmp_path, check)
    assert reply.model == "b" and reply.choices[0].message.content == "".join(WORDS[:3])
    assert [m.id for m in models.data] == ["a:latest", "b:latest"] and loads == ["b:latest"]


def test_unload_waits_until_the_streamed_response_is_sent(tmp_path):
    async def check(transport, registry, loader):
        http = httpx.AsyncClient(transport=transport, base_url="http://localhost")
        (await http.post("/api/generate", json={"model": "a"})).raise_for_status()  # load
        backend = loader.backends["a:latest"]
        backend.gate.clear()
        body = {"model": "a", "prompt": "hi", "stream": True}
        reply = asyncio.ensure_future(http.post("/api/generate", json=body))
        while backend.in_flight == 0:
            await asyncio.sleep(0)
        unload = asyncio.ensure_future(registry.unload("a"))
        for _ in range(50):
            await asyncio.sleep(0)
        held = (unload.done(), backend.events[:])
        backend.gate.set()
        response = await reply
        await unload
        return held, response, backend.events, registry.loaded()

    (unloaded_early, events_early), response, events, loaded = serve(tmp_path, check)
    assert not unloaded_early and events_early == []
    chunks = [line for line in response.text.splitlines() if line]
    assert '"done": true' in chunks[-1] and len(chunks) == len(WORDS) + 1  # nothing cut
    assert events == ["shutdown"] and loaded == []


def test_keep_alive_zero_and_the_empty_prompt_unload(tmp_path):
    async def check(transport, registry, loader):
        http = httpx.AsyncClient(transport=transport, base_url="http://localhost")
        body = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        await http.post("/api/chat", json={**body, "keep_alive": 0})
        while registry.loaded():
            await asyncio.sleep(0)
        await http.post("/api/chat", json={**body, "keep_alive": "1h"})
        ps = (await http.get("/api/ps")).json()["models"]
        unload = (await http.post("/api/generate", json={"model": "a", "keep_alive": 0})).json()
        bad = await http.post("/api/chat", json={**body, "keep_alive": "soon"})
        metrics = (await http.get("/metrics")).text
        return ps, unload, registry.loaded(), loader.loads, bad, metrics

    ps, unload, loaded, loads, bad, metrics = serve(tmp_path, check)
    assert loads == ["a:latest", "a:latest"]  # unloaded after the first request, then reloaded
    expires = dt.datetime.fromisoformat(ps[0]["expires_at"]).timestamp()
    assert expires == Clock().now + 3600
    assert unload["done_reason"] == "unload" and loaded == []
    assert bad.status_code == 400 and "keep_alive" in bad.json()["error"]
    assert "minerva_models_loaded 0.0" in metrics
    assert 'minerva_model_unloads_total{reason="expired"} 1.0' in metrics
    assert 'minerva_model_unloads_total{reason="request"} 1.0' in metrics
    assert "minerva_model_loads_total 2.0" in metrics


def test_unknown_model_is_a_404_naming_the_models(tmp_path):
    async def check(transport, registry, loader):
        http = httpx.AsyncClient(transport=transport, base_url="http://localhost")
        body = {"model": "c", "messages": [{"role": "user", "content": "hi"}]}
        return await http.post("/api/chat", json=body), await http.get("/health")

    missing, health = serve(tmp_path, check)
    assert missing.status_code == 404
    assert "'a:latest, b:latest'" in missing.json()["error"]
    assert health.json() == {"status": "ok"}  # ready without any model loaded


def test_a_model_being_loaded_shows_in_ps_and_its_requests_wait(tmp_path):
    async def check(transport, registry, loader):
        loader.gate = threading.Event()
        http = httpx.AsyncClient(transport=transport, base_url="http://localhost")
        body = {"model": "b", "prompt": "hi", "stream": False}
        reply = asyncio.ensure_future(http.post("/api/generate", json=body))
        while not registry.loading():
            await asyncio.sleep(0)
        during = (await http.get("/api/ps")).json()["models"]
        waiting = reply.done()
        loader.gate.set()
        return during, waiting, await reply, (await http.get("/api/ps")).json()["models"]

    during, done_early, reply, after = serve(tmp_path, check)
    assert [(m["name"], m.get("loading"), m["size"]) for m in during] == [
        ("b:latest", True, 20 * MB)  # the estimate: its weights on disk
    ]
    assert "expires_at" not in during[0] and not done_early
    assert reply.status_code == 200 and reply.json()["response"] == "".join(WORDS)
    assert "loading" not in after[0] and after[0]["expires_at"]
