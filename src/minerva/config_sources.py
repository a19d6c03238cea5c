"""Where config values come from, for any ``Schema`` (config_fields.py). No torch.

Precedence: defaults < profile < TOML file < .env file < environment < explicit overrides (CLI
flags, LLM kwargs). Each layer is parsed and checked on its own so an error names its source
(file and key, env var, flag); ``load`` also reports where every final value came from. Within
a layer a Minerva name wins over a seed alias (config_aliases.py) of the same field, and the
conflict becomes a notice, as does every seed setting that has no effect here. The engine
config binds these to its schema in config.py (``load_config``, ``check_config_file``, ...).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from minerva.config_aliases import (
    ALIAS_PREFIXES,
    ALIAS_TABLE,
    BY_ENV,
    BY_TOML,
    NO_EFFECT,
    SEED_SECTIONS,
    Alias,
)
from minerva.config_dotenv import read_env_file
from minerva.config_fields import Schema, config_error, suggest
from minerva.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "MINERVA_"
CONFIG_ENV_VAR = "MINERVA_CONFIG"
"""Names a TOML file ``load`` reads when it is given none."""
NON_CONFIG_ENV_VARS = {CONFIG_ENV_VAR, "MINERVA_API_KEY", "MINERVA_HOST", "MINERVA_PORT", "MINERVA_CORS_ORIGINS", "MINERVA_MAX_QUEUED_REQUESTS", "MINERVA_MAX_BODY_BYTES", "MINERVA_SHUTDOWN_TIMEOUT", "MINERVA_MODELS_DIR", "MINERVA_KEEP_ALIVE", "MINERVA_MODEL_LOAD_TIMEOUT", "MINERVA_CACHE_DIR", "MINERVA_PROFILE"}  # fmt: skip
NON_CONFIG_ENV_VARS |= {"MINERVA_MAX_PROMPT_BYTES", "MINERVA_WRITE_TIMEOUT", "MINERVA_HEADER_TIMEOUT", "MINERVA_BODY_TIMEOUT", "MINERVA_FAULT_INJECT"}  # fmt: skip
"""MINERVA_* variables that are not engine config fields: the server's settings (a test keeps
this in step with server/config.py, which this layer may not import) and the rest."""
NON_CONFIG_ENV_VARS |= {"MINERVA_API_KEY_FILE", "MINERVA_ALLOWED_HOSTS", "MINERVA_REASONING_PARSER"}  # fmt: skip
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


# ---- seed aliases ---------------------------------------------------------------------------


class Layer:
    """The values one source sets (flat name -> value), its problems, and per value the
    source label ``config show`` prints ('env:MISTRAL_MAX_BATCH_SIZE')."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.problems: list[str] = []
        self.sources: dict[str, str] = {}


def apply_alias(schema: Schema, layer: Layer, alias: Alias, raw: Any, label: str, source: str,
                notices: list[str]) -> None:  # fmt: skip
    """Set ``alias``'s field from a seed value unless a Minerva name (or an earlier alias)
    already set it in this layer; a different value there is a reported conflict."""
    try:
        value = alias.translate(raw)
    except ValueError as e:
        layer.problems.append(f"{label}: {e}")
        return
    if value is NO_EFFECT:
        if schema.reports_inert:
            notices.append(f"{label}: accepted, has no effect here: {alias.note}")
        return
    if alias.field not in schema.fields:
        return  # another schema's field (the server's host and port)
    got: dict[str, Any] = {}
    take(schema, alias.field, value, f"{label} (-> {alias.field})", got, layer.problems)
    if alias.field not in got:
        return
    if alias.field in layer.values:
        if got[alias.field] != layer.values[alias.field]:
            notices.append(
                f"{label} conflicts with {layer.sources[alias.field]}, which also sets "
                f"{alias.field} and wins: {alias.field}={layer.values[alias.field]!r}"
            )
        return
    layer.values[alias.field] = got[alias.field]
    layer.sources[alias.field] = source


def _inert_here(schema: Schema, alias: Alias) -> bool:
    """Whether this schema handles the row: its fields' rows, and field-less ones if it reports."""
    return alias.field in schema.fields if alias.field else schema.reports_inert


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


