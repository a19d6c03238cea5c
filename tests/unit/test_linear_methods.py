"""Linear layers and their methods (models/linear.py, quant/): the batch-1 path through the
methods' fused hooks against the layered path, a method without hooks on that path, a method
with its own parameter layout fed QuantizedTensors, weight_bytes from the methods, and the
shard loaders. fp32 on the CPU, against the layered torch forward of the same weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minerva.attention import AttentionMetadata
from minerva.errors import ModelLoadError
from minerva.loader.hf_config import _parse_config
from minerva.models import build_model
from minerva.models.linear import Linear, MergedLinear, QKVLinear
from minerva.models.options import ModelOptions
from minerva.models.registry import count_weight_bytes
from minerva.ops import torch_ops
from minerva.ops.kernels import torch_kernels
from minerva.quant.base import LinearMethod, QuantConfig, shape_mismatch
from minerva.quant.dense import DenseLinearMethod
from minerva.quant.gguf_types import GGMLType, QuantizedTensor
from tests.tiny_models import make_config

# The torch twins of the Triton one-token GEMVs: the batch-1 path runs on the CPU too.
ONE_TOKEN = dataclasses.replace(
    torch_kernels(),
    gemv_rms_norm=torch_ops.gemv_rms_norm,
    gemv_add_residual=torch_ops.gemv_add_residual,
)


def _hf(**overrides):
    cfg = make_config("llama", num_hidden_layers=3, attention_bias=True, **overrides)
    return _parse_config({**cfg.to_dict(), "architectures": ["LlamaForCausalLM"]}, Path("x"))


def _models(hf, **options: ModelOptions) -> dict[str, nn.Module]:
    """One model per options, all with the same random weights."""
    torch.manual_seed(0)
    models, state = {}, None
    for name, opts in options.items():
        model = build_model(hf, torch.float32, torch.device("cpu"), 64, options=opts)
        if state is None:
            for p in model.parameters():
                p.data.normal_(0, 0.1)
            state = model.state_dict()
        model.load_state_dict(state)
        models[name] = model
    return models


def _decode_one(model, hf, kv_seed: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits of one decode token at position 37 over a random cache, and the cache after."""
    torch.manual_seed(kv_seed)
    kv = [torch.randn(2, 4, 16, hf.num_key_value_heads, hf.head_dim) for _ in model.model.layers]
    meta = AttentionMetadata(
        slot_mapping=torch.tensor([53]),  # block 3 (table slot 2), offset 5
        block_tables=torch.tensor([[1, 2, 3]], dtype=torch.int32),
        seq_lens=torch.tensor([38], dtype=torch.int32),
        query_start_loc=torch.tensor([0, 1], dtype=torch.int32),
        num_decodes=1,
        max_query_len=1,
        seq_lens_cpu=[38],
        query_start_loc_cpu=[0, 1],
    )
    with torch.inference_mode():
        logits = model(torch.tensor([7]), torch.tensor([37]), kv, meta, torch.tensor([0]))
    return logits, kv


def _assert_same(a, b) -> None:
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
    for x, y in zip(a[1], b[1]):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6)


def test_one_token_path_through_the_hooks_equals_layered_path():
    hf = _hf()
    models = _models(hf, fused=ModelOptions(ONE_TOKEN), layered=ModelOptions())
    assert models["fused"].one_token and not models["layered"].one_token
    _assert_same(_decode_one(models["fused"], hf), _decode_one(models["layered"], hf))


class NoHooks(DenseLinearMethod):
    """A method without fused hooks: the batch-1 path falls back to the layered defaults."""

    name = "no-hooks"
    apply_norm_in = LinearMethod.apply_norm_in
    apply_add_residual = LinearMethod.apply_add_residual


class Mixed(QuantConfig):
    """Layer 1 and the lm_head without hooks, the rest dense: methods mix on one path."""

    def __init__(self) -> None:
        self.dense, self.plain, self.asked = DenseLinearMethod(ONE_TOKEN), NoHooks(ONE_TOKEN), []

    def get_method(self, prefix: str) -> LinearMethod:
        self.asked.append(prefix)
        return self.plain if ".1." in prefix or prefix == "lm_head" else self.dense


