"""Typed engine configuration: one dataclass per concern, gathered in EngineConfig. No torch.

Every field carries a one-line help (``field_help``) that becomes its CLI help, and every value
is checked in one place (``field_problem`` + ``EngineConfig.problems``). Field names are unique
across sections, so the flat name (``block_size``) is the key everywhere: kwargs, TOML, the
``MINERVA_BLOCK_SIZE`` env var and the ``--block-size`` flag. Where values come from and in which
order (defaults < TOML < env < overrides) lives in config_sources.py; its public functions are
re-exported here.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from minerva.errors import ConfigError

DTYPES = ("auto", "float32", "float16", "bfloat16")
_DTYPE_ALIASES = {
    "fp32": "float32",
    "float": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
}
# Names other engines use for the same knob; accepted in kwargs/overrides only.
ALIASES = {"gpu_memory_utilization": "memory_fraction"}


def _normalize_dtype(value: str) -> str:
    value = value.strip().lower()
    return _DTYPE_ALIASES.get(value, value)


def _field(default: Any, doc: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": doc, **meta})


@dataclass
class ModelConfig:
    """Which model to run and how its numbers are stored."""

    model: str | None = _field(
        None, "Path to a Hugging Face model folder (default: the demo model)."
    )
    tokenizer: str | None = _field(None, "Path to the tokenizer folder (default: the model path).")
    dtype: str = _field(
        "auto",
        "Weight/activation dtype: auto|float32|float16|bfloat16.",
        normalize=_normalize_dtype,
    )
    max_model_len: int | None = _field(
        None, "Longest sequence (prompt + output) in tokens (default: from the model's config)."
    )
    seed: int = _field(0, "Seed for the sampling of requests that set no seed of their own.")
    served_model_name: str | None = _field(
        None, "Model name the API reports and accepts (default: derived from the model path)."
    )
    load_format: str = _field(
        "auto",
        "auto = the checkpoint's weights; dummy = random weights of the same shapes (benchmarks).",
    )


@dataclass
class DeviceConfig:
    """Where the model runs."""

    device: str = _field("auto", "Device: auto|cpu|cuda|cuda:N|mps.", normalize=str.lower)
    num_threads: int | None = _field(None, "CPU threads for torch (default: torch's own choice).")
    attention_backend: str = _field(
        "auto",
        "Attention kernels: auto (Triton on CUDA, C decode kernels on CPU, else torch) | triton | torch.",
        normalize=str.lower,
    )
    enforce_eager: bool = _field(False, "Never use CUDA graphs (slower decode; for debugging).")
    fused_kernels: bool = _field(
        True, "Fused Triton add+RMSNorm, SiLU*mul and RoPE on CUDA (off = torch ops)."
    )
    pdl: bool = _field(
        True,
        "Programmatic dependent launch of the fused Triton kernels on Hopper and newer GPUs: "
        "each kernel starts while the previous one drains (off = plain launches).",
    )
    cpu_kernels: bool = _field(
        True,
        "C kernels on the CPU (linear layers, add+RMSNorm, RoPE, decode attention), built at "
        "first use (off = torch ops).",
    )


@dataclass
class CacheConfig:
    """The paged KV cache: block geometry, memory budget, prefix caching."""

    block_size: int = _field(16, "Tokens per KV cache block: a power of two from 1 to 256.")
    memory_fraction: float = _field(
        0.9, "Fraction of free device memory for weights + KV cache on GPU, in (0, 1]."
    )
    kv_cache_memory: int | None = _field(
        None,
        "KV cache bytes, e.g. 4GiB, 512MB (default: memory_fraction on GPU; on CPU 5% of free RAM, at most 2 GiB).",
        byte_size=True,
    )
    num_kv_blocks: int | None = _field(
        None, "Number of KV cache blocks; overrides the memory budget when set."
    )
    kv_cache_dtype: str = _field(
        "auto",
        "KV cache dtype: auto|float32|float16|bfloat16 (auto = model dtype).",
        normalize=_normalize_dtype,
    )
    enable_prefix_caching: bool = _field(True, "Reuse the KV blocks of shared prompt prefixes.")


@dataclass
class SchedulerConfig:
    """Continuous batching on a token budget."""

    max_num_seqs: int = _field(256, "Most requests running in one step.")
    max_num_batched_tokens: int = _field(2048, "Most tokens (prefill + decode) run in one step.")
    enable_chunked_prefill: bool = _field(True, "Split long prompts over several steps.")
    async_scheduling: str = _field(
        "auto",
        "Launch step N+1 before reading step N's tokens: auto (on for CUDA) | on | off.",
        normalize=str.lower,
    )


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "device": DeviceConfig,
    "cache": CacheConfig,
    "scheduler": SchedulerConfig,
}


@dataclass(frozen=True)
class FieldSpec:
    """What one flat config field is: its section, type, default and help."""

    name: str
    section: str
    type: type  # bool | int | float | str (the non-None part of the annotation)
    optional: bool
    default: Any
    help: str
    byte_size: bool = False
    normalize: Callable[[str], str] | None = None

    @property
    def kind(self) -> str:
        """What values are allowed, in words ('an integer or none')."""
        if self.byte_size:
            kind = "a byte size (e.g. 4GiB, 512MB, 1.5G)"
        else:
            kind = {bool: "true or false", int: "an integer", float: "a number"}.get(
                self.type, "a string"
            )
        return kind + (" or none" if self.optional else "")


def _build_fields() -> dict[str, FieldSpec]:
    specs: dict[str, FieldSpec] = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in specs:  # flat names are the keys everywhere: they must stay unique
                raise RuntimeError(f"config field {f.name!r} is defined in two sections")
            args = typing.get_args(hints[f.name])
            optional = type(None) in args
            base = next(a for a in args if a is not type(None)) if optional else hints[f.name]
            specs[f.name] = FieldSpec(
                name=f.name, section=section, type=base, optional=optional, default=f.default,
                help=f.metadata["help"], byte_size=f.metadata.get("byte_size", False),
                normalize=f.metadata.get("normalize"),
            )  # fmt: skip
    return specs


FIELDS: dict[str, FieldSpec] = _build_fields()


def field_help(name: str) -> str:
    """The one-line help of a flat field (the text of its CLI flag)."""
    return FIELDS[name].help


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


# ---- coercion and validation (the one place values are judged) ----------------------------

_TRUE, _FALSE, _NONE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}, {"none", "null", ""}


def _parse_text(spec: FieldSpec, text: str) -> Any:
    """A string from env / CLI / kwargs → the field's type."""
    text = text.strip()
    if spec.optional and text.lower() in _NONE:
        return None
    if spec.byte_size:
        return parse_byte_size(text)
    if spec.type is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError("must be one of 1/0, true/false, yes/no, on/off")
    if spec.type in (int, float):
        try:
            return spec.type(text)
        except ValueError:
            raise ValueError(f"must be {spec.kind}") from None
    return spec.normalize(text) if spec.normalize else text


