"""One streamed request to an HTTP target, timed on the client at every chunk.

A target is ``NAME=URL[,api=openai|openai-chat|ollama|ollama-chat][,model=M][,pid=N][,key=K]``:
the base URL of any OpenAI- or Ollama-compatible server (Minerva, vLLM, llama.cpp's
llama-server, Ollama, ...). ``pid`` names the server process whose memory the monitor samples
(found automatically for servers on this machine).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import httpx

from minerva.bench.metrics import RequestRecord
from minerva.bench.protocols import (
    APIS,
    GenParams,
    build_payload,
    endpoint,
    error_message,
    first_model,
    models_endpoint,
    parse_line,
)
from minerva.bench.redact import Redactor
from minerva.bench.workloads import BenchRequest
from minerva.errors import ConfigError


@dataclass
class Target:
    """An HTTP endpoint under test."""

    name: str
    url: str
    api: str = "openai"
    model: str | None = None
    api_key: str | None = None
    pid: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def is_local(self) -> bool:
        return urlparse(self.url).hostname in ("localhost", "127.0.0.1", "::1", "0.0.0.0")

    def describe(self) -> dict:
        return {
            "name": self.name,
            "url": self.url,
            "api": self.api,
            "model": self.model,
            "pid": self.pid,
        }


def parse_target(spec: str, api_key: str | None = None) -> Target:
    """'minerva=http://127.0.0.1:8000,api=ollama' -> Target (ConfigError naming the fix)."""
    shown = Redactor().text(spec)  # error messages echo the spec without its key
    head, *opts = spec.split(",")
    name, eq, url = head.partition("=")
    if not eq or not name or not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"--target {shown!r}: use NAME=URL[,api=openai|openai-chat|ollama|ollama-chat]"
            "[,model=M][,pid=N], e.g. --target minerva=http://127.0.0.1:8000"
        )
    target = Target(name.strip(), url.rstrip("/"), api_key=api_key)
    for opt in opts:
        key, eq, value = opt.partition("=")
        key = key.strip()
        if not eq or key not in ("api", "model", "pid", "key"):
            raise ConfigError(
                f"--target {shown!r}: unknown option {Redactor().text(opt)!r} (api, model, pid, key)"
            )
        if key == "api" and value not in APIS:
            raise ConfigError(f"--target {shown!r}: api must be one of {', '.join(APIS)}")
        if key == "pid" and not value.isdigit():
            raise ConfigError(f"--target {shown!r}: pid must be a process id, got {value!r}")
        setattr(target, {"key": "api_key"}.get(key, key), int(value) if key == "pid" else value)
    return target


def make_client(timeout: float = 600.0) -> httpx.AsyncClient:
    """One client for a whole benchmark: no connection cap (the load shape sets concurrency)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=30.0), limits=limits)


async def resolve_model(client: httpx.AsyncClient, target: Target) -> str:
    """The target's model: given, else the first one its /v1/models or /api/tags lists."""
    if target.model:
        return target.model
    url = target.url + models_endpoint(target.api)
    try:
        resp = await client.get(url, headers=target.headers)
        resp.raise_for_status()
        model = first_model(target.api, resp.json())
    except (httpx.HTTPError, ValueError) as e:
        raise ConfigError(
            f"target {target.name}: cannot list models at {url} ({e}); is the server up? "
            "Pass model=NAME in --target to skip the lookup"
        ) from None
    if not model:
        raise ConfigError(f"target {target.name}: {url} lists no model; pass model=NAME")
    target.model = model
    return model


async def send_request(
    client: httpx.AsyncClient,
    target: Target,
    req: BenchRequest,
    params: GenParams,
    record: RequestRecord,
) -> RequestRecord:
    """Stream one request, filling ``record``'s timings; errors end up in ``record.error``."""
    payload = build_payload(target.api, target.model or "", req, params)
    url = target.url + endpoint(target.api)
    chunks = 0
    text: list[str] = []
    start = time.perf_counter()
    try:
        async with client.stream("POST", url, json=payload, headers=target.headers) as resp:
            if resp.status_code != 200:
                record.error = f"HTTP {resp.status_code}: {_body_message(await resp.aread())}"
                return record
            async for line in resp.aiter_lines():
                now = time.perf_counter() - start
                event = parse_line(target.api, line)
                if event is None:
                    continue
                if event.error is not None:
                    record.error = f"stream error: {event.error}"
                    return record
                if event.text:
                    chunks += 1
                    text.append(event.text)
                    record.chunk_times.append(now)
                if event.output_tokens is not None:
                    record.output_tokens = event.output_tokens
                    record.prompt_tokens = event.prompt_tokens
                    record.usage_reported = True
        record.e2e = time.perf_counter() - start
    except httpx.TimeoutException:
        record.error = "timeout"
        return record
    except httpx.HTTPError as e:
        record.error = f"{type(e).__name__}: {e}"
        return record
    except json.JSONDecodeError:
        record.error = "malformed stream (a line is not JSON)"
        return record
    except Exception as e:  # noqa: BLE001 - one odd server reply must not end the benchmark
        record.error = f"malformed stream ({type(e).__name__}: {e})"
        return record
    finally:
        record.output_text = "".join(text)
    if not record.usage_reported:
        record.output_tokens = chunks  # best effort: one token per chunk
    if not record.chunk_times:
        record.error = "empty response (no text chunk)"
        return record
    record.ttft = record.chunk_times[0]
    record.success = True
    return record


def _body_message(body: bytes) -> str:
    try:
        return error_message(json.loads(body))[:200]
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:200] or "(empty body)"
