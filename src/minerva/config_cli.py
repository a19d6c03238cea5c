"""The CLI glue of any ``Schema``: one ``--<field>`` flag per field (help, metavar and checks
from the field), the source flags (--config, --env-file) and the rows ``config show`` prints.
No torch.

config.py binds these to the engine config; ``minerva serve`` adds the server's flags with them;
config_command.py is ``minerva config show|check``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from minerva.config_dotenv import DEFAULT_ENV_FILE
from minerva.config_fields import FieldSpec, Schema, format_byte_size
from minerva.config_sources import CONFIG_ENV_VAR, env_var_name, flag_name


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
    """``--config PATH`` (dest ``config``) and ``--env-file PATH`` (dest ``env_file``)."""
    parser.add_argument(
        "--config", dest="config", metavar="PATH", default=None,
        help=f"TOML config file (default: ${CONFIG_ENV_VAR} if set).",
    )  # fmt: skip
    parser.add_argument(
        "--env-file", dest="env_file", metavar="PATH", default=None,
        help=f"KEY=VALUE file of MINERVA_* (or the seeds' MISTRAL_*) settings, below the "
        f"environment (default: ./{DEFAULT_ENV_FILE} if present).",
    )  # fmt: skip


def env_file_of(args: argparse.Namespace) -> str | None:
    """--env-file, else ./.env when it exists, else None."""
    given = getattr(args, "env_file", None)
    if given is not None:
        return given
    return DEFAULT_ENV_FILE if os.path.isfile(DEFAULT_ENV_FILE) else None


def print_notices(notices: Iterable[str], prefix: str = "minerva: warning: ") -> None:
    """Each notice once, in order, on stderr."""
    for notice in dict.fromkeys(notices):
        print(f"{prefix}{notice}", file=sys.stderr)


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


def display(spec: FieldSpec, value: Any) -> str:
    """A value as ``config show`` prints it (a secret only as set or not)."""
    if value is None:
        return "none"
    if spec.rules.secret:
        return "*** (set)"
    if isinstance(value, bool):
        return str(value).lower()
    if spec.byte_size:
        return f"{format_byte_size(value)} ({value})"
    return str(value)
