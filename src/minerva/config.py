"""Typed engine configuration: one dataclass per concern, gathered in EngineConfig. No torch.

Every field is a ``Field(default, doc, **rules)``: its doc becomes its CLI help, and its choices
and range (config_fields.py) are what validation, ``config show`` / ``check`` and ``--help``
read. Field names are unique across sections, so the flat name (``block_size``) is the key
everywhere: kwargs, TOML, the ``MINERVA_BLOCK_SIZE`` env var and the ``--block-size`` flag.
Where values come from and in which order (defaults < TOML < env < overrides) is
config_sources.py; this module binds it, and the CLI glue, to the engine's fields.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from minerva import config_cli, config_sources
from minerva.config_aliases import aliases_of
from minerva.config_dotenv import read_env_file
from minerva.config_fields import (
    Field,
    FieldSpec,
    Schema,
    config_error,
    format_byte_size,
    parse_byte_size,
    specs_of,
    suggest,
)
from minerva.config_profiles import PROFILE_ENV_VAR, PROFILES, profile_problem
from minerva.dtypes import DTYPES, KV_CACHE_DTYPES, canonical_dtype, canonical_kv_cache_dtype
from minerva.quant_names import QUANTIZATIONS, canonical_quantization

__all__ = [
    "ALIASES", "BACKEND_NAMES", "DTYPES", "FIELDS", "SECTIONS", "SCHEMA", "CacheConfig", "DeviceConfig",
    "EngineConfig", "FieldSpec", "LlamaCppConfig", "MistralrsConfig", "ModelConfig", "SchedulerConfig", "SpeculativeConfig",
    "add_config_arguments", "check_config_file", "load_config_from_args", "coerce_value", "config_error",
    "config_show_rows", "env_warnings", "field_help", "field_problem", "format_byte_size",
    "load_config", "overrides_from_args", "parse_byte_size", "resolve_name",
    "suggest",
]  # fmt: skip

ALIASES: dict[str, str] = {"gpu_memory_utilization": "memory_fraction"}
"""The one table of other names for fields: lower-case keys are kwarg / override names (as other
engines spell the knob), UPPER_CASE keys other environment variables (MINERVA_* wins)."""

BACKEND_NAMES = ("minerva", "llamacpp", "mistralrs", "mlx")
"""The engines ``backend`` chooses from (minerva.backends.BACKENDS maps each to its loader)."""

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_DEVICES_RE = re.compile(r"^\d+(,\d+)*$")


def _is_power_of_two(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


@dataclass
class ModelConfig:
    """Which model to run and how its numbers are stored."""

    model: str | None = Field(
        None, "Path to a Hugging Face model folder or a .gguf file (default: demo, the bundled "
        "demo model).", non_empty=True,
    )  # fmt: skip
    tokenizer: str | None = Field(
        None, "Path to the tokenizer folder (default: the model path).", non_empty=True
    )
    dtype: str = Field(
        "auto", "Weight/activation dtype (auto: the checkpoint's where the device runs it).",
        choices=DTYPES, normalize=canonical_dtype,
    )  # fmt: skip
    quantization: str | None = Field(
        None,
        "Quantize a float model's linear layers to this GGUF type or mix while loading "
        "(q8_0, q4_k_m ...; mistral.rs names like Q4K too), or fp8 / int8 with a scale per row "
        "(CUDA); a GGUF file keeps its own.",
        choices=QUANTIZATIONS, normalize=canonical_quantization,
    )  # fmt: skip
    max_model_len: int | None = Field(
        None,
        "Longest sequence (prompt + output) in tokens (default: from the model's config).",
        ge=1,
    )
    seed: int = Field(
        0, "Seed for the sampling of requests that set no seed of their own.", ge=0, lt=2**64
    )
    served_model_name: str | None = Field(
        None,
        "Model name the API reports and accepts (default: derived from the model path).",
        non_empty=True,
    )
    load_format: str = Field(
        "auto",
        "auto = the checkpoint's weights; dummy = random weights of the same shapes (benchmarks).",
        choices=("auto", "dummy"),
    )
    weight_cache: bool = Field(
        True,
        "Keep a GGUF model's weights (or a float model's, quantized in situ) as rewritten for "
        "the CPU kernels in a file under $MINERVA_CACHE_DIR/weights, so later loads map it "
        "instead of quantizing and repacking (off = at every load). Each cached model takes "
        "its size again on disk.",
    )
    weight_cache_size: int = Field(
        16 << 30,
        "Cap on the weight cache's files, e.g. 16GiB (least recently used ones are deleted "
        "to stay under it).",
        byte_size=True, gt=0,
    )  # fmt: skip
    backend: str = Field(
        "minerva",
        "Engine that runs the model: minerva (its own), llamacpp (llama.cpp), mistralrs "
        "(mistral.rs) or mlx (Apple MLX); the others need their pip extra.",
        choices=BACKEND_NAMES, normalize=str.lower,
    )  # fmt: skip


@dataclass
class DeviceConfig:
    """Where the model runs."""

    device: str = Field(
        "auto", "Device to run on.", normalize=str.lower,
        check=lambda v: bool(_DEVICE_RE.match(v)), allowed="auto, cpu, cuda, cuda:N or mps",
    )  # fmt: skip
    num_threads: int | None = Field(
        None,
        "CPU threads for torch (default: physical cores less the busy ones; minerva doctor "
        "measures what is best here).",
        ge=1,
    )
    attention_backend: str = Field(
        "auto",
        "Attention kernels (auto: Triton on CUDA, C decode kernels on CPU, else torch).",
        choices=("auto", "triton", "torch"), normalize=str.lower,
    )  # fmt: skip
    enforce_eager: bool = Field(False, "Never use CUDA graphs (slower decode; for debugging).")
    fused_kernels: bool = Field(
        True, "Fused Triton add+RMSNorm, SiLU*mul and RoPE on CUDA (off = torch ops)."
    )
    pdl: bool = Field(
        True,
        "Programmatic dependent launch of the fused Triton kernels on Hopper and newer GPUs: "
        "each kernel starts while the previous one drains (off = plain launches).",
    )
    cpu_kernels: bool = Field(
        True,
        "C kernels on the CPU (linear layers, add+RMSNorm, RoPE, decode attention), built at "
        "first use (off = torch ops).",
    )
    tensor_parallel_size: int = Field(
        1,
        "Processes (one per GPU: cuda:0..N-1) that each hold 1/N of the model's heads, MLP and "
        "vocabulary and run every step together (NCCL on CUDA, gloo on the CPU); safetensors "
        "models, float or quantized in situ.",
        ge=1, le=64,
    )  # fmt: skip
    pipeline_parallel_size: int = Field(
        1,
        "Processes (one per GPU) that each run a contiguous run of the model's layers, the "
        "hidden state passed from one to the next; with tensor_parallel_size T each stage is T "
        "processes (safetensors models; one step at a time, no micro-batches yet: fits "
        "bigger models, not faster).",
        ge=1, le=64,
    )  # fmt: skip
    devices: str | None = Field(
        None,
        "CUDA devices of the tensor-parallel ranks in rank order, e.g. 0,1 or 2,3 (default: "
        "0..tensor_parallel_size-1).",
        check=lambda v: bool(_DEVICES_RE.match(v)), allowed="GPU indices such as 0,1",
    )  # fmt: skip
    parallel_timeout: float = Field(
        300.0,
        "Seconds a tensor-parallel rank may take to start or to join a step's collective "
        "before the engine fails with an error naming it (a dead rank fails it at once).",
        gt=0, metavar="SECONDS",
    )  # fmt: skip


@dataclass
class CacheConfig:
    """The paged KV cache: block geometry, memory budget, prefix caching."""

    block_size: int = Field(
        16, "Tokens per KV cache block.", ge=1, le=256,
        check=_is_power_of_two, allowed="a power of two",
    )  # fmt: skip
    memory_fraction: float = Field(
        0.9, "Fraction of the device's memory (RAM on CPU) for weights + KV cache.", gt=0, le=1
    )
    kv_cache_memory: int | None = Field(
        None,
        "KV cache bytes, e.g. 4GiB, 512MB (default: what memory_fraction / memory_limit leave; "
        "on CPU also at most 16 full-length sequences, 5% of free RAM and 2 GiB).",
        byte_size=True, gt=0,
    )  # fmt: skip
    num_kv_blocks: int | None = Field(
        None, "Number of KV cache blocks; overrides the memory budget when set.", ge=1
    )
    kv_cache_tokens: int | None = Field(
        None, "Most tokens the KV cache holds across all requests (caps its memory budget).",
        ge=1,
    )  # fmt: skip
    memory_limit: int | None = Field(
        None,
        "Hard cap on this engine's weights + KV cache + activations on any device, e.g. 16G; "
        "the model is refused before loading if it cannot fit.",
        byte_size=True, gt=0,
    )  # fmt: skip
    kv_cache_dtype: str = Field(
        "auto",
        "KV cache dtype (auto: the model's dtype; fp8 / fp8_e5m2: 8-bit, half the memory).",
        choices=KV_CACHE_DTYPES, normalize=canonical_kv_cache_dtype,
    )  # fmt: skip
    enable_prefix_caching: bool = Field(True, "Reuse the KV blocks of shared prompt prefixes.")


@dataclass
class SchedulerConfig:
    """Continuous batching on a token budget."""

    max_num_seqs: int = Field(256, "Most requests running in one step.", ge=1)
    max_num_batched_tokens: int = Field(
        2048, "Most tokens (prefill + decode) run in one step.", ge=1
    )
    enable_chunked_prefill: bool = Field(True, "Split long prompts over several steps.")
    async_scheduling: str = Field(
        "auto", "Launch step N+1 before reading step N's tokens (auto: on for CUDA).",
        choices=("auto", "on", "off"), normalize=str.lower,
    )  # fmt: skip
    step_timeout: float = Field(
        600.0,
        "Seconds one engine step may run before the engine counts as hung: /health answers "
        "503, requests in flight fail and the server exits non-zero (0: no watchdog).",
        ge=0, metavar="SECONDS",
    )  # fmt: skip
    queue_timeout: float = Field(
        0.0, "Seconds a request may wait before its first step; past it, it is dropped with "
        "503 queue_timeout and Retry-After (0: wait as long as it takes).",
        ge=0, metavar="SECONDS",
    )  # fmt: skip
    request_timeout: float = Field(
        0.0, "Seconds a request may take from arrival to its last token; past it, it ends "
        "with finish_reason 'abort' (0: no deadline).",
        ge=0, metavar="SECONDS",
    )  # fmt: skip


@dataclass
class SpeculativeConfig:
    """Speculative decoding: proposals the target model verifies in one pass (0 tokens: off)."""

    speculative_method: str = Field(
        "draft", "Where proposals come from: a draft model or n-grams of the request's own text.",
        choices=("draft", "ngram"), normalize=str.lower,
    )  # fmt: skip
    draft_model: str | None = Field(
        None, "Draft model (folder or .gguf) sharing the target's tokenizer.", metavar="PATH"
    )
    num_speculative_tokens: int = Field(
        0, "Tokens proposed per step and verified at once (0: no speculation).", ge=0, le=16
    )
    ngram_min: int = Field(1, "Shortest n-gram matched for ngram proposals.", ge=1)
    ngram_max: int = Field(4, "Longest n-gram matched for ngram proposals.", ge=1)
    speculative_adaptive: bool = Field(
        True,
        "Time the steps and speculate only at batch sizes where it measured faster than "
        "plain decoding (off: always speculate).",
    )


@dataclass
class LlamaCppConfig:
    """Options only the llamacpp backend reads (the shared ones map onto llama.cpp's too)."""

    gpu_layers: int | None = Field(
        None,
        "llamacpp: transformer layers offloaded to the GPU (default: all on cuda / mps, "
        "none on cpu).",
        ge=0,
    )
    flash_attention: str = Field(
        "auto", "llamacpp: flash attention (auto: on where layers run on a GPU).",
        choices=("auto", "on", "off"), normalize=str.lower, metavar="MODE",
    )  # fmt: skip
    llamacpp_contexts: int = Field(
        1,
        "llamacpp: contexts in the pool, each running one request at a time with its own KV "
        "cache of max_model_len tokens (the backend's max concurrency; more requests queue).",
        ge=1, le=64,
    )  # fmt: skip


@dataclass
class MistralrsConfig:
    """Options only the mistralrs backend reads (the shared ones map onto mistral.rs's too)."""

    mistralrs_paged_attn: str = Field(
        "auto",
        "mistralrs: PagedAttention (auto: mistral.rs's default, on for CUDA and Metal; on "
        "forces it, off disables it). Minerva's own KV cache is always paged.",
        choices=("auto", "on", "off"), normalize=str.lower, metavar="MODE",
    )  # fmt: skip
    mistralrs_prefix_cache_n: int = Field(
        16,
        "mistralrs: sequences its prefix cache keeps (0: off; enable_prefix_caching=false "
        "turns it off too).",
        ge=0,
    )


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "device": DeviceConfig,
    "cache": CacheConfig,
    "scheduler": SchedulerConfig,
    "speculative": SpeculativeConfig,
    "llamacpp": LlamaCppConfig,
    "mistralrs": MistralrsConfig,
}

