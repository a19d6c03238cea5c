"""``/openapi.json``: the routes FastAPI knows, with each JSON route's request body taken from
the pydantic model that validates it (the routes read raw bodies, so FastAPI cannot see them).
Schema fuzzers (schemathesis) and client generators run against this document. No torch."""

from __future__ import annotations

import re
import warnings
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from minerva.server.embedding_protocol import (
    EmbeddingRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
)
from minerva.server.ollama_protocol import ChatRequest, GenerateRequest
from minerva.server.openai_protocol import ChatCompletionRequest, CompletionRequest

REQUEST_BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/api/generate": GenerateRequest,
    "/api/chat": ChatRequest,
    "/api/embed": OllamaEmbedRequest,
    "/api/embeddings": OllamaEmbeddingsRequest,
}
_ERROR = {"description": "An error in the API's shape", "content": {"application/json": {}}}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app`` with the POST routes' request bodies filled in."""
    with warnings.catch_warnings():  # one handler serves several refused Ollama routes:
        warnings.simplefilter("ignore", UserWarning)  # its duplicate operation ids are renamed
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            operation["operationId"] = f"{method}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_')}"
    models = list(dict.fromkeys(REQUEST_BODIES.values()))
    refs, schemas = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    doc.setdefault("components", {}).setdefault("schemas", {}).update(schemas.get("$defs", {}))
    for path, model in REQUEST_BODIES.items():
        operation = doc.get("paths", {}).get(path, {}).get("post")
        if operation is None:
            continue
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(model, "validation")]}},
        }
        operation.setdefault("responses", {}).update({"400": _ERROR, "503": _ERROR})
    return doc
