"""ServerConfig: the HTTP side's settings (the engine's live in minerva.config). No torch.

Declared with the same ``Field`` machinery as the engine config and read by the same sources:
defaults < the TOML file's ``[server]`` table < .env file < ``MINERVA_<FIELD>`` env vars (and
the seeds' MISTRAL_HOST / MISTRAL_PORT) < ``minerva serve`` flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from minerva import config_cli, config_sources
from minerva.config import SECTIONS
from minerva.config_aliases import SEED_SECTIONS, aliases_of
from minerva.config_fields import Field, Schema, config_error, specs_of
from minerva.errors import RequestError
from minerva.server.keep_alive import parse_keep_alive
from minerva.server.reasoning import REASONING_PARSERS, normalize_parser_name

_HEADER = "Invalid server config"


def _is_keep_alive(value: str) -> bool:
    try:
        parse_keep_alive(value, 0.0)
    except RequestError:
        return False
    return True


def _path_or_none(text: str) -> str | None:
    return text or None  # an empty value means unset


def _key_text(text: str) -> str:
    return text  # "none" is a key like any other; a blank one is refused (non_empty), not "off"


def read_api_key_file(path: str) -> str:
    """The key in ``path`` (its first line, stripped); ConfigError naming the setting when the
    file is unreadable or blank."""
    try:
        with open(path, encoding="utf-8") as f:
            key = f.readline(4096).strip()
    except (OSError, UnicodeDecodeError) as e:
        raise config_error([f"api_key_file: cannot read {path!r} ({e})"], _HEADER) from None
    if not key:
        raise config_error(
            [f"api_key_file: {path!r} has no key on its first line (write the key there)"],
            _HEADER,
        )
    return key


@dataclass
class ServerConfig:
    """How ``minerva serve`` listens, whom it lets in and how it sheds load."""

    host: str = Field("127.0.0.1", "Address to bind (loopback by default: this machine only).")
    port: int = Field(8000, "TCP port to listen on.", ge=0, le=65535, metavar="PORT")
    served_model_name: str = Field(
        "", "Model name the APIs report and accept (set from the engine config).", env=False
    )
    api_key: str | None = Field(
        None, "Require 'Authorization: Bearer KEY' on every route but /health (a blank key is "
        "refused; prefer MINERVA_API_KEY or --api-key-file: flags show in the process list).",
        parse=_key_text, non_empty=True, metavar="KEY", secret=True,
    )  # fmt: skip
    api_key_file: str | None = Field(
        None, "Read the API key from the first line of this file (instead of api_key).",
        non_empty=True, metavar="PATH",
    )  # fmt: skip
    cors_origins: list[str] = Field(
        [], "Origins allowed by CORS, comma separated ('*' for any); none by default."
    )
    allowed_hosts: list[str] = Field(
        [], "Host header names accepted besides localhost names while bound to loopback (a "
        "DNS-rebinding guard), comma separated ('*' for any).",
    )  # fmt: skip
    max_queued_requests: int = Field(
        256, "Requests that may wait beyond max_num_seqs running ones; past it 503 + Retry-After.",
        ge=0,
    )  # fmt: skip
    max_body_bytes: int = Field(
        8 * 1024 * 1024, "Largest request body (e.g. 8MiB); larger ones get 413.",
        byte_size=True, ge=1024,
    )  # fmt: skip
    shutdown_timeout: float = Field(
        30.0, "Seconds in-flight requests may run after SIGTERM before they are aborted; the "
        "whole shutdown ends within about 2 s more.",
        ge=0, metavar="SECONDS",
    )  # fmt: skip
    max_prompt_bytes: int = Field(
        2 * 1024 * 1024, "Largest prompt text (all messages and tools together, UTF-8) a "
        "request may carry (e.g. 2MiB); larger ones get 400 before any tokenizing.",
        byte_size=True, ge=1024,
    )  # fmt: skip
    write_timeout: float = Field(
        30.0, "Seconds a response may stay blocked on a client that stopped reading before "
        "the connection is dropped and its request aborted (0: never).",
        ge=0, metavar="SECONDS",
    )  # fmt: skip
    header_timeout: float = Field(
        10.0, "Seconds a connection may take to send a request's headers (slowloris, idle "
        "connections) before it is closed (0: never).",
        ge=0, metavar="SECONDS",
    )  # fmt: skip
    body_timeout: float = Field(
        60.0, "Seconds a client may take to upload a request body before it gets 408 "
        "(0: never).",
        ge=0, metavar="SECONDS",
    )  # fmt: skip

    models_dir: str | None = Field(
        None, "Serve every model in this folder by name (HF folders, .gguf files), loaded on "
        "demand and unloaded when idle; replaces --model.", parse=_path_or_none, metavar="DIR",
    )  # fmt: skip
    keep_alive: str = Field(
        "5m", "How long a --models-dir model stays loaded after its last request: '5m', "
        "seconds, 0 (unload at once) or -1 (forever); requests may set their own.",
        check=_is_keep_alive, allowed="a duration such as 5m, 300, 0 or -1", metavar="DURATION",
    )  # fmt: skip
    model_load_timeout: float = Field(
        300.0, "Seconds a request waits for its --models-dir model to load before a 503.",
        gt=0, metavar="SECONDS",
    )  # fmt: skip
    reasoning_parser: str = Field(
        "auto", "How a reasoning model's <think> block is split from its answer (OpenAI "
        "reasoning_content, Ollama thinking): auto (from the chat template; none for models "
        "that do not think), none (all text is content, as before), qwen3 or deepseek_r1 "
        "(vLLM's names).",
        choices=REASONING_PARSERS, normalize=normalize_parser_name, metavar="PARSER",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if problems := SERVER_SCHEMA.problems(dataclasses.asdict(self)):
            raise config_error(problems, _HEADER)
        if self.api_key is not None and self.api_key_file is not None:
            raise config_error(["set api_key or api_key_file, not both"], _HEADER)
        # Read once here, kept off the fields so `minerva config show` never prints it.
        self._file_key = read_api_key_file(self.api_key_file) if self.api_key_file else None

    @property
    def effective_api_key(self) -> str | None:
        """The key every route but /health requires (from api_key or api_key_file), or None."""
        return self.api_key if self.api_key is not None else self._file_key

    @property
    def is_loopback(self) -> bool:
        """True when only this machine can connect."""
        return is_loopback_host(self.host)

    def bind_warning(self) -> str | None:
        """The warning to print when anyone on the network could use the server freely."""
        if self.is_loopback or self.effective_api_key:
            return None
        return (
            f"WARNING: binding {self.host}:{self.port} without an API key: anyone who can reach "
            "this address can use the model. Set MINERVA_API_KEY or --api-key-file, or bind "
            "127.0.0.1."
        )


def is_loopback_host(host: str) -> bool:
    """``localhost`` in any case, or a loopback address in any form the resolver accepts
    (``127.1`` and ``0x7f.1`` are 127.0.0.1, as inet_aton reads them)."""
    host = host.strip().rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:  # the short and hex IPv4 forms ipaddress refuses but bind() accepts
        return ipaddress.IPv4Address(socket.inet_aton(host)).is_loopback
    except OSError:  # "" (all interfaces) or a host name other than localhost
        return False


_FIELDS = specs_of({"server": ServerConfig})
SERVER_SCHEMA = Schema(
    fields=_FIELDS, sections={"server": ServerConfig}, build=ServerConfig,
    flatten=dataclasses.asdict, header=_HEADER, seed_aliases=tuple(aliases_of(_FIELDS)),
    other_sections=frozenset({"", *SECTIONS, *SEED_SECTIONS}) - {"server"},
)  # fmt: skip
"""The server settings as the env parser and the CLI glue see them."""

_DEST_PREFIX = "server_"


def add_server_arguments(parser: argparse.ArgumentParser) -> Any:
    """One ``--<field>`` flag per server setting (served_model_name comes from the engine's), in
    a 'server options' group, which is returned."""
    return config_cli.add_arguments(
        parser, SERVER_SCHEMA, exclude=("served_model_name",), dest_prefix=_DEST_PREFIX,
        show_env=True,
    )["server"]  # fmt: skip


def server_overrides_from_args(namespace: argparse.Namespace) -> dict[str, Any]:
    """The server flags given on the command line, by field name."""
    return config_cli.overrides_from_args(namespace, SERVER_SCHEMA, _DEST_PREFIX)


def load_server_config(
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    config_file: str | None = None,
    env_file: str | None = None,
    notices: list[str] | None = None,
) -> ServerConfig:
    """Defaults < the TOML file's [server] table < .env file < env vars < ``overrides`` (flags;
    a None value means not given). Without ``config_file``, $MINERVA_CONFIG's file, if set.
    Conflicts between MINERVA_HOST / _PORT and the seeds' names go to ``notices``."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    config, _ = config_sources.load(
        SERVER_SCHEMA, config_file, given, env, override_source="flag", env_file=env_file,
        notices=notices,
    )  # fmt: skip
    return config
