"""quant/gguf.py: the GGUF LinearMethod keeps blocks, loads fused pieces of mixed types,
quantizes float checkpoints in situ, and computes what the dequantized dense layer computes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("minerva.quant.base")  # the LinearMethod protocol (seams issue)

from minerva.errors import ModelLoadError  # noqa: E402
from minerva.models.linear import Linear, QKVLinear  # noqa: E402
from minerva.ops import cpu_decode_step, cpu_quant, cpu_quant_x8  # noqa: E402
from minerva.quant import gguf_matmul  # noqa: E402
from minerva.quant.gguf import GGUFLinearMethod, GGUFQuantConfig, checkpoint_name  # noqa: E402
from minerva.quant.gguf_dequant import dequantize  # noqa: E402
from minerva.quant.gguf_quantize import quantize_tensor  # noqa: E402
from minerva.quant.gguf_types import GGMLType, QuantizedTensor, row_bytes  # noqa: E402


def blocks(rows: int, cols: int, ggml_type: GGMLType, seed: int = 0) -> QuantizedTensor:
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    return quantize_tensor(w, ggml_type)


def dense_twin(*pieces: QuantizedTensor) -> torch.Tensor:
    return torch.cat([dequantize(p.data, p.ggml_type) for p in pieces])


@pytest.mark.parametrize("rows", [1, 3, 40])  # kernel rows and the torch twin's
@pytest.mark.parametrize(
    "ggml_type", [GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q8_0, GGMLType.Q3_K, GGMLType.Q5_1]
)
def test_qkv_of_mixed_types_matches_the_dequantized_layer(ggml_type, rows):
    layer = QKVLinear(256, 32, 4, 2, True, GGUFLinearMethod(), torch.float32)
    q, k = blocks(128, 256, ggml_type, 1), blocks(64, 256, ggml_type, 2)
    v = blocks(64, 256, GGMLType.Q6_K, 3)  # Q4_K_M keeps attn_v wider
    for shard, piece in zip("qkv", (q, k, v), strict=True):
        layer.weight_loader(layer.weight, piece, shard)
    bias = torch.randn(256)
    layer.weight_loader(layer.bias, bias[:128], "q")
    layer.weight_loader(layer.bias, bias[128:192], "k")
    layer.weight_loader(layer.bias, bias[192:], "v")
    layer.method.process_after_loading(layer)
    # kept quantized: uint8 parameters whose bytes are the blocks' bytes
    assert layer.weight.dtype == torch.uint8
    groups = 1 if ggml_type == GGMLType.Q6_K else 2
    assert len(layer.gguf_groups) == groups
    assert layer.method.weight_bytes(layer) == q.nbytes + k.nbytes + v.nbytes + 256 * 4
    x = torch.randn(rows, 256)
    ref = x.double() @ dense_twin(q, k, v).double().T + bias.double()
    y = layer(x)
    assert y.shape == (rows, 256) and y.dtype == torch.float32
    # the C kernel quantizes x to 8 bits per block: 1% of the sum of |x| |w|
    scale = x.double().abs() @ dense_twin(q, k, v).double().abs().T
    assert bool(((y.double() - ref).abs() <= 1e-2 * scale + 1e-4).all())


def test_in_situ_quantization_follows_the_mix():
    config = GGUFQuantConfig("q4_k_m", num_layers=8)
    layer = QKVLinear(
        256, 32, 4, 2, False, config.get_method("model.layers.0.self_attn.qkv_proj"), torch.float32
    )
    w = torch.randn(256, 256)
    for shard, piece in zip("qkv", (w[:128], w[128:192], w[192:]), strict=True):
        layer.weight_loader(layer.weight, piece, shard)
    layer.method.process_after_loading(layer)
    assert [g[1] for g in layer.gguf_groups] == [GGMLType.Q4_K, GGMLType.Q6_K]
    x = torch.randn(2, 256)
    rel = (layer(x) - x @ w.T).norm() / (x @ w.T).norm()
    assert rel < 0.1
    assert (
        checkpoint_name("model.layers.3.mlp.gate_up_proj", 1) == "model.layers.3.mlp.up_proj.weight"
    )
    assert checkpoint_name("lm_head", None) == "lm_head.weight"


def test_bad_tensors_raise_model_load_errors():
    layer = Linear(256, 64, False, GGUFLinearMethod(), torch.float32)
    with pytest.raises(ModelLoadError, match="float tensor"):
        layer.weight_loader(layer.weight, torch.randn(64, 256))
    unsupported = QuantizedTensor(np.zeros((64, 100), np.uint8), 16, (64, 256))  # IQ2_XXS
    with pytest.raises(ModelLoadError, match="type 16.*supported: F32"):
        layer.method.load_weight(layer, layer.weight, unsupported, None)
    short = QuantizedTensor(np.zeros((64, 100), np.uint8), GGMLType.Q4_K, (64, 256))
    with pytest.raises(ModelLoadError, match="truncated"):
        layer.weight_loader(layer.weight, short)
    with pytest.raises(ModelLoadError, match="shape"):
        layer.weight_loader(layer.weight, blocks(32, 256, GGMLType.Q8_0))
    layer.gguf_pending = {0: blocks(32, 256, GGMLType.Q8_0)}
    with pytest.raises(ModelLoadError, match="32 of its 64"):
        layer.method.process_after_loading(layer)


def test_a_model_quantized_in_situ_matches_the_dense_model_of_its_dequantized_weights(
    monkeypatch,
):
    """load_weights of a checkpoint through GGUFQuantConfig (names, fused pieces, mixed types,
    the tied-output rule) against the dense model given the same quantized-dequantized weights."""
    import transformers

    from minerva.loader.hf_config import _parse_config
    from minerva.models import build_model
    from minerva.models.options import ModelOptions
    from minerva.quant.gguf_mix import mix_type
    from tests.tiny_models import make_config
    from tests.unit.test_linear_methods import _decode_one

    cfg = make_config("llama", hidden_size=256, intermediate_size=512, num_hidden_layers=2)
    torch.manual_seed(0)
    checkpoint = transformers.LlamaForCausalLM(cfg).state_dict()
    hf = _parse_config({**cfg.to_dict(), "architectures": ["LlamaForCausalLM"]}, Path("x"))
    quant = GGUFQuantConfig("q4_k_m", num_layers=2)
    gguf_model = build_model(hf, torch.float32, torch.device("cpu"), 64, ModelOptions(quant=quant))
    predicted = gguf_model.weight_bytes()
    gguf_model.load_weights(checkpoint.items())
    assert gguf_model.weight_bytes() == predicted  # known before loading (memory planning)

    dense_weights = {}
    for name, w in checkpoint.items():
        if w.dim() == 2:  # the embedding too: kept in blocks (the mix's type), as llama.cpp does
            found = re.search(r"layers\.(\d+)\.", name)
            layer = int(found.group(1)) if found else None
            t = mix_type("q4_k_m", name, layer, 2, cols=w.shape[1])
            q = quantize_tensor(w, t)
            w = dequantize(q.data, t)
        dense_weights[name] = w
    dense = build_model(hf, torch.float32, torch.device("cpu"), 64)
    dense.load_weights(dense_weights.items())
    head = gguf_model.lm_head
    assert [g[1] for g in head.gguf_groups] == [GGMLType.Q6_K]  # llama.cpp's output rule
    assert gguf_model.weight_bytes() < dense.weight_bytes() / 5
    assert gguf_model.model.embed_tokens.weight.dtype == torch.uint8
    ref, _ = _decode_one(dense, hf)
    # the torch twin: the same weights exactly, so the same logits up to fp32 rounding
    monkeypatch.setattr(gguf_matmul, "KERNEL_MAX_ROWS", 0)
    twin, _ = _decode_one(gguf_model, hf)
    torch.testing.assert_close(twin, ref, atol=1e-4, rtol=1e-4)
    # the C kernels round the activations to 8 bits per block (Q8_K): ~1% per layer here
    monkeypatch.undo()
    ours, _ = _decode_one(gguf_model, hf)
    assert (ours - ref).abs().max() <= 0.08 * ref.abs().max()


def random_iq_blocks(rows: int, cols: int, ggml_type: GGMLType, seed: int) -> QuantizedTensor:
    """Random indices and sub-block scales with small finite fp16 scales (no quantizer of ours
    writes IQ4_NL / IQ4_XS)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(rows, row_bytes(ggml_type, cols)), dtype=np.uint8)
    size = 18 if ggml_type == GGMLType.IQ4_NL else 136
    view = data.reshape(-1, size)
    scales = (rng.standard_normal(len(view)) * 0.01).astype(np.float16)
    view[:, :2] = scales.view(np.uint8).reshape(-1, 2)
    return QuantizedTensor(torch.from_numpy(data), ggml_type, (rows, cols))


