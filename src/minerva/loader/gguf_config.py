"""GGUF metadata -> the HFModelConfig and GenerationDefaults an HF folder of the same model has.

Key names are llama.cpp's (``{arch}.context_length``, ``{arch}.rope.freq_base``, ...). HF
Mistral converts to arch ``llama``; a ``llama.attention.sliding_window`` key makes it Mistral.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from minerva.errors import ModelLoadError
from minerva.loader.hf_config import GenerationDefaults, HFModelConfig

GGUF_ARCHITECTURES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
"""GGUF ``general.architecture`` -> the HF architecture it loads as."""
_DENSE_FILE_TYPES = {0: "float32", 1: "float16", 32: "bfloat16"}
# llama.cpp's quantized file types (general.file_type, gguf.LlamaFileType without MOSTLY_): read
# here so that opening a file does not import the gguf package (~60 ms); others ask it
FILE_TYPE_NAMES = {
    2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
    18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS",
    24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS",
    31: "IQ1_M", 36: "TQ1_0", 37: "TQ2_0",
}  # fmt: skip
_HF_DEFAULT_EPS = 1e-6
_MAX_ROPE_BASE = 1e12
_LLAMA3_OLD_CONTEXT = 8192  # llama.cpp's default original_max_position_embeddings


def gguf_architecture(metadata: dict[str, Any], path: Path) -> str:
    arch = metadata.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        found = f"architecture {arch!r}" if arch else "no general.architecture key"
        raise ModelLoadError(
            f"{path} has {found}; Minerva loads GGUF architectures "
            f"{', '.join(GGUF_ARCHITECTURES)} (Llama, Mistral, Qwen2, Qwen3): use a model of one of "
            "these families"
        )
    return arch


def gguf_model_config(
    metadata: dict[str, Any],
    tensor_names: Collection[str],
    vocab_size: int,
    path: Path,
    rope_freqs: Sequence[float] | None = None,
) -> HFModelConfig:
    """The config transformers would build for this model; ``vocab_size`` is token_embd's rows
    and ``rope_freqs`` the llama3 per-frequency factors tensor, when the file has one."""
    arch = gguf_architecture(metadata, path)
    meta = _Meta(metadata, arch, path)
    num_layers = meta.integer("block_count")
    num_heads = meta.integer("attention.head_count")
    num_kv_heads = meta.integer("attention.head_count_kv", num_heads)
    hidden = meta.integer("embedding_length")
    head_dim = meta.integer("attention.key_length", hidden // num_heads if num_heads else 0)
    _check_shapes(meta, num_heads, num_kv_heads, hidden, head_dim)
    window = meta.integer("attention.sliding_window", 0) if arch == "llama" else 0
    model_type = "mistral" if window else arch
    has_q_bias = "blk.0.attn_q.bias" in tensor_names
    attention_bias = has_q_bias and arch in ("llama", "qwen3")
    theta = meta.number("rope.freq_base", 10000.0)
    if not 1.0 < theta <= _MAX_ROPE_BASE:
        raise meta.bad(f"{arch}.rope.freq_base", theta, f"a number in (1, {_MAX_ROPE_BASE:g}]")
    if num_layers > len(tensor_names):
        raise meta.bad(f"{arch}.block_count", num_layers, "at most the file's tensor count")
    return HFModelConfig(
        architectures=["MistralForCausalLM" if window else GGUF_ARCHITECTURES[arch]],
        model_type=model_type,
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=meta.integer("feed_forward_length"),
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        rms_norm_eps=meta.number("attention.layer_norm_rms_epsilon", _HF_DEFAULT_EPS),
        rope_theta=theta,
        rope_scaling=_rope_scaling(meta, rope_freqs, theta, head_dim),
        max_position_embeddings=meta.integer("context_length"),
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias=attention_bias,
        qkv_bias=arch == "qwen2" or attention_bias,
        o_proj_bias=attention_bias
        and (arch == "llama" or "blk.0.attn_output.bias" in tensor_names),
        mlp_bias=arch == "llama" and "blk.0.ffn_gate.bias" in tensor_names,
        qk_norm=arch == "qwen3",
        sliding_window=window or None,
        layer_types=["sliding_attention" if window else "full_attention"] * num_layers,
        dtype=_DENSE_FILE_TYPES.get(metadata.get("general.file_type")),
        bos_token_id=_token_id(metadata, "bos"),
        eos_token_id=gguf_eos_ids(metadata),
        pad_token_id=_token_id(metadata, "padding"),
        raw={k: v for k, v in metadata.items() if not isinstance(v, list) or len(v) <= 64},
    )


def gguf_generation_defaults(metadata: dict[str, Any]) -> GenerationDefaults:
    """The author's sampling defaults (``general.sampling.*``), None where unset."""

    def get(key: str, cast: type) -> Any:
        value = metadata.get(f"general.sampling.{key}")
        return cast(value) if isinstance(value, (int, float)) else None

    return GenerationDefaults(
        bos_token_id=_token_id(metadata, "bos"),
        temperature=get("temp", float),
        top_p=get("top_p", float),
        top_k=get("top_k", int),
        repetition_penalty=get("penalty_repeat", float),
    )


