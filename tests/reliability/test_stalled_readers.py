"""Clients that stop reading (issue #15 item 1): a stream's unread outputs stay bounded, its
request counts against admission until its reader took the final output, and a connection
whose reader stalls past write_timeout is dropped: request aborted, KV blocks and slot freed.

No test depends on the machine's speed: requests that must still be running ask for far more
tokens than any machine makes before the test ends them, and waits are polls with hang guards.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest

from minerva.config import EngineConfig
from minerva.engine.async_engine import AsyncEngine, QueueFullError
from minerva.engine.llm_engine import LLMEngine
from minerva.sampling_params import SamplingParams
from tests.e2e.tiny_server_model import MODEL_NAME
from tests.reliability.live_server import start_live_server

PROMPT = [1, 20, 30, 40, 50]
LONG = 60_000  # tokens: minutes of decoding, so a request still runs when the test looks
LONG_CONTEXT = {"max_model_len": 65536, "num_kv_blocks": 8192}


def _poll(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout  # a hang guard, not a speed check
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def stalled_client(port: int, body: dict) -> socket.socket:
    """Send a streaming request and never read: a tiny receive window fills at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """Drain what the kernel holds; True once the server closed or reset the connection."""
    sock.settimeout(60)  # a hang guard
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, TimeoutError):
        pass
    return True


@pytest.fixture(scope="module")
def stall_server(tiny_model):
    srv = start_live_server(
        tiny_model, engine={**LONG_CONTEXT, "max_num_seqs": 2}, max_queued_requests=2,
        write_timeout=0.5,
    )  # fmt: skip
    yield srv
    srv.stop()


def test_stalled_readers_are_dropped_and_free_everything(stall_server):
    srv, n = stall_server, 4  # 2 running + 2 queued: the server is full
    body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": LONG, "ignore_eos": True,
            "temperature": 0, "stream": True, "logprobs": 5}  # fmt: skip
    clients = [stalled_client(srv.port, body) for _ in range(n)]
    _poll(lambda: srv.backend.stats().num_requests_in_flight == n, "all are admitted")
    full = httpx.post(f"{srv.url}/v1/completions", json={**body, "stream": False}, timeout=60)
    assert full.status_code == 503  # the stalled ones hold the admission slots

    def released() -> bool:
        s = srv.backend.stats()
        return s.num_requests_in_flight == s.num_running == s.num_waiting == 0

    _poll(released, "every stalled stream is dropped")
    stats = srv.backend.stats()
    assert stats.kv_cache_usage == 0  # the blocks are freed: each request was aborted
    assert all(_closed_by_server(c) for c in clients)
    for c in clients:
        c.close()
    ok = httpx.post(
        f"{srv.url}/v1/completions",
        json={"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 3, "temperature": 0},
        timeout=60,
    )
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"
    finished = srv.state.metrics.render().decode()
    aborted = _sample(finished, 'minerva_requests_finished_total{finish_reason="abort"}')
    assert aborted >= n
    print(
        f"\n[reliability] stalled readers: {n} dropped, {stats.kv_cache_usage:.0%} KV held, 0 slots held"
    )


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.split()[-1])
    return 0.0


# -- the engine side: bounded buffers, admission until the final output is read --------------
def _engine(model_dir, **kwargs) -> LLMEngine:
    config = EngineConfig.from_kwargs(
        model=str(model_dir), device="cpu", dtype="float32", num_kv_blocks=256, num_threads=1,
        max_num_seqs=1,
    )  # fmt: skip
    return LLMEngine(config, progress=False)


def test_an_unread_stream_stays_bounded_and_keeps_its_slot(tiny_model):
    params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    reference = _engine(tiny_model)
    reference.add_request(PROMPT, params, "ref")
    ref = None
    while reference.has_unfinished_requests():
        ref = next((o for o in reference.step() if o.finished), ref)

    async def main():
        engine = AsyncEngine(_engine(tiny_model), max_queued_requests=0, max_buffered_outputs=4)
        engine.start()
        stream = await engine.add_request(PROMPT, params, "unread")
        deadline = time.monotonic() + 120  # a hang guard
        while not stream.complete:  # the engine finished it; nobody has read a thing
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        buffered = stream.num_buffered
        with pytest.raises(QueueFullError):  # finished, but its answer is not delivered
            await engine.add_request(PROMPT, params, "next")
        outs = [o async for o in stream]
        in_flight = engine.num_requests_in_flight
        await engine.shutdown()
        return buffered, outs, in_flight

    buffered, outs, in_flight = asyncio.run(main())
    tokens = [t for o in outs for t in o.outputs[0].delta_token_ids]
    text = "".join(o.outputs[0].delta_text for o in outs)
    assert buffered <= 4 and len(outs) <= 4  # 200 steps, at most 4 outputs kept apart
    assert tokens == ref.outputs[0].token_ids and text == ref.outputs[0].text
    assert outs[-1].finished and in_flight == 0  # reading the final output freed the slot
    print(
        f"\n[reliability] unread stream: 200 steps held in {buffered} outputs, slot kept until read"
    )
