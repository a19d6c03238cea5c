"""The CLI glue of any ``Schema``: one ``--<field>`` flag per field (help, metavar and checks
from the field), and ``minerva config show|check``. No torch.

config.py binds these to the engine config; ``minerva serve`` adds the server's flags with them.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from minerva.config_fields import FieldSpec, Schema, format_byte_size
from minerva.config_sources import (
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_FILE,
    check_file,
    env_layer,
    env_var_name,
    env_warnings,
    flag_name,
    load,
)
from minerva.errors import ConfigError


def _arg_type(spec: FieldSpec):
    def parse(text: str) -> Any:
        try:
            value = spec.coerce(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if problem := spec.problem(value):
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = spec.name  # argparse names the type in its fallback error message
    return parse


def _metavar(spec: FieldSpec) -> str:
    if spec.rules.metavar:
        return spec.rules.metavar
    if spec.byte_size:
        return "SIZE"
    # served_model_name -> NAME, kv_cache_dtype -> DTYPE
    return {int: "N", float: "X"}.get(spec.type) or spec.name.rsplit("_", 1)[-1].upper()


def _flag_help(spec: FieldSpec, show_env: bool) -> str:
    doc = spec.help.replace("%", "%%")
    if spec.type is bool:
        doc += f" Default: {'on' if spec.default else 'off'}."
    elif spec.default not in (None, "", []):
        shown = format_byte_size(spec.default) if spec.byte_size else spec.default
        doc += f" Default: {shown}."
    elif "default" not in doc.lower():  # unset unless given: say so
        doc += " Default: none."
    if show_env and spec.rules.env:
        doc += f" Env: {env_var_name(spec.name)}."
    return doc


def add_arguments(
    parser: argparse.ArgumentParser,
    schema: Schema,
    exclude: Iterable[str] = (),
    *,
    dest_prefix: str = "",
    show_env: bool = False,
) -> dict[str, Any]:
    """One ``--<field>`` flag per field of ``schema`` (dest ``<dest_prefix><field>``), grouped
    by section as '<section> options'; returns those groups by section.

    Fields named in ``exclude`` get no flag. Flags default to argparse.SUPPRESS, so only the
    flags given become overrides (see ``overrides_from_args``); booleans get ``--x/--no-x``.
    """
    groups: dict[str, Any] = {}
    for name, spec in schema.fields.items():
        if name in exclude:
            continue
        if spec.section not in groups:
            groups[spec.section] = parser.add_argument_group(f"{spec.section} options")
        kwargs: dict[str, Any] = {
            "dest": dest_prefix + name, "default": argparse.SUPPRESS,
            "help": _flag_help(spec, show_env),
        }  # fmt: skip
        if spec.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=_arg_type(spec), metavar=_metavar(spec))
        groups[spec.section].add_argument(flag_name(name), **kwargs)
    return groups


def add_config_file_argument(parser: argparse.ArgumentParser) -> None:
    """``--config PATH`` (dest ``config``)."""
    parser.add_argument(
        "--config", dest="config", metavar="PATH", default=None,
        help=f"TOML config file (default: ${CONFIG_ENV_VAR} if set).",
    )  # fmt: skip


def overrides_from_args(
    namespace: argparse.Namespace, schema: Schema, dest_prefix: str = ""
) -> dict[str, Any]:
    """The flags of ``schema`` given on the command line, by flat field name."""
    return {
        name: getattr(namespace, dest_prefix + name)
        for name in schema.fields
        if hasattr(namespace, dest_prefix + name)
    }


# ---- minerva config show | check ----------------------------------------------------------


def show_rows(
    schema: Schema, cfg: Any, sources: Mapping[str, str]
) -> list[tuple[str, str, Any, str, str]]:
    """(section, field, value, source, help) per field, in section order."""
    values = schema.flatten(cfg)
    return [
        (spec.section, name, values[name], sources.get(name, "default"), spec.help)
        for name, spec in schema.fields.items()
    ]


def _display(spec: FieldSpec, value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if spec.byte_size:
        return f"{format_byte_size(value)} ({value})"
    return str(value)


def _config_show(schema: Schema, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    try:
        cfg, sources = load(
            schema, getattr(args, "config", None), overrides_from_args(args, schema),
            override_source="cli",
        )  # fmt: skip
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
    for section, name, value, source, doc in show_rows(schema, cfg, sources):
        cells = [section, name, _display(schema.fields[name], value), source]
        table.add_row(*cells, *([doc] if args.verbose else []))
    Console().print(table)
    for warning in env_warnings(schema):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _config_check(schema: Schema, args: argparse.Namespace) -> int:
    path = getattr(args, "file", None)
    if path is None and os.path.isfile(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    problems = check_file(schema, path) if path else []
    problems += env_layer(schema, os.environ)[1]
    if not problems:  # each source is fine alone; check how they combine
        try:
            load(schema, path, env=os.environ)
        except ConfigError as e:
            problems = list(e.problems)  # type: ignore[attr-defined]
    for warning in env_warnings(schema):
        print(f"warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"OK: {path}" if path else "OK: environment (no config file)")
    return 0


def run_command(schema: Schema, args: argparse.Namespace) -> int:
    """``minerva config show|check``: print the effective config or check a file; exit code."""
    command = getattr(args, "config_command", None)
    if command == "show":
        return _config_show(schema, args)
    if command == "check":
        return _config_check(schema, args)
    print("usage: minerva config {show,check} ...", file=sys.stderr)
    return 2


def add_subcommand(subparsers: Any, schema: Schema) -> argparse.ArgumentParser:
    """Register ``config show|check`` on the CLI's subparsers; sets ``func``."""
    parser = subparsers.add_parser(
        "config", help="Show the effective config or check a config file.",
        description="Show the effective config (and where each value came from) or check a file.",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="config_command", metavar="{show,check}")
    show = commands.add_parser(
        "show", help="Print every config field, its value and its source.",
        description="Print every config field, its value and its source "
        "(default < file < MINERVA_* env < flags).",
    )  # fmt: skip
    show.add_argument(
        "--verbose", "-v", action="store_true",
        help="Also print each field's help: what it does and the values it allows. Default: off.",
    )  # fmt: skip
    add_config_file_argument(show)
    add_arguments(show, schema)
    check = commands.add_parser(
        "check", help="Check a TOML config file and the MINERVA_* env vars.",
        description="Check a TOML config file and the MINERVA_* env vars; exit 1 on problems.",
    )  # fmt: skip
    check.add_argument(
        "file", nargs="?", default=None, metavar="FILE",
        help=f"TOML file to check (default: ./{DEFAULT_CONFIG_FILE} if present, else env only).",
    )  # fmt: skip
    parser.set_defaults(func=functools.partial(run_command, schema))
    return parser
