"""What protects the server: malformed and abusive bodies (4xx, never 5xx, nothing allocated),
the body size limit, the API key on every route, /health, /metrics, and aborts on disconnect."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx

from tests.e2e.tiny_server_model import MODEL_NAME

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
MSGS = [{"role": "user", "content": "hi"}]


def _chat(**kw) -> dict:
    return {"model": MODEL_NAME, "messages": MSGS, "max_tokens": 4, **kw}


def _cmpl(**kw) -> dict:
    return {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 4, **kw}


def _gen(**kw) -> dict:
    return {"model": MODEL_NAME, "prompt": "hi", "stream": False, **kw}


# (path, body: bytes or a JSON-able object, expected status)
CORPUS = [
    (CHAT, b'{"model": "tiny-llama", "messages": [', 400),  # truncated JSON
    (CHAT, b"not json at all", 400),
    (CHAT, b"", 400),
    (CHAT, b"[]", 400),
    (CHAT, b"\xff\xfe\x00garbage", 400),
    (CHAT, b"[" * 20000 + b"]" * 20000, 400),  # nesting deeper than the parser's recursion
    (CHAT, {"model": MODEL_NAME, "messages": "hi"}, 400),
    (CHAT, {"model": MODEL_NAME, "messages": []}, 400),
    (CHAT, {"model": MODEL_NAME}, 400),
    (CHAT, {"messages": MSGS}, 400),
    (CHAT, _chat(model=123), 400),
    (CHAT, _chat(max_tokens=10**12), 400),
    (CHAT, _chat(max_tokens="5"), 400),
    (CHAT, _chat(max_tokens=2.5), 400),
    (CHAT, _chat(n=1000), 400),
    (CHAT, _chat(n=0), 400),
    (CHAT, _chat(n=True), 400),
    (CHAT, _chat(temperature=-1), 400),
    (CHAT, _chat(temperature="hot"), 400),
    (CHAT, _chat(top_p=0), 400),
    (CHAT, _chat(top_k=-5), 400),
    (CHAT, _chat(presence_penalty=5), 400),
    (CHAT, _chat(min_tokens=10, max_tokens=2), 400),
    (CHAT, _chat(logit_bias={"99999": 1}), 400),
    (CHAT, _chat(logit_bias={"abc": 1}), 400),
    (CHAT, _chat(logit_bias={"5": 1000}), 400),
    (CHAT, _chat(stop_token_ids=[10**9]), 400),
    (CHAT, _chat(stop=[""]), 400),
    (CHAT, _chat(seed="abc"), 400),
    (CHAT, _chat(top_logprobs=5), 400),
    (CHAT, _chat(logprobs=True, top_logprobs=50), 400),
    (CHAT, _chat(stream_options={"include_usage": True}), 400),
    (CHAT, _chat(foo=1), 400),
    (CHAT, _chat(tools=[{"type": "function", "function": {"name": "a b"}}]), 400),
    (CHAT, _chat(tool_choice="auto"), 400),
    (CHAT, _chat(response_format={"type": "yaml"}), 400),
    (
        CHAT,
        _chat(
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        ),
        400,
    ),  # fmt: skip
    (CHAT, _chat(messages=[{"role": "tool", "content": 5, "tool_call_id": "1"}]), 400),
    (CHAT, _chat(messages=[{"role": "wizard", "content": "x"}]), 400),
    (CHAT, _chat(model="no-such-model"), 404),
    (COMPLETIONS, _cmpl(prompt=[1, 2, 999_999]), 400),
    (COMPLETIONS, _cmpl(prompt=[-1]), 400),
    (COMPLETIONS, _cmpl(prompt=[]), 400),
    (COMPLETIONS, _cmpl(prompt=[[1, 2], [3, 10**7]]), 400),
    (COMPLETIONS, _cmpl(prompt=None), 400),
    (COMPLETIONS, _cmpl(prompt={"text": "hi"}), 400),
    (COMPLETIONS, _cmpl(prompt=["x"] * 1000), 400),
    (COMPLETIONS, _cmpl(logprobs=100), 400),
    (COMPLETIONS, _cmpl(max_tokens=0), 400),  # only with echo (scoring the prompt)
    (COMPLETIONS, _cmpl(suffix="tail"), 400),
    ("/v1/embeddings", {"model": MODEL_NAME, "input": []}, 400),
    ("/v1/embeddings", {"model": MODEL_NAME, "input": [[1, 10**7]]}, 400),
    ("/v1/embeddings", {"model": MODEL_NAME, "input": ["x"] * 1000}, 400),
    ("/v1/embeddings", {"model": MODEL_NAME, "input": "x", "encoding_format": "hex"}, 400),
    ("/v1/embeddings", {"model": MODEL_NAME, "input": "x", "dimensions": 3}, 400),
    ("/v1/embeddings", {"model": MODEL_NAME, "input": "x " * 3000}, 400),  # over the context
    ("/v1/embeddings", {"model": "no-such-model", "input": "x"}, 404),
    ("/api/embed", {"model": MODEL_NAME, "input": 5}, 400),
    ("/api/embed", {"model": MODEL_NAME, "input": "x " * 3000, "truncate": False}, 400),
    ("/api/embeddings", {"model": MODEL_NAME, "prompt": 5}, 400),
    ("/v1/no-such-route", {}, 404),
    ("/api/no-such-route", {}, 404),
    ("/api/pull", {"model": "llama3"}, 400),
    ("/api/create", {"model": "x", "from": MODEL_NAME}, 400),
    (COMPLETIONS, _cmpl(best_of=5), 400),
    (COMPLETIONS, _cmpl(prompt="x" * 3000, max_tokens=None), 400),  # context_length_exceeded
    ("/api/generate", b'{"model": "tiny-llama", "prompt": ', 400),
    ("/api/generate", _gen(prompt=5), 400),
    ("/api/generate", _gen(options={"num_predict": "x"}), 400),
    ("/api/generate", _gen(options={"num_predict": 0}), 400),
    ("/api/generate", _gen(options={"temprature": 0.5}), 400),
    ("/api/generate", _gen(options={"mirostat": 2}), 400),
    ("/api/generate", _gen(options={"num_ctx": 4}), 400),
    ("/api/generate", _gen(format="yaml"), 400),
    ("/api/generate", _gen(images=["aGk="]), 400),
    ("/api/generate", _gen(suffix="tail"), 400),  # the tiny model has no FIM tokens
    ("/api/generate", _gen(context=[1, 10**8]), 400),
    ("/api/generate", _gen(model="no-such-model"), 404),
    ("/api/chat", {"model": MODEL_NAME, "messages": [{"role": "user", "content": 5}]}, 400),
    ("/api/chat", {"model": MODEL_NAME, "messages": MSGS, "tools": [{"type": "function"}]}, 400),
    ("/api/chat", {"model": MODEL_NAME, "messages": MSGS, "think": True}, 400),
    ("/api/show", {"model": 5}, 400),
    ("/api/show", {"model": "no-such-model"}, 404),
]


def test_malformed_and_abusive_bodies_are_4xx_and_allocate_nothing(server):
    before = server.wait_idle()
    with server.client() as client:
        for path, body, expected in CORPUS:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = client.post(path, content=content, headers={"content-type": "application/json"})
            assert r.status_code == expected, (path, body if len(content) < 200 else "...", r.text)
            err = r.json()["error"]
            if path.startswith("/v1"):
                assert set(err) == {"message", "type", "param", "code"} and err["message"]
            else:
                assert isinstance(err, str) and err
    after = server.wait_idle()
    # Nothing reached the scheduler: no prefix-cache lookups, no generated tokens, no KV.
    for name in ("minerva_prefix_cache_queries_total", "minerva_generation_tokens_total"):
        assert after[name] == before[name], name
    assert after["minerva_kv_cache_usage_ratio"] == 0
    print(f"\n[reliability] abusive parameters: {len(CORPUS)} malformed or abusive bodies on "
          "both APIs: each its exact 4xx in the API's shape, 0 tokens generated, 0 KV used")  # fmt: skip


def test_context_length_message_names_the_counts(server):
    with server.client() as client:
        r = client.post(COMPLETIONS, json=_cmpl(prompt=[5] * 2000, max_tokens=100))
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded"
    assert "2048" in err["message"] and "2100" in err["message"] and "2000" in err["message"]


def test_body_over_the_limit_is_413(server):
    big = json.dumps(_cmpl(prompt="x" * 70_000)).encode()  # the server allows 64 KiB
    with server.client() as client:
        r = client.post(COMPLETIONS, content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunks():  # no Content-Length: the limit applies while the body streams in
            for i in range(0, len(big), 8192):
                yield big[i : i + 8192]

        r = client.post("/api/generate", content=chunks())
        assert r.status_code == 413 and isinstance(r.json()["error"], str)


def _routes() -> list[tuple[str, str]]:
    """Every (method, path) the app serves, from the app itself (new routes can't be missed)."""
    from minerva.server.app import build_app
    from minerva.server.config import ServerConfig

    def walk(routes):
        for route in routes:
            inner = getattr(route, "original_router", None)  # FastAPI's included routers
            if inner is not None or not hasattr(route, "methods"):
                yield from walk(getattr(inner or route, "routes", []))
                continue
            for method in sorted(route.methods or ()):
                yield method, route.path.replace("{model_id:path}", MODEL_NAME)

    return list(walk(build_app(ServerConfig(served_model_name=MODEL_NAME)).routes))


def test_api_key_is_required_on_every_route_but_health(server):
    routes = _routes()
    assert ("POST", "/v1/chat/completions") in routes and ("GET", "/metrics") in routes
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic x"}):
        for method, path in routes:
            r = httpx.request(method, server.url + path, headers=headers, json={}, timeout=10)
            if path == "/health":
                assert r.status_code == 200
            else:
                assert r.status_code == 401, (method, path, headers)
                assert r.headers["www-authenticate"] == "Bearer"
    ok = httpx.get(server.url + "/v1/models", headers={"x-api-key": server.api_key}, timeout=10)
    assert ok.status_code == 200
    assert httpx.get(server.url + "/api/tags", headers=server.headers).status_code == 200
    print(f"\n[reliability] auth: {len(routes)} routes enumerated from the app x 3 bad "
          "credentials: 401 on each but /health")  # fmt: skip


def test_health_and_no_cors_by_default(server):
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    pre = httpx.options(
        server.url + "/v1/models",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in pre.headers
    print("\n[reliability] CORS: no Access-Control-Allow-Origin for a foreign origin by default")


ISSUE_METRICS = [
    "minerva_requests_running", "minerva_requests_waiting", "minerva_requests_rejected_total",
    "minerva_kv_cache_usage_ratio", "minerva_kv_cache_blocks_total",
    "minerva_prefix_cache_queries_total", "minerva_prefix_cache_hits_total",
    "minerva_preemptions_total", "minerva_prompt_tokens_total", "minerva_generation_tokens_total",
    "minerva_device_memory_used_bytes", "minerva_device_memory_total_bytes",
]  # fmt: skip
ISSUE_HISTOGRAMS = [
    "minerva_time_to_first_token_seconds", "minerva_inter_token_latency_seconds",
    "minerva_e2e_request_latency_seconds", "minerva_request_queue_time_seconds",
    "minerva_prefill_duration_seconds", "minerva_decode_duration_seconds", "minerva_batch_size",
]  # fmt: skip


def test_metrics_exposition_has_every_metric(server):
    with server.client() as client:  # a 400 and a 200, so every histogram saw something
        assert client.post(COMPLETIONS, json=_cmpl(foo=1)).status_code == 400
        assert client.post(COMPLETIONS, json=_cmpl(max_tokens=3)).status_code == 200
    m = server.metrics()
    names = {k.split("{")[0] for k in m}
    for name in ISSUE_METRICS:
        assert name in names, name
    for name in ISSUE_HISTOGRAMS:
        assert {f"{name}_bucket", f"{name}_count", f"{name}_sum"} <= names, name
        assert m[f"{name}_count"] > 0, name
    assert m['minerva_http_requests_total{method="POST",route="/v1/completions",status="400"}'] >= 1
    duration = 'minerva_http_request_duration_seconds_count{method="POST",route="/v1/completions"}'
    assert m[duration] >= 2
    assert m["minerva_kv_cache_blocks_total"] == 1024
    assert m["minerva_device_memory_used_bytes"] > 0 and m["minerva_device_memory_total_bytes"] > 0
    assert m['minerva_requests_rejected_total{reason="queue_full"}'] == 0


def _aborts(server) -> float:
    return server.metrics()['minerva_requests_finished_total{finish_reason="abort"}']


def test_closing_a_stream_aborts_it_and_frees_the_kv_cache(server):
    aborts = _aborts(server)
    body = _cmpl(prompt="Hello", max_tokens=1900, ignore_eos=True, stream=True)
    with server.client() as client, client.stream("POST", COMPLETIONS, json=body) as r:
        got = 0
        for line in r.iter_lines():
            got += line.startswith("data: ")
            if got == 3:  # still streaming: it runs and holds KV blocks
                m = server.metrics()
                assert m["minerva_requests_running"] == 1 and m["minerva_kv_cache_usage_ratio"] > 0
                break  # closes the connection
    m = server.wait_idle()
    assert m["minerva_requests_running"] == 0 and m["minerva_kv_cache_usage_ratio"] == 0
    assert _aborts(server) == aborts + 1


def test_non_streaming_client_that_leaves_aborts_the_request(server):
    """The client leaves once the server runs its request (not after a fixed time: a machine
    could finish 1900 tokens inside it, or not have started them yet)."""
    aborts = _aborts(server)
    body = _chat(max_tokens=1900, ignore_eos=True)

    async def run():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers) as client:
            post = asyncio.create_task(client.post(CHAT, json=body, timeout=60))
            deadline = time.monotonic() + 60  # a hang guard, not a speed check
            while server.metrics()["minerva_requests_running"] == 0:
                assert time.monotonic() < deadline and not post.done()
                await asyncio.sleep(0.02)
            post.cancel()  # the client leaves: its connection closes mid-request
            with contextlib.suppress(asyncio.CancelledError):
                await post

    asyncio.run(run())
    deadline = time.monotonic() + 60  # a hang guard, not a speed check
    while _aborts(server) < aborts + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _aborts(server) == aborts + 1
    m = server.wait_idle()
    assert m["minerva_requests_running"] == 0 and m["minerva_kv_cache_usage_ratio"] == 0


def test_grafana_dashboard_uses_only_exported_metrics(server):
    import re
    from pathlib import Path

    dashboard = (Path(__file__).parents[2] / "deploy" / "grafana-dashboard.json").read_text()
    used = set(re.findall(r"minerva_[a-z0-9_]+", dashboard)) - {"minerva_server"}
    exported = {k.split("{")[0] for k in server.metrics()}
    assert used and used <= exported, used - exported
    for name in ISSUE_METRICS + [f"{h}_bucket" for h in ISSUE_HISTOGRAMS]:
        assert name in used, name


def test_a_model_that_fails_to_load_exits_1(tmp_path):
    import os
    import subprocess
    import sys

    from tests.e2e.conftest import ROOT
    from tests.ports import free_port

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "minerva.cli", "serve", "--model", str(tmp_path / "missing"),
           "--port", str(free_port()), "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
