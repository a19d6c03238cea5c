"""Quantization method name -> LinearMethod class. A new format is one file plus one line."""

from __future__ import annotations

from minerva.errors import ModelLoadError
from minerva.ops.kernels import KernelSet
from minerva.quant.base import LinearMethod, QuantConfig, UniformQuantConfig
from minerva.quant.dense import DenseLinearMethod

LINEAR_METHODS: dict[str, type[LinearMethod]] = {
    "dense": DenseLinearMethod,
}


def build_quant_config(name: str | None, kernels: KernelSet) -> QuantConfig:
    """The QuantConfig of a checkpoint whose weights are all `name` (None: dense; the
    ModelSource's `quantization`). A per-tensor format (GGUF) returns its own QuantConfig."""
    name = name or "dense"
    if name not in LINEAR_METHODS:
        raise ModelLoadError(
            f"the model's weights are quantized as {name}, which this version cannot run "
            f"(methods: {', '.join(LINEAR_METHODS)}): use a float (F32 / F16 / BF16) GGUF file "
            "or a Hugging Face folder"
        )
    return UniformQuantConfig(LINEAR_METHODS[name](kernels))
