"""Model loading: ``open_model(path)`` opens an HF model folder (config.json + safetensors or
.bin weights) or a GGUF file as a ModelSource.

The model code reads an ``HFModelConfig`` and consumes ``ModelSource.iter_weights``, which streams
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
from minerva.loader.source import ModelSource, open_model

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "CheckpointFiles",
    "GenerationDefaults",
    "HFModelConfig",
    "ModelSource",
    "find_checkpoint_files",
    "iter_checkpoint_tensors",
    "load_generation_config",
    "load_model_config",
    "open_model",
]
