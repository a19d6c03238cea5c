"""Tensor-parallel layers in one process (no process group: construction and loading need no
collectives): each rank's shard of a checkpoint tensor, the refusals, world size 1 untouched."""

from __future__ import annotations

import pytest
import torch

from minerva.distributed import SINGLE, ParallelContext
from minerva.errors import ConfigError, ModelLoadError
from minerva.models.embedding import Embedding, VocabParallelEmbedding
from minerva.models.layers import GatedMLP
from minerva.models.linear import ColumnParallelLinear, QKVLinear, RowParallelLinear
from minerva.ops.kernels import torch_kernels
from minerva.quant.base import UniformQuantConfig
from minerva.quant.dense import DenseLinearMethod
from minerva.quant.fp8 import FP8LinearMethod

F32 = torch.float32


def _dense() -> DenseLinearMethod:
    return DenseLinearMethod(torch_kernels())


def _ranks(n: int = 2) -> list[ParallelContext]:
    return [ParallelContext(r, n) for r in range(n)]


def test_collectives_are_identities_at_world_size_one():
    x = torch.randn(3, 5)
    assert SINGLE.all_reduce(x) is x
    assert SINGLE.all_gather(x) is x
    assert SINGLE.all_reduce_min(7, torch.device("cpu")) == 7
    assert SINGLE.all_gather_object("a") == ["a"]
    assert SINGLE.shard(12, "x") == 12


def test_qkv_rows_of_each_rank_are_its_heads():
    """q, k, v loaded piece by piece: rank r holds heads [r*h/n, (r+1)*h/n) of each."""
    hidden, head_dim, heads, kv_heads = 16, 4, 4, 2
    q = torch.randn(heads * head_dim, hidden)
    k, v = torch.randn(2, kv_heads * head_dim, hidden)
    bias = {name: torch.randn(t.shape[0]) for name, t in (("q", q), ("k", k), ("v", v))}
    for p in _ranks():
        layer = QKVLinear(hidden, head_dim, heads, kv_heads, True, _dense(), F32, parallel=p)
        for name, t in (("q", q), ("k", k), ("v", v)):
            layer.weight_loader(layer.weight, t, name)
            layer.weight_loader(layer.bias, bias[name], name)
        halves = [t.chunk(2)[p.rank] for t in (q, k, v)]
        assert torch.equal(layer.weight, torch.cat(halves))
        assert torch.equal(layer.bias, torch.cat([bias[s].chunk(2)[p.rank] for s in "qkv"]))


def test_row_parallel_partial_sums_add_up_to_the_full_product():
    """Rank outputs (input columns split, bias on rank 0 only) sum to the full layer's."""
    w, b, x = torch.randn(6, 8), torch.randn(6), torch.randn(3, 8)
    full = RowParallelLinear(8, 6, True, _dense(), F32)
    full.weight_loader(full.weight, w)
    full.weight_loader(full.bias, b)
    total = torch.zeros(3, 6)
    for p in _ranks():
        layer = RowParallelLinear(8, 6, True, _dense(), F32, parallel=p)
        layer.weight_loader(layer.weight, w)
        layer.weight_loader(layer.bias, b)
        assert layer.in_features == 4
        total += layer(x.chunk(2, dim=1)[p.rank])
    torch.testing.assert_close(total, full(x))


def test_padded_vocab_head_and_embedding(monkeypatch):
    """A vocabulary that does not divide: ceil(V/n) rows per rank, the tail zero; the embedding
    rows of every rank (their all-reduce done here by hand) sum to the full table's lookup."""
    monkeypatch.setattr(ParallelContext, "all_reduce", lambda self, x: x)
    vocab, hidden = 7, 4
    table = torch.randn(vocab, hidden)
    ids = torch.arange(vocab)
    looked_up = torch.zeros(vocab, hidden)
    for p in _ranks():
        head = ColumnParallelLinear(hidden, vocab, False, _dense(), F32, parallel=p, pad=True)
        head.weight_loader(head.weight, table)
        want = table[4 * p.rank : 4 * p.rank + 4]
        assert torch.equal(head.weight[: want.shape[0]], want)
        assert head.weight.shape == (4, hidden) and not head.weight[want.shape[0] :].any()
        emb = VocabParallelEmbedding(vocab, hidden, F32, p)
        emb.load(table)
        looked_up += emb(ids)
    torch.testing.assert_close(looked_up, table)


