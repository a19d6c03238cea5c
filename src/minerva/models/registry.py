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


def build_model(config, dtype: torch.dtype, device: torch.device, max_positions: int) -> nn.Module:
    """Create the model with uninitialised weights directly on `device` (load_weights fills them)."""
    arch = next((a for a in config.architectures if a in MODEL_REGISTRY), None)
    if arch is None:
        raise ModelLoadError(
            f"architecture {config.architectures} is not supported; supported: {', '.join(MODEL_REGISTRY)}"
        )
    with torch.device("meta"):
        model = MODEL_REGISTRY[arch](config, dtype=dtype, max_positions=max_positions)
    model = model.to_empty(device=device)
    model.init_rope(device)
    return model.eval()