@pytest.mark.parametrize("rows", [1, 3, 40])
def test_iq4_pieces_match_the_dequantized_layer_and_feed_the_decode_step(rows):
    """IQ4_XS q / k and an IQ4_NL v (two groups): interleaved (x8) where the CPU has it, the
    file layout's kernel otherwise; either way what the dequantized layer computes."""
    layer = QKVLinear(256, 32, 4, 2, False, GGUFLinearMethod(), torch.float32)
    q, k = (
        random_iq_blocks(128, 256, GGMLType.IQ4_XS, 1),
        random_iq_blocks(64, 256, GGMLType.IQ4_XS, 2),
    )
    v = random_iq_blocks(64, 256, GGMLType.IQ4_NL, 3)
    for shard, piece in zip("qkv", (q, k, v), strict=True):
        layer.weight_loader(layer.weight, piece, shard)
    layer.method.process_after_loading(layer)
    layout = "x8" if cpu_quant_x8.supports(GGMLType.IQ4_XS, 8, 256) else "file"
    assert [(g[1], g[3]) for g in layer.gguf_groups] == [
        (GGMLType.IQ4_XS, layout),
        (GGMLType.IQ4_NL, layout),
    ]
    x = torch.randn(rows, 256)
    w = dense_twin(q, k, v).double()
    y = layer(x)
    scale = x.double().abs() @ w.abs().T
    assert bool(((y.double() - x.double() @ w.T).abs() <= 1e-2 * scale + 1e-4).all())
    if cpu_quant.load():  # the decode step takes the groups as they are
        kind = cpu_decode_step.X8 if layout == "x8" else cpu_decode_step.FILE
        assert [g[0] for g in layer.method.step_groups(layer)] == [kind, kind]


def test_iq4_on_cuda_keeps_the_file_layout_for_the_torch_twin():
    """No Triton kernel for the codebook types: a CUDA device with the Triton kernel set keeps
    the file's blocks (the dequantize + matmul twin runs them), Q4_K still takes the planes."""

    class TritonKernels:
        name, pdl = "triton", False

    method = GGUFLinearMethod(TritonKernels())
    cuda = torch.device("cuda")
    for ggml_type in (GGMLType.IQ4_NL, GGMLType.IQ4_XS):
        piece = random_iq_blocks(8, 256, ggml_type, 0)
        assert method._layout(cuda, ggml_type, [piece], 256) == "file"
    assert method._layout(cuda, GGMLType.Q4_K, [blocks(8, 256, GGMLType.Q4_K)], 256) == "planes"
