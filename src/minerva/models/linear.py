"""Linear layers that own their parameters and a LinearMethod (quant/base.py) that creates,
loads and applies them. Fused layers (QKVLinear, MergedLinear) concatenate several checkpoint
tensors along the output; `weight_loader` puts each piece (its shard_id) in place.

Column / row variants are the same layer at world size 1; they are named apart so tensor
parallelism can shard them (column: the output, row: the input) without touching the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from minerva.quant.base import LinearMethod


class Linear(nn.Module):
    """y = x @ W.T (+ b), computed by `method`; output_sizes > 1: pieces loaded apart."""

    def __init__(
        self,
        in_features: int,
        output_sizes: int | Sequence[int],
        bias: bool,
        method: LinearMethod,
        params_dtype: torch.dtype,
        shard_ids: Sequence[str | int] | None = None,
    ) -> None:
        super().__init__()
        sizes = [output_sizes] if isinstance(output_sizes, int) else list(output_sizes)
        self.in_features = in_features
        self.output_sizes = sizes
        self.out_features = sum(sizes)
        self.shard_ids = tuple(shard_ids) if shard_ids is not None else tuple(range(len(sizes)))
        self.method = method
        method.create_weights(self, in_features, sizes, bias, params_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(self, x)

    def shard_rows(self, shard_id: str | int) -> tuple[int, int]:
        """(first output row, number of rows) of the piece `shard_id`."""
        i = self.shard_ids.index(shard_id)
        return sum(self.output_sizes[:i]), self.output_sizes[i]

    def weight_loader(self, param: nn.Parameter, tensor, shard_id: str | int | None = None) -> None:
        """Copy a checkpoint tensor (or one piece of a fused layer) into `param`."""
        self.method.load_weight(self, param, tensor, shard_id)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.output_sizes}, method={self.method.name}"


class ColumnParallelLinear(Linear):
    """Splits its output across ranks under tensor parallelism (q/k/v, gate/up, lm_head)."""


class RowParallelLinear(Linear):
    """Splits its input across ranks under tensor parallelism (o_proj, down_proj)."""


class QKVLinear(ColumnParallelLinear):
    """q, k and v projections in one matmul: output q | k | v, shard ids "q", "k", "v"."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool,
        method: LinearMethod,
        params_dtype: torch.dtype,
    ) -> None:
        q, kv = num_heads * head_dim, num_kv_heads * head_dim
        super().__init__(hidden_size, [q, kv, kv], bias, method, params_dtype, ("q", "k", "v"))


class MergedLinear(ColumnParallelLinear):
    """Several projections of the same input in one matmul (gate | up: shard ids 0, 1)."""


def count_weight_bytes(model: nn.Module) -> int:
    """Bytes of every weight of `model`: linear layers as their methods count them (a quantized
    layout is not numel x element size), other parameters as stored; shared ones once."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        if isinstance(module, Linear):
            if own:  # a tied lm_head shares the embedding's weight: counted there
                total += module.method.weight_bytes(module)
        else:
            total += sum(p.numel() * p.element_size() for p in own)
        seen.update(id(p) for p in own)
    return total
