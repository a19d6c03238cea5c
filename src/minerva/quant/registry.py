"""Quantization method name -> LinearMethod class, and the QuantConfig of a checkpoint or of an
in-situ quantization. A new format is one file plus one line."""

from __future__ import annotations

from collections.abc import Mapping

from minerva.errors import ModelLoadError
from minerva.ops.kernels import KernelSet
from minerva.quant.base import LinearMethod, QuantConfig, UniformQuantConfig
from minerva.quant.dense import DenseLinearMethod
from minerva.quant.fp8 import FP8LinearMethod
from minerva.quant.gguf import GGUFLinearMethod, GGUFQuantConfig
from minerva.quant.gguf_file_config import GGUFFileQuantConfig
from minerva.quant.gguf_types import GGMLType
from minerva.quant.int4 import Int4LinearMethod, Int4QuantConfig
from minerva.quant.int8 import Int8LinearMethod
from minerva.quant_names import OWN_FORMATS

LINEAR_METHODS: dict[str, type[LinearMethod]] = {
    "dense": DenseLinearMethod,
    "fp8": FP8LinearMethod,
    "int8": Int8LinearMethod,
    "int4": Int4LinearMethod,
}


# llama.cpp's file types (general.file_type, gguf's LlamaFileType without MOSTLY_): the names a
# GGUF ModelSource reports as its quantization. Unsupported tensor types fail at open.
GGUF_FILE_TYPES = frozenset(
    """Q4_0 Q4_1 Q8_0 Q5_0 Q5_1 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K
    IQ2_XXS IQ2_XS Q2_K_S IQ3_XS IQ3_XXS IQ1_S IQ4_NL IQ3_S IQ3_M IQ2_S IQ2_M IQ4_XS IQ1_M
    TQ1_0 TQ2_0 GUESSED""".split()
)


def is_gguf_scheme(name: str) -> bool:
    """A GGUF file's quantization as the loader reports it: a llama.cpp file type, GGML type
    names joined by '+' (a file without general.file_type), or 'file_type N'."""
    parts = name.upper().split("+")
    return (
        name.upper() in GGUF_FILE_TYPES
        or all(p in GGMLType.__members__ for p in parts)
        or name.startswith("file_type ")
    )


def build_quant_config(
    name: str | None,
    kernels: KernelSet,
    tensor_types: Mapping[str, int] | None = None,
) -> QuantConfig:
    """The QuantConfig of a checkpoint whose weights are `name` (None: dense; the ModelSource's
    `quantization`). A GGUF scheme (Q8_0, Q4_K_M ...) runs every linear layer with
    GGUFLinearMethod; with the file's `tensor_types` (HF name -> GGML type) each layer knows its
    types before loading and an all-float layer runs dense."""
    name = name or "dense"
    if name in LINEAR_METHODS:
        return UniformQuantConfig(LINEAR_METHODS[name](kernels))
    if tensor_types is not None:
        return GGUFFileQuantConfig(name, tensor_types, kernels)
    if is_gguf_scheme(name):
        return UniformQuantConfig(GGUFLinearMethod(kernels))
    raise ModelLoadError(
        f"the model's weights are quantized as {name}, which this version cannot run "
        f"(methods: {', '.join(LINEAR_METHODS)}, GGUF files): use a GGUF file or a float "
        "Hugging Face folder"
    )


def build_insitu_config(mix: str, num_layers: int, kernels: KernelSet) -> QuantConfig:
    """In-situ quantization of float weights to `mix` (q4_k_m, Q4K ..., fp8, int8 or int4)
    while loading."""
    if mix == "int4":
        return Int4QuantConfig(kernels)
    if mix in OWN_FORMATS:
        return UniformQuantConfig(LINEAR_METHODS[mix](kernels))
    return GGUFQuantConfig(mix, num_layers, kernels)
