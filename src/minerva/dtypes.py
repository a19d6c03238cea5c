"""The one table of floating dtype names Minerva accepts, and their aliases. No torch.

Config validates against it, ``platform.parse_dtype`` maps its names to torch dtypes, and the
loader casts through ``parse_dtype``: a new dtype or spelling is one line here.
"""

from __future__ import annotations

DTYPE_ALIASES: dict[str, tuple[str, ...]] = {
    "float32": ("fp32", "f32", "float"),
    "float16": ("fp16", "f16", "half"),
    "bfloat16": ("bf16",),
}
"""Canonical name (the torch attribute) -> the other spellings accepted for it."""

DTYPES: tuple[str, ...] = ("auto", *DTYPE_ALIASES)
"""What a dtype setting accepts: auto (the checkpoint's or the device's choice) or a name."""

_CANONICAL = {alias: name for name, aliases in DTYPE_ALIASES.items() for alias in aliases}


def canonical_dtype(name: str) -> str:
    """'BF16' / 'torch.bfloat16' / 'bfloat16' -> 'bfloat16'; unknown names come back lower-cased
    (the caller rejects them with its own message)."""
    key = str(name).strip().lower().removeprefix("torch.")
    return _CANONICAL.get(key, key)


KV_CACHE_DTYPE_ALIASES: dict[str, tuple[str, ...]] = {
    **DTYPE_ALIASES,
    "float8_e4m3fn": ("fp8", "fp8_e4m3", "e4m3"),
    "float8_e5m2": ("fp8_e5m2", "e5m2"),
}
"""The KV cache takes the floating dtypes and two 8-bit floats (stored with a scale of 1.0)."""

KV_CACHE_DTYPES: tuple[str, ...] = ("auto", *KV_CACHE_DTYPE_ALIASES)

_KV_CANONICAL = {
    alias: name for name, aliases in KV_CACHE_DTYPE_ALIASES.items() for alias in aliases
}


def canonical_kv_cache_dtype(name: str) -> str:
    """'fp8' -> 'float8_e4m3fn', 'f16' -> 'float16'; unknown names come back lower-cased."""
    key = str(name).strip().lower().removeprefix("torch.")
    return _KV_CANONICAL.get(key, key)
