"""Placeholders for the pieces of an in-situ quantized layer that a weight cache hit maps
(quant/x8_cache_insitu.py): their GGML type and shape, known from the config before loading,
and no bytes, so GGUFLinearMethod groups and maps them as it would the quantized pieces."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import nn

from minerva.errors import ModelLoadError
from minerva.quant.gguf_types import GGMLType, LazyQuantizedTensor, QuantizedTensor, row_bytes


def cached_piece(ggml_type: GGMLType, shape: tuple[int, int]) -> QuantizedTensor:
    """A piece a weight cache hit maps: its type and shape [rows, cols], no bytes."""

    def missing() -> None:  # only if the mapped file did not hold it, which a hit excludes
        raise ModelLoadError("was to come from the weight cache, which no longer matches")

    nbytes = shape[0] * row_bytes(ggml_type, shape[1])
    return LazyQuantizedTensor(missing, nbytes, ggml_type, shape)


def planned_pieces(
    layer: nn.Module, target: Callable[[str | int | None], GGMLType]
) -> list[tuple[str, list[QuantizedTensor]]]:
    """(group name, pieces) of `layer` as GGUFLinearMethod._named_groups will group its
    quantized pieces: consecutive pieces of one `target(shard_id)` type in one group."""
    groups: list[list[QuantizedTensor]] = []
    for shard_id, rows in layer.gguf_shards:
        piece = cached_piece(target(shard_id), (rows, layer.in_features))
        if groups and groups[-1][0].ggml_type == piece.ggml_type:
            groups[-1].append(piece)
        else:
            groups.append([piece])
    return [("weight" if i == 0 else f"weight_g{i}", g) for i, g in enumerate(groups)]


def pieces_with_starts(named) -> Iterator[tuple[str, int, QuantizedTensor]]:
    """(group name, first output row, piece) of every piece of `named`, in output order."""
    start = 0
    for name, group in named:
        for piece in group:
            yield name, start, piece
            start += piece.shape[0]
