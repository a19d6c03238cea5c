"""A tiny random Llama + byte-level BPE tokenizer for server tests, and reference tokenization.

The model is written with numpy + safetensors (no transformers import: it costs seconds); the
tokenizer is tests/tokenizer_fixtures.py's Llama-3-style byte-level BPE with a chat template.
The reference encoders use the ``tokenizers`` library and jinja2 directly, not Minerva's wrapper.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from tests.tokenizer_fixtures import build_byte_level

MODEL_NAME = "tiny-llama"
VOCAB = 500
MAX_LEN = 2048


def build_server_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 64) with random weights, plus a tokenizer with a chat template."""
    build_byte_level(folder, vocab_size=VOCAB)
    hidden, ffn, layers, heads, kv_heads = 64, 128, 2, 4, 2
    head_dim = hidden // heads
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB,
        "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "max_position_embeddings": MAX_LEN, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "dtype": "float32", "hidden_act": "silu",
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    tensors = {
        "model.embed_tokens.weight": w(VOCAB, hidden),
        "model.norm.weight": np.ones(hidden, np.float32),
        "lm_head.weight": w(VOCAB, hidden),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": np.ones(hidden, np.float32),
            p + "post_attention_layernorm.weight": np.ones(hidden, np.float32),
            p + "self_attn.q_proj.weight": w(heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": w(kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": w(kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": w(hidden, heads * head_dim),
            p + "mlp.gate_proj.weight": w(ffn, hidden),
            p + "mlp.up_proj.weight": w(ffn, hidden),
            p + "mlp.down_proj.weight": w(hidden, ffn),
        })  # fmt: skip
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def reference_chat_ids(model_dir: Path, messages: list[dict]) -> list[int]:
    """Prompt ids of a chat: the template rendered by jinja2, encoded by ``tokenizers``."""
    import jinja2
    from tokenizers import Tokenizer

    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    text = (
        jinja2.Environment()
        .from_string(config["chat_template"])
        .render(messages=messages, add_generation_prompt=True, bos_token=config["bos_token"])
    )
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return tok.encode(text, add_special_tokens=False).ids


def reference_ids(model_dir: Path, text: str) -> list[int]:
    """Ids of a plain prompt (BOS added by the tokenizer.json post-processor)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(text).ids
