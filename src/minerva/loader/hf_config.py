"""A Hugging Face model folder's ``config.json`` and ``generation_config.json`` as typed dataclasses.

Reads both the transformers 4 form (top-level ``rope_theta`` / ``rope_scaling``) and the
transformers 5 form (``rope_parameters``), and fills in the defaults transformers itself uses
for each architecture, so a field here equals the attribute of the transformers config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minerva.errors import ModelLoadError
from minerva.loader.config_checks import (
    model_shape_problems,
    raise_if_problems,
    raw_config_problems,
)

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"

SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
"""Architecture name (as in ``config.json``'s ``architectures``) → HF ``model_type``."""

# Defaults transformers applies when a key is absent from config.json, per model_type.
_ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "sliding_window": None},
    "mistral": {"max_position_embeddings": 4096 * 32, "rms_norm_eps": 1e-6, "sliding_window": 4096},
    "qwen2": {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "sliding_window": 4096},
    "qwen3": {
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "sliding_window": 4096,
        "head_dim": 128,  # Qwen3Config's, not hidden_size / heads
    },
}
_QWEN = ("qwen2", "qwen3")  # sliding window only with use_sliding_window, from max_window_layers
_REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)


@dataclass
class HFModelConfig:
    """The fields of an HF ``config.json`` that the model code needs (HF names)."""

    architectures: list[str]
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    """None for plain RoPE, else ``{"rope_type": "linear"|"dynamic"|"yarn"|"llama3"|..., "factor": ...}``."""
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    """Llama's ``attention_bias`` flag as written; see ``qkv_bias`` / ``o_proj_bias`` for the effect."""
    qkv_bias: bool = False
    """q_proj, k_proj and v_proj have a bias (Llama: attention_bias; Qwen2: always)."""
    o_proj_bias: bool = False
    """o_proj has a bias (Llama: attention_bias; Qwen2 and Mistral: never)."""
    mlp_bias: bool = False
    qk_norm: bool = False
    """Each head's q and k go through an RMSNorm (weights ``self_attn.q_norm`` / ``k_norm``,
    [head_dim]) before RoPE (Qwen3)."""
    sliding_window: int | None = None
    """Attention window in tokens, None when every layer attends to the full context."""
    layer_types: list[str] = field(default_factory=list)
    """Per layer: ``"full_attention"`` or ``"sliding_attention"`` (uses ``sliding_window``)."""
    dtype: str | None = None
    """The checkpoint's dtype as written (``dtype`` or legacy ``torch_dtype``), e.g. ``"bfloat16"``."""
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    hidden_act: str = "silu"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    """The whole parsed config.json, for anything not lifted into a field."""

    @property
    def architecture(self) -> str:
        """The supported architecture this folder declares (e.g. ``"LlamaForCausalLM"``)."""
        return next(a for a in self.architectures if a in SUPPORTED_ARCHITECTURES)

    @property
    def torch_dtype(self) -> str | None:
        """Alias of ``dtype`` under its transformers 4 name."""
        return self.dtype


@dataclass
class GenerationDefaults:
    """The model author's sampling defaults from ``generation_config.json`` (None = not given)."""

    eos_token_id: list[int] | None = None
    bos_token_id: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    max_new_tokens: int | None = None
    do_sample: bool | None = None


def read_json(path: Path) -> Any:
    """Parse a JSON file, turning a syntax error into a ModelLoadError with line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}; check the file and its permissions") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelLoadError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
            "re-download the model folder or fix the file"
        ) from e
    except (ValueError, RecursionError) as e:  # an integer literal past 4300 digits, nesting
        raise ModelLoadError(
            f"{path} is not usable JSON (an integer literal too long or nesting too deep: "
            f"{str(e)[:80]}); re-download the model folder or fix the file"
        ) from None


def load_model_config(folder: str | Path) -> HFModelConfig:
    """Parse ``folder/config.json``; raise ModelLoadError if it is missing, invalid or unsupported."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"model folder {folder} does not exist; pass a local HF model folder")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{path} not found: {folder} is not a Hugging Face model folder "
            "(it needs config.json next to the weights)"
        )
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, got {type(cfg).__name__}")
    raise_if_problems(raw_config_problems(cfg), path)
    hf = _parse_config(cfg, path)
    raise_if_problems(model_shape_problems(hf), path)
    return hf


