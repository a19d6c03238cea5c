"""Clients that leave at every point of a request (issue #15, the suite's disconnect rows): while
queued, during prefill, mid-decode, on the last token, and all at once (a storm). Whoever leaves,
nothing stays held (requests, admission slots, KV blocks), no error is logged, and the requests
that stayed get exactly the text they get alone on an idle server.

Prefill and the last token are checked on the engine, where the point of leaving is exact; the
storm runs on a live server. Requests that must still be running when their client leaves ask
for far more tokens than any machine makes meanwhile, so nothing depends on the machine's speed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time

import httpx
import pytest

from minerva.config import EngineConfig
from minerva.engine.async_engine import AsyncEngine
from minerva.engine.llm_engine import LLMEngine
from minerva.sampling_params import SamplingParams
from tests.e2e.tiny_server_model import MODEL_NAME
from tests.reliability.input_app import figure
from tests.reliability.live_server import start_live_server

GUARD = 120.0  # seconds: hang guards only
LONG = 60_000  # tokens: minutes of decoding, so a request still runs when its client leaves
SHORT = 24  # tokens of the requests that stay (and of the last-token leavers)
LONG_CONTEXT = {"max_model_len": 65536, "num_kv_blocks": 8192}


# -- the engine: leaving during prefill, and on the last token --------------------------------
def _engine(model_dir, **kwargs) -> LLMEngine:
    config = EngineConfig.from_kwargs(
        model=str(model_dir), device="cpu", dtype="float32", num_kv_blocks=256, num_threads=1,
        **kwargs,
    )  # fmt: skip
    return LLMEngine(config, progress=False)


def _run_alone(engine: LLMEngine, prompt: list[int], params: SamplingParams, rid: str):
    engine.add_request(prompt, params, rid)
    final = None
    while engine.has_unfinished_requests():
        final = next((o for o in engine.step() if o.finished), final)
    return final.outputs[0].token_ids


def test_leaving_during_prefill_frees_its_blocks_and_the_cache_stays_right(tiny_model):
    prompt = [5 + (i * 37) % 200 for i in range(120)]  # 8 chunks of 16 tokens
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    reference = _run_alone(_engine(tiny_model), prompt, params, "ref")
    engine = _engine(tiny_model, max_num_batched_tokens=16, max_num_seqs=2)
    engine.add_request(prompt, params, "leaves")
    engine.step()
    engine.step()  # two chunks in: the request is half-way through its prompt
    (req,) = engine.scheduler.running
    computed = req.num_computed_tokens
    assert 0 < computed < len(prompt) and engine.kv_cache_manager.usage > 0
    engine.abort_request("leaves")
    held = engine.kv_cache_manager.usage
    assert not engine.has_unfinished_requests()
    # the same prompt again reuses the aborted prefill's cached blocks: same tokens as alone
    again = _run_alone(engine, prompt, params, "again")
    assert held == 0 and engine.kv_cache_manager.usage == 0
    assert again == reference
    figure("leaving during prefill", f"aborted at {computed} of {len(prompt)} prompt tokens: "
           "0 KV blocks held; the same prompt then reused its cached blocks, tokens as alone")  # fmt: skip


def test_leaving_on_the_last_token_is_harmless(tiny_model):
    """The final output has reached the stream when the client leaves (the server then aborts
    the stream): no error, the slot is freed once, the next request runs as alone."""
    prompt, params = [1, 20, 30, 40, 50], SamplingParams(max_tokens=12, temperature=0)
    reference = _run_alone(_engine(tiny_model), prompt, params, "ref")

    async def main():
        engine = AsyncEngine(_engine(tiny_model, max_num_seqs=1), max_queued_requests=0)
        engine.start()
        stream = await engine.add_request(prompt, params, "leaves")
        deadline = time.monotonic() + GUARD
        while not stream.complete:  # the final output is in the stream, not yet read
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        stream.abort()  # what the server does when the client's connection closes
        stream.abort()  # twice: a second disconnect notice changes nothing
        in_flight = engine.num_requests_in_flight
        outs = [o async for o in await engine.add_request(prompt, params, "next")]
        idle = (engine.num_requests_in_flight, engine.stats().kv_cache_usage)
        await engine.shutdown()
        return in_flight, outs[-1], idle

    in_flight, last, idle = asyncio.run(main())
    assert in_flight == 0 and idle == (0, 0)
    assert last.finished and last.outputs[0].token_ids == reference
    figure("leaving on the last token", "slot freed once, 0 KV held, the next request as alone")


# -- the live server: a storm of clients leaving at every point --------------------------------
@pytest.fixture(scope="module")
def storm_server(tiny_model):
    srv = start_live_server(
        tiny_model, engine={**LONG_CONTEXT, "max_num_seqs": 4}, max_queued_requests=64
    )
    yield srv
    srv.stop()


def _completion(prompt: list[int], max_tokens: int, stream: bool) -> dict:
    # logprobs: every token is counted, also where it ends inside a UTF-8 character
    return {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": stream, "logprobs": 0}  # fmt: skip


def _generate(prompt: str, max_tokens: int, stream: bool) -> dict:
    return {"model": MODEL_NAME, "prompt": prompt, "stream": stream,
            "options": {"num_predict": max_tokens, "temperature": 0}}  # fmt: skip


def _requests(n: int, seed: int = 0) -> list[tuple[str, list[int] | str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if (i // 2) % 2:  # pairs alternate: each API gets clients that stay and that leave
            out.append(("/api/generate", " ".join(rng.choice("abcdefgh") * 3 for _ in range(5))))
        else:
            out.append(("/v1/completions", [rng.randrange(10, 250) for _ in range(4 + i % 9)]))
    return out


def _body(route: str, prompt, max_tokens: int, stream: bool) -> dict:
    make = _completion if route == "/v1/completions" else _generate
    return make(prompt, max_tokens, stream)


def _text(route: str, events: list[dict]) -> str:
    if route == "/v1/completions":
        return "".join(c["text"] for e in events for c in e.get("choices", []))
    return "".join(e.get("response", "") for e in events)


def _events(route: str, line: str) -> dict | None:
    if route == "/v1/completions":
        if not line.startswith("data: ") or line == "data: [DONE]":
            return None
        return json.loads(line[6:])
    return json.loads(line) if line.strip() else None


LEAVE_AT = ("queued", "first token", "mid-decode", "last token")


async def _client(client, route, prompt, leave_at: str | None):
    """Stream one request; leave at ``leave_at`` (None: read it all). (status, text, tokens read)"""
    long = leave_at not in (None, "last token")
    body = _body(route, prompt, LONG if long else SHORT, stream=True)
    want = {"queued": 0, "first token": 1, "mid-decode": 3, "last token": SHORT}.get(leave_at)
    events: list[dict] = []
    async with client.stream("POST", route, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, r.text, 0
        if want == 0:  # the headers come once the request is queued: leave before any token
            return 200, "", 0
        async for line in r.aiter_lines():
            if want is not None and len(events) >= want:
                break  # leaving closes the connection mid-stream
            event = _events(route, line)
            if event is not None:
                events.append(event)
    return 200, _text(route, events), len(events)


def test_a_storm_of_leaving_clients_holds_nothing_and_the_rest_match_solo_runs(
    storm_server, caplog
):
    srv, n = storm_server, 32
    requests = _requests(n)
    leave = [None if i % 2 == 0 else LEAVE_AT[(i // 2) % len(LEAVE_AT)] for i in range(n)]
    with httpx.Client(base_url=srv.url, timeout=GUARD) as client:  # each stayer alone first
        solo = {}
        for i, (route, prompt) in enumerate(requests):
            if leave[i] is None:
                r = client.post(route, json=_body(route, prompt, SHORT, stream=False))
                assert r.status_code == 200, r.text
                body = r.json()
                solo[i] = body["choices"][0]["text"] if "choices" in body else body["response"]
    aborted_before = _aborted(srv)

    async def storm():
        limits = httpx.Limits(max_connections=n + 4)
        async with httpx.AsyncClient(base_url=srv.url, timeout=GUARD, limits=limits) as c:
            jobs = [_client(c, route, prompt, leave[i]) for i, (route, prompt) in
                    enumerate(requests)]  # fmt: skip
            return await asyncio.gather(*jobs)

    with caplog.at_level(logging.ERROR):
        results = asyncio.run(storm())

    def idle() -> bool:
        s = srv.backend.stats()
        return s.num_requests_in_flight == s.num_running == s.num_waiting == 0

    deadline = time.monotonic() + GUARD
    while not idle():
        assert time.monotonic() < deadline, "requests stayed after their clients left"
        time.sleep(0.05)
    stats = srv.backend.stats()
    stayed = {i: results[i] for i in solo}
    assert all(status == 200 for status, _, _ in results), [r[:2] for r in results]
    assert {i: text for i, (_, text, _) in stayed.items()} == solo
    assert stats.kv_cache_usage == 0 and srv.failures == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    must_abort = sum(  # an Ollama request may meet its end of sequence before its client leaves
        1 for (route, _), w in zip(requests, leave)
        if route == "/v1/completions" and w not in (None, "last token")
    )  # fmt: skip
    aborted = int(_aborted(srv) - aborted_before)
    assert aborted >= must_abort  # a request whose client left cannot run on for 60,000 tokens
    with httpx.Client(base_url=srv.url, timeout=GUARD) as client:  # and the server still serves
        route, prompt = requests[0]
        r = client.post(route, json=_body(route, prompt, SHORT, stream=False))
        assert r.json()["choices"][0]["text"] == solo[0]
    figure("disconnect storm", f"{n} concurrent streams (both APIs), {n - len(solo)} leaving "
           f"while queued, at the first token, mid-decode or on the last token: {aborted} "
           f"aborted, 0 left running, {stats.kv_cache_usage:.0%} KV held, 0 errors logged; "
           f"{len(solo)} of {len(solo)} that stayed byte-identical to their solo runs")  # fmt: skip


def _aborted(srv) -> float:
    text = srv.state.metrics.render().decode()
    name = 'minerva_requests_finished_total{finish_reason="abort"}'
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(name))


def test_a_sustained_stream_delivers_every_token_once(storm_server):
    """A long stream on each API: every token arrives once, in order, as the text the same
    request gets without streaming; the rate is printed, never checked."""
    srv, n = storm_server, 1000
    prompt = [7, 70, 170, 27]
    results = {}
    with httpx.Client(base_url=srv.url, timeout=GUARD) as client:
        for route, p in (("/v1/completions", prompt), ("/api/generate", "a long story")):
            whole = client.post(route, json=_body(route, p, n, stream=False)).json()
            start, events = time.monotonic(), []
            with client.stream("POST", route, json=_body(route, p, n, stream=True)) as r:
                for line in r.iter_lines():
                    event = _events(route, line)
                    if event is not None:
                        events.append(event)
            results[route] = (whole, events, time.monotonic() - start)
    whole, events, took = results["/v1/completions"]
    tokens = [e for e in events if e["choices"] and e["choices"][0]["logprobs"]]
    # every token once: an event carries the tokens made since the previous one (one, unless
    # the server's reader fell behind on a busy machine and several were merged)
    counted = sum(len(e["choices"][0]["logprobs"]["tokens"]) for e in tokens)
    assert counted == n == whole["usage"]["completion_tokens"]
    assert _text("/v1/completions", events) == whole["choices"][0]["text"]
    o_whole, o_events, o_took = results["/api/generate"]
    assert o_events[-1]["done"] and o_events[-1]["eval_count"] == o_whole["eval_count"]
    assert _text("/api/generate", o_events) == o_whole["response"]
    figure("sustained streaming", f"/v1 {n} tokens in {len(tokens)} events ({n / took:.0f} "
           f"tok/s), Ollama {o_whole['eval_count']} tokens: every token once, text equal to the "
           "same request unstreamed")  # fmt: skip