def coerce_value(name: str, value: Any, *, strict: bool = False) -> Any:
    """Convert ``value`` to field ``name``'s type or raise ValueError saying what is allowed.

    Strings are parsed ('32', 'false', 'none', '4GiB') unless ``strict`` (TOML, which has real
    types); byte sizes accept strings everywhere.
    """
    spec = FIELDS[name]
    if value is None:
        if spec.optional:
            return None
        raise ValueError(f"must be {spec.kind}")
    if isinstance(value, str) and (not strict or spec.byte_size):
        return _parse_text(spec, value)
    if spec.byte_size:
        return parse_byte_size(value)
    if not _type_ok(spec, value):
        raise ValueError(f"must be {spec.kind}")
    if spec.type is float:
        return float(value)
    return spec.normalize(value) if spec.normalize else value


def _type_ok(spec: FieldSpec, value: Any) -> bool:
    if spec.type is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if spec.type is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, spec.type)


def _is_block_size(v: int) -> bool:
    return 1 <= v <= 256 and v & (v - 1) == 0


_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_NON_EMPTY = (lambda v: v.strip() != "", "a non-empty string")
_POSITIVE = (lambda v: v >= 1, "a positive integer")
# name -> (accepts the non-None value, what is allowed)
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": _NON_EMPTY,
    "tokenizer": _NON_EMPTY,
    "served_model_name": _NON_EMPTY,
    "load_format": (lambda v: v in ("auto", "dummy"), "auto or dummy"),
    "dtype": (lambda v: v in DTYPES, "one of " + ", ".join(DTYPES)),
    "kv_cache_dtype": (lambda v: v in DTYPES, "one of " + ", ".join(DTYPES)),
    "max_model_len": _POSITIVE,
    "seed": (lambda v: 0 <= v < 2**64, "an integer in [0, 2**64)"),
    "device": (lambda v: bool(_DEVICE_RE.match(v)), "auto, cpu, cuda, cuda:N or mps"),
    "num_threads": _POSITIVE,
    "attention_backend": (lambda v: v in ("auto", "triton", "torch"), "auto, triton or torch"),
    "block_size": (_is_block_size, "a power of two from 1 to 256"),
    "memory_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "kv_cache_memory": (lambda v: v > 0, "a positive byte size"),
    "num_kv_blocks": _POSITIVE,
    "max_num_seqs": _POSITIVE,
    "max_num_batched_tokens": _POSITIVE,
    "async_scheduling": (lambda v: v in ("auto", "on", "off"), "auto, on or off"),
}


