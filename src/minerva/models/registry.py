"""Architecture name -> model class. A new family is one file plus one line here."""

from __future__ import annotations

import torch
from torch import nn

from minerva.errors import ModelLoadError
from minerva.models.llama import LlamaForCausalLM
from minerva.models.options import ModelOptions

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
}


def _instantiate(
    config,
    dtype: torch.dtype,
    max_positions: int,
    options: ModelOptions | None = None,
    device: torch.device | str = "meta",
) -> nn.Module:
    arch = next((a for a in config.architectures if a in MODEL_REGISTRY), None)
    if arch is None:
        raise ModelLoadError(
            f"architecture {config.architectures} is not supported; supported: {', '.join(MODEL_REGISTRY)}"
        )
    with torch.device(device):
        return MODEL_REGISTRY[arch](config, dtype, max_positions, options)


def count_weight_bytes(config, dtype: torch.dtype, options: ModelOptions | None = None) -> int:
    """Bytes the model's weights take (`model.weight_bytes()` on the meta device: no memory)."""
    return _instantiate(config, dtype, max_positions=2, options=options).weight_bytes()


def build_model(
    config,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
    options: ModelOptions | None = None,
) -> nn.Module:
    """Create the model with uninitialised weights directly on `device` (load_weights fills
    them); options: its kernels, attention backend and linear methods (default: torch)."""
    # built in place with torch.empty (nothing touched yet); a meta model's to_empty would
    # import torch's symbolic-shapes machinery, seconds of start-up
    model = _instantiate(config, dtype, max_positions, options, device)
    model.init_rope(device)
    return model.eval()
