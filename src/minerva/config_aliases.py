"""The one table of the seeds' settings (MISTRAL_* / MISTRALRS_* variables and the seed TOML's
keys) and what each becomes in Minerva. No torch.

Every row either maps onto a Minerva field (with a conversion of the seed's value syntax:
``q5_k_m`` / ``Q4K``, ``metal``, ``0`` = auto threads, inverted booleans) or is accepted and
reported once as having no effect here, with the reason. The sources (config_sources.py) read
it, ``minerva config show --aliases`` and docs/config-aliases.md render it, and the tests are
generated from it: a new row is its own test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


class _NoEffect:
    """What a conversion returns for a value that is accepted but changes nothing here."""

    def __repr__(self) -> str:
        return "NO_EFFECT"


NO_EFFECT: Any = _NoEffect()

ALIAS_PREFIXES = ("MISTRAL_", "MISTRALRS_")
"""Environment variables of these families are the seeds'; unknown ones get a did-you-mean."""


@dataclass(frozen=True)
class Alias:
    """One seed setting: its env var and/or TOML key, the Minerva field it sets (None: accepted
    with no effect), what its values mean here, and a seed example with the value it gives."""

    env: str | None  # MISTRAL_MAX_BATCH_SIZE
    toml: str | None  # "inference.max_batch_size": [section] key of the seed's config.toml
    field: str | None  # the flat Minerva field; None: no effect here
    note: str  # mapped: the value syntax; no effect: why
    example: str  # a value as the seeds write it
    expect: Any  # the field's value for ``example`` (NO_EFFECT for rows without a field)
    convert: Callable[[Any], Any] | None = None  # seed value -> a value the field accepts

    @property
    def key(self) -> str:
        """How messages name it: the env var, else '[section] key'."""
        return self.env or self.toml_label

    @property
    def toml_label(self) -> str:
        section, _, key = (self.toml or "").partition(".")
        return f"[{section}] {key}" if self.toml else ""

    def translate(self, value: Any) -> Any:
        """The seed value as the field takes it, NO_EFFECT, or ValueError saying why not."""
        converted = self.convert(value) if self.convert else value
        return NO_EFFECT if self.field is None else converted


# ---- conversions of the seeds' value syntax -------------------------------------------------

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError("must be one of 1/0, true/false, yes/no, on/off")


def _negated(value: Any) -> bool:
    return not to_bool(value)


def _device(value: Any) -> str:
    text = str(value).strip().lower()
    return "mps" if text == "metal" else text  # PyTorch's name for Apple's Metal GPU


def _zero_is_auto(value: Any) -> Any:
    return None if str(value).strip() == "0" else value


def _float_is_none(value: Any) -> Any:
    """'f16' / 'bf16' / 'none' as a quantization mean unquantized weights."""
    text = str(value).strip().lower()
    return None if text in {"f16", "fp16", "bf16", "f32", "fp32", "none", ""} else value


def _flash_attention(value: Any) -> str:
    return "auto" if to_bool(value) else "torch"  # auto = the fused paged kernels where they run


def _on_off_auto(value: Any) -> str:
    text = str(value).strip().lower()
    return "auto" if text == "auto" else ("on" if to_bool(text) else "off")


def _prefix_cache_n(value: Any) -> bool:
    """MISTRALRS_PREFIX_CACHE_N: 0 / false turn prefix caching off, a count or true keep it on."""
    text = str(value).strip().lower()
    if text.isdigit():
        return int(text) > 0
    return to_bool(text)


