"""Checkpoint loading: HF model folders (config.json + safetensors or .bin weights).

The model code reads an ``HFModelConfig`` and consumes ``iter_checkpoint_tensors``, which streams
``(name, tensor)`` pairs one at a time with HF tensor names.
"""

from minerva.loader.checkpoint import (
    CheckpointFiles,
    find_checkpoint_files,
    iter_checkpoint_tensors,
)
from minerva.loader.hf_config import (
    SUPPORTED_ARCHITECTURES,
    GenerationDefaults,
    HFModelConfig,
    load_generation_config,
    load_model_config,
)

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "CheckpointFiles",
    "GenerationDefaults",
    "HFModelConfig",
    "find_checkpoint_files",
    "iter_checkpoint_tensors",
    "load_generation_config",
    "load_model_config",
]
