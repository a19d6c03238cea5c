"""ServerConfig: the HTTP side's settings (the engine's live in minerva.config). No torch.

Precedence: defaults < ``MINERVA_<FIELD>`` env vars < ``minerva serve`` flags.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from minerva.config import parse_byte_size
from minerva.errors import ConfigError


def _field(default: Any, doc: str) -> Any:
    if isinstance(default, list):  # mutable defaults need a factory
        return field(default_factory=lambda: list(default), metadata={"help": doc})
    return field(default=default, metadata={"help": doc})


@dataclass
class ServerConfig:
    """How ``minerva serve`` listens, whom it lets in and how it sheds load."""

    host: str = _field("127.0.0.1", "Address to bind (loopback by default).")
    port: int = _field(8000, "TCP port to listen on.")
    served_model_name: str = _field(
        "", "Model name the APIs report and accept (set from the engine config)."
    )
    api_key: str | None = _field(
        None, "Require 'Authorization: Bearer KEY' on every route but /health."
    )
    cors_origins: list[str] = _field(
        [], "Origins allowed by CORS, comma separated ('*' for any); none by default."
    )
    max_queued_requests: int = _field(
        256, "Requests that may wait beyond max_num_seqs running ones; past it, 503."
    )
    max_body_bytes: int = _field(
        8 * 1024 * 1024, "Largest request body in bytes (e.g. 8MiB); larger ones get 413."
    )
    shutdown_timeout: float = _field(
        30.0, "Seconds in-flight requests may run after SIGTERM before they are aborted."
    )

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port={self.port}: must be in [0, 65535]")
        if self.max_queued_requests < 0:
            problems.append(f"max_queued_requests={self.max_queued_requests}: must be >= 0")
        if self.max_body_bytes < 1024:
            problems.append(f"max_body_bytes={self.max_body_bytes}: must be at least 1KiB")
        if self.shutdown_timeout < 0:
            problems.append(f"shutdown_timeout={self.shutdown_timeout}: must be >= 0")
        if self.api_key is not None and not self.api_key.strip():
            problems.append("api_key is empty: give a real key or leave it unset")
        if problems:
            raise ConfigError("Invalid server config: " + "; ".join(problems))

    @property
    def is_loopback(self) -> bool:
        """True when only this machine can connect."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # "" (all interfaces) or a host name other than localhost
            return False

    def bind_warning(self) -> str | None:
        """The warning to print when anyone on the network could use the server freely."""
        if self.is_loopback or self.api_key:
            return None
        return (
            f"WARNING: binding {self.host}:{self.port} without an API key: anyone who can reach "
            "this address can use the model. Set --api-key (or MINERVA_API_KEY), or bind "
            "127.0.0.1."
        )


ENV_VARS = {
    "host": "MINERVA_HOST",
    "port": "MINERVA_PORT",
    "api_key": "MINERVA_API_KEY",
    "cors_origins": "MINERVA_CORS_ORIGINS",
    "max_queued_requests": "MINERVA_MAX_QUEUED_REQUESTS",
    "max_body_bytes": "MINERVA_MAX_BODY_BYTES",
    "shutdown_timeout": "MINERVA_SHUTDOWN_TIMEOUT",
}
"""Environment variable of each field (served_model_name comes from the engine config)."""


def parse_server_value(name: str, text: str) -> Any:
    """A string from env or CLI -> the field's type; ValueError saying what is allowed."""
    text = text.strip()
    if name == "cors_origins":
        return [o.strip() for o in text.split(",") if o.strip()]
    if name == "max_body_bytes":
        return parse_byte_size(text)
    if name in ("port", "max_queued_requests"):
        try:
            return int(text)
        except ValueError:
            raise ValueError("must be an integer") from None
    if name == "shutdown_timeout":
        try:
            return float(text)
        except ValueError:
            raise ValueError("must be a number of seconds") from None
    return text or None if name == "api_key" else text


def load_server_config(
    overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> ServerConfig:
    """Defaults < env vars < ``overrides`` (already typed, e.g. parsed flags)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    problems = []
    for name, var in ENV_VARS.items():
        if var in env:
            try:
                values[name] = parse_server_value(name, env[var])
            except ValueError as e:
                problems.append(f"{var}={env[var]!r}: {e}")
    if problems:
        raise ConfigError("Invalid server config: " + "; ".join(problems))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return ServerConfig(**values)
