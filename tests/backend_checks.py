"""Checks every backend must pass, shared by the per-backend test files: generate, stream,
abort, stop strings, seeds, the official openai / ollama clients in-process, and greedy
agreement with a reference token list (Minerva's engine on the same weights)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from minerva.backends import load_backend
from minerva.backends.base import Backend
from minerva.backends.blocking import BlockingBackend
from minerva.config import EngineConfig
from minerva.sampling_params import SamplingParams

PROMPT = "The quick brown fox"
SERVED = "tiny"


def blocking(name: str, model: Path, **kwargs: Any) -> BlockingBackend:
    config = EngineConfig.from_kwargs(**{"model": str(model), "device": "cpu", **kwargs})
    return BlockingBackend(load_backend(name, config))


def minerva_greedy(model: Path, prompt_ids: list[int], n: int, **kwargs: Any) -> list[int]:
    """The reference: Minerva's own engine, float32 on the CPU, greedy."""
    kwargs = {"dtype": "float32", "num_kv_blocks": 64, **kwargs}
    b = blocking("minerva", model, **kwargs)
    try:
        return greedy(b, prompt_ids, n)
    finally:
        b.close()


def greedy(b: BlockingBackend, prompt_ids: list[int], n: int) -> list[int]:
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    (out,) = b.generate([prompt_ids], [params])
    return list(out.token_ids)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def check_stream_equals_generate(b: BlockingBackend, ids: list[int]) -> None:
    """Streamed deltas add up to the one-shot output, token by token and in text."""
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    (whole,) = b.generate([ids], [params])
    outs = list(b.stream(ids, params))
    tokens = [t for o in outs for t in o.outputs[0].delta_token_ids]
    assert tokens == list(whole.token_ids) and len(tokens) == 12
    assert "".join(o.outputs[0].delta_text for o in outs) == whole.text
    assert outs[-1].finished and outs[-1].finish_reason == "length"
    assert all(not o.finished for o in outs[:-1]) and len(outs) >= 2


def check_abort(b: BlockingBackend, ids: list[int]) -> None:
    """Closing a stream after two outputs aborts the request: nothing stays in flight and the
    next request runs."""
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    stream = b.stream(ids, params)
    got = [next(stream), next(stream)]
    stream.close()  # BlockingBackend.stream aborts in its finally
    assert all(not o.finished for o in got)
    for _ in range(1000):  # the engine thread applies the abort between steps (hang guard)
        stats = b.backend.stats()
        if stats.num_requests_in_flight == stats.num_running == stats.num_waiting == 0:
            break
        b.run(asyncio.sleep(0.01))
    assert stats.num_requests_in_flight == 0 and stats.num_running == stats.num_waiting == 0
    assert greedy(b, ids, 3)  # still serving


def check_stop_string(b: BlockingBackend, ids: list[int]) -> None:
    """A stop string cut from the greedy text ends the output before it (stop_reason = it)."""
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    (full,) = b.generate([ids], [params])
    text = full.text
    stop = next(
        text[i : i + 2] for i in range(3, len(text) - 2) if text[i : i + 2].strip() and
        text.find(text[i : i + 2]) == i and "\ufffd" not in text[i : i + 2]
    )  # fmt: skip
    stop_params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=[stop])
    (cut,) = b.generate([ids], [stop_params])
    assert cut.finish_reason == "stop" and cut.outputs[0].stop_reason == stop
    assert cut.text == text[: text.find(stop)]


def check_seeds(b: BlockingBackend, ids: list[int]) -> None:
    """Same seed, same tokens (alone or beside other requests); another seed, other tokens."""
    sp = lambda seed: SamplingParams(temperature=1.0, seed=seed, max_tokens=16, ignore_eos=True)  # noqa: E731
    alone = b.generate([ids], [sp(11)])[0].token_ids
    together = b.generate([ids, ids, ids], [sp(11), sp(12), sp(11)])
    assert together[0].token_ids == alone and together[2].token_ids == alone
    assert together[1].token_ids != alone


def serve(backend_factory: Callable[[], Backend], fn: Callable) -> Any:
    """Run ``await fn(transport)`` against the server app over a fresh backend, in-process."""
    from minerva.server.app import build_app
    from minerva.server.config import ServerConfig

    app = build_app(ServerConfig(served_model_name=SERVED), backend=backend_factory())

    async def main():
        async with app.router.lifespan_context(app):
            return await fn(httpx.ASGITransport(app=app))

    return asyncio.run(main())


