"""A real server in this process: uvicorn (with Minerva's HTTP protocol limits) in a thread,
over the tiny random model, so tests can read the backend's own counters after an attack.

The listening socket has a small send buffer (accepted sockets inherit it): a client that stops
reading fills the kernel's buffers after a few KB, so the server's own buffer (the part the
write timeout watches) fills after some tens of KB of output instead of megabytes.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from minerva.backends.minerva import load
from minerva.config import EngineConfig
from minerva.server.app import build_app
from minerva.server.config import ServerConfig
from minerva.server.http_protocol import protocol_class
from tests.e2e.tiny_server_model import MODEL_NAME

SMALL_SOCKET_BUFFER = 4096


def small_buffer_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SOCKET_BUFFER)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@dataclass
class LiveServer:
    server: uvicorn.Server
    thread: threading.Thread
    port: int
    app: Any
    failures: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self):
        return self.app.state.minerva

    @property
    def backend(self):
        return self.state.backend

    def call(self, fn, timeout: float = 60.0):
        """Run ``fn()`` on the server's event loop (where the engine's loop-side state lives)."""
        loop = self.server_loop
        future = asyncio.run_coroutine_threadsafe(_call(fn), loop)
        return future.result(timeout)

    server_loop: asyncio.AbstractEventLoop | None = None

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


async def _call(fn):
    return fn()


def start_live_server(model_dir: Path, engine: dict | None = None, **server: Any) -> LiveServer:
    """Load the model, serve it on a free port and wait until /health is ok."""
    engine_config = EngineConfig.from_kwargs(
        model=str(model_dir), device="cpu", dtype="float32", num_threads=1,
        **{"num_kv_blocks": 1024, "max_num_seqs": 4, **(engine or {})},
    )  # fmt: skip
    queued = server.pop("max_queued_requests", 8)
    config = ServerConfig(served_model_name=MODEL_NAME, max_queued_requests=queued, **server)
    backend = load(engine_config, max_queued_requests=queued)
    failures: list[str] = []
    app = build_app(config, backend=backend, on_engine_failure=failures.append)
    sock = small_buffer_socket()
    uv = uvicorn.Config(
        app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1,
        http=protocol_class(config.header_timeout, config.write_timeout),
    )  # fmt: skip
    server_obj = uvicorn.Server(uv)
    live = LiveServer(server_obj, None, sock.getsockname()[1], app, failures)  # type: ignore[arg-type]

    def serve() -> None:
        loop = asyncio.new_event_loop()
        live.server_loop = loop
        loop.run_until_complete(server_obj.serve(sockets=[sock]))
        loop.close()

    server_obj.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    live.thread = threading.Thread(target=serve, name="live-server", daemon=True)
    live.thread.start()
    deadline = time.monotonic() + 120  # a hang guard, not a speed check
    while not server_obj.started:
        assert time.monotonic() < deadline and live.thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    return live
