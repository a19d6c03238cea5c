"""The QuantConfig of a GGUF file: each linear layer runs the types its tensors have in the file.

A layer whose pieces are all quantized (or mixed) gets GGUFLinearMethod with the file's type of
each piece as its target, so weight_bytes is known before loading and a float piece beside
quantized ones (llama.cpp keeps some in F16) is stored as F16 / F32 blocks. A layer whose pieces
are all float runs dense. The lm_head of a file without `output.weight` is the token embedding
(tied): it keeps the embedding's blocks, as llama.cpp multiplies by them.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from minerva.ops.kernels import torch_kernels
from minerva.quant.base import LinearMethod, QuantConfig
from minerva.quant.dense import DenseLinearMethod
from minerva.quant.gguf import GGUFLinearMethod, checkpoint_name
from minerva.quant.gguf_types import FLOAT_TYPES, GGMLType

_PIECES = {"qkv_proj": ("q", "k", "v"), "gate_up_proj": (0, 1)}
_EMBED = "model.embed_tokens.weight"


class GGUFFileQuantConfig(QuantConfig):
    def __init__(self, scheme: str, tensor_types: Mapping[str, int], kernels=None) -> None:
        """`tensor_types`: Hugging Face weight name -> GGML type id, as the file stores it."""
        self.name = f"gguf-{scheme}"
        self.tensor_types = {name: GGMLType(t) for name, t in tensor_types.items()}
        self.kernels = kernels or torch_kernels()

    def type_of(self, prefix: str, shard_id: str | int | None) -> GGMLType:
        """The file's type of one piece of the layer `prefix` (the embedding's for a tied head)."""
        name = checkpoint_name(prefix, shard_id)
        if name == "lm_head.weight" and name not in self.tensor_types:
            name = _EMBED
        found = self.tensor_types.get(name)
        return found if found is not None else GGMLType.F32  # absent: the loader reports it

    def embedding_type(self, vocab_size: int, hidden_size: int) -> int | None:
        """The file's type of the token embedding where it is quantized: kept as it is."""
        found = self.tensor_types.get(_EMBED)
        return None if found is None or found in FLOAT_TYPES else found

    def get_method(self, prefix: str) -> LinearMethod:
        shards = _PIECES.get(prefix.rpartition(".")[2], (None,))
        types = [self.type_of(prefix, s) for s in shards]
        if all(t in FLOAT_TYPES for t in types):
            return DenseLinearMethod(self.kernels)

        def target(module: nn.Module, shard_id: str | int | None) -> GGMLType:
            return self.type_of(prefix, shard_id)

        return GGUFLinearMethod(self.kernels, target)