def check_both_apis(backend_factory: Callable[[], Backend], expected_text: str) -> dict:
    """The official clients, greedy: OpenAI completions (whole and streamed, with a stop
    string), OpenAI chat streamed, Ollama generate and chat. Returns what came back."""
    import ollama
    import openai

    async def run(transport):
        http = httpx.AsyncClient(transport=transport)
        oai = openai.AsyncOpenAI(base_url="http://localhost/v1", api_key="x", http_client=http)
        oll = ollama.AsyncClient(host="http://localhost", transport=transport)
        common = dict(model=SERVED, prompt=PROMPT, max_tokens=8, temperature=0)
        whole = await oai.completions.create(**common)
        chunks = await oai.completions.create(**common, stream=True)
        streamed = "".join([c.choices[0].text async for c in chunks if c.choices])
        messages = [{"role": "user", "content": "hi"}]
        chat = await oai.chat.completions.create(
            model=SERVED, messages=messages, max_tokens=6, temperature=0, stream=True
        )
        chat_text = "".join([c.choices[0].delta.content or "" async for c in chat if c.choices])
        options = {"num_predict": 8, "temperature": 0}
        gen = await oll.generate(SERVED, PROMPT, options=options, raw=True)
        ochat = await oll.chat(SERVED, messages=messages, options={**options, "num_predict": 6})
        metrics = (await http.get("http://localhost/metrics")).text
        return dict(
            whole=whole, streamed=streamed, chat=chat_text, generate=gen.response,
            ollama_chat=ochat.message.content, metrics=metrics,
        )  # fmt: skip

    got = serve(backend_factory, run)
    assert got["whole"].choices[0].text == expected_text == got["streamed"]
    assert got["whole"].choices[0].finish_reason == "length"
    assert got["generate"] == expected_text
    assert got["chat"] == got["ollama_chat"] and got["chat"]
    for name in ("minerva_time_to_first_token_seconds_count", "minerva_inter_token_latency"):
        assert name in got["metrics"]
    return got


def check_cli_generate(name: str, model: Path, expected_text: str, capsys) -> None:
    """``minerva generate --backend NAME`` prints the backend's greedy text."""
    from minerva.cli import main

    args = ["generate", PROMPT, "--model", str(model), "--backend", name, "--device", "cpu",
            "--dtype", "float32", "--max-tokens", "8", "--temperature", "0",
            "--repetition-penalty", "1"]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out == expected_text + "\n"


def check_cli_chat(
    name: str, model: Path, b: BlockingBackend, capsys, monkeypatch, *extra: str
) -> list[str]:
    """``minerva chat --backend NAME``, two greedy turns then Ctrl-D: each reply is the
    backend's own greedy reply to the conversation so far (``b``: the same weights, loaded
    in this test). Returns the replies."""
    import io

    from minerva.cli import main

    turns = ["hi", "tell me more"]
    messages: list[dict[str, str]] = []
    expected = []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        params = b.backend.default_sampling_params(
            temperature=0.0, max_tokens=8, repetition_penalty=1.0
        )
        (out,) = b.generate([b.backend.apply_chat_template(messages)], [params])
        messages.append({"role": "assistant", "content": out.text})
        expected.append(out.text)
    assert any(expected), "the backend replied nothing: the check could not tell replies apart"
    args = ["chat", "--model", str(model), "--backend", name, "--device", "cpu",
            "--max-tokens", "8", "--temperature", "0", "--repetition-penalty", "1", *extra]  # fmt: skip
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(t + "\n" for t in turns)))
    capsys.readouterr()
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "error" not in captured.err
    # input() writes the prompt; each reply ends its line; the last prompt meets Ctrl-D
    assert captured.out.split(">>> ") == ["", *(r + "\n" for r in expected), ""]
    return expected


def check_doctor(name: str, honoured: str) -> dict:
    """``minerva doctor``'s probe of the backend: installed, a version, what it honours."""
    from minerva.backends import probe_backend

    probe = probe_backend(name)
    assert probe["installed"] == "yes" and "problem" not in probe, probe
    assert probe["version"] and honoured in probe["sampling"] and probe["not supported"]
    return probe
