"""Ollama's model management routes (/api/pull, push, create, copy, delete, blobs).

With --models-dir, pull (from a local path), create, copy and delete manage the directory
(model_store.py). Serving one model loaded from a local path, there is nothing to download or
manage: pulling the served model succeeds at once ("already available"), everything else gets
a 400 that says so, in Ollama's ``{"error": ...}`` shape, instead of a bare 404. Push and blob
uploads get that 400 either way."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from minerva.server.api_errors import APIError
from minerva.server.generation import read_json_object
from minerva.server.model_store import ModelStore
from minerva.server.modelfile import recipe_from_request
from minerva.server.state import get_state

router = APIRouter()

LOCAL_ONLY = "models are loaded from local paths (minerva serve --model PATH)"


def _name(data: dict, key: str = "model") -> str:
    name = data.get(key) or (data.get("name") if key == "model" else None)
    if not isinstance(name, str) or not name:
        raise APIError(400, f"'{key}' must be given as a string", param=key)
    return name


def _statuses(statuses: list[str], stream: bool) -> Response:
    if not stream:
        return JSONResponse({"status": statuses[-1]})
    lines = "".join(json.dumps({"status": s}) + "\n" for s in statuses)
    return StreamingResponse(iter([lines]), media_type="application/x-ndjson")


@router.post("/api/pull")
async def pull(request: Request) -> Response:
    state = get_state(request)
    data = await read_json_object(request)
    name = _name(data)
    if state.registry is not None:
        statuses = await ModelStore(state.registry).pull(name)
        return _statuses(statuses, data.get("stream", True) is not False)
    if name not in (state.model_name, f"{state.model_name}:latest"):
        raise APIError(
            400,
            f"pull is not supported, {LOCAL_ONLY}; this server serves {state.model_name!r}",
            param="model",
            code="unsupported",
        )
    statuses = [f"{name} is already available", "success"]
    return _statuses(statuses, data.get("stream", True) is not False)


@router.post("/api/create")
async def create(request: Request) -> Response:
    state = get_state(request)
    if state.registry is None:
        raise _unsupported_error("create", LOCAL_ONLY)
    data = await read_json_object(request)
    statuses = ModelStore(state.registry).create(_name(data), recipe_from_request(data))
    return _statuses(statuses, data.get("stream", True) is not False)


@router.post("/api/copy")
async def copy(request: Request) -> Response:
    state = get_state(request)
    if state.registry is None:
        raise _unsupported_error("copy", "this server does not manage model files")
    data = await read_json_object(request)
    ModelStore(state.registry).copy(_name(data, "source"), _name(data, "destination"))
    return Response(status_code=200)


@router.api_route("/api/delete", methods=["DELETE", "POST"])
async def delete(request: Request) -> Response:
    state = get_state(request)
    if state.registry is None:
        raise _unsupported_error("delete", "this server does not manage model files")
    data = await read_json_object(request)
    await ModelStore(state.registry).delete(_name(data))
    return Response(status_code=200)


def _unsupported_error(what: str, why: str) -> APIError:
    return APIError(400, f"{what} is not supported: {why}", code="unsupported")


def _unsupported(what: str, why: str):
    async def handler() -> Response:
        raise _unsupported_error(what, why)

    return handler


_ROUTES = [
    ("/api/push", ["POST"], "push", "this server only serves a model from a local path"),
    ("/api/blobs/{digest}", ["HEAD", "POST"], "uploading blobs", LOCAL_ONLY),
]
for _path, _methods, _what, _why in _ROUTES:
    router.add_api_route(_path, _unsupported(_what, _why), methods=_methods)
