"""What a web page must not make a browser do to a local server: read its answers through DNS
rebinding (the Host check, as Ollama's fix for CVE-2024-28224), or start work with a cross-site
"simple" POST that skips CORS preflight (the JSON content-type check). Pure ASGI; no torch."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable

from minerva.server.api_errors import APIError, error_response

_NUMERIC_V4 = re.compile(r"^[0-9a-fx.]+$")  # what inet_aton reads: 127.1, 0x7f.1, 2130706433
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def host_name(host_header: str) -> str:
    """'LOCALHOST:8000' -> 'localhost', '[::1]:80' -> '::1', 'example.com.' -> 'example.com'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        host = name
    return host.rstrip(".")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if _NUMERIC_V4.match(host):
        try:  # the forms browsers and resolvers accept, not only dotted quads
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_loopback_host(host: str) -> bool:
    """True for names that always mean this machine: localhost, *.localhost (RFC 6761), loopback
    and unspecified addresses in any spelling (127.1, [::1], ::ffff:127.0.0.1). Case-insensitive."""
    host = host_name(host)
    if host == "localhost" or host.endswith(".localhost"):
        return True
    ip = _ip(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip is not None and (ip.is_loopback or ip.is_unspecified)


class HostCheckMiddleware:
    """403 unless the Host header names this machine (or one of ``allowed``). Only installed
    when bound to loopback: a rebinding page's requests carry its own domain as Host."""

    def __init__(self, app, allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = frozenset(host_name(h) for h in allowed)

    def allows(self, host_header: str | None) -> bool:
        if host_header is None or "*" in self.allowed:  # HTTP/1.0 clients send none; browsers do
            return True
        return is_loopback_host(host_header) or host_name(host_header) in self.allowed

    async def __call__(self, scope, receive, send) -> None:
        host = _header(scope, b"host") if scope["type"] == "http" else None
        if host is None or self.allows(host):
            await self.app(scope, receive, send)
            return
        err = APIError(
            403,
            f"Host {host_name(host)!r} is not allowed: this server is bound to loopback and "
            "answers only to localhost names (a guard against DNS rebinding). If you reach it "
            "through that name on purpose, add it with --allowed-hosts (MINERVA_ALLOWED_HOSTS)",
            code="host_not_allowed",
        )
        await error_response(scope["path"], err)(scope, receive, send)


def content_type_problem(method: str, content_type: str | None, origin: str | None) -> str | None:
    """Why a request body may not be read as JSON, or None. Browsers send Origin with every
    cross-site POST; curl -d sends form-urlencoded, so that one passes when Origin is absent."""
    if method not in _BODY_METHODS:
        return None
    kind = (content_type or "").partition(";")[0].strip().lower()
    if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
        return None
    if not kind:
        return None if origin is None else "no Content-Type on a browser (cross-origin) request"
    if kind == "application/x-www-form-urlencoded" and origin is None:
        return None
    return f"Content-Type {kind!r} is not JSON"


class JSONContentTypeMiddleware:
    """415 for a body that is not declared as JSON on the (all-JSON) POST routes."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            problem = content_type_problem(
                scope["method"], _header(scope, b"content-type"), _header(scope, b"origin")
            )
            if problem is not None:
                err = APIError(
                    415,
                    f"{problem}: send the body as JSON with 'Content-Type: application/json'",
                    code="unsupported_media_type",
                )
                await error_response(scope["path"], err)(scope, receive, send)
                return
        await self.app(scope, receive, send)