def _only_one(what: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        try:
            n = int(str(value).strip())
        except ValueError:
            raise ValueError("must be an integer") from None
        if n != 1:
            raise ValueError(f"{what} is not supported yet: Minerva runs one device (set 1)")
        return NO_EFFECT

    return check


def _false_means_gpu_off(value: Any) -> Any:
    return NO_EFFECT if to_bool(value) else "cpu"


# ---- the table ------------------------------------------------------------------------------

_PYTORCH_METAL = (
    "Minerva runs on Apple GPUs through PyTorch's MPS backend, which manages Metal's heaps, "
    "command buffers, queues and shaders itself"
)
_DOCKER = "a Docker / compose setting of the seed's stack, read by docker, not by the engine"
_POOLING = (
    "PyTorch's caching allocator always pools device memory and the KV cache is allocated "
    "once at start; cap memory with memory_limit (MISTRAL_MEMORY_LIMIT)"
)


def _mapped(env, toml, field, note, example, expect, convert=None) -> Alias:  # noqa: ANN001
    return Alias(env, toml, field, note, example, expect, convert)


def _inert(env, toml, why, example) -> Alias:  # noqa: ANN001
    return Alias(env, toml, None, why, example, NO_EFFECT)


ALIAS_TABLE: tuple[Alias, ...] = (
    # -- device and attention
    _mapped("MISTRAL_DEVICE", "resources.device", "device",
            "auto, cpu, cuda, cuda:N, metal (= mps)", "metal", "mps", _device),
    _mapped("MISTRALRS_DEVICE", None, "device",
            "auto, cpu, cuda, metal (= mps)", "cuda", "cuda", _device),
    _mapped(None, "resources.use_gpu", "device",
            "false = device cpu; true leaves the device setting in charge", "false", "cpu",
            _false_means_gpu_off),
    _inert("MISTRAL_METAL_DEVICE_ID", "metal.device_id",
           "PyTorch's MPS backend exposes one Apple GPU (the system default)", "0"),
    _mapped("MISTRAL_USE_FLASH_ATTENTION", "metal.use_flash_attention", "attention_backend",
            "true = auto (the fused paged kernels where the device has them), false = torch",
            "false", "torch", _flash_attention),
    _mapped("MISTRALRS_PAGED_ATTN", None, "mistralrs_paged_attn",
            "the mistralrs backend's PagedAttention: true = on, false = off, auto (Minerva's "
            "own KV cache is always paged)", "true", "on", _on_off_auto),
    _mapped("MISTRALRS_PAGED_ATTN_BLOCK_SIZE", None, "block_size",
            "tokens per KV block, a power of two", "32", 32),
    _inert("MISTRALRS_CPU_KV_F32", None,
           "read by mistral.rs itself under --backend mistralrs (a float32 KV cache on the CPU; "
           "set for float32 models); Minerva's own engine follows kv_cache_dtype", "1"),
    # -- memory
    _mapped("MISTRAL_MEMORY_FRACTION", "resources.memory_fraction", "memory_fraction",
            "a number in (0, 1]: the share of device memory for weights + KV cache (CPU too)",
            "0.9", 0.9),
    _mapped("MISTRAL_MEMORY_LIMIT", None, "memory_limit",
            "a byte size (64G, 512MiB, 1073741824): hard cap on weights + KV + activations",
            "64G", 64 * 2**30),
    _inert("MISTRAL_MEMORY_RESERVATION", None,
           "a container's guaranteed minimum; Minerva takes its memory once at start", "32G"),
    _mapped("MISTRAL_KV_CACHE_DTYPE", "memory.kv_cache_dtype", "kv_cache_dtype",
            "auto, f16, bf16, f32, fp8 (f16 = float16)", "f16", "float16"),
    _mapped("MISTRAL_MAX_SEQ_LEN", "memory.max_seq_len", "max_model_len",
            "tokens per sequence (prompt + output)", "32768", 32768),
    _mapped(None, "inference.max_sequence_length", "max_model_len",
            "tokens per sequence (prompt + output)", "8192", 8192),
    _inert("MISTRAL_ENABLE_MEMORY_POOLING", "memory.enable_memory_pooling", _POOLING, "true"),
    _inert("MISTRAL_MEMORY_POOL_SIZE", "memory.memory_pool_size", _POOLING, "8589934592"),
    _inert("MISTRAL_METAL_HEAP_SIZE", "metal.heap_size", _PYTORCH_METAL, "68719476736"),
    _inert("MISTRAL_METAL_COMMAND_BUFFER_SIZE", "metal.command_buffer_size", _PYTORCH_METAL,
           "1073741824"),
    _inert("MISTRAL_METAL_SHADER_VARIANT", "metal.shader_variant", _PYTORCH_METAL, "optimized"),
    _inert("MISTRAL_METAL_SIMD_REDUCTION", "metal.simd_reduction", _PYTORCH_METAL, "true"),
    _inert("MISTRAL_METAL_ASYNC_DISPATCH", "metal.async_dispatch", _PYTORCH_METAL, "true"),
    _inert("MISTRAL_METAL_COMMAND_QUEUE_SIZE", "metal.command_queue_size", _PYTORCH_METAL, "64"),
    # -- batching and scheduling
    _mapped("MISTRAL_MAX_RUNNING_REQUESTS", "inference.max_running_requests", "max_num_seqs",
            "requests running at once (wins over MISTRAL_MAX_BATCH_SIZE)", "16", 16),
    _mapped("MISTRAL_MAX_BATCH_SIZE", "inference.max_batch_size", "max_num_seqs",
            "requests batched in one step; more wait in the queue", "8", 8),
    _mapped("MISTRAL_PREFILL_CHUNK_SIZE", "performance.prefill_chunk_size",
            "max_num_batched_tokens", "tokens per step: a longer prompt is prefilled in chunks",
            "2048", 2048),
    _mapped("MISTRAL_MAX_TOTAL_TOKENS", "inference.max_total_tokens", "kv_cache_tokens",
            "tokens the KV cache holds across all running requests", "131072", 131072),
    _inert("MISTRAL_DECODE_CHUNK_SIZE", "performance.decode_chunk_size",
           "a decode step computes one token per request (plus its speculative tokens)", "256"),
    _inert("MISTRAL_ENABLE_CONTINUOUS_BATCHING", "inference.enable_continuous_batching",
           "Minerva always batches continuously; max_num_seqs=1 runs one request at a time",
           "true"),
    _mapped("MISTRAL_USE_GRAPH_CAPTURE", "performance.use_graph_capture", "enforce_eager",
            "true = CUDA graphs (enforce_eager=false), false = eager", "false", True, _negated),
    _mapped("MISTRAL_TENSOR_PARALLEL_SIZE", "performance.tensor_parallel_size", None,
            "1 only: one device per engine for now", "1", NO_EFFECT,
            _only_one("tensor parallelism")),
    _mapped("MISTRAL_PIPELINE_PARALLEL_SIZE", "performance.pipeline_parallel_size", None,
            "1 only: one device per engine for now", "1", NO_EFFECT,
            _only_one("pipeline parallelism")),
    _mapped("MISTRAL_NUM_THREADS", "resources.num_threads", "num_threads",
            "CPU threads; 0 = auto (the default thread count)", "0", None, _zero_is_auto),
    # -- prefix caching
    _mapped("MISTRAL_ENABLE_PREFIX_CACHING", "inference.enable_prefix_caching",
            "enable_prefix_caching", "true / false", "false", False),
    _mapped("MISTRALRS_PREFIX_CACHE_N", None, "enable_prefix_caching",
            "0 or false = off; a count or true = on (cached prefixes live in the KV cache's "
            "free blocks, so the count itself has no effect)", "0", False, _prefix_cache_n),
    _inert("MISTRAL_PREFIX_CACHE_SIZE", "inference.prefix_cache_size",
           "cached prefixes live in the KV cache's free blocks: size it with kv_cache_memory",
           "2147483648"),
    # -- quantization
    _mapped("MISTRAL_DEFAULT_QUANTIZATION", "quantization.default_quantization", "quantization",
            "q8_0, q4_k_m, q5_k_m, q4_k ...; f16 / bf16 / none = unquantized", "q5_k_m",
            "q5_k_m", _float_is_none),
    _mapped("MISTRALRS_ISQ", None, "quantization",
            "mistral.rs in-situ names: Q4K, Q5K, Q8_0 ... (= q4_k, q5_k, q8_0)", "Q4K", "q4_k"),
    _inert("MISTRAL_DYNAMIC_QUANTIZATION", "quantization.dynamic_quantization",
           "Minerva quantizes at load whenever quantization is set; there is no runtime mode",
           "true"),
    _inert("MISTRAL_QUANTIZATION_CACHE_SIZE", "quantization.cache_size",
           "weights are quantized once at load; nothing caches them", "1073741824"),
    # -- speculative decoding
    _mapped("MISTRALRS_SPECULATIVE_DRAFT_MODEL", None, "draft_model",
            "draft model folder or .gguf", "/models/draft", "/models/draft"),
    _mapped("MISTRALRS_SPECULATIVE_GAMMA", None, "num_speculative_tokens",
            "tokens proposed per step (0 = off)", "4", 4),
    # -- the server
    _mapped("MISTRAL_HOST", None, "host", "address to bind", "0.0.0.0", "0.0.0.0"),
    _mapped("MISTRAL_PORT", None, "port", "TCP port", "8080", 8080),
    _mapped("MISTRAL_API_PORT", None, "port", "TCP port", "8081", 8081),
    _inert("MISTRAL_LOG_LEVEL", "logging.level",
           "pass --log-level to minerva serve (a flag, not a config field)", "info"),
    _inert(None, "logging.format", "Minerva logs plain text lines", "json"),
    _inert(None, "inference.temperature",
           "sampling defaults come from the model's generation_config.json and each request",
           "0.7"),
    # -- the seed's model folder and its Docker stack
    _inert("MISTRAL_MODEL_PATH", "model.path",
           "names the stack's models folder; pass the model with --model / MINERVA_MODEL",
           "/models"),
    _inert("MISTRAL_MODELS_PATH", None, _DOCKER, "./data/mistral-models"),
    _inert(None, "model.default_model",
           "pass the model's path with --model / MINERVA_MODEL", "mistral-7b-instruct"),
    _inert(None, "model.model_type", "Minerva tells a folder from a .gguf file itself", "auto"),
    _inert(None, "model.cache_size", "Minerva keeps one model loaded", "2147483648"),
    *(
        _inert(name, None, _DOCKER, example)
        for name, example in (
            ("MISTRAL_HEALTH_INTERVAL", "30s"), ("MISTRAL_HEALTH_TIMEOUT", "10s"),
            ("MISTRAL_HEALTH_RETRIES", "3"), ("MISTRAL_HEALTH_START_PERIOD", "60s"),
            ("MISTRAL_LOG_MAX_SIZE", "10m"), ("MISTRAL_LOG_MAX_FILE", "3"),
            ("MISTRAL_RS_VERSION", "v0.6.0"),
        )
    ),
)  # fmt: skip
"""Every seed setting, in the order the docs list them. Where two rows set one field, the
earlier wins and the conflict is reported; a MINERVA_* variable wins over both."""

BY_ENV: dict[str, Alias] = {a.env: a for a in ALIAS_TABLE if a.env}
BY_TOML: dict[tuple[str, str], Alias] = {
    tuple(a.toml.split(".", 1)): a  # type: ignore[misc]
    for a in ALIAS_TABLE
    if a.toml
}
SEED_SECTIONS: frozenset[str] = frozenset(section for section, _ in BY_TOML)
"""The seed TOML's tables ([metal], [memory], [quantization], [performance], [inference] ...)."""


def aliases_of(field_names: Iterable[str]) -> list[Alias]:
    """The rows that set one of ``field_names``, in table order (earlier wins)."""
    names = set(field_names)
    return [a for a in ALIAS_TABLE if a.field in names]


def describe(alias: Alias) -> str:
    """'-> max_num_seqs (requests running at once)' or 'no effect: <why>'."""
    if alias.field is None:
        return f"accepted, has no effect here: {alias.note}"
    return f"-> {alias.field} ({alias.note})"


def render_markdown() -> str:
    """The table as docs/config-aliases.md holds it (a test keeps the file in step)."""
    lines = [
        "# The seeds' settings in Minerva",
        "",
        "Generated from `src/minerva/config_aliases.py` (`minerva config show --aliases` prints "
        "the same table). Each `MISTRAL_*` / `MISTRALRS_*` variable (environment or `.env` "
        "file) and each key of the seed's TOML sections either sets a Minerva field or is "
        "accepted and reported once at start, and in `minerva config show`, as having no "
        "effect here. Unknown `MISTRAL_*` variables are reported with a did-you-mean.",
        "",
        "Precedence: defaults < `--profile` < TOML file < `.env` file < environment < flags. "
        "Within one source a `MINERVA_*` name wins over a seed name of the same field, and "
        "the conflict is reported; where two seed names set one field, the one listed first "
        "here wins.",
        "",
        "| seed variable | seed TOML key | Minerva field | values / why no effect | example |",
        "|---|---|---|---|---|",
    ]
    for a in ALIAS_TABLE:
        target = f"`{a.field}`" if a.field else "no effect"
        example = f"`{a.example}`" + ("" if a.field is None else f" → `{_show(a.expect)}`")
        env = f"`{a.env}`" if a.env else ""
        toml = f"`{a.toml_label}`" if a.toml else ""
        lines.append(f"| {env} | {toml} | {target} | {a.note} | {example} |")
    return "\n".join(lines) + "\n"


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if value is NO_EFFECT:
        return "no effect"
    return str(value).lower() if isinstance(value, bool) else str(value)


if __name__ == "__main__":  # python -m minerva.config_aliases > docs/config-aliases.md
    print(render_markdown(), end="")