def test_refusals_name_the_fix():
    two = ParallelContext(0, 2)
    with pytest.raises(ConfigError, match="does not divide the model's num_key_value_heads"):
        QKVLinear(16, 4, 4, 1, False, _dense(), F32, parallel=two)
    with pytest.raises(ConfigError, match="does not divide the model's intermediate_size"):
        GatedMLP(16, 9, False, F32, torch_kernels(), UniformQuantConfig(_dense()), "m", two)
    with pytest.raises(ConfigError, match="does not split fp8 weights"):
        RowParallelLinear(16, 16, False, FP8LinearMethod(torch_kernels()), F32, parallel=two)
    layer = RowParallelLinear(8, 6, False, _dense(), F32, parallel=two)
    with pytest.raises(ModelLoadError, match=r"config.json implies \(6, 8\)"):
        layer.weight_loader(layer.weight, torch.randn(6, 10))


def test_world_size_one_layers_are_unchanged():
    """The single-device layers keep the full sizes and no all-reduce hook."""
    emb = Embedding(7, 4, F32)
    assert type(emb) is Embedding and emb.weight.shape == (7, 4)
    mlp = GatedMLP(16, 9, False, F32, torch_kernels(), UniformQuantConfig(_dense()), "m")
    assert mlp.all_reduce is None and mlp.gate_up_proj.out_features == 18


def test_devices_name_one_gpu_per_rank():
    from minerva.config import EngineConfig

    assert EngineConfig.from_kwargs(tensor_parallel_size=2, devices="2,3").device.devices == "2,3"
    for bad in ("0", "1,1", "0,1,2"):
        with pytest.raises(ConfigError, match="one distinct GPU index per rank"):
            EngineConfig.from_kwargs(tensor_parallel_size=2, devices=bad)


def test_pipeline_stages_split_the_layers_and_their_names():
    from minerva.distributed import PipelineContext
    from minerva.models.pipeline import stage_name

    ranges = [PipelineContext(r, 3).layer_range(8) for r in range(3)]
    assert ranges == [(0, 3), (3, 6), (6, 8)]  # contiguous, the first stages one more
    assert stage_name("model.layers.4.mlp.down_proj.weight", 3, 6) == (
        "model.layers.1.mlp.down_proj.weight"
    )
    assert stage_name("model.layers.14.mlp.down_proj.weight", 3, 6) is None
    assert stage_name("model.layers.2.self_attn.q_proj.weight", 3, 6) is None
    assert stage_name("model.embed_tokens.weight", 3, 6) == "model.embed_tokens.weight"


def test_devices_cover_tensor_times_pipeline_ranks():
    from minerva.config import EngineConfig

    both = dict(tensor_parallel_size=2, pipeline_parallel_size=2)
    assert EngineConfig.from_kwargs(**both, devices="0,1,2,3").device.devices == "0,1,2,3"
    with pytest.raises(ConfigError, match="distinct GPUs for 4 parallel ranks"):
        EngineConfig.from_kwargs(**both, devices="0,1")


def test_gguf_files_and_own_formats_are_refused_under_parallelism():
    from minerva.config import EngineConfig
    from minerva.runner.parallel_checks import check_config

    for kwargs in (dict(model="m.gguf"), *(dict(quantization=q) for q in ("fp8", "int8", "int4"))):
        config = EngineConfig.from_kwargs(tensor_parallel_size=2, **kwargs)
        with pytest.raises(ConfigError, match="not GGUF files, fp8, int8 or int4"):
            check_config(config)
    check_config(EngineConfig.from_kwargs(tensor_parallel_size=2, quantization="q8_0"))
