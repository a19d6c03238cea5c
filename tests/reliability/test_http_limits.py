"""Connection- and admission-level limits on a live server (issue #15 items 8, 9, 12):
cheap rejects before tokenizing, header and body read timeouts (slowloris, idle sockets,
slow-drip bodies), a client leaving mid-upload, Retry-After while draining, a huge header.

Timeouts are set small and every wait is a poll with a hang guard: nothing is measured.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import httpx
import pytest

from minerva.server.config import ServerConfig, is_loopback_host
from tests.e2e.tiny_server_model import MODEL_NAME
from tests.reliability.live_server import start_live_server

PROMPT = [1, 20, 30, 40, 50]
GUARD = 60.0  # seconds: hang guards only


@pytest.fixture(scope="module")
def limits_server(tiny_model):
    srv = start_live_server(
        tiny_model, engine={"max_num_seqs": 1, "max_model_len": 65536, "num_kv_blocks": 8192},
        max_queued_requests=0, header_timeout=0.5, body_timeout=0.5, max_prompt_bytes=4096,
    )  # fmt: skip
    yield srv
    srv.stop()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(GUARD)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _response(raw: bytes) -> tuple[int, dict, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _metric(srv, prefix: str) -> float:
    text = srv.state.metrics.render()
    text = text.decode() if isinstance(text, bytes) else text
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(prefix))


class Counting:
    """Counts calls to a backend's tokenizing entry points."""

    def __init__(self, backend) -> None:
        self.calls = 0
        for name in ("encode", "apply_chat_template"):
            setattr(backend, name, self._wrap(getattr(backend, name)))

    def _wrap(self, fn):
        def counted(*args, **kwargs):
            self.calls += 1
            return fn(*args, **kwargs)

        return counted


def test_full_server_and_huge_prompts_are_refused_before_tokenizing(limits_server):
    srv = limits_server
    counting = Counting(srv.backend)
    hold = _connect(srv.port)  # fills the only slot with a long request
    body = json.dumps({"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 60000,
                       "ignore_eos": True, "stream": True}).encode()  # fmt: skip
    hold.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    deadline = time.monotonic() + GUARD
    while srv.backend.stats().num_requests_in_flight < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "word " * 800}]}
    full = httpx.post(f"{srv.url}/v1/chat/completions", json=chat, timeout=GUARD)
    ollama = httpx.post(f"{srv.url}/api/generate", timeout=GUARD,
                        json={"model": MODEL_NAME, "prompt": "word " * 800})  # fmt: skip
    huge = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "x" * 5000}]}
    too_big = httpx.post(f"{srv.url}/v1/chat/completions", json=huge, timeout=GUARD)
    time.sleep(2 * 0.5)  # past header_timeout: a request under way must not be cut by it
    still_running = srv.backend.stats().num_requests_in_flight == 1
    hold.close()
    assert still_running
    assert full.status_code == 503 and full.headers["retry-after"] == "1"
    assert full.json()["error"]["code"] == "queue_full"
    assert ollama.status_code == 503 and "capacity" in ollama.json()["error"]
    assert too_big.status_code == 400
    assert too_big.json()["error"]["code"] == "prompt_too_large"
    assert "max_prompt_bytes" in too_big.json()["error"]["message"]
    assert counting.calls == 0  # nothing was tokenized for any of them
    print(
        "\n[reliability] cheap rejects: 2 full-server 503s and 1 oversized prompt, 0 tokenizer calls"
    )


def test_tokenizing_runs_off_the_event_loop(limits_server):
    """A long prompt's tokenizing must not stall every other connection's I/O."""
    srv, seen = limits_server, []
    originals = {name: getattr(srv.backend, name) for name in ("encode", "apply_chat_template")}

    def recording(fn):
        def run(*args, **kwargs):
            seen.append(threading.current_thread().name)
            return fn(*args, **kwargs)

        return run

    for name, fn in originals.items():
        setattr(srv.backend, name, recording(fn))
    try:
        chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2}  # fmt: skip
        generate = {"model": MODEL_NAME, "prompt": "hi", "stream": False,
                    "options": {"num_predict": 2}}  # fmt: skip
        for route, body in (("/v1/chat/completions", chat), ("/api/generate", generate),
                            ("/v1/completions", {**generate, "max_tokens": 2})):  # fmt: skip
            body = {k: v for k, v in body.items() if route != "/v1/completions" or k != "options"}
            assert httpx.post(f"{srv.url}{route}", json=body, timeout=GUARD).status_code == 200
    finally:
        for name, fn in originals.items():
            setattr(srv.backend, name, fn)
    assert seen and srv.thread.name not in seen, seen
    print(f"\n[reliability] tokenizing: {len(seen)} tokenizer calls, none on the event loop")


