"""Where config values come from, for any ``Schema`` (config_fields.py). No torch.

Precedence: defaults < TOML file < ``MINERVA_<FIELD>`` env vars < explicit overrides (CLI flags,
LLM kwargs). Each layer is parsed and checked on its own so an error names its source (file and
key, env var, flag); ``load`` also reports where every final value came from. The engine config
binds these to its schema in config.py (``load_config``, ``check_config_file``, ...).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from minerva.config_fields import Schema, config_error, suggest
from minerva.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "MINERVA_"
CONFIG_ENV_VAR = "MINERVA_CONFIG"
"""Names a TOML file ``load`` reads when it is given none."""
NON_CONFIG_ENV_VARS = {CONFIG_ENV_VAR, "MINERVA_API_KEY", "MINERVA_HOST", "MINERVA_PORT", "MINERVA_CORS_ORIGINS", "MINERVA_MAX_QUEUED_REQUESTS", "MINERVA_MAX_BODY_BYTES", "MINERVA_SHUTDOWN_TIMEOUT", "MINERVA_CACHE_DIR"}  # fmt: skip
"""MINERVA_* variables that are not engine config fields: the server's settings (a test keeps
this in step with server/config.py, which this layer may not import) and the rest."""
DEFAULT_CONFIG_FILE = "minerva.toml"


def env_var_name(name: str) -> str:
    """The env var of a flat field: block_size -> MINERVA_BLOCK_SIZE."""
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    """The CLI flag of a flat field: block_size -> --block-size."""
    return "--" + name.replace("_", "-")


def take(schema: Schema, name: str, raw: Any, label: str, values: dict, problems: list,
         strict: bool = False) -> None:  # fmt: skip
    """Coerce and check one value; store it in ``values`` or record '<label>: <problem>'."""
    spec = schema.fields[name]
    try:
        value = spec.coerce(raw, strict=strict)
    except ValueError as e:
        problems.append(f"{label}: {e}")
        return
    if problem := spec.problem(value):
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


def file_layer(schema: Schema, path: str, data: dict[str, Any]) -> tuple[dict, list[str]]:
    """Values a parsed TOML file sets (flat name -> value) and every problem in it.

    Accepts a table per section (``[cache]``) of its own fields, and flat top-level keys.
    """
    fields, sections = schema.fields, schema.sections
    values: dict[str, Any] = {}
    problems: list[str] = []
    seen: set[str] = set()

    def entry(section: str, key: str, value: Any) -> None:
        where = f"[{section}] " if section else ""
        spec = fields.get(key)
        if spec is None:
            near = [n for n, s in fields.items() if s.section == section]
            hint = suggest(key, near) or suggest(key, fields)
            inside = f" in [{section}]" if section else ""
            problems.append(f"{path}: unknown key {key!r}{inside}{hint}")
        elif section and spec.section != section:
            problems.append(f"{path}: {key!r} belongs in [{spec.section}], not [{section}]")
        elif key in seen:
            problems.append(f"{path}: {key!r} is set twice (flat and in [{spec.section}])")
        else:
            seen.add(key)
            label = f"{path}: {where}{key} = {value!r}"
            take(schema, key, value, label, values, problems, strict=True)

    for key, value in data.items():  # problems come out in file order
        if key in sections and isinstance(value, dict):
            for sub, sub_value in value.items():
                entry(key, sub, sub_value)
        elif key in sections:
            problems.append(f"{path}: {key!r} must be a table ([{key}]) of {key} fields")
        elif isinstance(value, dict):
            problems.append(f"{path}: unknown section [{key}]{suggest(key, sections)}")
        else:
            entry("", key, value)
    return values, problems


def check_file(schema: Schema, path: str) -> list[str]:
    """Every problem in a TOML config file, one line each; empty when it is fine."""
    try:
        values, problems = file_layer(schema, path, read_toml(path))
    except ConfigError as e:
        return list(e.problems)  # type: ignore[attr-defined]
    if not problems:  # combinations, on top of the defaults
        try:
            schema.build(**values)
        except ConfigError as e:
            problems = [f"{path}: {p}" for p in e.problems]  # type: ignore[attr-defined]
    return problems


# ---- environment --------------------------------------------------------------------------


def env_vars(schema: Schema) -> dict[str, str]:
    """Every env var that sets a field (aliases after MINERVA_* ones) -> the field it sets."""
    names = {env_var_name(n): n for n, spec in schema.fields.items() if spec.rules.env}
    aliases = {a: n for a, n in schema.aliases.items() if a.isupper() and n in schema.fields}
    return names | aliases


def env_layer(schema: Schema, env: Mapping[str, str]) -> tuple[dict, list[str], dict[str, str]]:
    """Values the environment sets, the problems, and the variable each value came from."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    origin: dict[str, str] = {}
    for var, name in env_vars(schema).items():
        if var in env and name not in origin:  # a MINERVA_* variable wins over an alias
            origin[name] = var
            take(schema, name, env[var], f"{var}={env[var]!r}", values, problems)
    return values, problems, origin


def env_warnings(schema: Schema, env: Mapping[str, str] | None = None) -> list[str]:
    """MINERVA_* variables that are neither config fields nor known; ``load`` ignores them."""
    env = os.environ if env is None else env
    known = set(env_vars(schema))
    return [
        f"{var} is not a config field and is ignored{suggest(var, known)}"
        for var in sorted(env)
        if var.startswith(ENV_PREFIX) and var not in known and var not in NON_CONFIG_ENV_VARS
    ]


# ---- all layers ---------------------------------------------------------------------------


def override_layer(schema: Schema, overrides: Mapping[str, Any], source: str) -> tuple[dict, list]:
    """Explicit values by flat name (aliases accepted), each checked and labelled with ``source``."""
    given: dict[str, Any] = {}
    problems: list[str] = []
    for name, raw in overrides.items():
        key = schema.resolve(name)
        if key is None:
            problems.append(schema.unknown(name))
        else:
            take(schema, key, raw, f"{name}={raw!r} (from {source})", given, problems)
    return given, problems


def load(
    schema: Schema,
    config_file: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    override_source: str = "override",
) -> tuple[Any, dict[str, str]]:
    """Merge defaults < TOML file < env < overrides into a config built by ``schema``.

    Returns the config and, per flat field, its source: "default", "file:<path>",
    "env:MINERVA_X" or ``override_source``. Without ``config_file`` the file named by
    $MINERVA_CONFIG is read, if set. ``env`` defaults to os.environ. Raises ConfigError listing
    every bad value with its source.
    """
    env = os.environ if env is None else env
    values = {name: spec.default for name, spec in schema.fields.items()}
    sources = dict.fromkeys(schema.fields, "default")
    layers: list[tuple[dict[str, Any], list[str], dict[str, str]]] = []
    path = config_file or (env.get(CONFIG_ENV_VAR) if schema.toml else None) or None
    if path is not None:
        file_values, file_problems = file_layer(schema, path, read_toml(path))
        layers.append((file_values, file_problems, dict.fromkeys(file_values, f"file:{path}")))
    env_values, env_problems, env_origin = env_layer(schema, env)
    layers.append((env_values, env_problems, {n: f"env:{v}" for n, v in env_origin.items()}))
    given, problems = override_layer(schema, overrides or {}, override_source)
    layers.append((given, problems, dict.fromkeys(given, override_source)))
    if found := [p for _, layer_problems, _ in layers for p in layer_problems]:
        raise config_error(found, schema.header)
    for layer_values, _, layer_sources in layers:
        values.update(layer_values)
        sources.update(layer_sources)
    return schema.build(**values), sources
