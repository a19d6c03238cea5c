"""Which GGML type each tensor gets under a quantization name (q4_0, q4_k, q4_k_m, Q4K ...).

The rule is llama.cpp's `llama_tensor_get_type` (llama-quant.cpp) for the dense llama-family
architectures, without an importance matrix:
- the output projection (`output.weight` / `lm_head`, or the token embedding when it is tied to
  the output) gets Q6_K, unless the base type is Q8_0 or wider (kept);
- q4_k_m / q5_k_m: `attn_v` and `ffn_down` of layer i get Q6_K when use_more_bits(i, n):
  i < n/8, or i >= 7n/8, or (i - n/8) % 3 == 2; every other weight gets Q4_K / Q5_K;
- a K type on rows that are not whole 256-value blocks falls back as llama.cpp does
  (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; Q2_K / Q3_K -> Q5_0 where llama.cpp takes IQ4_NL,
  which Minerva has since implemented but not made this fallback).
- iq4_xs on rows that are not whole 256-value blocks falls back to iq4_nl, as llama.cpp does.
Plain names (q2_k, q3_k, q8_0, iq4_nl, iq4_xs ...) are uniform apart from the output rule;
llama.cpp's Q2_K / Q3_K_M presets also widen attn_v / ffn_down, and its IQ4_NL / IQ4_XS presets
take Q5_K for attn_v (at 4 or more query heads per KV head) and for ffn_down of the first eighth
of the layers, which this does not reproduce.
"""

from __future__ import annotations

import re

from minerva.errors import ConfigError
from minerva.quant.gguf_types import BLOCK_GEOMETRY, FLOAT_TYPES, GGMLType
from minerva.quant_names import canonical_quantization

MIXES = {"q4_k_m": GGMLType.Q4_K, "q5_k_m": GGMLType.Q5_K}
PLAIN = {
    "q8_0": GGMLType.Q8_0,
    "q8_1": GGMLType.Q8_1,
    "q4_0": GGMLType.Q4_0,
    "q4_1": GGMLType.Q4_1,
    "q5_0": GGMLType.Q5_0,
    "q5_1": GGMLType.Q5_1,
    "q2_k": GGMLType.Q2_K,
    "q3_k": GGMLType.Q3_K,
    "q4_k": GGMLType.Q4_K,
    "q5_k": GGMLType.Q5_K,
    "q6_k": GGMLType.Q6_K,
    "iq4_nl": GGMLType.IQ4_NL,
    "iq4_xs": GGMLType.IQ4_XS,
}
K_FALLBACK = {
    GGMLType.Q2_K: GGMLType.Q5_0,
    GGMLType.Q3_K: GGMLType.Q5_0,
    GGMLType.Q4_K: GGMLType.Q5_0,
    GGMLType.Q5_K: GGMLType.Q5_1,
    GGMLType.Q6_K: GGMLType.Q8_0,
    GGMLType.IQ4_XS: GGMLType.IQ4_NL,
}
WIDE_TYPES = FLOAT_TYPES | {GGMLType.Q8_0, GGMLType.Q8_1}

_OUTPUT = re.compile(r"(^|\.)(output|lm_head)\.weight$")
_EMBED = re.compile(r"(^|\.)(token_embd|embed_tokens)\.weight$")
_ATTN_V = re.compile(r"(attn_v|v_proj)\.weight$")
_FFN_DOWN = re.compile(r"(ffn_down|down_proj)\.weight$")


def canonical_name(name: str) -> str:
    """'Q4K' / 'Q4_K_M' / 'q4_k_m' -> 'q4_k' / 'q4_k_m'; a ConfigError names the choices."""
    key = canonical_quantization(name)  # mistral.rs spellings and upper case
    if key not in PLAIN and key not in MIXES:
        choices = ", ".join([*PLAIN, *MIXES])
        raise ConfigError(f"unknown quantization {name!r}; choose one of {choices}")
    return key


def use_more_bits(layer: int, layers: int) -> bool:
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def base_type(mix_name: str) -> GGMLType:
    key = canonical_name(mix_name)
    return MIXES.get(key) or PLAIN[key]


def mix_type(
    mix_name: str,
    tensor_name: str,
    layer_idx: int | None,
    num_layers: int,
    *,
    cols: int | None = None,
    tied_output: bool = False,
) -> GGMLType:
    """The type of `tensor_name` (GGUF or Hugging Face naming) of layer `layer_idx` (None
    outside the layers) in a model of `num_layers` layers; `cols` (the row length) applies the
    fallback for rows that are not whole K blocks; `tied_output` says the token embedding is
    also the output projection."""
    key = canonical_name(mix_name)
    base = base_type(key)
    chosen = base
    is_output = _OUTPUT.search(tensor_name) or (tied_output and _EMBED.search(tensor_name))
    if is_output:
        chosen = base if base in WIDE_TYPES else GGMLType.Q6_K
    elif key in MIXES and layer_idx is not None:
        wider = _ATTN_V.search(tensor_name) or _FFN_DOWN.search(tensor_name)
        if wider and use_more_bits(layer_idx, num_layers):
            chosen = GGMLType.Q6_K
    return fit_type(chosen, cols) if cols is not None else chosen


def fit_type(ggml_type: GGMLType, cols: int) -> GGMLType:
    """`ggml_type`, or llama.cpp's fallback when rows of `cols` are not whole blocks of it."""
    if cols % BLOCK_GEOMETRY[ggml_type][0] == 0:
        return ggml_type
    fallback = K_FALLBACK.get(ggml_type)
    if fallback is not None and cols % BLOCK_GEOMETRY[fallback][0] == 0:
        return fallback
    return GGMLType.F16 if ggml_type not in FLOAT_TYPES else ggml_type
