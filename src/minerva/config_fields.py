"""The config field machinery: a field carries its doc, choices and range; parsing and checks
read them from there. No torch, and nothing here knows which configs exist.

``Field(16, "Tokens per KV cache block.", ge=1, le=256)`` declares a dataclass field;
``specs_of`` turns a config's sections into ``FieldSpec``s, which parse text ('32', 'off',
'4GiB'), check a value and say in words what is allowed. The engine config (config.py) and the
server settings (server/config.py) are both declared this way and read by the same sources
(config_sources.py) and CLI glue (config_cli.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from minerva.errors import ConfigError

Number = int | float


@dataclass(frozen=True)
class FieldRules:
    """What a ``Field`` declares beyond its default: stored in the dataclass field's metadata."""

    doc: str
    choices: tuple[Any, ...] | None = None
    ge: Number | None = None
    gt: Number | None = None
    le: Number | None = None
    lt: Number | None = None
    non_empty: bool = False  # a string with more than blanks
    check: Callable[[Any], bool] | None = None  # a rule ranges and choices cannot say...
    allowed: str | None = None  # ...and its words ('a power of two')
    normalize: Callable[[str], str] | None = None  # applied to every string value
    parse: Callable[[str], Any] | None = None  # text -> value, for types the generic parse lacks
    byte_size: bool = False  # an int that text may give as '4GiB'
    env: bool = True  # False: no MINERVA_<NAME> variable (the value comes from elsewhere)
    metavar: str | None = None
    secret: bool = False  # never printed (config show, error messages): an API key


def Field(default: Any, doc: str, **rules: Any) -> Any:  # noqa: N802 (reads like a type)
    """A dataclass field with a one-line ``doc`` and its rules (see ``FieldRules``)."""
    metadata = {"rules": FieldRules(doc, **rules)}
    shown = not rules.get("secret", False)  # a secret stays out of the dataclass's repr too
    if isinstance(default, list):  # mutable defaults need a factory
        return dataclasses.field(
            default_factory=lambda: list(default), metadata=metadata, repr=shown
        )
    return dataclasses.field(default=default, metadata=metadata, repr=shown)


# ---- byte sizes ---------------------------------------------------------------------------

# K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024; KB/MB/GB/TB (SI) are powers of 1000.
_BYTE_UNITS = {"": 1, "b": 1}
for _i, _p in enumerate("kmgt", start=1):
    _BYTE_UNITS.update({_p: 1024**_i, f"{_p}ib": 1024**_i, f"{_p}b": 1000**_i})
_BYTE_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)$")


def parse_byte_size(value: str | int | float) -> int:
    """'4GiB' -> 4294967296, '512MB' -> 512000000, '1.5G' -> 1610612736; ints pass through."""
    if isinstance(value, bool):
        raise ValueError("must be a byte size (e.g. 4GiB, 512MB, 1.5G)")
    if isinstance(value, (int, float)):
        if value < 0 or value != value:
            raise ValueError("must be a non-negative byte size")
        return int(value)
    match = _BYTE_RE.match(str(value).strip().lower())
    if match is None or match.group(2) not in _BYTE_UNITS:
        raise ValueError("must be a byte size such as 4GiB, 512MB, 1.5G or 1073741824")
    try:  # Decimal keeps large plain integers exact
        return int(Decimal(match.group(1)) * _BYTE_UNITS[match.group(2)])
    except InvalidOperation as e:
        raise ValueError("must be a byte size such as 4GiB, 512MB or 1.5G") from e


def format_byte_size(num_bytes: int) -> str:
    """4294967296 -> '4 GiB', 1536 -> '1.5 KiB'."""
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{num_bytes} B"


# ---- one field ----------------------------------------------------------------------------

_TRUE, _FALSE, _NONE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}, {"none", "null", ""}
_NOUNS = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    list: "a comma-separated list",
}


