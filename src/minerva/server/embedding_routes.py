"""Embedding routes: OpenAI /v1/embeddings, Ollama /api/embed and legacy /api/embeddings.

Each input runs as one pooling request (SamplingParams.pooling) in the engine's batch, next to
generation requests; its KV blocks are freed when its vector is back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from minerva.backends.base import Backend
from minerva.errors import RequestError
from minerva.server.embedding_protocol import (
    EmbeddingRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    check_dimensions,
    openai_embedding_response,
)
from minerva.server.generation import (
    add_prompts,
    collect,
    encode_admitted,
    read_json_object,
    until_disconnect,
)
from minerva.server.openai_protocol import sampling_params
from minerva.server.state import get_state

router = APIRouter()


async def embed(
    request: Request, backend: Backend, prompts: Sequence[str | list[int]], ids: list[list[int]]
) -> tuple[list[list[float]], int]:
    """(one vector per prompt, prompt tokens in all), computed together in the engine."""
    arrival = time.monotonic()
    params = sampling_params({"pooling": "mean"})
    request_id = f"embd-{uuid.uuid4().hex}"

    async def run() -> list:
        return await collect(await add_prompts(backend, prompts, ids, params, request_id, arrival))

    outs = await until_disconnect(request, run())
    if any(out.embedding is None for out in outs):
        raise RequestError("this backend does not compute embeddings", code="unsupported")
    return [out.embedding for out in outs], sum(len(out.prompt_token_ids) for out in outs)


@router.post("/v1/embeddings")
async def openai_embeddings(request: Request) -> JSONResponse:
    state = get_state(request)
    body = EmbeddingRequest.model_validate(await read_json_object(request))
    backend = await state.backend_for(request, body.model, getattr(body, "keep_alive", None))
    check_dimensions(body.dimensions, _hidden_size(backend))
    prompts = body.inputs(backend.vocab_size)
    ids = await encode_admitted(state, backend, prompts, "input")
    vectors, num_tokens = await embed(request, backend, prompts, ids)
    return JSONResponse(
        openai_embedding_response(
            state.response_name(body.model), vectors, num_tokens, body.encoding_format
        )
    )


@router.post("/api/embed")
async def ollama_embed(request: Request) -> JSONResponse:
    arrival = time.monotonic()
    state = get_state(request)
    body = OllamaEmbedRequest.model_validate(await read_json_object(request))
    if body.options is not None:
        body.options.check_supported()
    backend = await state.backend_for(request, body.model, getattr(body, "keep_alive", None))
    check_dimensions(body.dimensions, _hidden_size(backend))
    prompts = body.inputs()
    vectors, num_tokens = [], 0
    if prompts:
        context = body.context(backend.max_model_len)
        ids = await encode_admitted(state, backend, prompts, "input")
        ids = [body.fit(x, context, i) for i, x in enumerate(ids)]
        vectors, num_tokens = await embed(request, backend, prompts, ids)
    total = max(int((time.monotonic() - arrival) * 1e9), 0)
    return JSONResponse(
        {
            "model": body.model,
            "embeddings": vectors,
            "total_duration": total,
            "load_duration": 0,  # the model stays loaded
            "prompt_eval_count": num_tokens,
        }
    )


@router.post("/api/embeddings")
async def ollama_embeddings(request: Request) -> JSONResponse:
    """The legacy route: one prompt, one vector (the same vector /api/embed gives)."""
    state = get_state(request)
    body = OllamaEmbeddingsRequest.model_validate(await read_json_object(request))
    if body.options is not None:
        body.options.check_supported()
    backend = await state.backend_for(request, body.model, getattr(body, "keep_alive", None))
    if not body.prompt:
        return JSONResponse({"embedding": []})
    ids = await encode_admitted(state, backend, [body.prompt], "prompt")
    (vector,), _ = await embed(request, backend, [body.prompt], ids)
    return JSONResponse({"embedding": vector})


def _hidden_size(backend: Backend) -> int:
    size = backend.model_info(digest=False).hidden_size
    if size is None:
        raise RequestError("this backend does not compute embeddings", code="unsupported")
    return size