def file_layer(schema: Schema, path: str, data: dict[str, Any],
               notices: list[str] | None = None) -> Layer:  # fmt: skip
    """Values a parsed TOML file sets and every problem in it.

    Accepts a table per section (``[cache]``) of its own fields, flat top-level keys, and the
    seed's tables ([metal], [memory], [quantization], [performance] ...) through the alias
    table; tables another schema reads (``other_sections``) are left to it.
    """
    fields, sections = schema.fields, schema.sections
    layer, notices = Layer(), [] if notices is None else notices
    problems = layer.problems
    hits: list[tuple[Alias, Any, str]] = []
    seen: set[str] = set()

    def entry(section: str, key: str, value: Any) -> None:
        where = f"[{section}] " if section else ""
        spec = fields.get(key)
        alias = BY_TOML.get((section, key))
        if alias is not None and (spec is None or spec.section != section):
            if _inert_here(schema, alias):
                hits.append((alias, value, f"{path}: {where}{key} = {value!r}"))
        elif spec is None and section in SEED_SECTIONS and section not in sections:
            known = [k for s, k in BY_TOML if s == section]
            problems.append(f"{path}: unknown key {key!r} in [{section}]{suggest(key, known)}")
        elif spec is None:
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
            label = f"{path}: {where}{key} = {spec.shown(value)}"
            take(schema, key, value, label, layer.values, problems, strict=True)
            if key in layer.values:
                layer.sources[key] = f"file:{path}"

    tables = (set(sections) | SEED_SECTIONS) - schema.other_sections
    for key, value in data.items():  # problems come out in file order
        if key in schema.other_sections:
            continue
        if key in tables and isinstance(value, dict):
            for sub, sub_value in value.items():
                entry(key, sub, sub_value)
        elif key in tables:
            problems.append(f"{path}: {key!r} must be a table ([{key}]) of {key} fields")
        elif isinstance(value, dict):
            known = tables | schema.other_sections
            problems.append(f"{path}: unknown section [{key}]{suggest(key, known)}")
        elif key == "profile" or "" in schema.other_sections:
            continue  # the profile is read before the layers; "": flat keys are another's
        else:
            entry("", key, value)
    for alias, raw, label in sorted(hits, key=lambda h: ALIAS_TABLE.index(h[0])):
        source = f"file:{path} ({alias.toml_label})"
        apply_alias(schema, layer, alias, raw, label, source, notices)
    return layer


def check_file(schema: Schema, path: str, notices: list[str] | None = None) -> list[str]:
    """Every problem in a TOML config file, one line each; empty when it is fine."""
    try:
        layer = file_layer(schema, path, read_toml(path), notices)
    except ConfigError as e:
        return list(e.problems)  # type: ignore[attr-defined]
    problems = layer.problems
    if not problems:  # combinations, on top of the defaults
        try:
            schema.build(**layer.values)
        except ConfigError as e:
            problems = [f"{path}: {p}" for p in e.problems]  # type: ignore[attr-defined]
    return problems


# ---- environment and .env files ------------------------------------------------------------


def env_vars(schema: Schema) -> dict[str, str]:
    """Every env var that sets a field (aliases after MINERVA_* ones) -> the field it sets."""
    names = {env_var_name(n): n for n, spec in schema.fields.items() if spec.rules.env}
    aliases = {a: n for a, n in schema.aliases.items() if a.isupper() and n in schema.fields}
    seeds = {a.env: a.field for a in schema.seed_aliases if a.env and a.field in schema.fields}
    return names | aliases | seeds


def env_layer(schema: Schema, env: Mapping[str, str], *, where: str = "env",
              notices: list[str] | None = None) -> Layer:  # fmt: skip
    """Values the variables in ``env`` set (``where``: 'env' or the .env file's path)."""
    layer, notices = Layer(), [] if notices is None else notices
    prefix = "env:" if where == "env" else f"dotenv:{where}:"
    suffix = "" if where == "env" else f" (in {where})"
    plain = {env_var_name(n): n for n, spec in schema.fields.items() if spec.rules.env}
    plain |= {a: n for a, n in schema.aliases.items() if a.isupper() and n in schema.fields}
    for var, name in plain.items():
        if var in env and name not in layer.values:  # a MINERVA_* variable wins over an alias
            shown = schema.fields[name].shown(env[var])
            take(schema, name, env[var], f"{var}={shown}{suffix}", layer.values,
                 layer.problems)  # fmt: skip
            if name in layer.values:
                layer.sources[name] = prefix + var
    for alias in BY_ENV.values():  # table order: the earlier of two seed names wins
        if alias.env in env and _inert_here(schema, alias):
            label = f"{alias.env}={env[alias.env]!r}{suffix}"
            apply_alias(schema, layer, alias, env[alias.env], label, prefix + alias.env, notices)
    return layer