@dataclass(frozen=True)
class FieldSpec:
    """One flat config field: where it lives, its type, default, doc and rules."""

    name: str
    section: str
    type: type  # bool | int | float | str | list (the non-None part of the annotation)
    optional: bool
    default: Any
    rules: FieldRules

    @property
    def doc(self) -> str:
        return self.rules.doc

    @property
    def byte_size(self) -> bool:
        return self.rules.byte_size

    @property
    def constrained(self) -> bool:
        """Whether choices, a check or a range narrow the values the type allows."""
        return (
            self.rules.choices is not None or self.rules.check is not None or bool(self._bounds())
        )

    @property
    def help(self) -> str:
        """The one-line help: the doc, then what is allowed when the type alone does not say."""
        return f"{self.doc} Allowed: {self.allowed}." if self.constrained else self.doc

    @property
    def kind(self) -> str:
        """The type in words ('an integer or none')."""
        if self.byte_size:
            kind = "a byte size (e.g. 4GiB, 512MB, 1.5G)"
        else:
            kind = _NOUNS.get(self.type, "a string")
        return kind + (" or none" if self.optional else "")

    @property
    def allowed(self) -> str:
        """The values allowed, in words: 'one of auto, on, off', 'an integer in [0, 2**64)'."""
        rules = self.rules
        if rules.choices is not None:
            return "one of " + ", ".join(str(c) for c in rules.choices)
        bounds = self._bounds()
        noun = rules.allowed or ("a byte size" if self.byte_size else _NOUNS.get(self.type))
        noun = noun or ("a non-empty string" if rules.non_empty else "a string")
        positive = bounds == {"gt": 0} or (bounds == {"ge": 1} and self.type is int)
        if positive and rules.allowed is None:  # 'a positive integer', 'a positive byte size'
            return f"a positive {noun.removeprefix('an ').removeprefix('a ')}"
        if self.type is float and rules.allowed is None:
            noun = ""  # a float is described by its interval alone: 'in (0, 1]'
        return f"{noun} {self._range_words(bounds)}".strip() if bounds else noun

    def _bounds(self) -> dict[str, Number]:
        r = self.rules
        return {
            k: v
            for k, v in (("ge", r.ge), ("gt", r.gt), ("le", r.le), ("lt", r.lt))
            if v is not None
        }

    def _range_words(self, bounds: dict[str, Number]) -> str:
        """'from 1 to 256', 'in (0, 1]', '>= 0', '< 2**64'."""
        show = self._show_bound
        low = next(((b, bounds[k]) for k, b in (("ge", "["), ("gt", "(")) if k in bounds), None)
        high = next(((b, bounds[k]) for k, b in (("le", "]"), ("lt", ")")) if k in bounds), None)
        if low and high:
            if (low[0], high[0]) == ("[", "]") and self.type is not float:
                return f"from {show(low[1])} to {show(high[1])}"
            return f"in {low[0]}{show(low[1])}, {show(high[1])}{high[0]}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {show(low[1])}"
        assert high is not None
        return f"{'<=' if high[0] == ']' else '<'} {show(high[1])}"

    def _show_bound(self, value: Number) -> str:
        if self.byte_size:
            return format_byte_size(int(value))
        if isinstance(value, int) and value >= 2**32 and value & (value - 1) == 0:
            return f"2**{value.bit_length() - 1}"  # 2**64 reads better than 18446744073709551616
        return str(value)

    def shown(self, value: Any) -> str:
        """``repr(value)`` for messages; '***' for a secret's value unless it is blank (a blank
        key is refused, and saying so reveals nothing)."""
        if self.rules.secret and not (isinstance(value, str) and not value.strip()):
            return "'***'"
        return repr(value)

    def parse_text(self, text: str) -> Any:
        """A string from env / CLI / kwargs -> the field's type; ValueError saying what is allowed."""
        text = text.strip()
        if self.rules.parse is not None:
            return self.rules.parse(text)
        if self.optional and text.lower() in _NONE:
            return None
        if self.byte_size:
            return parse_byte_size(text)
        if self.type is bool:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError("must be one of 1/0, true/false, yes/no, on/off")
        if self.type in (int, float):
            try:
                return self.type(text)
            except ValueError:
                raise ValueError(f"must be {self.kind}") from None
        if self.type is list:
            return [item.strip() for item in text.split(",") if item.strip()]
        return self.rules.normalize(text) if self.rules.normalize else text

    def coerce(self, value: Any, *, strict: bool = False) -> Any:
        """``value`` in the field's type, or ValueError saying what is allowed.

        Strings are parsed ('32', 'false', 'none', '4GiB') unless ``strict`` (TOML, which has
        real types); byte sizes accept strings everywhere.
        """
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"must be {self.kind}")
        if isinstance(value, str) and (not strict or self.byte_size):
            return self.parse_text(value)
        if self.byte_size:
            return parse_byte_size(value)
        if not self.type_ok(value):
            raise ValueError(f"must be {self.kind}")
        if self.type is float:
            return float(value)
        return self.rules.normalize(value) if self.rules.normalize else value

    def type_ok(self, value: Any) -> bool:
        if self.type is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.type is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, self.type)

    def problem(self, value: Any) -> str | None:
        """What is wrong with a coerced value ('must be in (0, 1]'), else None."""
        if value is None:
            return None if self.optional else f"must be {self.kind}"
        if not self.type_ok(value):
            return f"must be {self.kind}"
        if self.rules.non_empty and not value.strip():
            return "must be a non-empty string"
        return None if self._accepts(value) else f"must be {self.allowed}"

    def _accepts(self, value: Any) -> bool:
        r = self.rules
        if r.choices is not None and value not in r.choices:
            return False
        if r.check is not None and not r.check(value):
            return False
        return not (
            (r.ge is not None and value < r.ge)
            or (r.gt is not None and value <= r.gt)
            or (r.le is not None and value > r.le)
            or (r.lt is not None and value >= r.lt)
        )


