"""llama.cpp tensor names -> HF names, and the Q/K row order llama.cpp's converter changes.

convert_hf_to_gguf permutes the rows of q_proj / k_proj (weight and bias) for arch ``llama``
(Llama and Mistral) so that ggml's interleaved RoPE matches HF's rotate-half; Qwen2 is stored
unpermuted, as is Qwen3 (llama.cpp runs both with NEOX RoPE). ``unpermute_rows`` undoes it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from minerva.errors import ModelLoadError
from minerva.loader.hf_config import HFModelConfig

GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",  # Qwen3: each head's q and k RMS-normed before RoPE
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
PERMUTED_ARCHS = frozenset({"llama"})
"""GGUF architectures whose converter permuted the q/k rows (ggml's interleaved RoPE)."""
NOT_WEIGHTS = frozenset({"rope_freqs.weight"})
"""Tensors that configure the model (read into the config) rather than being loaded."""
_LAYER = re.compile(r"blk\.(\d{1,7})\.(\w+)\.(weight|bias)")
_OLD_ROTARY = re.compile(r"blk\.\d+\.attn_rot_embd")  # old converters' unused RoPE table


def hf_tensor_name(name: str, num_layers: int, path: Path) -> str | None:
    """The HF name of GGUF tensor ``name``; None for tensors that are not model weights."""
    if name in NOT_WEIGHTS or _OLD_ROTARY.fullmatch(name):
        return None
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    match = _LAYER.fullmatch(name)
    if match and match.group(2) in LAYER_NAMES and int(match.group(1)) < num_layers:
        layer, part, kind = match.groups()
        return f"model.layers.{int(layer)}.{LAYER_NAMES[part]}.{kind}"
    raise ModelLoadError(
        f"{path} holds tensor {name!r}, which is not part of a Llama / Mistral / Qwen2 / Qwen3 model "
        f"with {num_layers} layers; the file is corrupt or of another architecture"
    )


def permuted_heads(hf_name: str, num_heads: int, num_kv_heads: int) -> int | None:
    """For arch ``llama``: the head count whose rows llama.cpp permuted, else None."""
    if ".self_attn.q_proj." in hf_name:
        return num_heads
    if ".self_attn.k_proj." in hf_name:
        return num_kv_heads
    return None


def unpermute_rows(rows: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's per-head row interleave: within each head, rows were reordered
    (2, half) -> (half, 2); this restores HF's order. Works on any [rows, ...] tensor,
    including quantized uint8 [rows, row_bytes] blocks (rows are quantized independently)."""
    num_rows = rows.shape[0]
    half = num_rows // num_heads // 2
    rest = rows.shape[1:]
    return rows.reshape(num_heads, half, 2, *rest).transpose(1, 2).reshape(num_rows, *rest)


def permute_rows(rows: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The converter's permutation, the inverse of ``unpermute_rows``: HF's rotate-half row
    order -> ggml's interleaved pairs, per head (used when writing GGUF)."""
    num_rows = rows.shape[0]
    half = num_rows // num_heads // 2
    rest = rows.shape[1:]
    return rows.reshape(num_heads, 2, half, *rest).transpose(1, 2).reshape(num_rows, *rest)


def expected_shapes(cfg: HFModelConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> shape of every weight the config implies (lm_head only when untied)."""
    hidden, inter = cfg.hidden_size, cfg.intermediate_size
    q_rows = cfg.num_attention_heads * cfg.head_dim
    kv_rows = cfg.num_key_value_heads * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (cfg.vocab_size, hidden),
        "model.norm.weight": (hidden,),
    }
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, hidden)
    layer: dict[str, tuple[int, ...]] = {
        "input_layernorm.weight": (hidden,),
        "self_attn.q_proj.weight": (q_rows, hidden),
        "self_attn.k_proj.weight": (kv_rows, hidden),
        "self_attn.v_proj.weight": (kv_rows, hidden),
        "self_attn.o_proj.weight": (hidden, q_rows),
        "post_attention_layernorm.weight": (hidden,),
        "mlp.gate_proj.weight": (inter, hidden),
        "mlp.up_proj.weight": (inter, hidden),
        "mlp.down_proj.weight": (hidden, inter),
    }
    if cfg.qkv_bias:
        layer |= {
            "self_attn.q_proj.bias": (q_rows,),
            "self_attn.k_proj.bias": (kv_rows,),
            "self_attn.v_proj.bias": (kv_rows,),
        }
    if cfg.o_proj_bias:
        layer["self_attn.o_proj.bias"] = (hidden,)
    if cfg.qk_norm:
        layer |= {
            "self_attn.q_norm.weight": (cfg.head_dim,),
            "self_attn.k_norm.weight": (cfg.head_dim,),
        }
    if cfg.mlp_bias:
        layer |= {
            f"mlp.{p}_proj.bias": (n,)
            for p, n in (("gate", inter), ("up", inter), ("down", hidden))
        }
    for i in range(cfg.num_hidden_layers):
        shapes |= {f"model.layers.{i}.{name}": shape for name, shape in layer.items()}
    return shapes


def check_shapes(cfg: HFModelConfig, found: dict[str, tuple[int, ...]], path: Path) -> None:
    """Every weight the metadata implies is present with its shape, so the metadata can never
    ask for more memory than the file holds."""
    expected = expected_shapes(cfg)
    missing = [name for name in expected if name not in found]
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise ModelLoadError(
            f"{path} lacks {len(missing)} tensor(s) its metadata implies ({shown}); the file is "
            "incomplete or its metadata is wrong: re-download or convert it again"
        )
    for name, shape in found.items():
        if expected.get(name, shape) != shape:
            raise ModelLoadError(
                f"{path}: {name} has shape {shape}, but the metadata implies {expected[name]}; "
                "the file is corrupt: re-download or convert it again"
            )
