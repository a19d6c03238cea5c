"""The server's listening socket, bound before anything else starts.

Binding first turns a busy port into a one-line error before the model loads: when uvicorn
found the port taken it exited while the loader thread was still inside torch, and the
interpreter's shutdown then aborted (C++ terminate, exit 134) now and then."""

from __future__ import annotations

import errno
import socket

from minerva.errors import ConfigError


def bind_listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), ready for uvicorn; ConfigError naming the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses it
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host or '0.0.0.0'}:{port}"
        if e.errno == errno.EADDRINUSE:
            reason = f"port {port} is already in use (another server is running on it)"
            fix = "stop that server or choose another port with --port"
        else:
            reason, fix = (e.strerror or str(e)), "check --host and --port"
        raise ConfigError(f"cannot listen on {where}: {reason}; {fix}") from None
    sock.set_inheritable(True)
    return sock
