"""Where config values come from, and the CLI glue. No torch.

Precedence: defaults < TOML file < ``MINERVA_<FIELD>`` env vars < explicit overrides (CLI flags,
LLM kwargs). Each layer is parsed and checked on its own so an error names its source (file and
key, env var, flag); ``load_config`` also reports where every final value came from.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any

from minerva.config import (
    ALIASES,
    FIELDS,
    SECTIONS,
    EngineConfig,
    coerce_value,
    config_error,
    field_problem,
    format_byte_size,
    suggest,
)
from minerva.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "MINERVA_"
CONFIG_ENV_VAR = "MINERVA_CONFIG"
"""Names a TOML file ``load_config`` reads when it is given none."""
NON_CONFIG_ENV_VARS = {CONFIG_ENV_VAR, "MINERVA_API_KEY", "MINERVA_HOST", "MINERVA_PORT", "MINERVA_CORS_ORIGINS", "MINERVA_MAX_QUEUED_REQUESTS", "MINERVA_MAX_BODY_BYTES", "MINERVA_SHUTDOWN_TIMEOUT", "MINERVA_CACHE_DIR"}  # fmt: skip
"""MINERVA_* variables that are not config fields (add new ones here; others get a warning)."""
DEFAULT_CONFIG_FILE = "minerva.toml"


def env_var_name(name: str) -> str:
    """The env var of a flat field: block_size -> MINERVA_BLOCK_SIZE."""
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    """The CLI flag of a flat field: block_size -> --block-size."""
    return "--" + name.replace("_", "-")


def _take(name: str, raw: Any, label: str, values: dict, problems: list, strict=False) -> None:
    """Coerce and check one value; store it in ``values`` or record '<label>: <problem>'."""
    try:
        value = coerce_value(name, raw, strict=strict)
    except ValueError as e:
        problems.append(f"{label}: {e}")
        return
    if problem := field_problem(name, value):
        problems.append(f"{label}: {problem}")
    else:
        values[name] = value


# ---- TOML file ----------------------------------------------------------------------------


def read_toml(path: str) -> dict[str, Any]:
    """Parse a TOML file; ConfigError naming the file (and line, for syntax errors)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise config_error([f"{path}: config file not found"]) from None
    except OSError as e:
        raise config_error([f"{path}: cannot read config file: {e.strerror}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise config_error([f"{path}: invalid TOML: {e}"]) from None


def _file_layer(path: str, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Values a parsed TOML file sets (flat name -> value) and every problem in it.

    Accepts ``[model] [device] [cache] [scheduler]`` tables of their own fields, and flat
    top-level keys.
    """
    values: dict[str, Any] = {}
    problems: list[str] = []
    seen: set[str] = set()

    def entry(section: str, key: str, value: Any) -> None:
        where = f"[{section}] " if section else ""
        spec = FIELDS.get(key)
        if spec is None:
            near = [n for n, s in FIELDS.items() if s.section == section]
            hint = suggest(key, near) or suggest(key, FIELDS)
            inside = f" in [{section}]" if section else ""
            problems.append(f"{path}: unknown key {key!r}{inside}{hint}")
        elif section and spec.section != section:
            problems.append(f"{path}: {key!r} belongs in [{spec.section}], not [{section}]")
        elif key in seen:
            problems.append(f"{path}: {key!r} is set twice (flat and in [{spec.section}])")
        else:
            seen.add(key)
            _take(key, value, f"{path}: {where}{key} = {value!r}", values, problems, strict=True)

    for key, value in data.items():  # problems come out in file order
        if key in SECTIONS and isinstance(value, dict):
            for sub, sub_value in value.items():
                entry(key, sub, sub_value)
        elif key in SECTIONS:
            problems.append(f"{path}: {key!r} must be a table ([{key}]) of {key} fields")
        elif isinstance(value, dict):
            problems.append(f"{path}: unknown section [{key}]{suggest(key, SECTIONS)}")
        else:
            entry("", key, value)
    return values, problems


def check_config_file(path: str) -> list[str]:
    """Every problem in a TOML config file, one line each; empty when it is fine."""
    try:
        values, problems = _file_layer(path, read_toml(path))
    except ConfigError as e:
        return list(e.problems)  # type: ignore[attr-defined]
    if not problems:  # combinations, on top of the defaults
        try:
            EngineConfig.from_kwargs(**values)
        except ConfigError as e:
            problems = [f"{path}: {p}" for p in e.problems]  # type: ignore[attr-defined]
    return problems


# ---- environment --------------------------------------------------------------------------


def _env_layer(env: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name in FIELDS:
        var = env_var_name(name)
        if var in env:
            _take(name, env[var], f"{var}={env[var]!r}", values, problems)
    return values, problems


def env_warnings(env: Mapping[str, str] | None = None) -> list[str]:
    """MINERVA_* variables that are neither config fields nor known; load_config ignores them."""
    env = os.environ if env is None else env
    known = {env_var_name(n) for n in FIELDS}
    return [
        f"{var} is not a config field and is ignored{suggest(var, known)}"
        for var in sorted(env)
        if var.startswith(ENV_PREFIX) and var not in known and var not in NON_CONFIG_ENV_VARS
    ]


# ---- all layers ---------------------------------------------------------------------------


def load_config(
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    override_source: str = "override",
) -> tuple[EngineConfig, dict[str, str]]:
    """Merge defaults < TOML file < MINERVA_* env < overrides into a validated EngineConfig.

    Returns the config and, per flat field, its source: "default", "file:<path>",
    "env:MINERVA_X" or ``override_source`` ("cli" from the command line). Without
    ``config_file`` the file named by $MINERVA_CONFIG is read, if set. ``env`` defaults to
    os.environ. Raises ConfigError listing every bad value with its source.
    """
    env = os.environ if env is None else env
    values = {name: spec.default for name, spec in FIELDS.items()}
    sources = dict.fromkeys(FIELDS, "default")
    layers: list[tuple[str, dict[str, Any], list[str]]] = []
    path = config_file or env.get(CONFIG_ENV_VAR) or None
    if path is not None:
        layers.append((f"file:{path}", *_file_layer(path, read_toml(path))))
    env_values, env_problems = _env_layer(env)
    layers.append(("env", env_values, env_problems))
    given, problems = {}, []
    for name, raw in (overrides or {}).items():
        key = ALIASES.get(name, name)
        if key not in FIELDS:
            problems.append(f"unknown config field {name!r}{suggest(name, FIELDS)}")
        else:
            _take(key, raw, f"{name}={raw!r} (from {override_source})", given, problems)
    layers.append((override_source, given, problems))
    if found := [p for _, _, layer_problems in layers for p in layer_problems]:
        raise config_error(found)
    for source, layer_values, _ in layers:
        values.update(layer_values)
        for name in layer_values:
            sources[name] = f"env:{env_var_name(name)}" if source == "env" else source
    return EngineConfig.from_kwargs(**values), sources


# ---- CLI glue -----------------------------------------------------------------------------


def _arg_type(name: str):
    def parse(text: str) -> Any:
        try:
            value = coerce_value(name, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if problem := field_problem(name, value):
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = name  # argparse names the type in its fallback error message
    return parse


def _metavar(name: str) -> str:
    spec = FIELDS[name]
    if spec.byte_size:
        return "SIZE"
    # served_model_name -> NAME, kv_cache_dtype -> DTYPE
    return {int: "N", float: "X"}.get(spec.type) or name.rsplit("_", 1)[-1].upper()


def add_config_arguments(parser: argparse.ArgumentParser, exclude=()) -> None:
    """Add ``--config PATH`` (dest ``config``) and one ``--<field>`` flag per config field.

    Fields (or "config") named in ``exclude`` get no flag. Flags default to argparse.SUPPRESS,
    so only the flags given become overrides (see ``overrides_from_args``); booleans get
    ``--x/--no-x``.
    """
    if "config" not in exclude:
        parser.add_argument(
            "--config", dest="config", metavar="PATH", default=None,
            help=f"TOML config file (default: ${CONFIG_ENV_VAR} if set).",
        )  # fmt: skip
    groups: dict[str, Any] = {}
    for name, spec in FIELDS.items():
        if name in exclude:
            continue
        if spec.section not in groups:
            groups[spec.section] = parser.add_argument_group(f"{spec.section} options")
        doc = spec.help.replace("%", "%%")
        if spec.default is not None and spec.type is not bool:
            doc += f" Default: {spec.default}."
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": doc}
        if spec.type is bool:
            doc += f" Default: {'on' if spec.default else 'off'}."
            kwargs.update(help=doc, action=argparse.BooleanOptionalAction)
        else:
            kwargs.update(type=_arg_type(name), metavar=_metavar(name))
        groups[spec.section].add_argument(flag_name(name), **kwargs)


def overrides_from_args(namespace: argparse.Namespace) -> dict[str, Any]:
    """The config flags that were given on the command line, by flat field name."""
    return {name: getattr(namespace, name) for name in FIELDS if hasattr(namespace, name)}


def config_show_rows(
    cfg: EngineConfig, sources: Mapping[str, str]
) -> list[tuple[str, str, Any, str, str]]:
    """(section, field, value, source, help) per field, in section order."""
    values = cfg.flat()
    return [
        (spec.section, name, values[name], sources.get(name, "default"), spec.help)
        for name, spec in FIELDS.items()
    ]


def _display(name: str, value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if FIELDS[name].byte_size:
        return f"{format_byte_size(value)} ({value})"
    return str(value)


def _config_show(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    try:
        cfg, sources = load_config(
            getattr(args, "config", None), overrides_from_args(args), override_source="cli"
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    table = Table(title="Minerva config")
    table.add_column("section", no_wrap=True)
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("source", overflow="fold")
    for section, name, value, source, _ in config_show_rows(cfg, sources):
        table.add_row(section, name, _display(name, value), source)
    Console().print(table)
    for warning in env_warnings():
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _config_check(args: argparse.Namespace) -> int:
    path = getattr(args, "file", None)
    if path is None and os.path.isfile(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    problems = check_config_file(path) if path else []
    problems += _env_layer(os.environ)[1]
    if not problems:  # each source is fine alone; check how they combine
        try:
            load_config(path, env=os.environ)
        except ConfigError as e:
            problems = list(e.problems)  # type: ignore[attr-defined]
    for warning in env_warnings():
        print(f"warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"OK: {path}" if path else "OK: environment (no config file)")
    return 0


def run_config_command(args: argparse.Namespace) -> int:
    """``minerva config show|check``: print the effective config or check a file; exit code."""
    command = getattr(args, "config_command", None)
    if command == "show":
        return _config_show(args)
    if command == "check":
        return _config_check(args)
    print("usage: minerva config {show,check} ...", file=sys.stderr)
    return 2


def add_config_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``config show|check`` on the CLI's subparsers; sets ``func=run_config_command``."""
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
    add_config_arguments(show)
    check = commands.add_parser(
        "check", help="Check a TOML config file and the MINERVA_* env vars.",
        description="Check a TOML config file and the MINERVA_* env vars; exit 1 on problems.",
    )  # fmt: skip
    check.add_argument(
        "file", nargs="?", default=None, metavar="FILE",
        help=f"TOML file to check (default: ./{DEFAULT_CONFIG_FILE} if present, else env only).",
    )  # fmt: skip
    parser.set_defaults(func=run_config_command)
    return parser
