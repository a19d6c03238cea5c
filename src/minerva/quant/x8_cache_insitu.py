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
    layers: Sequence[tuple[str, nn.Module]], cache: WeightCache | None, weights=None
) -> tuple[WeightStore | None, list[tuple[str, str | int | None]]]:
    """A filled store of every linear layer's planned groups (`layers`: (prefix, layer)
    pairs) and the pieces the layers took from it as (prefix, shard id); (None, []), nothing
    changed, on a miss or without a plan. `weights`: a stream with a `skip` set (runner/
    model_loading.py QuantizingWeights) is told the taken pieces' names, so it never reads them;
    another stream still yields them (their pieces stay the cached ones)."""
    if cache is None or cache.insitu is None:
        return None, []
    planned = [(p, m, found) for p, m in layers if (found := m.method.planned_groups(m, p))]
    store = cache.open([g for _, _, found in planned for g in found], create=False)
    if store is None or not store.filled:
        return None, []
    skip = getattr(weights, "skip", None)
    taken = []
    for prefix, module, _ in planned:
        for name, shard in module.method.skip_planned(module, prefix):
            taken.append((prefix, shard))
            if skip is not None:
                skip.add(name)
    return store, taken
