"""Linear layers that own their parameters and a LinearMethod (quant/base.py) that creates,
loads and applies them. Fused layers (QKVLinear, MergedLinear) concatenate several checkpoint
tensors along the output; `weight_loader` puts each piece (its shard_id) in place.

Column / row variants are the same layer at world size 1. Under tensor parallelism (a
ParallelContext of world size n) a column layer keeps 1/n of each piece's output rows and a row
layer 1/n of the input columns; their rank_part is this rank's slice of the full
checkpoint tensor. The block that ends in a row layer sums the ranks' outputs (one all-reduce).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from minerva.distributed import SINGLE, ParallelContext
from minerva.errors import ConfigError, ModelLoadError
from minerva.quant.base import LinearMethod, shape_mismatch


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
        self.method.load_weight(self, param, self.rank_part(tensor, shard_id), shard_id)

    def rank_part(self, tensor, shard_id: str | int | None):
        """What this rank keeps of a full checkpoint tensor: all of it without parallelism."""
        return tensor

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.output_sizes}, method={self.method.name}"


class ColumnParallelLinear(Linear):
    """Splits its output across ranks under tensor parallelism (q/k/v, gate/up, lm_head):
    `output_sizes` are the full model's; each rank keeps 1/n of every piece. pad: a single
    piece split in ceil(size / n) rows per rank, the last rank's tail zero (the vocabulary)."""

    def __init__(
        self,
        in_features: int,
        output_sizes: int | Sequence[int],
        bias: bool,
        method: LinearMethod,
        params_dtype: torch.dtype,
        shard_ids: Sequence[str | int] | None = None,
        parallel: ParallelContext = SINGLE,
        pad: bool = False,
    ) -> None:
        sizes = [output_sizes] if isinstance(output_sizes, int) else list(output_sizes)
        if parallel.is_parallel:
            _check_shardable(method, parallel)
            if pad and len(sizes) == 1:
                sizes = [parallel.padded_shard(sizes[0])]
            else:
                sizes = [parallel.shard(s, "projection size") for s in sizes]
        super().__init__(in_features, sizes, bias, method, params_dtype, shard_ids)
        self.parallel = parallel

    def rank_part(self, tensor, shard_id: str | int | None):
        if not self.parallel.is_parallel:
            return tensor
        rows = self.shard_rows(shard_id)[1] if shard_id is not None else self.out_features
        return _rank_slice(_dense(tensor), 0, rows, self.parallel)


class RowParallelLinear(Linear):
    """Splits its input across ranks under tensor parallelism (o_proj, down_proj):
    `in_features` is the full model's. Each rank's output is a partial sum (the bias on rank 0
    only); the block adds them up with one all-reduce."""

    def __init__(
        self,
        in_features: int,
        output_sizes: int | Sequence[int],
        bias: bool,
        method: LinearMethod,
        params_dtype: torch.dtype,
        parallel: ParallelContext = SINGLE,
    ) -> None:
        if parallel.is_parallel:
            _check_shardable(method, parallel)
            in_features = parallel.shard(in_features, "projection input size")
        super().__init__(in_features, output_sizes, bias, method, params_dtype)
        self.parallel = parallel

    def rank_part(self, tensor, shard_id: str | int | None):
        if not self.parallel.is_parallel:
            return tensor
        tensor = _dense(tensor)
        if tensor.dim() == 1:  # the bias: added once, by rank 0
            return tensor if self.parallel.rank == 0 else torch.zeros_like(tensor)
        return _rank_slice(tensor, 1, self.in_features, self.parallel)


def _check_shardable(method: LinearMethod, parallel: ParallelContext) -> None:
    if not method.tensor_parallel:
        raise ConfigError(
            f"tensor_parallel_size={parallel.world_size} does not split {method.name} weights: "
            "use a float model (or quantization to a GGUF type), or tensor_parallel_size=1"
        )


def _dense(tensor) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise ModelLoadError(
            f"is stored as {type(tensor).__name__}; tensor parallelism loads float tensors only"
        )
    return tensor


def _rank_slice(tensor: torch.Tensor, dim: int, size: int, parallel: ParallelContext):
    """This rank's `size` rows (dim 0) or columns (dim 1) of a full checkpoint tensor; the
    part past its end (a padded vocabulary's last rank) is zeros."""
    full = tensor.shape[dim]
    if not size * (parallel.world_size - 1) < full <= size * parallel.world_size:
        want = list(tensor.shape)
        want[dim] = size * parallel.world_size
        raise shape_mismatch(tensor.shape, tuple(want))
    start = parallel.rank * size
    part = tensor.narrow(dim, start, max(0, min(size, full - start)))
    if part.shape[dim] == size:
        return part
    shape = list(tensor.shape)
    shape[dim] = size - part.shape[dim]
    return torch.cat([part, tensor.new_zeros(shape)], dim)


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
        parallel: ParallelContext = SINGLE,
    ) -> None:
        """num_heads, num_kv_heads: the full model's; each rank keeps 1/n of both."""
        parallel.shard(num_heads, "num_attention_heads")  # whole heads per rank, or an error
        parallel.shard(num_kv_heads, "num_key_value_heads")
        q, kv = num_heads * head_dim, num_kv_heads * head_dim
        shards = ("q", "k", "v")
        super().__init__(hidden_size, [q, kv, kv], bias, method, params_dtype, shards, parallel)


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
