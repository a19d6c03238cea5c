"""The quantization names `[model] quantization` accepts, and their spellings. No torch.

Config validates against QUANTIZATIONS; quant/gguf_mix.py maps each name to GGML types. The
mistral.rs in-situ names (Q4K, Q8_0 ...) and upper case normalise onto the llama.cpp names.
"""

from __future__ import annotations

QUANTIZATIONS: tuple[str, ...] = (
    "q8_0", "q8_1", "q4_0", "q4_1", "q5_0", "q5_1",
    "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m", "iq4_nl", "iq4_xs",
    "fp8", "int8", "int4",
)  # fmt: skip
"""In-situ quantization types (plain GGML types, iq4_nl / iq4_xs the non-linear 4-bit ones),
llama.cpp mixes (q4_k_m, q5_k_m), fp8 (e4m3 weights with a scale per row, quant/fp8.py), int8
(int8 weights with a scale per row, quant/int8.py) and int4 (4-bit groups of 128 with a scale and
offset each, quant/int4.py)."""

OWN_FORMATS: tuple[str, ...] = ("fp8", "int8", "int4")
"""In-situ formats that are no GGUF type (Minerva's own engine only, kernels for CUDA)."""

QUANT_ALIASES: dict[str, str] = {
    "q2k": "q2_k", "q3k": "q3_k", "q4k": "q4_k", "q5k": "q5_k", "q6k": "q6_k",
    "q80": "q8_0", "q81": "q8_1", "q40": "q4_0", "q41": "q4_1", "q50": "q5_0", "q51": "q5_1",
    "f8e4m3": "fp8", "fp8_e4m3": "fp8", "float8": "fp8",
    "w8a16": "int8", "int8_per_channel": "int8", "w4a16": "int4", "int4_g128": "int4",
}  # fmt: skip
"""mistral.rs-style spellings (lower-cased) -> the canonical name."""


def canonical_quantization(name: str) -> str:
    """'Q4K' / 'Q4_K_M' / 'q4-k-m' -> 'q4_k' / 'q4_k_m'; unknown names come back lower-cased
    (the caller rejects them with its own message)."""
    key = str(name).strip().lower().replace("-", "_")
    return QUANT_ALIASES.get(key, key)