def gguf_eos_ids(metadata: dict[str, Any]) -> list[int]:
    """End-of-generation ids: EOS, then end-of-turn and end-of-message when the file names them."""
    ids = [_token_id(metadata, kind) for kind in ("eos", "eot", "eom")]
    return list(dict.fromkeys(i for i in ids if i is not None))


def gguf_chat_template(metadata: dict[str, Any]) -> str | dict[str, str] | None:
    """``tokenizer.chat_template``, plus named ones (``tokenizer.chat_template.<name>``) as a
    dict in the shape HF's tokenizer_config.json uses."""
    prefix = "tokenizer.chat_template."
    named = {k[len(prefix) :]: v for k, v in metadata.items() if k.startswith(prefix)}
    named = {k: v for k, v in named.items() if isinstance(v, str)}
    default = metadata.get("tokenizer.chat_template")
    default = default if isinstance(default, str) else None
    if not named:
        return default
    return ({"default": default} if default else {}) | named


def gguf_quantization(metadata: dict[str, Any], tensor_types: Collection[int]) -> str | None:
    """The file's scheme (``"Q4_K_M"``) from ``general.file_type``; None for dense files."""
    file_type = metadata.get("general.file_type")
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        if file_type in _DENSE_FILE_TYPES:
            return None
        if file_type in FILE_TYPE_NAMES:
            return FILE_TYPE_NAMES[file_type]
        import gguf  # noqa: PLC0415 - optional dependency, names only

        try:
            return gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            return f"file_type {file_type}"
    quantized = {t for t in tensor_types if t not in (0, 1, 30)}  # not F32 / F16 / BF16
    if not quantized:
        return None
    from minerva.quant.gguf_types import type_name  # noqa: PLC0415

    return "+".join(sorted(type_name(t) for t in quantized))


