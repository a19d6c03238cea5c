"""``minerva serve``: the argparse subcommand and the uvicorn runner with a graceful SIGTERM.

The first SIGTERM (or Ctrl-C) drains: new requests get 503, in-flight ones run for up to
``--shutdown-timeout`` seconds, the rest end with finish_reason "abort", and the process exits
0. A second signal exits at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from minerva.config import add_config_arguments, load_config, overrides_from_args
from minerva.config_sources import flag_name
from minerva.server.config import ENV_VARS, ServerConfig, load_server_config, parse_server_value

logger = logging.getLogger("minerva.server")

_FLAG_HELP = {
    "host": "Address to bind. Default: 127.0.0.1 (this machine only).",
    "port": "TCP port. Default: 8000.",
    "api_key": "Require 'Authorization: Bearer KEY' on every route but /health.",
    "cors_origins": "Comma-separated origins allowed by CORS ('*' for any). Default: no CORS.",
    "max_queued_requests": "Requests that may wait beyond max_num_seqs running ones; "
    "past it 503 + Retry-After. Default: 256.",
    "max_body_bytes": "Largest request body (e.g. 8MiB); larger ones get 413. Default: 8MiB.",
    "shutdown_timeout": "Seconds in-flight requests may run after SIGTERM before they are "
    "aborted. Default: 30.",
}

_METAVARS = {
    "host": "HOST", "port": "PORT", "api_key": "KEY", "cors_origins": "ORIGINS",
    "max_queued_requests": "N", "max_body_bytes": "SIZE", "shutdown_timeout": "SECONDS",
}  # fmt: skip


def _flag_type(name: str):
    def parse(text: str) -> Any:
        try:
            return parse_server_value(name, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = name
    return parse


def add_serve_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``minerva serve`` (server flags + every engine config flag); sets ``func``."""
    parser = subparsers.add_parser(
        "serve",
        help="serve the model over OpenAI- and Ollama-compatible HTTP APIs",
        description="Serve a model over OpenAI (/v1/*) and Ollama (/api/*) HTTP APIs, with "
        "Prometheus metrics on /metrics and readiness on /health.",
    )
    group = parser.add_argument_group("server options")
    for name, help_text in _FLAG_HELP.items():
        env = ENV_VARS[name]
        group.add_argument(
            flag_name(name), dest=f"server_{name}", type=_flag_type(name), default=None,
            metavar=_METAVARS[name], help=f"{help_text} Env: {env}.",
        )  # fmt: skip
    group.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="Log level of the server. Default: info.",
    )  # fmt: skip
    group.add_argument(
        "--access-log", default=True, action=argparse.BooleanOptionalAction,
        help="Log every HTTP request. Default: on.",
    )  # fmt: skip
    add_config_arguments(parser)
    parser.set_defaults(func=run_serve)
    return parser


def served_model_name(configured: str | None, model_path: str | None) -> str:
    """--served-model-name, else the model folder's name."""
    if configured:
        return configured
    if model_path:
        return Path(model_path.rstrip("/")).name or "minerva"
    return "minerva-demo"


def run_serve(args: argparse.Namespace) -> int:
    """``minerva serve``: load the config, start the app, serve until SIGTERM; exit code."""
    import uvicorn

    from minerva.backends import load_backend
    from minerva.server.app import build_app
    from minerva.server.uvicorn_runner import DrainingServer

    engine_config, _ = load_config(
        getattr(args, "config", None), overrides_from_args(args), override_source="cli"
    )
    flags = {name: getattr(args, f"server_{name}", None) for name in _FLAG_HELP}
    model_path = engine_config.model.model
    if model_path is None:
        print("minerva: no --model given, using the bundled demo model", file=sys.stderr)
    flags["served_model_name"] = served_model_name(
        engine_config.model.served_model_name, model_path
    )
    server_config: ServerConfig = load_server_config(flags)
    log_format = "%(levelname)s:     %(name)s: %(message)s"  # lines up with uvicorn's
    logging.basicConfig(level=args.log_level.upper(), format=log_format)
    if warning := server_config.bind_warning():
        print(f"\n{'!' * 80}\n{warning}\n{'!' * 80}\n", file=sys.stderr, flush=True)

    runner = None

    def on_load_error(error: BaseException) -> None:
        print(f"minerva: error: {error}", file=sys.stderr, flush=True)
        if runner is not None:
            runner.fail(error)

    app = build_app(
        server_config,
        load_backend=lambda: load_backend(
            "minerva", engine_config, max_queued_requests=server_config.max_queued_requests
        ),
        on_load_error=on_load_error,
    )
    uv_config = uvicorn.Config(
        app,
        host=server_config.host,
        port=server_config.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=5,  # after the drain, for connections that linger
        lifespan="on",
    )
    runner = DrainingServer(uv_config, app.state.minerva, server_config.shutdown_timeout)
    return runner.run_until_exit()
