"""Errors as each API shapes them: OpenAI ``{"error": {message, type, param, code}}`` under /v1,
Ollama ``{"error": "..."}`` under /api. Every error a client can cause is a 4xx, never a 500.
No torch at import (the security middlewares and protocol tests stay light)."""

from __future__ import annotations

import json
import logging

from pydantic import ValidationError
from starlette.responses import JSONResponse

from minerva.errors import EngineUnavailableError, MinervaError, NotSupportedError, RequestError

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """An HTTP error with the fields of OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return _TYPES.get(
            self.status, "server_error" if self.status >= 500 else "invalid_request_error"
        )

    def openai_body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def is_ollama_path(path: str) -> bool:
    return path == "/" or path.startswith("/api/")


def error_body(path: str, err: APIError) -> dict:
    return {"error": err.message} if is_ollama_path(path) else err.openai_body()


def error_response(path: str, err: APIError) -> JSONResponse:
    return JSONResponse(error_body(path, err), status_code=err.status, headers=err.headers)


OPENAI_ROUTES = "/v1/models, /v1/chat/completions, /v1/completions and /v1/embeddings"
OLLAMA_ROUTES = (
    "/api/generate, /api/chat, /api/embed, /api/embeddings, /api/tags, /api/show, /api/ps, "
    "/api/version and /api/pull"
)


def routing_error(method: str, path: str, exc: Exception) -> APIError:
    """A 404 / 405 from the router, in words that name what this server has."""
    status = getattr(exc, "status_code", 500)
    if status == 404:
        routes = OLLAMA_ROUTES if is_ollama_path(path) else OPENAI_ROUTES
        message = f"Unknown route {method} {path}: this server serves {routes}"
        return APIError(404, message, code="not_found")
    if status == 405:
        headers = {k.lower(): v for k, v in (getattr(exc, "headers", None) or {}).items()}
        allowed = headers.get("allow", "another method")
        return APIError(405, f"{method} is not allowed on {path}; use {allowed}")
    return APIError(status, str(getattr(exc, "detail", exc)))


def model_not_found(name: str, available: str) -> APIError:
    return APIError(
        404,
        f"The model {name!r} does not exist. This server serves {available!r}.",
        param="model",
        code="model_not_found",
    )


def to_api_error(e: BaseException) -> APIError:
    """Map an exception from validation or the engine to its HTTP error."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, EngineUnavailableError):
        headers = {"Retry-After": str(e.retry_after)} if e.retry_after else {}
        return APIError(503, str(e), code=e.reason, headers=headers)
    if isinstance(e, RequestError):
        return APIError(400, str(e), param=e.param, code=e.code)
    if isinstance(e, NotSupportedError):  # the backend cannot do what this request asks
        return APIError(400, str(e), code="not_supported")
    if isinstance(e, ValidationError):
        return validation_error(e)
    if isinstance(e, json.JSONDecodeError):
        return APIError(400, f"The body is not valid JSON: {e}", code="invalid_json")
    if isinstance(e, MinervaError):
        return APIError(500, str(e), code="internal_error")
    logger.error("unexpected error", exc_info=e)
    return APIError(500, f"Internal server error ({type(e).__name__})", code="internal_error")


def validation_error(e: ValidationError) -> APIError:
    """One 400 naming the first bad field, what was expected and what came."""
    errors = e.errors(include_url=False)
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "json_invalid":
        return APIError(400, f"The body is not valid JSON: {first['msg']}", code="invalid_json")
    if first["type"] == "extra_forbidden":
        message = f"Unknown field {loc!r}: this server does not support it (remove it)"
    else:
        got = json.dumps(first.get("input"), default=str)
        got = got if len(got) <= 80 else got[:77] + "..."
        message = f"Invalid value for {loc!r}: {first['msg']} (got {got})"
    more = f" and {len(errors) - 1} more problem(s)" if len(errors) > 1 else ""
    return APIError(400, message + more, param=loc or None, code="invalid_value")