FIELDS: dict[str, FieldSpec] = specs_of(SECTIONS)


def field_help(name: str) -> str:
    """The one-line help of a flat field (the text of its CLI flag): doc, then what is allowed."""
    return FIELDS[name].help


def coerce_value(name: str, value: Any, *, strict: bool = False) -> Any:
    """Convert ``value`` to field ``name``'s type or raise ValueError saying what is allowed."""
    return FIELDS[name].coerce(value, strict=strict)


def field_problem(name: str, value: Any) -> str | None:
    """What is wrong with a coerced value of field ``name`` ('must be in (0, 1]'), else None."""
    return FIELDS[name].problem(value)


def resolve_name(name: str) -> str:
    """The flat field a kwarg names (aliases included); ConfigError with a suggestion if none."""
    key = SCHEMA.resolve(name)
    if key is None:
        raise config_error([SCHEMA.unknown(name)])
    return key


@dataclass
class EngineConfig:
    """Everything the engine is built from: model, device, KV cache and scheduler sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
    llamacpp: LlamaCppConfig = field(default_factory=LlamaCppConfig)
    mistralrs: MistralrsConfig = field(default_factory=MistralrsConfig)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EngineConfig:
        """Build from flat field names (``block_size=32, dtype="bf16"``); strings are parsed."""
        per_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        problems: list[str] = []
        for name, value in kwargs.items():
            key = SCHEMA.resolve(name)
            if key is None:
                problems.append(SCHEMA.unknown(name))
                continue
            try:
                coerced = FIELDS[key].coerce(value)
            except ValueError as e:
                problems.append(f"{name}={value!r}: {e}")
                continue
            if problem := FIELDS[key].problem(coerced):
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
        if found := SCHEMA.problems(values):  # combinations only matter between valid values
            return found
        max_len, budget = values["max_model_len"], values["max_num_batched_tokens"]
        if not values["enable_chunked_prefill"] and max_len is not None and budget < max_len:
            found.append(
                f"max_num_batched_tokens={budget} is below max_model_len={max_len} with "
                "enable_chunked_prefill=false (a whole prompt must fit one step): raise "
                "max_num_batched_tokens or enable chunked prefill"
            )
        return found + _speculative_problems(values) + _parallel_problems(values)

    def validate(self) -> None:
        """Raise ConfigError listing every problem (key, value, what is allowed)."""
        if found := self.problems():
            raise config_error(found)


def _parallel_problems(values: dict[str, Any]) -> list[str]:
    """devices names one distinct GPU per rank (tensor x pipeline parallel size)."""
    tp, pp = values["tensor_parallel_size"], values["pipeline_parallel_size"]
    devices, n = values["devices"], tp * pp
    if devices is None:
        return []
    ids = devices.split(",")
    if len(ids) != n or len(set(ids)) != n:
        return [
            f"devices={devices!r} names {len(set(ids))} distinct GPUs for {n} parallel ranks: "
            "give one distinct GPU index per rank, e.g. devices=" + ",".join(map(str, range(n)))
        ]
    return []


def _speculative_problems(values: dict[str, Any]) -> list[str]:
    """Combinations of the [speculative] fields that cannot run."""
    found = []
    if values["ngram_min"] > values["ngram_max"]:
        found.append(
            f"ngram_min={values['ngram_min']} is above ngram_max={values['ngram_max']}: "
            "lower ngram_min or raise ngram_max"
        )
    on = values["num_speculative_tokens"] > 0
    if on and values["speculative_method"] == "draft" and values["draft_model"] is None:
        found.append(
            "speculative_method=draft needs a draft_model (--draft-model PATH), or use "
            "speculative_method=ngram, or num_speculative_tokens=0 to turn speculation off"
        )
    return found


SCHEMA = Schema(
    fields=FIELDS, sections=SECTIONS, build=EngineConfig.from_kwargs,
    flatten=EngineConfig.flat, aliases=ALIASES, seed_aliases=tuple(aliases_of(FIELDS)),
    reports_inert=True, other_sections=frozenset({"server"}),
)  # fmt: skip
"""The engine config as the sources and the CLI glue see it."""


# ---- the sources and the CLI glue, bound to the engine config ------------------------------


def load_config(
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    override_source: str = "override",
    env_file: str | None = None,
    profile: str | None = None,
    notices: list[str] | None = None,
) -> tuple[EngineConfig, dict[str, str]]:
    """Merge defaults < profile < TOML file < .env file < env < overrides into an EngineConfig.

    Returns the config and, per flat field, its source: "default", "profile:<name>",
    "file:<path>", "dotenv:<path>:VAR", "env:VAR" or ``override_source`` ("cli" from the
    command line). Without ``config_file`` the file named by $MINERVA_CONFIG is read, if set.
    ``env`` defaults to os.environ; the profile is ``profile``, else $MINERVA_PROFILE (env,
    then the .env file), else the file's top-level ``profile`` key. Seed settings that have
    no effect here and alias conflicts are appended to ``notices``. Raises ConfigError
    listing every bad value with its source.
    """
    env = os.environ if env is None else env
    path = config_file or env.get(config_sources.CONFIG_ENV_VAR) or None
    name = profile or _profile_name(env, env_file, path)
    base = None
    if name is not None:
        if problem := profile_problem(name):
            raise config_error([problem])
        base = config_sources.override_layer(SCHEMA, PROFILES[name].values, f"profile:{name}")
    return config_sources.load(
        SCHEMA, path, overrides, env, override_source=override_source, env_file=env_file,
        base=base, notices=notices,
    )  # fmt: skip


def _profile_name(env: Mapping[str, str], env_file: str | None, path: str | None) -> str | None:
    if PROFILE_ENV_VAR in env:
        return env[PROFILE_ENV_VAR]
    if env_file is not None:
        if (name := read_env_file(env_file).get(PROFILE_ENV_VAR)) is not None:
            return name
    if path is not None:
        name = config_sources.read_toml(path).get("profile")
        return None if name is None else str(name)
    return None


def check_config_file(path: str) -> list[str]:
    """Every problem in a TOML config file, one line each; empty when it is fine."""
    return config_sources.check_file(SCHEMA, path)


def env_warnings(env: Mapping[str, str] | None = None, where: str = "env") -> list[str]:
    """MINERVA_* / MISTRAL_* / MISTRALRS_* variables nothing reads (with a did-you-mean); for a
    .env file (``where``: its path) every variable nothing reads."""
    return config_sources.env_warnings(SCHEMA, env, where)


def add_config_arguments(parser: argparse.ArgumentParser, exclude: Iterable[str] = ()) -> None:
    """Add ``--config PATH`` (dest ``config``) and one ``--<field>`` flag per config field.

    Fields (or "config") named in ``exclude`` get no flag. Flags default to argparse.SUPPRESS,
    so only the flags given become overrides (see ``overrides_from_args``); booleans get
    ``--x/--no-x``.
    """
    if "config" not in exclude:
        config_cli.add_config_file_argument(parser)
        parser.add_argument(
            "--profile", dest="profile", metavar="NAME", default=None,
            choices=tuple(PROFILES),
            help="Start from a named profile (explicit settings still win): "
            + "; ".join(f"{p.name}: {p.summary}" for p in PROFILES.values())
            + f". Default: none. Env: {PROFILE_ENV_VAR}.",
        )  # fmt: skip
    config_cli.add_arguments(parser, SCHEMA, exclude)


def overrides_from_args(namespace: argparse.Namespace) -> dict[str, Any]:
    """The config flags that were given on the command line, by flat field name."""
    return config_cli.overrides_from_args(namespace, SCHEMA)


def load_config_from_args(
    args: argparse.Namespace, notices: list[str] | None = None
) -> tuple[EngineConfig, dict[str, str]]:
    """``load_config`` from a command's flags (--config, --env-file or ./.env, --profile and
    the field flags). Without a ``notices`` list, the notices (seed settings with no effect,
    alias conflicts, unknown variables) are printed to stderr: once, at start."""
    found: list[str] = []
    env_file = config_cli.env_file_of(args)
    config, sources = load_config(
        getattr(args, "config", None), overrides_from_args(args), override_source="cli",
        env_file=env_file, profile=getattr(args, "profile", None), notices=found,
    )  # fmt: skip
    found += env_warnings()
    if env_file is not None:
        found += env_warnings(read_env_file(env_file), where=env_file)
    if notices is None:
        config_cli.print_notices(found)
    else:
        notices += found
    return config, sources


def config_show_rows(
    cfg: EngineConfig, sources: Mapping[str, str]
) -> list[tuple[str, str, Any, str, str]]:
    """(section, field, value, source, help) per field, in section order."""
    return config_cli.show_rows(SCHEMA, cfg, sources)
