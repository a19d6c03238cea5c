"""Ollama's model management routes (/api/pull, push, create, copy, delete, blobs).

This server serves one model loaded from a local path, so there is nothing to download or
manage: pulling the served model succeeds at once ("already available"), everything else gets
a 400 that says so, in Ollama's ``{"error": ...}`` shape, instead of a bare 404."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from minerva.server.api_errors import APIError
from minerva.server.generation import read_json_object
from minerva.server.state import get_state

router = APIRouter()

LOCAL_ONLY = "models are loaded from local paths (minerva serve --model PATH)"


@router.post("/api/pull")
async def pull(request: Request) -> Response:
    state = get_state(request)
    data = await read_json_object(request)
    name = data.get("model") or data.get("name")
    if not isinstance(name, str) or not name:
        raise APIError(400, "'model' must be given as a string", param="model")
    if name not in (state.model_name, f"{state.model_name}:latest"):
        raise APIError(
            400,
            f"pull is not supported, {LOCAL_ONLY}; this server serves {state.model_name!r}",
            param="model",
            code="unsupported",
        )
    statuses = [{"status": f"{name} is already available"}, {"status": "success"}]
    if data.get("stream", True) is False:
        return JSONResponse(statuses[-1])
    lines = "".join(json.dumps(s) + "\n" for s in statuses)
    return StreamingResponse(iter([lines]), media_type="application/x-ndjson")


def _unsupported(what: str, why: str):
    async def handler() -> Response:
        raise APIError(400, f"{what} is not supported: {why}", code="unsupported")

    return handler


_ROUTES = [
    ("/api/push", ["POST"], "push", "this server only serves a model from a local path"),
    ("/api/create", ["POST"], "create", LOCAL_ONLY),
    ("/api/copy", ["POST"], "copy", "this server does not manage model files"),
    ("/api/delete", ["DELETE", "POST"], "delete", "this server does not manage model files"),
    ("/api/blobs/{digest}", ["HEAD", "POST"], "uploading blobs", LOCAL_ONLY),
]
for _path, _methods, _what, _why in _ROUTES:
    router.add_api_route(_path, _unsupported(_what, _why), methods=_methods)