def field_problem(name: str, value: Any) -> str | None:
    """What is wrong with a coerced value of field ``name`` ('must be in (0, 1]'), else None."""
    spec = FIELDS[name]
    if value is None:
        return None if spec.optional else f"must be {spec.kind}"
    if not _type_ok(spec, value):
        return f"must be {spec.kind}"
    accepts, allowed = _RULES.get(name, (lambda v: True, ""))
    return None if accepts(value) else f"must be {allowed}"


def resolve_name(name: str) -> str:
    """The flat field a kwarg names (aliases included); ConfigError with a suggestion if none."""
    key = ALIASES.get(name, name)
    if key not in FIELDS:
        raise config_error([f"unknown config field {name!r}{suggest(name, FIELDS)}"])
    return key


@dataclass
class EngineConfig:
    """Everything the engine is built from: model, device, KV cache and scheduler sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EngineConfig:
        """Build from flat field names (``block_size=32, dtype="bf16"``); strings are parsed."""
        per_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        problems = []
        for name, value in kwargs.items():
            key = ALIASES.get(name, name)
            if key not in FIELDS:
                problems.append(f"unknown config field {name!r}{suggest(name, FIELDS)}")
                continue
            try:
                coerced = coerce_value(key, value)
            except ValueError as e:
                problems.append(f"{name}={value!r}: {e}")
                continue
            if problem := field_problem(key, coerced):
                problems.append(f"{name}={value!r}: {problem}")
            per_section[FIELDS[key].section][key] = coerced
        if problems:
            raise config_error(problems)
        return cls(**{s: SECTIONS[s](**values) for s, values in per_section.items()})

    def flat(self) -> dict[str, Any]:
        """Every field by its flat name, in section order."""
        return {name: getattr(getattr(self, s.section), name) for name, s in FIELDS.items()}

    def problems(self) -> list[str]:
        """Every invalid value ('block_size=24: must be ...') and every bad combination."""
        values = self.flat()
        found = [
            f"{name}={value!r}: {problem}"
            for name, value in values.items()
            if (problem := field_problem(name, value))
        ]
        if found:  # combinations are only meaningful between valid values
            return found
        max_len, budget = values["max_model_len"], values["max_num_batched_tokens"]
        if not values["enable_chunked_prefill"] and max_len is not None and budget < max_len:
            found.append(
                f"max_num_batched_tokens={budget} is below max_model_len={max_len} with "
                "enable_chunked_prefill=false (a whole prompt must fit one step): raise "
                "max_num_batched_tokens or enable chunked prefill"
            )
        return found

    def validate(self) -> None:
        """Raise ConfigError listing every problem (key, value, what is allowed)."""
        if found := self.problems():
            raise config_error(found)


_SOURCE_API = (
    "load_config", "check_config_file", "env_warnings", "add_config_arguments",
    "overrides_from_args", "config_show_rows", "run_config_command", "add_config_subcommand",
)  # fmt: skip


def __getattr__(name: str) -> Any:
    # Lazy re-export: config_sources imports this module, so importing it eagerly would cycle.
    if name in _SOURCE_API:
        from minerva import config_sources

        return getattr(config_sources, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
