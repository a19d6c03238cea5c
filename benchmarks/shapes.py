"""The model shapes the benchmarks build with random weights (dimensions as published)."""

from __future__ import annotations

SHAPES = {
    "smollm-135m": dict(
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=1536,
        vocab_size=32000,
        tie_word_embeddings=True,
    ),
    "tinyllama-1.1b": dict(
        hidden_size=2048,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        intermediate_size=5632,
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
    "mistral-7b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
    # Qwen/Qwen3-0.6B's config.json: head_dim 128 (not hidden / heads), q / k norms, tied
    "qwen3-0.6b": dict(
        hidden_size=1024,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=3072,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
}

_FAMILY = {
    "mistral-7b": ("MistralForCausalLM", "mistral", 32768),
    "qwen3-0.6b": ("Qwen3ForCausalLM", "qwen3", 40960),
}


def hf_config(shape: str, **extra) -> dict:
    """A complete config.json for `shape` (Llama unless named otherwise)."""
    arch, model_type, max_pos = _FAMILY.get(shape, ("LlamaForCausalLM", "llama", 2048))
    return {
        "architectures": [arch],
        "model_type": model_type,
        "max_position_embeddings": max_pos,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        **({"sliding_window": None} if model_type == "mistral" else {}),
        **SHAPES[shape],
        **extra,
    }