def _parse_config(cfg: dict[str, Any], path: Path) -> HFModelConfig:
    architectures, model_type = _check_architecture(cfg, path)
    missing = [k for k in _REQUIRED_KEYS if cfg.get(k) is None]
    if missing:
        raise ModelLoadError(f"{path} lacks required key(s) {', '.join(missing)}")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ModelLoadError(
            f"{path}: hidden_act={act!r} is not supported ({architectures[0]} models use 'silu')"
        )
    defaults = _ARCH_DEFAULTS[model_type]
    num_heads = int(cfg["num_attention_heads"])
    num_kv_heads = int(cfg.get("num_key_value_heads") or num_heads)
    if num_heads % num_kv_heads:
        raise ModelLoadError(
            f"{path}: num_attention_heads={num_heads} is not a multiple of "
            f"num_key_value_heads={num_kv_heads}"
        )
    head_dim = cfg.get("head_dim") or defaults.get("head_dim")
    if not head_dim:
        if int(cfg["hidden_size"]) % num_heads:
            raise ModelLoadError(
                f"{path}: hidden_size={cfg['hidden_size']} is not a multiple of "
                f"num_attention_heads={num_heads} and head_dim is not set"
            )
        head_dim = int(cfg["hidden_size"]) // num_heads
    rope_theta, rope_scaling = _parse_rope(cfg)
    sliding_window, layer_types = _parse_sliding_window(cfg, model_type, defaults)
    attention_bias = bool(cfg.get("attention_bias", False))
    qkv_bias = True if model_type == "qwen2" else attention_bias
    return HFModelConfig(
        architectures=architectures,
        model_type=model_type,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=int(head_dim),
        rms_norm_eps=float(cfg.get("rms_norm_eps", defaults["rms_norm_eps"])),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=int(
            cfg.get("max_position_embeddings") or defaults["max_position_embeddings"]
        ),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=attention_bias,
        qkv_bias=qkv_bias,
        o_proj_bias=attention_bias if model_type in ("llama", "qwen3") else False,
        mlp_bias=bool(cfg.get("mlp_bias", False)) if model_type == "llama" else False,
        qk_norm=model_type == "qwen3",
        sliding_window=sliding_window,
        layer_types=layer_types,
        dtype=cfg.get("dtype") or cfg.get("torch_dtype"),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=_as_id_list(cfg.get("eos_token_id")) or [],
        pad_token_id=cfg.get("pad_token_id"),
        hidden_act=act,
        raw=cfg,
    )


def _check_architecture(cfg: dict[str, Any], path: Path) -> tuple[list[str], str]:
    """The declared architectures and the model_type of the supported one among them."""
    architectures = list(cfg.get("architectures") or [])
    if not architectures:
        # A bare config (config.save_pretrained) names only model_type.
        by_type = {t: a for a, t in SUPPORTED_ARCHITECTURES.items()}
        if cfg.get("model_type") in by_type:
            architectures = [by_type[cfg["model_type"]]]
    for arch in architectures:
        if arch in SUPPORTED_ARCHITECTURES:
            return architectures, SUPPORTED_ARCHITECTURES[arch]
    found = ", ".join(architectures) or f"model_type={cfg.get('model_type')!r}"
    raise ModelLoadError(
        f"{path}: unsupported architecture {found}; Minerva supports "
        f"{', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def _parse_rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from ``rope_parameters`` (transformers 5) or the 4.x keys."""
    params = dict(cfg.get("rope_parameters") or {})
    legacy = cfg.get("rope_scaling") or {}
    params = {**legacy, **params}
    theta = params.pop("rope_theta", None) or cfg.get("rope_theta") or 10000.0
    # Old configs say "type"; new ones "rope_type" (and sometimes keep both).
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if rope_type == "default":
        return float(theta), None
    return float(theta), {"rope_type": rope_type, **params}


def _parse_sliding_window(
    cfg: dict[str, Any], model_type: str, defaults: dict[str, Any]
) -> tuple[int | None, list[str]]:
    """The effective sliding window and which layers use it, as transformers decides."""
    num_layers = int(cfg["num_hidden_layers"])
    window = cfg.get("sliding_window", defaults["sliding_window"])
    if model_type == "llama":
        window = None
    if model_type in _QWEN and not cfg.get("use_sliding_window", False):
        window = None
    layer_types = cfg.get("layer_types")
    if not layer_types or len(layer_types) != num_layers:
        first_sliding = int(cfg.get("max_window_layers", 28)) if model_type in _QWEN else 0
        layer_types = [
            "sliding_attention" if window is not None and i >= first_sliding else "full_attention"
            for i in range(num_layers)
        ]
    return (int(window) if window is not None else None), list(layer_types)


def _as_id_list(value: Any) -> list[int] | None:
    if value is None:
        return None
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def load_generation_config(folder: str | Path) -> GenerationDefaults:
    """Parse ``folder/generation_config.json``; a missing file gives all-None defaults."""
    path = Path(folder) / GENERATION_CONFIG_FILE
    if not path.is_file():
        return GenerationDefaults()
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, got {type(cfg).__name__}")

    def get(key: str, cast: type) -> Any:
        value = cfg.get(key)
        return None if value is None else cast(value)

    return GenerationDefaults(
        eos_token_id=_as_id_list(cfg.get("eos_token_id")),
        bos_token_id=get("bos_token_id", int),
        temperature=get("temperature", float),
        top_p=get("top_p", float),
        top_k=get("top_k", int),
        repetition_penalty=get("repetition_penalty", float),
        max_new_tokens=get("max_new_tokens", int),
        do_sample=get("do_sample", bool),
    )
