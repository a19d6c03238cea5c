"""The LinearMethod protocol: how a linear layer's weights are stored, loaded and applied.

A linear layer (models/linear.py) owns its parameters, but a LinearMethod creates them, copies
checkpoint tensors into them and runs the product, so dense weights, GGUF blocks, int8/int4 and
fp8 are one method each (quant/registry.py). A QuantConfig tells the model which method each
layer gets, by the layer's name, so a file with different types per tensor works.

The batch-1 decode path (LlamaForCausalLM._forward_one_token) calls two optional fused hooks:
`apply_norm_in` (RMSNorm applied while loading the input) and `apply_add_residual` (residual
added in the epilogue, optionally SiLU * mul on the input). The defaults here compute the same
thing layer by layer with torch, so a method without fused kernels still works on that path.
`partials` is a float32 tensor of any length whose sum is the residual stream's sum of squares;
every producer and consumer keeps that contract, so methods can be mixed across layers.

`apply_silu_mul` (the gate_up layer in GatedMLP.forward) is silu_and_mul(apply(...)) by default;
the dense method on the CPU applies SiLU * mul while rounding its product (ops/cpu_gemm.py).

`step_groups` describes the weights to the CPU's whole-step decode kernel
(ops/cpu_decode_step.py): a method whose `apply` runs one of the C kernels that step can call
says which, so the step computes exactly what `apply` does; None keeps the layered path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from minerva.errors import ModelLoadError
from minerva.ops import torch_ops

if TYPE_CHECKING:
    from minerva.quant.x8_cache import LayerSlots, PackedGroup


class LinearMethod:
    """Base class with the layered defaults; subclasses override what they do faster."""

    name = "linear"
    tensor_parallel = False
    """Whether a slice of a checkpoint tensor loads like the whole (models/linear.py shards)."""

    def create_weights(
        self,
        layer: nn.Module,
        in_features: int,
        output_sizes: list[int],
        bias: bool,
        params_dtype: torch.dtype,
    ) -> None:
        """Register the layer's parameters (any names, dtypes and shapes: a quantized method
        keeps uint8 blocks). The output is the concatenation of `output_sizes` (q | k | v,
        gate | up); layer.shard_rows(shard_id) says where each piece starts."""
        raise NotImplementedError

    def load_weight(
        self, layer: nn.Module, param: nn.Parameter, tensor, shard_id: str | int | None
    ) -> None:
        """Copy a checkpoint tensor (a torch.Tensor, or a quant.gguf_types.QuantizedTensor for
        a GGUF method) into `param`, the piece `shard_id` of a fused layer or (None) all of it.
        Raises ModelLoadError (a message that reads after the tensor's name) on a mismatch."""
        raise NotImplementedError

    def packed_groups(self, layer: nn.Module, prefix: str) -> list[PackedGroup]:
        """The tensors process_after_loading will write into new memory, named
        `prefix.<parameter>`, which a weight cache (quant/x8_cache.py) may hold; none here."""
        return []

    def planned_groups(self, layer: nn.Module, prefix: str) -> list[PackedGroup]:
        """The packed groups known before loading (an in-situ quantization's types and
        shapes come from the config), for a cache hit found before the weights are read."""
        return []

    def skip_planned(self, layer: nn.Module, prefix: str) -> list[tuple[str, str | int | None]]:
        """A cache hit holds the planned groups: their pieces are taken as loaded (mapped in
        process_after_loading, never quantized); returns them as (checkpoint name, shard id),
        whose float tensors need not be read. None here."""
        return []

    def process_after_loading(self, layer: nn.Module, slots: LayerSlots | None = None) -> None:
        """Repack the loaded weights (a kernel's layout, scales); nothing by default. `slots`:
        mapped tensors for the packed groups, already filled or to write into."""

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """x [T, in_features] -> [T, out_features] in x's dtype."""
        raise NotImplementedError

    def apply_silu_mul(self, layer: nn.Module, x: torch.Tensor, silu_and_mul) -> torch.Tensor:
        """silu_and_mul(apply(layer, x)) for a gate_up layer (GatedMLP); a method whose kernel
        can apply SiLU * mul to its own output overrides it."""
        return silu_and_mul(self.apply(layer, x))

    def weight_bytes(self, layer: nn.Module) -> int:
        """Bytes the layer's weights take on the device (what streams through per token)."""
        return sum(p.numel() * p.element_size() for p in layer.parameters(recurse=False))

    def step_groups(self, layer: nn.Module) -> list[tuple[int, int, int, torch.Tensor]] | None:
        """The weights as (kind, GGML type, rows, tensor) groups along the output, kind from
        ops/cpu_decode_step.py (DENSE float32, X8 or FILE GGUF blocks), when `apply` on the
        CPU in float32 is that kernel for every group; None (the default) otherwise."""
        return None

    # -- optional fused hooks of the batch-1 path (defaults: the layered computation) --------
    # The model tells each layer what reads its output next in that path (`link_chain`), so a
    # method may prepare the next layer's input in its own epilogue.
    def apply_norm_in(
        self,
        layer: nn.Module,
        h: torch.Tensor,
        partials: torch.Tensor,
        norm_weight: torch.Tensor,
        eps: float,
    ) -> torch.Tensor:
        """RMSNorm(h [1, K]) * norm_weight, then this layer: [1, out_features]."""
        return self.apply(layer, torch_ops.rms_norm(h, norm_weight, eps))

    def apply_add_residual(
        self, layer: nn.Module, x: torch.Tensor, residual: torch.Tensor, gated: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(residual + this layer(x), partials of the new residual stream [1, out_features]).
        gated: x is [gate | up] and the input is silu(gate) * up."""
        if gated:
            x = torch_ops.silu_and_mul(x)
        h = self.apply(layer, x) + residual
        return h, h.float().square().sum().reshape(1)


def link_chain(layers: list[tuple[nn.Module, ...]], head_norm: nn.Module) -> None:
    """The batch-1 order of a decoder, told to its linear layers: per layer (input_layernorm,
    o_proj, post_attention_layernorm, gate_up, down), the head's norm after the last. Sets
    `layer.one_token_next`: (norm weight, eps) for o_proj and down (their output, the residual
    stream, is read through that RMSNorm), "gated" for gate_up (read as silu(gate) * up)."""
    for i, (_, o_proj, post_norm, gate_up, down) in enumerate(layers):
        nxt = layers[i + 1][0] if i + 1 < len(layers) else head_norm
        o_proj.one_token_next = (post_norm.weight, post_norm.eps)
        gate_up.one_token_next = "gated"
        down.one_token_next = (nxt.weight, nxt.eps)


class QuantConfig:
    """Which LinearMethod each linear layer gets, asked by the layer's name (its prefix, e.g.
    "model.layers.0.self_attn.qkv_proj")."""

    name = "quant"

    def get_method(self, prefix: str) -> LinearMethod:
        raise NotImplementedError

    def embedding_type(self, vocab_size: int, hidden_size: int) -> int | None:
        """The GGML type the token embedding is kept in (its looked-up rows dequantized), or
        None for a float table."""
        return None


class UniformQuantConfig(QuantConfig):
    """One method for every layer (dense checkpoints, a file quantized to one type)."""

    def __init__(self, method: LinearMethod) -> None:
        self.method = method
        self.name = method.name

    def get_method(self, prefix: str) -> LinearMethod:
        return self.method


def create_bias(layer: nn.Module, out: int, bias: bool, params_dtype: torch.dtype) -> None:
    """The layer's bias [out] in the model's dtype (filled by loading), or None."""
    if bias:
        layer.bias = nn.Parameter(torch.empty(out, dtype=params_dtype), False)
    else:
        layer.register_parameter("bias", None)


def shard_destination(
    layer: nn.Module, param: nn.Parameter, tensor, shard_id: str | int | None
) -> torch.Tensor:
    """The rows of `param` a checkpoint tensor fills (the piece `shard_id` of a fused layer, or
    all of it), checked against the tensor's shape."""
    dest = param.data
    if shard_id is not None:
        start, size = layer.shard_rows(shard_id)
        dest = dest.narrow(0, start, size)
    if tuple(dest.shape) != tuple(tensor.shape):
        raise shape_mismatch(tensor.shape, dest.shape)
    return dest


def shape_mismatch(got: tuple, want: tuple) -> ModelLoadError:
    """The loader error for a tensor whose shape the config does not imply."""
    return ModelLoadError(f"has shape {tuple(got)}, but config.json implies {tuple(want)}")
