"""Safe defaults: API-key check (constant time), request body size limit, opt-in CORS.

Pure ASGI middlewares, so streaming responses are untouched and errors keep each API's shape.
"""

from __future__ import annotations

import hmac

from starlette.middleware.cors import CORSMiddleware

from minerva.server.api_errors import APIError, error_response

PUBLIC_PATHS = frozenset({"/health"})
"""Routes that answer without an API key (load balancers probe them)."""


def api_key_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison, so response timing does not leak the key."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def presented_key(scope) -> str | None:
    """The key from ``Authorization: Bearer KEY`` or ``x-api-key: KEY``."""
    auth = _header(scope, b"authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    return _header(scope, b"x-api-key")


class APIKeyMiddleware:
    """401 for every HTTP route but /health unless the right key is presented."""

    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        if not api_key_matches(presented_key(scope), self.api_key):
            err = APIError(
                401,
                "Invalid or missing API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await error_response(scope["path"], err)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """413 for bodies over ``max_bytes``: by Content-Length up front, or while streaming in."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> APIError:
        return APIError(
            413,
            f"The request body is larger than this server's limit of {self.max_bytes} bytes",
            code="request_too_large",
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await error_response(scope["path"], self._error())(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        async def watched_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _BodyTooLarge:
            if not started:
                await error_response(scope["path"], self._error())(scope, receive, send)


def cors_middleware_options(origins: list[str]) -> dict:
    """CORSMiddleware options for ``--cors-origins`` (no CORS at all when none are given)."""
    return {
        "allow_origins": origins,
        "allow_methods": ["GET", "POST", "OPTIONS"],
        "allow_headers": ["Authorization", "Content-Type", "x-api-key"],
        "allow_credentials": False,
    }


__all__ = [
    "APIKeyMiddleware",
    "BodySizeLimitMiddleware",
    "CORSMiddleware",
    "api_key_matches",
    "cors_middleware_options",
]
