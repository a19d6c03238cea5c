"""``minerva serve``: the argparse subcommand and the uvicorn runner with a graceful SIGTERM.

The first SIGTERM (or Ctrl-C) drains: new requests get 503, in-flight ones run for up to
``--shutdown-timeout`` seconds, the rest end with finish_reason "abort", and the process exits
0 within about 2 s more. A second signal exits at once. An engine that crashes or hangs (a step
past ``--step-timeout``) fails its requests and the process exits 1, for a supervisor to restart.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minerva.config import add_config_arguments, load_config_from_args
from minerva.config_cli import env_file_of, print_notices
from minerva.server.config import (
    ServerConfig,
    add_server_arguments,
    load_server_config,
    server_overrides_from_args,
)

if TYPE_CHECKING:
    import socket

    from minerva.config import EngineConfig

logger = logging.getLogger("minerva.server")


def add_serve_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``minerva serve`` (server flags + every engine config flag); sets ``func``."""
    parser = subparsers.add_parser(
        "serve",
        help="serve the model over OpenAI- and Ollama-compatible HTTP APIs",
        description="Serve a model over OpenAI (/v1/*) and Ollama (/api/*) HTTP APIs, with "
        "Prometheus metrics on /metrics and readiness on /health.",
    )
    group = add_server_arguments(parser)
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
    if model_path == "demo" and not Path("demo").exists():  # --model demo: the bundled model
        return "minerva-demo"
    if model_path:
        return Path(model_path.rstrip("/")).name or "minerva"
    return "minerva-demo"


def run_serve(args: argparse.Namespace) -> int:
    """``minerva serve``: load the config, start the app, serve until SIGTERM; exit code."""
    from minerva.server.listen_socket import bind_listen_socket

    engine_config, _ = load_config_from_args(args)
    flags = server_overrides_from_args(args)
    model_path = engine_config.model.model
    flags["served_model_name"] = served_model_name(
        engine_config.model.served_model_name, model_path
    )
    notices: list[str] = []
    server_config: ServerConfig = load_server_config(
        flags, config_file=getattr(args, "config", None), env_file=env_file_of(args),
        notices=notices,
    )  # fmt: skip
    print_notices(notices)
    # Before torch is imported or the model loads: a busy port is a one-line error.
    sock = bind_listen_socket(server_config.host, server_config.port)
    with sock:
        return _serve(args, engine_config, server_config, sock)


def _serve(
    args: argparse.Namespace,
    engine_config: EngineConfig,
    server_config: ServerConfig,
    sock: socket.socket,
) -> int:
    """Build the app over the model loader and run uvicorn on the bound socket."""
    import uvicorn

    from minerva.backends import load_backend
    from minerva.server.app import build_app
    from minerva.server.background import LOAD_THREAD, is_running
    from minerva.server.heap import frozen
    from minerva.server.http_protocol import protocol_class
    from minerva.server.uvicorn_runner import DrainingServer

    if server_config.models_dir is not None:
        print(f"minerva: serving the models in {server_config.models_dir}", file=sys.stderr)
    elif engine_config.model.model is None:
        print("minerva: no --model given, using the bundled demo model", file=sys.stderr)
    log_format = "%(levelname)s:     %(name)s: %(message)s"  # lines up with uvicorn's
    logging.basicConfig(level=args.log_level.upper(), format=log_format)
    if warning := server_config.bind_warning():
        print(f"\n{'!' * 80}\n{warning}\n{'!' * 80}\n", file=sys.stderr, flush=True)

    runner = None

    def on_load_error(error: BaseException) -> None:
        print(f"minerva: error: {error}", file=sys.stderr, flush=True)
        if runner is not None:
            runner.fail(error)

    if server_config.models_dir is not None:
        from minerva.server.model_loading import directory_app_options

        options = directory_app_options(engine_config, server_config)
        app = build_app(server_config, **options)
    else:
        app = build_app(
            server_config,
            # A long-lived process: the loaded heap is frozen out of the collector's way (heap.py).
            load_backend=lambda: frozen(
                load_backend(
                    engine_config.model.backend,
                    engine_config,
                    max_queued_requests=server_config.max_queued_requests,
                )
            ),
            on_load_error=on_load_error,
            on_engine_failure=lambda reason: runner.fail(reason) if runner is not None else None,
        )
    uv_config = uvicorn.Config(
        app,
        host=server_config.host,
        port=server_config.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=0.5,  # type: ignore[arg-type]  # after the drain: lingerers
        lifespan="on",
        http=protocol_class(server_config.header_timeout, server_config.write_timeout),
    )
    runner = DrainingServer(uv_config, app.state.minerva, server_config.shutdown_timeout)
    code = runner.run_until_exit(sockets=[sock])
    if is_running(LOAD_THREAD) or app.state.minerva.engine_stuck:
        # Stopped mid-load or mid-step: finalizing the interpreter while a thread is inside
        # torch aborts (C++ terminate, exit 134) or waits. Nothing is left to clean up.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