def _token_id(metadata: dict[str, Any], kind: str) -> int | None:
    value = metadata.get(f"tokenizer.ggml.{kind}_token_id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Meta:
    """Typed reads of ``{arch}.*`` keys, each failure naming the key and the file."""

    def __init__(self, metadata: dict[str, Any], arch: str, path: Path) -> None:
        self.metadata, self.arch, self.path = metadata, arch, path

    def _get(self, key: str, default: Any) -> Any:
        full = f"{self.arch}.{key}"
        if full not in self.metadata:
            if default is None:
                raise ModelLoadError(
                    f"{self.path} lacks metadata key {full!r}; the file was not written by "
                    "llama.cpp's converter for this architecture: convert the model again"
                )
            return default, full
        value = self.metadata[full]
        if isinstance(value, list) and value and all(v == value[0] for v in value):
            value = value[0]  # a per-layer array with one value for every layer
        return value, full

    def integer(self, key: str, default: int | None = None) -> int:
        value, full = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.bad(full, value, "a non-negative integer")
        return value

    def number(self, key: str, default: float | None = None) -> float:
        value, full = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.bad(full, value, "a number")
        if not math.isfinite(value) or value < 0:
            raise self.bad(full, value, "a finite non-negative number")
        return float(value)

    def text(self, key: str, default: str) -> str:
        value, full = self._get(key, default)
        if not isinstance(value, str):
            raise self.bad(full, value, "a string")
        return value

    def bad(self, key: str, value: Any, expected: str) -> ModelLoadError:
        shown = repr(value) if not isinstance(value, list) else f"a list of {len(value)} values"
        return ModelLoadError(
            f"{self.path}: metadata {key} is {shown}, expected {expected}; the file is corrupt "
            "or from an unsupported converter: convert the model again"
        )


def _check_shapes(meta: _Meta, num_heads: int, num_kv_heads: int, hidden: int, head_dim: int):
    path = meta.path
    if not num_heads or not num_kv_heads or num_heads % num_kv_heads:
        raise ModelLoadError(
            f"{path}: head_count={num_heads} is not a positive multiple of "
            f"head_count_kv={num_kv_heads}; the file is corrupt: convert the model again"
        )
    if not hidden or not head_dim or head_dim % 2:
        raise ModelLoadError(
            f"{path}: embedding_length={hidden} with head dim {head_dim} is not a valid "
            "attention shape; the file is corrupt: convert the model again"
        )
    value_dim = meta.integer("attention.value_length", head_dim)
    rope_dim = meta.integer("rope.dimension_count", head_dim)
    if value_dim != head_dim or rope_dim != head_dim:
        raise ModelLoadError(
            f"{path}: key length {head_dim}, value length {value_dim} and rope dimensions "
            f"{rope_dim} differ; Minerva supports full-rotary attention with equal K/V head dims"
        )


def _rope_scaling(
    meta: _Meta, rope_freqs: Sequence[float] | None, theta: float, head_dim: int
) -> dict[str, Any] | None:
    kind = meta.text("rope.scaling.type", "none" if rope_freqs is None else "llama3")
    if kind == "none" and meta.number("rope.scale_linear", 1.0) != 1.0:
        return {"rope_type": "linear", "factor": meta.number("rope.scale_linear")}
    if kind == "none":
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": meta.number("rope.scaling.factor")}
    if kind == "yarn":
        scaling: dict[str, Any] = {
            "rope_type": "yarn",
            "factor": meta.number("rope.scaling.factor"),
            "original_max_position_embeddings": meta.integer(
                "rope.scaling.original_context_length"
            ),
        }
        for key, hf_key in (
            ("yarn_beta_fast", "beta_fast"),
            ("yarn_beta_slow", "beta_slow"),
            ("yarn_attn_factor", "attention_factor"),
        ):
            if f"{meta.arch}.rope.scaling.{key}" in meta.metadata:
                scaling[hf_key] = meta.number(f"rope.scaling.{key}")
        return scaling
    if kind == "llama3" and rope_freqs is not None:
        old = meta.integer("rope.scaling.original_context_length", _LLAMA3_OLD_CONTEXT)
        return llama3_rope_from_factors(rope_freqs, theta, head_dim, old, meta.path)
    raise ModelLoadError(
        f"{meta.path}: rope scaling {kind!r} is not supported; Minerva supports none, linear, "
        "yarn and Llama 3 (rope_freqs) scaling"
    )


def llama3_rope_factors(
    theta: float, head_dim: int, factor: float, low: float, high: float, old_context: int
) -> list[float]:
    """The per-frequency divisors llama.cpp stores as ``rope_freqs`` for Llama 3 scaling."""
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < old_context / high:
            out.append(1.0)
        elif wavelen > old_context / low:
            out.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return out


def llama3_rope_from_factors(
    factors: Sequence[float], theta: float, head_dim: int, old_context: int, path: Path
) -> dict[str, Any] | None:
    """Recover HF's llama3 rope_scaling from llama.cpp's ``rope_freqs`` tensor: the factor is
    its largest value; low/high_freq_factor come from a line fit of the smooth region."""
    factors = [float(f) for f in factors]
    if len(factors) != head_dim // 2 or not all(math.isfinite(f) and f > 0 for f in factors):
        raise ModelLoadError(
            f"{path}: rope_freqs has {len(factors)} values, expected {head_dim // 2} positive "
            "ones; the file is corrupt: convert the model again"
        )
    factor = max(factors)
    if factor == 1.0:
        return None
    low, high = _fit_llama3_bounds(factors, theta, head_dim, factor, old_context)
    rebuilt = llama3_rope_factors(theta, head_dim, factor, low, high, old_context)
    if any(abs(a - b) > 1e-3 * b for a, b in zip(factors, rebuilt, strict=True)):
        raise ModelLoadError(
            f"{path}: rope_freqs does not follow Llama 3 rope scaling; Minerva cannot run "
            "custom per-frequency RoPE factors"
        )
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": old_context,
    }


def _fit_llama3_bounds(
    factors: list[float], theta: float, head_dim: int, factor: float, old_context: int
) -> tuple[float, float]:
    """smooth = (old/wavelen - low) / (high - low) is linear in old/wavelen: fit it through the
    values strictly between 1 and ``factor``; fewer than two such values keep Llama 3.1's 1, 4."""
    points = []
    for i, f in zip(range(0, head_dim, 2), factors, strict=True):
        if 1.0 < f < factor:
            x = old_context / (2 * math.pi * theta ** (i / head_dim))
            points.append((x, (1 / f - 1 / factor) / (1 - 1 / factor)))
    if len(points) < 2:
        return 1.0, 4.0
    (x0, s0), (x1, s1) = points[0], points[-1]
    if x0 == x1 or s0 == s1:
        return 1.0, 4.0
    slope = (s1 - s0) / (x1 - x0)  # = 1 / (high - low)
    low = x0 - s0 / slope
    return round(low, 6), round(low + 1 / slope, 6)