def test_a_method_without_hooks_falls_back_on_the_one_token_path():
    hf, mixed = _hf(), Mixed()
    models = _models(hf, mixed=ModelOptions(ONE_TOKEN, quant=mixed), layered=ModelOptions())
    assert "model.layers.1.mlp.down_proj" in mixed.asked and "lm_head" in mixed.asked
    assert models["mixed"].model.layers[1].self_attn.o_proj.method is mixed.plain
    _assert_same(_decode_one(models["mixed"], hf), _decode_one(models["layered"], hf))


class F32Blocks(LinearMethod):
    """A toy quantized layout: the weight kept as uint8 bytes (as a GGUF method keeps blocks),
    loaded from QuantizedTensors, counted as stored, dequantized in apply."""

    name = "f32-blocks"

    def create_weights(self, layer, in_features, output_sizes, bias, params_dtype) -> None:
        rows = sum(output_sizes)
        layer.weight = nn.Parameter(torch.empty(rows, 4 * in_features, dtype=torch.uint8), False)
        layer.bias = nn.Parameter(torch.empty(rows), False) if bias else None

    def load_weight(self, layer, param, tensor, shard_id) -> None:
        dest = param.data
        if shard_id is not None:
            dest = dest.narrow(0, *layer.shard_rows(shard_id))
        if isinstance(tensor, QuantizedTensor):
            data = tensor.data
        elif param.dtype == torch.uint8:  # a float weight (the embedding's, for a tied head)
            data = tensor.contiguous().view(torch.uint8)
        else:  # the bias
            data = tensor
        if dest.shape != data.shape:
            raise shape_mismatch(data.shape, dest.shape)
        dest.copy_(data)

    def apply(self, layer, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, layer.weight.view(torch.float32), layer.bias)


def _as_blocks(name: str, t: torch.Tensor):
    """Linear weights as F32 QuantizedTensors (uint8 rows), everything else as it is."""
    if not name.endswith("proj.weight") and name != "lm_head.weight":
        return t
    data = t.contiguous().view(torch.uint8).reshape(t.shape[0], -1)
    return QuantizedTensor(data=data, ggml_type=GGMLType.F32, shape=tuple(t.shape))


def _checkpoint(model: nn.Module, hf) -> list[tuple[str, torch.Tensor]]:
    """The model's weights under checkpoint names (q/k/v and gate/up apart)."""
    q, kv = hf.num_attention_heads * hf.head_dim, hf.num_key_value_heads * hf.head_dim
    inter = hf.intermediate_size
    out = []
    for name, t in model.state_dict().items():
        if "qkv_proj" in name:
            for piece, part in zip(("q", "k", "v"), t.split([q, kv, kv])):
                out.append((name.replace("qkv_proj", f"{piece}_proj"), part))
        elif "gate_up_proj" in name:
            for piece, part in zip(("gate", "up"), t.split([inter, inter])):
                out.append((name.replace("gate_up_proj", f"{piece}_proj"), part))
        else:
            out.append((name, t))
    return out


class Uniform(QuantConfig):
    def get_method(self, prefix: str) -> LinearMethod:
        return F32Blocks()


def test_a_method_with_its_own_layout_loads_quantized_tensors_and_counts_its_bytes():
    hf = _hf()
    dense = _models(hf, dense=ModelOptions())["dense"]
    opts = ModelOptions(quant=Uniform())
    blocks = build_model(hf, torch.float32, torch.device("cpu"), 64, options=opts)
    blocks.load_weights((n, _as_blocks(n, t)) for n, t in _checkpoint(dense, hf))
    assert blocks.model.layers[0].self_attn.qkv_proj.weight.dtype == torch.uint8
    _assert_same(_decode_one(blocks, hf), _decode_one(dense, hf))
    # bytes as the method stores them (uint8 x 4 per value == fp32), and from the meta model
    assert blocks.weight_bytes() == dense.weight_bytes() == count_weight_bytes(hf, torch.float32)
    assert count_weight_bytes(hf, torch.float32, opts) == blocks.weight_bytes()


class HalfCounted(DenseLinearMethod):
    def weight_bytes(self, layer) -> int:
        return super().weight_bytes(layer) // 2


class HalfConfig(QuantConfig):
    def get_method(self, prefix: str) -> LinearMethod:
        return HalfCounted(torch_kernels())


