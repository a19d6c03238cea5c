"""Write a tiny transformers model as GGUF the way llama.cpp's convert_hf_to_gguf does (tensor
names, Q/K row permutation for arch llama, metadata keys), with gguf.GGUFWriter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
_LAYER_PARTS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GLOBALS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in _GLOBALS:
        return _GLOBALS[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    part, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_LAYER_PARTS[part]}.{kind}"


def permute(rows: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: the inverse of what the loader undoes."""
    half = rows.shape[0] // num_heads // 2
    return rows.reshape(num_heads, 2, half, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def write_gguf(
    model,
    path: Path,
    float_type: str = "F32",
    quant_type: str | None = None,
    metadata: dict | None = None,
    chat_template: str | None = CHAT_TEMPLATE,
    extra_tensors: dict[str, np.ndarray] | None = None,
    split_max_tensors: int = 0,
) -> Path:
    """GGUF of ``model`` (a transformers Llama / Mistral / Qwen2 / Qwen3) at ``path``. 2-D weights are
    stored as ``quant_type`` (e.g. "Q8_0") when given, else as ``float_type``; 1-D as F32."""
    import gguf

    cfg = model.config
    arch = cfg.model_type if cfg.model_type in ("qwen2", "qwen3") else "llama"
    writer = gguf.GGUFWriter(path, arch, split_max_tensors=split_max_tensors)
    _write_metadata(writer, cfg, arch, float_type, quant_type)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for key, value in (metadata or {}).items():
        _add_value(writer, key, value)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        data = tensor.detach().to(torch.float32).numpy()
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            heads = cfg.num_attention_heads if ".q_proj." in name else cfg.num_key_value_heads
            data = permute(data, heads)
        _add_tensor(writer, gguf_name(name), data, float_type, quant_type)
    for name, data in (extra_tensors or {}).items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _write_metadata(writer, cfg, arch: str, float_type: str, quant_type: str | None) -> None:
    import gguf

    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = getattr(cfg, "rope_parameters", None) or {}
    writer.add_rope_freq_base(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    file_type = {"F32": 0, "F16": 1, "BF16": 32}[float_type]
    if quant_type is not None:
        file_type = {"Q8_0": 7, "Q4_0": 2}[quant_type]
    writer.add_file_type(file_type)
    if arch == "llama":
        writer.add_vocab_size(cfg.vocab_size)
        writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    if arch == "qwen3":  # head_dim is its own (convert_hf_to_gguf writes the key lengths)
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
    if cfg.model_type == "mistral" and cfg.sliding_window:
        writer.add_sliding_window(cfg.sliding_window)
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    if cfg.bos_token_id is not None:
        writer.add_bos_token_id(cfg.bos_token_id)
    if cfg.eos_token_id is not None:
        writer.add_eos_token_id(cfg.eos_token_id)


def _add_value(writer, key: str, value) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, value)


def _add_tensor(writer, name: str, data: np.ndarray, float_type: str, quant_type: str | None):
    import gguf

    if data.ndim == 1 or (quant_type is None and float_type == "F32"):
        writer.add_tensor(name, data.astype(np.float32))
    elif quant_type is not None:
        qtype = gguf.GGMLQuantizationType[quant_type]
        packed = gguf.quants.quantize(data.astype(np.float32), qtype)
        writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=qtype)
    elif float_type == "F16":
        writer.add_tensor(name, data.astype(np.float16))
    else:  # BF16: gguf's reference rounding, stored as raw uint16
        packed = gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16)
        writer.add_tensor(
            name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.BF16
        )
