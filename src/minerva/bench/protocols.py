"""The four streaming HTTP APIs a benchmark target may speak: request bodies and stream parsing.

* ``openai``: ``POST /v1/completions`` (SSE, ``data: {...}`` lines, ``data: [DONE]``)
* ``openai-chat``: ``POST /v1/chat/completions`` (SSE)
* ``ollama``: ``POST /api/generate`` (NDJSON, final line ``done: true`` with ``eval_count``)
* ``ollama-chat``: ``POST /api/chat`` (NDJSON)

Only standard fields are sent; ``ignore_eos`` (a vLLM / llama.cpp / Minerva extension) only
when asked, since strict servers refuse unknown fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from minerva.bench.workloads import BenchRequest

APIS = ("openai", "openai-chat", "ollama", "ollama-chat")


@dataclass
class GenParams:
    """Sampling settings every request of a benchmark shares."""

    temperature: float = 0.0
    ignore_eos: bool = False
    seed: int | None = None
    neutral: bool = False
    """Also send top_p 1 and no penalties, so a server's model defaults (generation_config.json)
    cannot change the output: what comparisons between engines need."""


NEUTRAL_OPENAI = {
    "top_p": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "repetition_penalty": 1.0,  # an extension of vLLM, llama.cpp and Minerva
}
NEUTRAL_OLLAMA = {
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repeat_penalty": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
}


@dataclass
class StreamEvent:
    """What one line of a stream said."""

    text: str = ""
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None
    done: bool = False


def endpoint(api: str) -> str:
    return {
        "openai": "/v1/completions",
        "openai-chat": "/v1/chat/completions",
        "ollama": "/api/generate",
        "ollama-chat": "/api/chat",
    }[api]


def models_endpoint(api: str) -> str:
    return "/api/tags" if api.startswith("ollama") else "/v1/models"


def first_model(api: str, body: dict) -> str | None:
    """The first model name in a /v1/models or /api/tags answer."""
    items = body.get("models" if api.startswith("ollama") else "data") or []
    if not items:
        return None
    return items[0].get("name") or items[0].get("model") or items[0].get("id")


def build_payload(api: str, model: str, req: BenchRequest, params: GenParams) -> dict:
    """The JSON body of a streaming request."""
    if api.startswith("openai"):
        body: dict = {
            "model": model,
            "max_tokens": req.max_tokens,
            "temperature": params.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if api == "openai-chat":
            body["messages"] = req.chat_messages()
        else:
            body["prompt"] = req.prompt
        if params.ignore_eos:
            body["ignore_eos"] = True
        if params.neutral:
            body.update(NEUTRAL_OPENAI)
    else:
        options: dict = {"num_predict": req.max_tokens, "temperature": params.temperature}
        if params.neutral:
            options.update(NEUTRAL_OLLAMA)
        body = {"model": model, "stream": True, "options": options}
        if api == "ollama-chat":
            body["messages"] = req.chat_messages()
        else:
            body["prompt"] = req.prompt
    if params.seed is not None:
        (body if api.startswith("openai") else body["options"])["seed"] = params.seed
    return body


def parse_line(api: str, line: str) -> StreamEvent | None:
    """One line of the stream -> StreamEvent, or None for blank / comment / keep-alive lines."""
    line = line.strip()
    if not line:
        return None
    if api.startswith("openai"):
        if not line.startswith("data:"):
            return None  # "event:", "id:", ": keep-alive"
        data = line[5:].strip()
        if data == "[DONE]":
            return StreamEvent(done=True)
        return _openai_event(json.loads(data))
    return _ollama_event(json.loads(line))


def _openai_event(obj: dict) -> StreamEvent:
    if "error" in obj:
        return StreamEvent(error=error_message(obj))
    event = StreamEvent()
    for choice in obj.get("choices") or []:
        delta = choice.get("delta")
        piece = (delta or {}).get("content") if delta is not None else choice.get("text")
        event.text += piece or ""
    usage = obj.get("usage")
    if usage:
        event.prompt_tokens = usage.get("prompt_tokens")
        event.output_tokens = usage.get("completion_tokens")
    return event


def _ollama_event(obj: dict) -> StreamEvent:
    if "error" in obj:
        return StreamEvent(error=error_message(obj))
    text = obj.get("response")
    if text is None:
        text = (obj.get("message") or {}).get("content")
    event = StreamEvent(text=text or "", done=bool(obj.get("done")))
    if event.done:
        event.prompt_tokens = obj.get("prompt_eval_count")
        event.output_tokens = obj.get("eval_count")
    return event


def error_message(body: object) -> str:
    """The message of an OpenAI ({"error": {"message"}}) or Ollama ({"error": "..."}) error."""
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body))
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(body)