# ---- a whole config -----------------------------------------------------------------------


def specs_of(sections: Mapping[str, type]) -> dict[str, FieldSpec]:
    """Every field of the section dataclasses by its flat name (unique across sections)."""
    specs: dict[str, FieldSpec] = {}
    for section, cls in sections.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in specs:  # flat names are the keys everywhere: they must stay unique
                raise RuntimeError(f"config field {f.name!r} is defined in two sections")
            args = typing.get_args(hints[f.name])
            optional = type(None) in args
            base = next(a for a in args if a is not type(None)) if optional else hints[f.name]
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            specs[f.name] = FieldSpec(
                name=f.name, section=section, type=typing.get_origin(base) or base,
                optional=optional, default=default, rules=f.metadata["rules"],
            )  # fmt: skip
    return specs


@dataclass(frozen=True)
class Schema:
    """A config as the sources and the CLI see it: its fields, TOML tables and how to build it.

    ``aliases`` is the one table of other names for fields: a lower-case key is another kwarg /
    flag name (``gpu_memory_utilization``), an upper-case key another environment variable; a
    MINERVA_* variable wins over an alias of the same field.
    """

    fields: Mapping[str, FieldSpec]
    sections: Mapping[str, type]
    build: Callable[..., Any]  # flat values as kwargs -> the validated config (raises ConfigError)
    flatten: Callable[[Any], dict[str, Any]]  # the config -> every value by flat name
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    header: str = "Invalid config"  # how its ConfigErrors start
    toml: bool = True  # whether a TOML file ($MINERVA_CONFIG) may set it
    seed_aliases: tuple[Any, ...] = ()  # config_aliases.Alias rows that set its fields
    reports_inert: bool = False  # whether it reports the seed settings that have no effect
    other_sections: frozenset[str] = frozenset()  # TOML tables another schema reads

    def resolve(self, name: str) -> str | None:
        """The flat field a kwarg names, aliases included; None when it names none."""
        key = name if name.isupper() else self.aliases.get(name, name)  # UPPER: env var aliases
        return key if key in self.fields else None

    def unknown(self, name: str) -> str:
        """'unknown config field 'x' (did you mean 'y'?)'."""
        return f"unknown config field {name!r}{suggest(name, self.fields)}"

    def problems(self, values: Mapping[str, Any]) -> list[str]:
        """'name=value: must be ...' for every value its field's rules refuse."""
        return [
            f"{name}={self.fields[name].shown(value)}: {problem}"
            for name, value in values.items()
            if (problem := self.fields[name].problem(value))
        ]


def suggest(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' when nothing is close."""
    by_key = {c.lower().replace("-", "_"): c for c in candidates}
    key = name.lower().replace("-", "_")
    close = difflib.get_close_matches(key, list(by_key), n=1, cutoff=0.6)
    return f" (did you mean {by_key[close[0]]!r}?)" if close else ""


def config_error(problems: list[str], header: str = "Invalid config") -> ConfigError:
    """One ConfigError listing every problem; ``.problems`` keeps them as a list."""
    if len(problems) == 1:
        message = f"{header}: {problems[0]}"
    else:
        message = f"{header} ({len(problems)} problems):\n" + "\n".join(
            f"  - {p}" for p in problems
        )
    err = ConfigError(message)
    err.problems = list(problems)  # type: ignore[attr-defined]
    return err
