"""``minerva config show | check``: the effective settings (engine and server) with their
sources, a file check, and ``--aliases``: the seeds' settings table. No torch.

Notices (seed settings that have no effect here, alias conflicts, variables nothing reads)
go to stderr as ``note:`` lines; problems make ``check`` exit 1.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence
from typing import Any

from minerva import config_cli, config_sources
from minerva.config import (
    SCHEMA,
    add_config_arguments,
    env_warnings,
    load_config,
    load_config_from_args,
)
from minerva.config_aliases import ALIAS_TABLE
from minerva.config_dotenv import read_env_file
from minerva.config_fields import Schema
from minerva.config_sources import DEFAULT_CONFIG_FILE
from minerva.errors import ConfigError


def _show(args: argparse.Namespace, extra: Sequence[Schema]) -> int:
    from rich.console import Console  # noqa: PLC0415 - rich only when printing
    from rich.table import Table  # noqa: PLC0415

    if args.aliases:
        return _show_aliases()
    notices: list[str] = []
    try:
        cfg, sources = load_config_from_args(args, notices)
        rows = config_cli.show_rows(SCHEMA, cfg, sources)
        for schema in extra:
            other, other_sources = config_sources.load(
                schema, getattr(args, "config", None), env_file=config_cli.env_file_of(args),
                notices=notices,
            )  # fmt: skip
            rows += config_cli.show_rows(schema, other, other_sources)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    table = Table(title="Minerva config")
    for column in ("section", "field"):
        table.add_column(column, no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("source", overflow="fold")
    if args.verbose:
        table.add_column("help", overflow="fold")
    specs = {n: s for schema in (SCHEMA, *extra) for n, s in schema.fields.items()}
    for section, name, value, source, doc in rows:
        cells = [section, name, config_cli.display(specs[name], value), source]
        table.add_row(*cells, *([doc] if args.verbose else []))
    Console().print(table)
    config_cli.print_notices(notices, "warning: ")
    return 0


def _show_aliases() -> int:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="The seeds' settings in Minerva (docs/config-aliases.md)")
    for column in ("seed variable", "seed TOML key", "Minerva field", "values / why no effect"):
        table.add_column(column, overflow="fold")
    for a in ALIAS_TABLE:
        table.add_row(a.env or "", a.toml_label, a.field or "no effect", a.note)
    Console().print(table)
    return 0


def _check(args: argparse.Namespace, extra: Sequence[Schema]) -> int:
    path = getattr(args, "file", None)
    if path is None and os.path.isfile(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    env_file = config_cli.env_file_of(args)
    notices: list[str] = []
    problems: list[str] = []
    for schema in (SCHEMA, *extra):
        quiet: list[str] = [] if schema is not SCHEMA else notices  # report notices once
        problems += config_sources.check_file(schema, path, quiet) if path else []
        if env_file is not None:
            try:
                dotenv = read_env_file(env_file)
            except ConfigError as e:
                problems += [p for p in e.problems if p not in problems]  # type: ignore[attr-defined]
                continue
            problems += config_sources.env_layer(schema, dotenv, where=env_file).problems
        problems += config_sources.env_layer(schema, os.environ).problems
    if not problems:  # each source is fine alone; check how they combine
        try:
            load_config(path, env=os.environ, env_file=env_file)
            for schema in extra:
                config_sources.load(schema, path, env=os.environ, env_file=env_file)
        except ConfigError as e:
            problems = list(e.problems)  # type: ignore[attr-defined]
    notices += env_warnings()
    if env_file is not None and not problems:
        notices += env_warnings(read_env_file(env_file), where=env_file)
    config_cli.print_notices(notices, "warning: ")
    for problem in problems:
        print(problem)
    if problems:
        return 1
    what = [p for p in (path, env_file) if p]
    print(f"OK: {', '.join(what)}" if what else "OK: environment (no config file)")
    return 0


def run_config_command(args: argparse.Namespace, extra: Sequence[Schema] = ()) -> int:
    """``minerva config show|check``: print the effective config or check a file; exit code."""
    command = getattr(args, "config_command", None)
    if command == "show":
        return _show(args, extra)
    if command == "check":
        return _check(args, extra)
    print("usage: minerva config {show,check} ...", file=sys.stderr)
    return 2


def add_config_subcommand(
    subparsers: Any, extra_schemas: Sequence[Schema] = ()
) -> argparse.ArgumentParser:
    """Register ``config show|check`` on the CLI's subparsers (``extra_schemas``: the server's
    settings, shown and checked beside the engine's); sets ``func``."""
    extra = tuple(extra_schemas)
    parser = subparsers.add_parser(
        "config", help="Show the effective config or check a config file.",
        description="Show the effective config (and where each value came from) or check a file.",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="config_command", metavar="{show,check}")
    show = commands.add_parser(
        "show", help="Print every config field, its value and its source.",
        description="Print every config field, its value and its source (default < profile < "
        "file < .env < environment < flags), then notes on the settings that had no effect.",
    )  # fmt: skip
    show.add_argument(
        "--verbose", "-v", action="store_true",
        help="Also print each field's help: what it does and the values it allows. Default: off.",
    )  # fmt: skip
    show.add_argument(
        "--aliases", action="store_true",
        help="Print the table of the seeds' MISTRAL_* / MISTRALRS_* settings and TOML keys and "
        "the Minerva field each one sets (or why it has no effect). Default: off.",
    )  # fmt: skip
    add_config_arguments(show)
    check = commands.add_parser(
        "check", help="Check a TOML config file, the .env file and the environment.",
        description="Check a TOML config file, the .env file and the MINERVA_* / MISTRAL_* "
        "variables; exit 1 on problems.",
    )  # fmt: skip
    check.add_argument(
        "file", nargs="?", default=None, metavar="FILE",
        help=f"TOML file to check (default: ./{DEFAULT_CONFIG_FILE} if present, else env only).",
    )  # fmt: skip
    check.add_argument(
        "--env-file", dest="env_file", metavar="PATH", default=None,
        help="KEY=VALUE file to check too (default: ./.env if present).",
    )  # fmt: skip
    parser.set_defaults(func=functools.partial(run_config_command, extra=extra))
    return parser