def env_warnings(schema: Schema, env: Mapping[str, str] | None = None,
                 where: str = "env") -> list[str]:  # fmt: skip
    """MINERVA_* / MISTRAL_* / MISTRALRS_* variables that nothing reads, with a did-you-mean;
    from a .env file (``where`` its path) every variable nothing reads."""
    env = os.environ if env is None else env
    known = set(env_vars(schema)) | set(BY_ENV) | NON_CONFIG_ENV_VARS
    ours = (ENV_PREFIX, *ALIAS_PREFIXES)
    out = []
    for var in sorted(env):
        if var in known or (where == "env" and not var.startswith(ours)):
            continue
        if var.startswith(ALIAS_PREFIXES):
            hint = suggest(var, BY_ENV)
        else:  # a seed name with Minerva's prefix: point at the field it would set
            ours_only = [v for v in env_vars(schema) if v.startswith(ENV_PREFIX)]
            hint = _minerva_name_of_seed(var) or suggest(var, ours_only)
        place = "" if where == "env" else f" (in {where})"
        out.append(f"{var}{place} is not a config field and is ignored{hint}")
    return out


def _minerva_name_of_seed(var: str) -> str:
    """MINERVA_MAX_BATCH_SIZE -> " (did you mean 'MINERVA_MAX_NUM_SEQS'?)" via the seed name."""
    for prefix in ALIAS_PREFIXES:
        alias = BY_ENV.get(prefix + var.removeprefix(ENV_PREFIX))
        if var.startswith(ENV_PREFIX) and alias is not None and alias.field is not None:
            return f" (did you mean {env_var_name(alias.field)!r}?)"
    return ""


# ---- all layers ---------------------------------------------------------------------------


def override_layer(schema: Schema, overrides: Mapping[str, Any], source: str) -> Layer:
    """Explicit values by flat name (aliases accepted), each checked and labelled with ``source``."""
    layer = Layer()
    for name, raw in overrides.items():
        key = schema.resolve(name)
        if key is None:
            layer.problems.append(schema.unknown(name))
        else:
            shown = schema.fields[key].shown(raw)
            take(schema, key, raw, f"{name}={shown} (from {source})", layer.values,
                 layer.problems)  # fmt: skip
            if key in layer.values:
                layer.sources[key] = source
    return layer


def load(
    schema: Schema,
    config_file: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    override_source: str = "override",
    env_file: str | None = None,
    base: Layer | None = None,
    notices: list[str] | None = None,
) -> tuple[Any, dict[str, str]]:
    """Merge defaults < ``base`` (a profile) < TOML file < .env file < env < overrides into a
    config built by ``schema``.

    Returns the config and, per flat field, its source: "default", "file:<path>",
    "dotenv:<path>:VAR", "env:VAR" or ``override_source``. Without ``config_file`` the file
    named by $MINERVA_CONFIG is read, if set. ``env`` defaults to os.environ. Seed settings
    with no effect and alias conflicts are appended to ``notices``. Raises ConfigError listing
    every bad value with its source.
    """
    env = os.environ if env is None else env
    notices = [] if notices is None else notices
    values = {name: spec.default for name, spec in schema.fields.items()}
    sources = dict.fromkeys(schema.fields, "default")
    layers = [base] if base is not None else []
    path = config_file or (env.get(CONFIG_ENV_VAR) if schema.toml else None) or None
    if path is not None:
        layers.append(file_layer(schema, path, read_toml(path), notices))
    if env_file is not None:
        layers.append(env_layer(schema, read_env_file(env_file), where=env_file, notices=notices))
    layers.append(env_layer(schema, env, notices=notices))
    layers.append(override_layer(schema, overrides or {}, override_source))
    if found := [p for layer in layers for p in layer.problems]:
        raise config_error(found, schema.header)
    for layer in layers:
        values.update(layer.values)
        sources.update(layer.sources)
    return schema.build(**values), sources
