"""A tiny streaming LLM server with known timing, for the benchmark tests.

Plain asyncio HTTP/1.1 (keep-alive, chunked responses) on a background thread: the first token
leaves ``ttft_ms`` after the request arrived, then one every ``itl_ms`` (on an absolute
schedule, so sleeps do not drift). Speaks /v1/completions, /v1/chat/completions (SSE) and
/api/generate, /api/chat (NDJSON); every ``fail_every``-th generation request gets HTTP 500,
every ``midstream_error_every``-th one an in-band error after two tokens. Token i is the word
``tok{i}`` (``alt{i}`` from ``diverge_at`` on, to make two servers disagree). With
``hold_until_in_flight=k`` no request streams until k requests were in flight at once, so a
concurrency test sees its full first wave whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

MODEL = "fake-model"


class FakeLLMServer:
    def __init__(
        self,
        ttft_ms: float = 50.0,
        itl_ms: float = 10.0,
        tokens_per_chunk: int = 1,
        fail_every: int = 0,
        midstream_error_every: int = 0,
        diverge_at: int | None = None,
        hold_until_in_flight: int = 0,
    ) -> None:
        self.ttft = ttft_ms / 1e3
        self.itl = itl_ms / 1e3
        self.tokens_per_chunk = tokens_per_chunk
        self.fail_every = fail_every
        self.midstream_error_every = midstream_error_every
        self.diverge_at = diverge_at
        """From this token index on, send ' alt{i}' instead of ' tok{i}'."""
        self.arrivals: list[float] = []
        """time.perf_counter() when each generation request was read."""
        self.bodies: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.hold_until_in_flight = hold_until_in_flight
        self._wave: asyncio.Event | None = None  # made on the server's loop
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeLLMServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        start = asyncio.start_server(self._handle, "127.0.0.1", 0)
        self._server = self._loop.run_until_complete(start)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.lower(): v.strip()
                    for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
                }
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                await self._route(method, path, json.loads(body) if body else {}, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _route(self, method: str, path: str, body: dict, writer) -> None:
        if method == "GET" and path == "/v1/models":
            return await _send_json(writer, 200, {"data": [{"id": MODEL}]})
        if method == "GET" and path == "/api/tags":
            return await _send_json(writer, 200, {"models": [{"name": MODEL}]})
        apis = {
            "/v1/completions": "openai",
            "/v1/chat/completions": "openai-chat",
            "/api/generate": "ollama",
            "/api/chat": "ollama-chat",
        }
        if method != "POST" or path not in apis:
            return await _send_json(writer, 404, {"error": "not found"})
        arrival = time.perf_counter()
        self.arrivals.append(arrival)
        self.bodies.append(body)
        number = len(self.arrivals)
        api = apis[path]
        if self.fail_every and number % self.fail_every == 0:
            err = (
                {"error": {"message": "injected failure"}}
                if api.startswith("openai")
                else {"error": "injected failure"}
            )
            return await _send_json(writer, 500, err)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hold_until_in_flight:
                self._wave = self._wave or asyncio.Event()
                if self.max_in_flight >= self.hold_until_in_flight:
                    self._wave.set()
                await self._wave.wait()
                arrival = time.perf_counter()  # the injected delays count from the release
            midstream = bool(
                self.midstream_error_every and number % self.midstream_error_every == 0
            )
            await self._stream(api, body, writer, midstream, arrival)
        finally:
            self.in_flight -= 1

    def _word(self, i: int) -> str:
        return f" alt{i}" if self.diverge_at is not None and i >= self.diverge_at else f" tok{i}"

    async def _stream(
        self, api: str, body: dict, writer, midstream_error: bool, start: float
    ) -> None:
        openai = api.startswith("openai")
        n = body["max_tokens"] if openai else body["options"]["num_predict"]
        if "messages" in body:
            prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
        else:
            prompt_tokens = len(body["prompt"].split())
        ctype = "text/event-stream" if openai else "application/x-ndjson"
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        sent = 0
        while sent < n:
            k = min(self.tokens_per_chunk, n - sent)
            due = (
                start + self.ttft + (sent + k - 1) * self.itl
            )  # when the chunk's last token is ready
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            if midstream_error and sent >= 2:
                await _chunk(
                    writer,
                    _event(
                        api,
                        {"error": {"message": "injected stream error"}}
                        if openai
                        else {"error": "injected stream error"},
                    ),
                )
                break
            text = "".join(self._word(sent + j) for j in range(k))
            await _chunk(writer, _event(api, _piece(api, text)))
            sent += k
        else:
            if openai:
                if (body.get("stream_options") or {}).get("include_usage"):
                    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n}
                    await _chunk(writer, _event(api, {"choices": [], "usage": usage}))
                await _chunk(writer, "data: [DONE]\n\n")
            else:
                final = {"done": True, "eval_count": n, "prompt_eval_count": prompt_tokens}
                await _chunk(writer, _event(api, final))
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def _piece(api: str, text: str) -> dict:
    if api == "openai":
        return {"choices": [{"index": 0, "text": text, "finish_reason": None}]}
    if api == "openai-chat":
        return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    if api == "ollama":
        return {"response": text, "done": False}
    return {"message": {"role": "assistant", "content": text}, "done": False}


def _event(api: str, obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n" if api.startswith("openai") else json.dumps(obj) + "\n"


async def _chunk(writer, data: str) -> None:
    raw = data.encode()
    writer.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
    await writer.drain()


async def _send_json(writer, status: int, obj: dict) -> None:
    raw = json.dumps(obj).encode()
    reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}[status]
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(raw)}\r\n\r\n".encode()
        + raw
    )
    await writer.drain()
