"""Every config.json value the model code reads, checked for type, range and consistency before
anything is built: a crafted or corrupt config is a ModelLoadError listing each bad key, never a
traceback, a silent truncation (``hidden_size: 256.5``), a huge allocation or a hang (10^6
layers). GGUF metadata, once mapped to the same config, gets the same shape checks. No torch.

The upper bounds are far above any released model (the largest have ~130 layers, hidden 16k-25k,
vocabularies of 256k) and low enough that the meta-device model and the fit check stay cheap.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from minerva.errors import ModelLoadError

MAX_LAYERS = 1024
MAX_HIDDEN = 1 << 17
MAX_HEADS = 1024
MAX_HEAD_DIM = 1024
MAX_VOCAB = 1 << 23
MAX_POSITIONS = 1 << 24
MAX_TOKEN_ID = (1 << 31) - 1

# key -> (low, high), inclusive: JSON integers (not bools, not 256.5, not "256")
_INTS: dict[str, tuple[int, int]] = {
    "vocab_size": (1, MAX_VOCAB),
    "hidden_size": (1, MAX_HIDDEN),
    "intermediate_size": (1, MAX_HIDDEN * 8),
    "num_hidden_layers": (1, MAX_LAYERS),
    "num_attention_heads": (1, MAX_HEADS),
    "num_key_value_heads": (1, MAX_HEADS),
    "head_dim": (2, MAX_HEAD_DIM),
    "max_position_embeddings": (2, MAX_POSITIONS),
    "sliding_window": (1, MAX_POSITIONS),
    "max_window_layers": (0, MAX_LAYERS),
    "bos_token_id": (0, MAX_TOKEN_ID),
    "pad_token_id": (-1, MAX_TOKEN_ID),  # -1: "none" in some Llama configs
}
# key -> (exclusive low, inclusive high): finite JSON numbers
_NUMBERS: dict[str, tuple[float, float]] = {
    "rms_norm_eps": (0.0, 1.0),
    "rope_theta": (0.0, 1e12),
}
_BOOLS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window")
_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")
_ROPE_NUMBERS: dict[str, tuple[float, float]] = {  # rope_scaling key -> (exclusive low, high]
    "factor": (0.0, 1e4),
    "low_freq_factor": (0.0, 1e4),
    "high_freq_factor": (0.0, 1e4),
    "beta_fast": (0.0, 1e4),
    "beta_slow": (0.0, 1e4),
    "attention_factor": (0.0, 1e4),
    "mscale": (-1e4, 1e4),
    "mscale_all_dim": (-1e4, 1e4),
}
_LAYER_TYPES = ("full_attention", "sliding_attention")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int_problem(key: str, value: Any, low: int, high: int) -> str | None:
    if not is_int(value):
        return f"{key}={_shown(value)} must be an integer"
    if not low <= value <= high:
        return f"{key}={_shown(value)} must be an integer from {low} to {high}"
    return None


def _number_problem(key: str, value: Any, low: float, high: float) -> str | None:
    if not is_number(value) or not low < value <= high:
        return f"{key}={_shown(value)} must be a finite number in ({low:g}, {high:g}]"
    return None


def raw_config_problems(cfg: dict[str, Any]) -> list[str]:
    """Problems with the values of a parsed config.json (keys that are absent are not checked
    here: the parser applies its defaults or names the required ones)."""
    problems = []
    for key, (low, high) in _INTS.items():
        if cfg.get(key) is not None and (p := _int_problem(key, cfg[key], low, high)):
            problems.append(p)
    for key, (low, high) in _NUMBERS.items():
        if cfg.get(key) is not None and (p := _number_problem(key, cfg[key], low, high)):
            problems.append(p)
    for key in _BOOLS:
        if cfg.get(key) is not None and not isinstance(cfg[key], bool):
            problems.append(f"{key}={_shown(cfg[key])} must be true or false")
    for key in ("architectures", "layer_types"):
        value = cfg.get(key)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            problems.append(f"{key} must be a list of strings")
    eos = cfg.get("eos_token_id")
    if eos is not None:
        ids = eos if isinstance(eos, list) else [eos]
        if len(ids) > 64 or any(_int_problem("", i, 0, MAX_TOKEN_ID) for i in ids):
            problems.append(
                f"eos_token_id={_shown(eos)} must be a token id or a list of at most 64"
            )
    for key in ("dtype", "torch_dtype", "model_type", "hidden_act"):
        if cfg.get(key) is not None and not isinstance(cfg[key], str):
            problems.append(f"{key}={_shown(cfg[key])} must be a string")
    for key in ("rope_scaling", "rope_parameters"):
        problems += _rope_problems(key, cfg.get(key))
    return problems


def _rope_problems(key: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, dict):
        return [f"{key} must be an object or null"]
    problems = []
    kind = value.get("rope_type", value.get("type", "default")) or "default"
    if kind not in _ROPE_TYPES:
        problems.append(
            f"{key}.rope_type={_shown(kind)} is not supported (one of {', '.join(_ROPE_TYPES)})"
        )
    elif kind in ("linear", "dynamic", "llama3") and value.get("factor") is None:
        problems.append(f"{key}.factor is required for rope_type {kind!r}")
    for sub, (low, high) in _ROPE_NUMBERS.items():
        if value.get(sub) is not None and (p := _number_problem(f"{key}.{sub}", value[sub], low,
                                                                  high)):  # fmt: skip
            problems.append(p)
    orig = value.get("original_max_position_embeddings")
    if orig is not None and (p := _int_problem(f"{key}.original_max_position_embeddings",
                                               orig, 1, MAX_POSITIONS)):  # fmt: skip
        problems.append(p)
    theta = value.get("rope_theta")
    if theta is not None and (p := _number_problem(f"{key}.rope_theta", theta, 0.0, 1e12)):
        problems.append(p)
    return problems


def model_shape_problems(hf: Any) -> list[str]:
    """Problems with a parsed model config (an HF folder's or a GGUF file's): each field in its
    range and the attention shape consistent."""
    problems = []
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")  # fmt: skip
    for key in fields:
        low, high = _INTS[key]
        if p := _int_problem(key, getattr(hf, key), low, high):
            problems.append(p)
    if problems:
        return problems
    heads, kv_heads = hf.num_attention_heads, hf.num_key_value_heads
    if heads % kv_heads:
        problems.append(
            f"num_attention_heads={heads} must be a multiple of num_key_value_heads={kv_heads}"
        )
    if hf.head_dim % 2:
        problems.append(f"head_dim={hf.head_dim} must be even (rotary embeddings pair dims)")
    if heads * hf.head_dim > 8 * MAX_HIDDEN:
        problems.append(f"num_attention_heads x head_dim = {heads * hf.head_dim} is too large")
    for key, (low, high) in (("rms_norm_eps", _NUMBERS["rms_norm_eps"]),
                             ("rope_theta", _NUMBERS["rope_theta"])):  # fmt: skip
        if p := _number_problem(key, getattr(hf, key), low, high):
            problems.append(p)
    if hf.sliding_window is not None and (
        p := _int_problem("sliding_window", hf.sliding_window, 1, MAX_POSITIONS)
    ):
        problems.append(p)
    if len(hf.layer_types) != hf.num_hidden_layers or not set(hf.layer_types) <= set(_LAYER_TYPES):
        problems.append(
            f"layer_types must list {hf.num_hidden_layers} of {', '.join(_LAYER_TYPES)}"
        )
    problems += _rope_problems("rope_scaling", hf.rope_scaling)
    return problems


def raise_if_problems(problems: list[str], path: Path | str, what: str = "config.json") -> None:
    """One ModelLoadError naming the file and every bad value."""
    if not problems:
        return
    listed = problems[0] if len(problems) == 1 else "\n  - " + "\n  - ".join(problems)
    raise ModelLoadError(
        f"{path}: invalid {what} value{'s' if len(problems) > 1 else ''}: {listed}\n"
        "The file is corrupt or not a supported model's: re-download or fix it."
    )
