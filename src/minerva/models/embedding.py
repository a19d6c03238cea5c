"""The token embedding: a float table, or GGUF blocks of which only the rows looked up are
dequantized, so that a quantized table takes in memory what it takes in the file (a GGUF's
table stays a view of the mapped file: only the rows ever read are resident)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minerva.distributed import ParallelContext
from minerva.errors import ModelLoadError
from minerva.quant.gguf_dequant import dequantize, dequantize_tensor
from minerva.quant.gguf_quantize import quantize_tensor
from minerva.quant.gguf_types import GGMLType, QuantizedTensor, row_bytes, type_name


class Embedding(nn.Module):
    def __init__(
        self, num_embeddings: int, dim: int, dtype: torch.dtype, blocks_type: int | None = None
    ) -> None:
        """`blocks_type`: the GGML type the table is kept in (None: a `dtype` table)."""
        super().__init__()
        self.num_embeddings, self.dim, self.dtype = num_embeddings, dim, dtype
        self.blocks_type = None if blocks_type is None else GGMLType(blocks_type)
        if self.blocks_type is None:
            self.weight = nn.Parameter(torch.empty(num_embeddings, dim, dtype=dtype))
        else:
            shape = (num_embeddings, row_bytes(self.blocks_type, dim))
            self.weight = nn.Parameter(torch.empty(shape, dtype=torch.uint8), requires_grad=False)

    @torch.no_grad()
    def load(self, tensor) -> None:
        """The checkpoint's table: float (copied, or quantized to the blocks type) or GGUF
        blocks (dequantized into a float table, or kept as they are: no copy)."""
        if self.blocks_type is None:
            if isinstance(tensor, QuantizedTensor):
                tensor = dequantize_tensor(tensor)  # float32; copy_ casts to the dtype
            self._check_shape(tuple(tensor.shape))
            self.weight.data.copy_(torch.as_tensor(tensor))
            return
        if not isinstance(tensor, QuantizedTensor):
            self._check_shape(tuple(tensor.shape))
            tensor = quantize_tensor(torch.as_tensor(tensor), self.blocks_type)
        if tensor.ggml_type != self.blocks_type:
            raise ModelLoadError(
                f"is stored as {type_name(tensor.ggml_type)}, but the model was planned "
                f"with {self.blocks_type.name}"
            )
        self._check_shape(tuple(tensor.shape))
        data = torch.as_tensor(tensor.data).reshape(self.weight.shape)
        self.weight = nn.Parameter(data.to(self.weight.device), requires_grad=False)

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        if shape != (self.num_embeddings, self.dim):
            raise ModelLoadError(
                f"has shape {shape}, but config.json implies {(self.num_embeddings, self.dim)}"
            )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.blocks_type is None:
            return F.embedding(ids, self.weight)
        rows = self.weight.index_select(0, ids.reshape(-1))  # [n, row_bytes]
        out = dequantize(rows, self.blocks_type).to(self.dtype)
        return out.reshape(*ids.shape, self.dim)


class VocabParallelEmbedding(Embedding):
    """The table split by rows across tensor-parallel ranks (ceil(vocab / n) each, the last
    rank's tail zero): each rank looks up the ids in its range, the others give zero rows, and
    one all-reduce sums them. A float table, or one quantized in situ to `blocks_type` (rows
    are quantized apart, so a rank's rows are the whole table's)."""

    def __init__(
        self,
        num_embeddings: int,
        dim: int,
        dtype: torch.dtype,
        parallel: ParallelContext,
        blocks_type: int | None = None,
    ) -> None:
        self.full_vocab = num_embeddings
        rows = parallel.padded_shard(num_embeddings)
        super().__init__(rows, dim, dtype, blocks_type)
        self.parallel = parallel
        self.start = parallel.rank * rows  # first vocabulary id of this rank

    @torch.no_grad()
    def load(self, tensor) -> None:
        if not isinstance(tensor, torch.Tensor):
            raise ModelLoadError(
                f"is stored as {type(tensor).__name__}; tensor parallelism loads float tensors"
            )
        if tuple(tensor.shape) != (self.full_vocab, self.dim):
            raise ModelLoadError(
                f"has shape {tuple(tensor.shape)}, but config.json implies "
                f"{(self.full_vocab, self.dim)}"
            )
        rows = torch.zeros(self.num_embeddings, self.dim, dtype=tensor.dtype)
        part = tensor[self.start : self.start + self.num_embeddings]
        rows[: part.shape[0]] = part
        super().load(rows)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        inside = (local >= 0) & (local < self.num_embeddings)  # [num_tokens]
        out = super().forward(local.clamp(0, self.num_embeddings - 1))
        out = out * inside.unsqueeze(-1).to(out.dtype)  # zero rows: another rank's ids
        return self.parallel.all_reduce(out)
