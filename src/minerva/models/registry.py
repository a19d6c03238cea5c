"""Architecture name -> model class. A new family is one file plus one line here."""

from __future__ import annotations

import torch
from torch import nn

from minerva.errors import ModelLoadError
from minerva.models.llama import LlamaForCausalLM

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
}


def _meta_model(config, dtype: torch.dtype, max_positions: int) -> nn.Module:
    arch = next((a for a in config.architectures if a in MODEL_REGISTRY), None)
    if arch is None:
        raise ModelLoadError(
            f"architecture {config.architectures} is not supported; supported: {', '.join(MODEL_REGISTRY)}"
        )
    with torch.device("meta"):
        return MODEL_REGISTRY[arch](config, dtype=dtype, max_positions=max_positions)


def count_weight_bytes(config, dtype: torch.dtype) -> int:
    """Bytes the model's weights take in `dtype` (computed on the meta device: no memory)."""
    model = _meta_model(config, dtype, max_positions=2)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def build_model(config, dtype: torch.dtype, device: torch.device, max_positions: int) -> nn.Module:
    """Create the model with uninitialised weights directly on `device` (load_weights fills them)."""
    model = _meta_model(config, dtype, max_positions).to_empty(device=device)
    model.init_rope(device)
    return model.eval()
