"""The server over a Backend that is not Minerva's engine: a fake that streams fixed words.

The real openai and ollama clients talk to the app in-process; the answers, the model details
(format, quantization, digest) and /metrics must come from the fake, which proves that the
server depends on the Backend protocol only.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from minerva.backends.base import (
    Backend,
    BackendStats,
    CompletionOutput,
    ModelInfo,
    RequestOutput,
    StepInfo,
    StepObserver,
)
from minerva.errors import RequestError
from minerva.sampling_params import SamplingParams
from minerva.server.app import build_app
from minerva.server.config import ServerConfig

WORDS = ["Once", " upon", " a", " time", " there", " was", " a", " fake"]
VOCAB = sorted(set(WORDS) | {"<eos>", "hi", "hello"})
INFO = ModelInfo(
    name="fake-7b",
    source="/models/fake-7b.Q4_K_M.gguf",
    format="gguf",
    quantization="Q4_K_M",
    dtype="float16",
    parameter_count=7_241_732_096,
    weight_bytes=4_368_439_584,
    digest="f" * 64,
    context_length=4096,
    vocab_size=len(VOCAB),
    architecture="LlamaForCausalLM",
    family="mistral",
    device="cuda",
    modified_at=1_700_000_000.0,
    hidden_size=4096,
    num_layers=32,
    num_attention_heads=32,
    num_kv_heads=8,
)
STATS = BackendStats(
    num_waiting=3, num_kv_blocks=77, device_memory_used=5 << 30, model_memory_bytes=(4 << 30) + 7
)


class FakeStream:
    def __init__(self, request_id: str, prompt_ids: list[int], max_tokens: int) -> None:
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.max_tokens = max_tokens
        self.aborted = False

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        comp = CompletionOutput(index=0)
        for i, word in enumerate(WORDS[: self.max_tokens]):
            if self.aborted:
                return
            await asyncio.sleep(0)
            comp.token_ids.append(VOCAB.index(word))
            comp.text += word
            comp.delta_text, comp.delta_token_ids = word, [VOCAB.index(word)]
            last = i + 1 == min(self.max_tokens, len(WORDS))
            if last:
                comp.finish_reason = "length" if self.max_tokens <= len(WORDS) else "stop"
            yield RequestOutput(self.request_id, None, self.prompt_ids, [comp], finished=last)

    def abort(self) -> None:
        self.aborted = True


class FakeBackend:
    """A Backend that tokenizes by whole words and always answers WORDS."""

    def __init__(self) -> None:
        self.observer: StepObserver | None = None
        self.running = False
        self.requests: list[tuple[list[int], SamplingParams]] = []

    def start(self) -> None:
        self.running = True

    async def drain(self, timeout: float) -> int:
        return 0

    async def shutdown(self, timeout: float = 5.0) -> bool:
        self.running = False
        return True

    @property
    def is_running(self) -> bool:
        return self.running

    async def add_request(
        self, prompt, params, request_id=None, prompt_token_ids=None, arrival_time=None, stream=True
    ) -> FakeStream:
        ids = prompt_token_ids if prompt_token_ids is not None else self.encode(prompt)
        self.requests.append((ids, params))
        if self.observer is not None:
            self.observer.on_step(StepInfo(0.01, len(ids), 0, 1), [])
        return FakeStream(request_id or "fake", ids, params.max_tokens or len(WORDS))

    def abort(self, request_id: str) -> None:
        pass

    def check_capacity(self, num_seqs: int = 1, pending: int = 0) -> None:
        pass

    async def score(self, token_ids: list[int]) -> list[float]:
        return [0.0] * (len(token_ids) - 1)

    async def prompt_logprobs(self, token_ids: list[int], num_top: int = 0) -> list:
        raise NotImplementedError("not used by these tests")

    def set_observer(self, observer: StepObserver | None) -> None:
        self.observer = observer

    def stats(self) -> BackendStats:
        return STATS

    def model_info(self, digest: bool = True) -> ModelInfo:
        return INFO

    max_model_len = INFO.context_length
    vocab_size = INFO.vocab_size

    has_tokenizer = True
    chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    eos_token_ids = [VOCAB.index("<eos>")]

    def encode(self, text: str) -> list[int]:
        return [VOCAB.index(w) if w in VOCAB else 0 for w in text.split()]

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(VOCAB[t] for t in token_ids)

    def apply_chat_template(self, messages, add_generation_prompt=True) -> list[int]:
        return self.encode(" ".join(m["content"] for m in messages))

    def default_sampling_params(self, **overrides: Any) -> SamplingParams:
        return SamplingParams(**{"temperature": 0.0, **overrides})


def _serve(fn):
    """Run ``fn(http_client)`` against the app over a started FakeBackend."""
    backend = FakeBackend()
    assert isinstance(backend, Backend)
    app = build_app(ServerConfig(served_model_name="fake"), backend=backend)

    async def main():
        async with app.router.lifespan_context(app):
            return await fn(httpx.ASGITransport(app=app)), backend

    return asyncio.run(main())


def test_openai_client_streams_the_backends_tokens():
    async def check(transport):
        http = httpx.AsyncClient(transport=transport)
        client = openai.AsyncOpenAI(base_url="http://localhost/v1", api_key="x", http_client=http)
        messages = [{"role": "user", "content": "hello"}]
        whole = await client.chat.completions.create(model="fake", messages=messages, max_tokens=5)
        chunks = await client.chat.completions.create(model="fake", messages=messages, stream=True)
        streamed = [c.choices[0].delta.content async for c in chunks if c.choices]
        models = await client.models.list()
        return whole, streamed, models.data

    (whole, streamed, models), backend = _serve(check)
    assert whole.choices[0].message.content == "".join(WORDS[:5])
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 5
    assert "".join(s for s in streamed if s) == "".join(WORDS)
    assert backend.requests[0][0] == [VOCAB.index("hello")]  # its own chat template and encode
    card = models[0].model_dump()
    assert card["id"] == "fake" and card["max_model_len"] == INFO.context_length
    assert (card["format"], card["quantization"], card["digest"]) == ("gguf", "Q4_K_M", "f" * 64)


def test_ollama_client_and_model_details_come_from_model_info():
    async def check(transport):
        client = ollama.AsyncClient(host="http://localhost", transport=transport)
        reply = await client.chat("fake", messages=[{"role": "user", "content": "hi"}])
        generated = [c.response async for c in await client.generate("fake", "hi", stream=True)]
        return reply, generated, await client.show("fake"), await client.list(), await client.ps()

    (reply, generated, show, tags, ps), _ = _serve(check)
    assert reply.message.content == "".join(WORDS) and "".join(generated) == "".join(WORDS)
    assert show.details.format == "gguf" and show.details.quantization_level == "Q4_K_M"
    assert show.details.family == "mistral" and show.details.parameter_size == "7.2B"
    assert show.modelinfo["general.parameter_count"] == INFO.parameter_count
    assert show.modelinfo["mistral.context_length"] == 4096
    assert show.modelinfo["mistral.attention.head_count_kv"] == 8
    assert show.template == FakeBackend.chat_template
    (entry,) = tags.models
    assert entry.digest == "f" * 64 and entry.size == INFO.weight_bytes
    assert entry.details.format == "gguf" and entry.modified_at.year == 2023
    (loaded,) = ps.models
    # /api/ps: the model's own memory (weights + KV + activations), all on the GPU here.
    assert loaded.size_vram == loaded.size == STATS.model_memory_bytes
    assert loaded.context_length == 4096


def test_metrics_read_the_backends_stats_and_steps():
    async def check(transport):
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            body = {"model": "fake", "prompt": "hi", "max_tokens": 2}
            assert (await client.post("/v1/completions", json=body)).status_code == 200
            return (await client.get("/metrics")).text

    text, _ = _serve(check)
    assert "minerva_requests_waiting 3.0" in text and "minerva_kv_cache_blocks_total 77.0" in text
    assert "minerva_batch_size_count 1.0" in text  # the observer the server set on the backend
    assert "minerva_device_memory_used_bytes 5.36870912e+09" in text


def test_a_backend_request_error_is_a_400():
    class Refusing(FakeBackend):
        async def add_request(self, *args, **kwargs):
            raise RequestError("prompt too long for this fake", code="context_length_exceeded")

    app = build_app(ServerConfig(served_model_name="fake"), backend=Refusing())

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://localhost"
            ) as client:
                body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
                return await client.post("/v1/chat/completions", json=body)

    r = asyncio.run(main())
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_the_server_imports_no_engine_internals_and_no_torch():
    code = (
        "import sys, json, minerva.server.app, minerva.server.serve;"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith(("
        "'minerva.engine.llm_engine', 'minerva.engine.async_engine', 'minerva.scheduler',"
        "'minerva.cache', 'minerva.runner')))))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    cmd = [sys.executable, "-c", code]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize("path", ["/v1/models", "/api/tags"])
def test_model_listing_is_503_before_the_backend_is_loaded(path):
    app = build_app(ServerConfig(served_model_name="fake"))

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://localhost"
            ) as client:
                return await client.get(path)

    assert asyncio.run(main()).status_code == 503