def test_idle_and_slowloris_connections_are_closed(limits_server):
    idle = _connect(limits_server.port)
    assert _read_all(idle) == b""  # closed by the server without a byte sent
    slow = _connect(limits_server.port)
    slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    sent, closed = 0, False
    deadline = time.monotonic() + GUARD
    while not closed and time.monotonic() < deadline:
        try:
            slow.sendall(b"X-Drip-%d: y\r\n" % sent)  # a header line at a time, never done
            sent += 1
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        time.sleep(0.05)
    assert closed
    ok = httpx.get(f"{limits_server.url}/health", timeout=GUARD)  # normal clients unaffected
    assert ok.status_code == 200
    print(f"\n[reliability] slowloris: idle socket and a {sent}-line header drip both closed")


def test_a_slow_body_gets_408_in_the_api_shape(limits_server):
    sock = _connect(limits_server.port)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"model\":")  # fmt: skip
    status, headers, body = _response(_read_all(sock))
    assert status == 408 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "body_timeout"
    print("\n[reliability] slow body: 408 body_timeout (JSON), connection closed")


def test_leaving_mid_upload_is_a_client_disconnect_not_a_500(limits_server, caplog):
    srv = limits_server
    before_500 = _metric(
        srv, 'minerva_http_requests_total{method="POST",route="/v1/completions",status="500"'
    )
    caplog.set_level(logging.ERROR)
    for _ in range(3):
        sock = _connect(srv.port)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 1000\r\n\r\n{\"model\":")  # fmt: skip
        time.sleep(0.05)
        sock.close()
    prefix = 'minerva_http_requests_total{method="POST",route="/v1/completions",status="499"'
    deadline = time.monotonic() + GUARD
    while _metric(srv, prefix) < 3:
        assert time.monotonic() < deadline, "the disconnects were not counted"
        time.sleep(0.02)
    after_500 = _metric(srv, prefix.replace("499", "500"))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert after_500 == before_500 and not errors
    print("\n[reliability] upload disconnects: 3 counted as 499, 0 errors logged")


def test_an_8mb_header_gets_a_json_400(limits_server):
    sock = _connect(limits_server.port)
    try:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (8 << 20) + b"\r\n\r\n"
        )
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before taking it all
    status, headers, body = _response(_read_all(sock))
    assert status == 400 and headers["content-type"] == "application/json"
    assert "16 KiB" in json.loads(body)["error"]["message"]
    print("\n[reliability] 8 MB header: 400 with a JSON error body")


def test_draining_503_has_retry_after(limits_server):
    srv = limits_server
    srv.state.draining = True
    try:
        gated = httpx.get(f"{srv.url}/v1/models", timeout=GUARD)
        health = httpx.get(f"{srv.url}/health", timeout=GUARD)
    finally:
        srv.state.draining = False
    assert gated.status_code == 503 and gated.headers["retry-after"] == "5"
    assert gated.json()["error"]["code"] == "draining" and health.status_code == 503
    print("\n[reliability] draining: 503 with Retry-After: 5")


def test_loopback_spellings():
    for host in ("LOCALHOST", "localhost.", "127.1", "127.0.0.1", "::1", "0x7f.1"):
        assert is_loopback_host(host) and ServerConfig(host=host).bind_warning() is None, host
    for host in ("", "0.0.0.0", "10.0.0.1", "example.com", "localhost.example.com"):
        assert not is_loopback_host(host), host
    print("\n[reliability] loopback: 6 spellings recognised, 5 others not")