@pytest.mark.parametrize("tied", [False, True])
def test_weight_bytes_asks_the_methods_and_counts_a_tied_head_once(tied):
    hf = _hf(tie_word_embeddings=tied)
    model = build_model(hf, torch.float32, torch.device("cpu"), 64)
    params = sum(p.numel() * p.element_size() for p in model.parameters())  # shared: once
    assert model.weight_bytes() == params
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    linear_bytes = sum(m.weight.nbytes + (m.bias.nbytes if m.bias is not None else 0)
                       for m in linears[:-1 if tied else None])  # fmt: skip
    half = count_weight_bytes(hf, torch.float32, ModelOptions(quant=HalfConfig()))
    assert half == params - linear_bytes // 2


def test_fused_layers_load_their_pieces_in_place_and_name_bad_shapes():
    method = DenseLinearMethod(torch_kernels())
    qkv = QKVLinear(8, 2, 4, 1, True, method, torch.float32)  # q 8 rows, k 2, v 2
    pieces = {s: torch.randn(n, 8) for s, n in zip("qkv", (8, 2, 2))}
    for shard in "vqk":
        qkv.weight_loader(qkv.weight, pieces[shard], shard)
    assert torch.equal(qkv.weight, torch.cat([pieces[s] for s in "qkv"]))
    qkv.weight_loader(qkv.bias, torch.arange(2.0), "k")
    assert torch.equal(qkv.bias[8:10], torch.arange(2.0))
    gate_up = MergedLinear(8, [3, 3], False, method, torch.float32)
    assert gate_up.shard_rows(1) == (3, 3) and gate_up.bias is None
    with pytest.raises(ModelLoadError, match=r"has shape \(2, 8\), but config.json implies"):
        gate_up.weight_loader(gate_up.weight, torch.randn(2, 8), 0)


def test_load_weights_names_the_misshapen_checkpoint_tensor():
    hf = _hf()
    model = build_model(hf, torch.float32, torch.device("cpu"), 64)
    ckpt = _checkpoint(model, hf)
    ckpt = [(n, t[:-1] if n.endswith("layers.0.self_attn.k_proj.weight") else t) for n, t in ckpt]
    with pytest.raises(ModelLoadError, match=r"'model.layers.0.self_attn.k_proj.weight' has"):
        model.load_weights(ckpt)
    missing = [(n, t) for n, t in _checkpoint(model, hf) if "layers.2.mlp.up_proj" not in n]
    with pytest.raises(ModelLoadError, match="missing 1 tensors: model.layers.2.mlp.gate_up"):
        model.load_weights(missing)


def test_tied_head_with_its_own_layout_is_loaded_from_the_embedding():
    """Tied embeddings and a head method that keeps its own layout: the head is not the
    embedding's tensor, the loader fills it from the embedding's checkpoint tensor."""
    hf = _hf(tie_word_embeddings=True)
    dense = _models(hf, dense=ModelOptions())["dense"]
    assert dense.shares_embedding and "lm_head.weight" not in dict(dense.named_parameters())
    blocks = build_model(
        hf, torch.float32, torch.device("cpu"), 64, options=ModelOptions(quant=Uniform())
    )
    assert not blocks.shares_embedding and blocks.lm_head.weight.dtype == torch.uint8
    # a tied checkpoint has no lm_head.weight (state_dict lists the shared tensor twice)
    ckpt = [(n, _as_blocks(n, t)) for n, t in _checkpoint(dense, hf) if n != "lm_head.weight"]
    blocks.load_weights(ckpt)
    _assert_same(_decode_one(blocks, hf), _decode_one(dense, hf))


def test_an_unknown_quantization_names_what_runs():
    from minerva.quant.registry import build_quant_config

    assert build_quant_config(None, torch_kernels()).get_method("lm_head").name == "dense"
    with pytest.raises(ModelLoadError, match="quantized as awq.*GGUF file or a float"):
        build_quant_config("awq", torch_kernels())
    for scheme in ("Q4_K_M", "Q8_0", "Q2_K", "Q4_K+Q6_K", "file_type 99"):
        assert build_quant_config(scheme, torch_kernels()).get_method("lm_head").name == "gguf"
