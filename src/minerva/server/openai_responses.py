"""OpenAI response bodies: chat.completion(.chunk), text_completion, logprobs and usage."""

from __future__ import annotations

from typing import Any

from minerva.backends.base import Backend
from minerva.request import Logprobs
from minerva.server.generation import finite


def token_text(backend: Backend, token_id: int) -> str:
    """The text of one token as OpenAI shows it (special tokens included)."""
    if not backend.has_tokenizer:
        return f"token_id:{token_id}"
    return backend.decode([token_id], skip_special_tokens=False)


def _entry(backend: Backend, token_id: int, logprob: float) -> dict[str, Any]:
    text = token_text(backend, token_id)
    return {"token": text, "logprob": finite(logprob), "bytes": list(text.encode("utf-8"))}


def chat_logprobs(backend: Backend, entries: list[Logprobs]) -> dict[str, Any]:
    """``choices[i].logprobs`` of a chat completion: one item per generated token."""
    content = []
    for lp in entries:
        item = _entry(backend, lp.token_id, lp.logprob)
        item["top_logprobs"] = [
            _entry(backend, t, v) for t, v in zip(lp.top_token_ids, lp.top_logprobs)
        ]
        content.append(item)
    return {"content": content}


def completion_logprobs(
    backend: Backend, entries: list[Logprobs], text_offset: int = 0
) -> dict[str, Any]:
    """``choices[i].logprobs`` of a legacy completion (tokens, token_logprobs, top_logprobs)."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for lp in entries:
        text = token_text(backend, lp.token_id)
        tokens.append(text)
        token_logprobs.append(finite(lp.logprob))
        top = {token_text(backend, t): finite(v) for t, v in zip(lp.top_token_ids, lp.top_logprobs)}
        tops.append(top)
        offsets.append(text_offset)
        text_offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def chat_chunk(
    request_id: str,
    created: int,
    model: str,
    index: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [
            {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        ],
    }


def completion_chunk(
    request_id: str,
    created: int,
    model: str,
    index: int,
    text: str,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        ],
    }


def usage_chunk(request_id: str, created: int, model: str, obj: str, usage_: dict) -> dict:
    """The last chunk when ``stream_options.include_usage``: no choices, the totals."""
    return {
        "id": request_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_,
    }
