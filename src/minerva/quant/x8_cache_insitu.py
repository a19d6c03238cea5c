"""A weight cache hit found before the weights are read (in-situ quantization of a float folder).

A GGUF file's groups are known only once its tensors are loaded, but an in-situ quantization's
types and shapes follow from the config: so its cache file (quant/x8_cache.py) is looked up
first, and on a hit the linear methods skip quantizing the pieces it holds; the float tensors
still arrive and are dropped. The store stays mapped until process_layers uses it, so an
eviction meanwhile cannot take it away. A miss loads as before (and writes the file)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from minerva.quant.x8_cache import WeightCache, WeightStore


def open_planned(
    layers: Sequence[tuple[str, nn.Module]], cache: WeightCache | None
) -> WeightStore | None:
    """A filled store of every linear layer's planned groups (`layers`: (prefix, layer)
    pairs), the layers told to skip them; None (nothing changed) on a miss or without a plan."""
    if cache is None or cache.insitu is None:
        return None
    planned = [(m, found) for p, m in layers if (found := m.method.planned_groups(m, p))]
    store = cache.open([g for _, found in planned for g in found], create=False)
    if store is None or not store.filled:
        return None
    for module, _ in planned:
        module.method.skip_planned(module)
    return store
