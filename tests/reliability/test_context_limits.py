"""Context limits on both APIs (issue #15, the suite's context row): a prompt that does not fit
is a 400 in the route's error shape, streamed or not, on all four generation routes, naming the
counts; on /v1 a prompt + max_tokens past the context is refused (as OpenAI and vLLM do), while
Ollama's num_predict is capped at the room left (as Ollama does); a chat request without max_tokens
generates until the context is full and ends with finish reason "length", never past it."""

from __future__ import annotations

import json

from minerva.backends.minerva import MinervaBackend
from minerva.config import EngineConfig
from minerva.engine.llm_engine import LLMEngine
from tests.e2e.tiny_server_model import MODEL_NAME
from tests.reliability.input_app import api_shaped, figure, serve

CONTEXT = 64
LONG_TEXT = "hello world " * 40  # far over 64 tokens on every route
USER = [{"role": "user", "content": LONG_TEXT}]


def _backend(model_dir) -> MinervaBackend:
    config = EngineConfig.from_kwargs(
        model=str(model_dir), device="cpu", dtype="float32", num_kv_blocks=64, num_threads=1,
        max_model_len=CONTEXT,
    )  # fmt: skip
    return MinervaBackend(LLMEngine(config, progress=False))


OVER = {  # name -> (route, body): a prompt past the context
    "chat": ("/v1/chat/completions", {"messages": USER, "max_tokens": 4}),
    "completions": ("/v1/completions", {"prompt": LONG_TEXT, "max_tokens": 4}),
    "completions, token ids": ("/v1/completions", {"prompt": list(range(10, 10 + CONTEXT))}),
    "ollama generate": ("/api/generate", {"prompt": LONG_TEXT}),
    "ollama chat": ("/api/chat", {"messages": USER}),
    "ollama num_ctx under the prompt": (
        "/api/generate", {"prompt": "hello world " * 4, "options": {"num_ctx": 8}},
    ),
}  # fmt: skip


def _final(route: str, response) -> dict:
    """The last JSON object of a (streamed or not) answer."""
    if not response.headers.get("content-type", "").startswith(("text/event-stream", "appl")):
        raise AssertionError(response.text)
    lines = [ln for ln in response.text.splitlines() if ln.strip()]
    if route.startswith("/v1") and lines[0].startswith("data: "):
        events = [json.loads(ln[6:]) for ln in lines if ln != "data: [DONE]"]
        return events[-1]
    return json.loads(lines[-1]) if route.startswith("/api") else response.json()


def test_prompts_past_the_context_are_400s_on_both_apis_streamed_or_not(tiny_model):
    async def run(client):
        answers = {}
        for name, (route, body) in OVER.items():
            for stream in (False, True):
                full = {"model": MODEL_NAME, **body, "stream": stream}
                answers[name, stream] = (route, await client.post(route, json=full))
        return answers

    answers = serve(_backend(tiny_model), run)
    refused = {k: (route, r) for k, (route, r) in answers.items() if r.status_code == 400}
    assert set(refused) == set(answers), {k: r.text[:200] for k, (_, r) in answers.items()}
    for route, r in refused.values():
        assert api_shaped(route, r), r.text
        error = r.json()["error"]
        if route.startswith("/v1"):
            assert error["code"] == "context_length_exceeded" and str(CONTEXT) in error["message"]
        else:
            assert "num_ctx" in error and "tokens" in error
    figure("context limits", f"{len(refused)} of {len(answers)} prompts past the context "
           "refused (400, API shape, streamed and not) on 4 routes")  # fmt: skip


def test_generation_stops_at_the_context_on_both_apis(tiny_model):
    prompt = [10, 11, 12, 13, 14, 15, 16, 17]

    async def run(client):
        over = await client.post("/v1/completions", json={
            "model": MODEL_NAME, "prompt": prompt, "max_tokens": CONTEXT})  # fmt: skip
        until_full = await client.post("/v1/chat/completions", json={  # completions: 16 tokens
            "model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}],
            "ignore_eos": True, "temperature": 0})  # fmt: skip
        ollama = {}
        for stream in (False, True):
            ollama[stream] = await client.post("/api/generate", json={
                "model": MODEL_NAME, "prompt": "hello", "raw": True, "stream": stream,
                "options": {"num_predict": 10 * CONTEXT, "temperature": 0}})  # fmt: skip
        return over, until_full, ollama

    over, until_full, ollama = serve(_backend(tiny_model), run)
    assert over.status_code == 400 and over.json()["error"]["param"] == "max_tokens"
    assert f"{len(prompt) + CONTEXT} tokens" in over.json()["error"]["message"]
    usage = until_full.json()["usage"]
    assert until_full.json()["choices"][0]["finish_reason"] == "length"
    assert usage["prompt_tokens"] + usage["completion_tokens"] == CONTEXT
    totals = []
    for r in ollama.values():
        assert r.status_code == 200, r.text
        final = _final("/api/generate", r)
        assert final["done"] and final["prompt_eval_count"] + final["eval_count"] <= CONTEXT
        if final["done_reason"] == "length":  # not an end-of-sequence token first
            assert final["prompt_eval_count"] + final["eval_count"] == CONTEXT
        totals.append(final["prompt_eval_count"] + final["eval_count"])
    assert totals[0] == totals[1]  # streamed or not, the same tokens
    figure("context fill", f"/v1 prompt + max_tokens past {CONTEXT} refused; a chat request "
           f"without max_tokens and Ollama's num_predict {10 * CONTEXT} stop at the context "
           f"({usage['prompt_tokens'] + usage['completion_tokens']} and {totals[0]} tokens)")  # fmt: skip
