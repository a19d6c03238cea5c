"""GGUF quantizers: bytes equal to gguf-py's for the types it implements; K types within their
error bounds and stable under re-quantization; llama.cpp's Q4_K_M / Q5_K_M tensor rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minerva.errors import ConfigError
from minerva.ops import cpu_quantize
from minerva.quant.gguf_dequant import dequantize
from minerva.quant.gguf_mix import fit_type, mix_type, use_more_bits
from minerva.quant.gguf_quantize import quantize_array, quantize_tensor
from minerva.quant.gguf_types import GGMLType, row_bytes

gguf = pytest.importorskip("gguf")

LEGACY = [GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1]
K_TYPES = [GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K]
# relative RMS error on Gaussian weights: what each bit width reaches (Q4_K ~0.07 measured),
# with a margin that still fails a wrong scale, a lost bit or a shuffled layout
MAX_REL_RMSE = {
    GGMLType.Q2_K: 0.34,
    GGMLType.Q3_K: 0.18,
    GGMLType.Q4_K: 0.085,
    GGMLType.Q5_K: 0.045,
    GGMLType.Q6_K: 0.022,
    GGMLType.Q8_0: 0.007,
    GGMLType.Q8_1: 0.007,
}


def weights(rows=48, cols=1024, seed=0) -> np.ndarray:
    """Gaussian rows with awkward blocks: zeros, constants, tiny values, one outlier."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x[1, :300] = 0.0
    x[2, :256] = 1.5
    x[3] *= 1e-2
    x[4, 7] = 40.0
    x[5, 32:64] = -2.0
    return x


@pytest.mark.parametrize("ggml_type", LEGACY, ids=lambda t: t.name)
def test_legacy_bytes_equal_gguf_reference(ggml_type):
    x = weights()
    ours = quantize_array(x, ggml_type)
    ref = gguf.quants.quantize(x, gguf.GGMLQuantizationType(int(ggml_type)))
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("native", [True, False], ids=["c", "numpy"])
@pytest.mark.parametrize(
    "ggml_type", [*K_TYPES, GGMLType.Q8_0, GGMLType.Q8_1], ids=lambda t: t.name
)
def test_round_trip_error_is_bounded_and_requantizing_is_stable(ggml_type, native):
    x = weights(seed=1)
    q = quantize_array(x, ggml_type, native=native)
    assert q.shape == (x.shape[0], row_bytes(ggml_type, x.shape[1]))
    y = dequantize(torch.from_numpy(q), ggml_type).numpy()
    assert np.isfinite(y).all()
    good = np.r_[0, 6 : x.shape[0]]  # the Gaussian rows
    err = np.sqrt(((y - x)[good] ** 2).mean() / (x[good] ** 2).mean())
    assert err < MAX_REL_RMSE[ggml_type]
    np.testing.assert_array_equal(y[1, :256], 0.0)  # an all-zero block stays zero
    # small weights keep their relative precision (their scales are fp16 normals)
    assert np.sqrt(((y[3] - x[3]) ** 2).mean() / (x[3] ** 2).mean()) < 1.5 * MAX_REL_RMSE[ggml_type]
    # the dequantized weights are (nearly) representable: quantizing them again moves them by
    # far less than the first quantization did
    y2 = quantize_array(y, ggml_type, native=native)
    y2 = dequantize(torch.from_numpy(y2), ggml_type).numpy()
    assert np.sqrt(((y2 - y)[good] ** 2).mean()) < 0.5 * np.sqrt(((y - x)[good] ** 2).mean())


@pytest.mark.parametrize("ggml_type", K_TYPES, ids=lambda t: t.name)
def test_c_quantizer_equals_the_numpy_twin(ggml_type):
    if cpu_quantize.quantize_k(np.zeros((1, 256), np.float32), ggml_type) is None:
        pytest.skip("no C quantizer here")
    x = weights(rows=16, seed=2)
    fast, twin = quantize_array(x, ggml_type), quantize_array(x, ggml_type, native=False)
    block = fast.shape[1] // 4  # 1024 values per row: 4 super-blocks
    same = np.all(fast.reshape(-1, block) == twin.reshape(-1, block), axis=1)
    # the searches sum in order in C and pairwise in numpy: a near-tie may go the other way
    assert same.mean() > 0.9


def test_q8_1_sum_field_is_d_times_sum_of_codes():
    x = weights(rows=8, cols=64)
    q = quantize_array(x, GGMLType.Q8_1).reshape(-1, 36)
    d = np.abs(x.reshape(-1, 32)).max(axis=1) / np.float32(127)  # the fp32 scale, as llama.cpp
    s = q[:, 2:4].copy().view(np.float16).astype(np.float32)[:, 0]
    codes = q[:, 4:].view(np.int8).astype(np.int32).sum(axis=1)
    np.testing.assert_array_equal(s, (codes.astype(np.float32) * d).astype(np.float16))


def test_quantize_tensor_returns_blocks_and_reports_progress():
    done = []
    w = torch.randn(8, 256, dtype=torch.bfloat16)
    qt = quantize_tensor(w, GGMLType.Q4_K, progress=done.append)
    assert qt.shape == (8, 256) and qt.ggml_type == GGMLType.Q4_K
    assert qt.data.dtype == torch.uint8 and tuple(qt.data.shape) == (8, 144)
    assert qt.nbytes == 8 * 144 and done == [8 * 256]
    f16 = quantize_tensor(w, GGMLType.F16)
    assert torch.equal(dequantize(f16.data, GGMLType.F16), w.float())
    with pytest.raises(ValueError, match="multiples of 256"):
        quantize_tensor(torch.randn(2, 100), GGMLType.Q4_K)


def test_use_more_bits_matches_llama_cpp_on_22_layers():
    chosen = [i for i in range(22) if use_more_bits(i, 22)]
    # n/8 = 2: layers 0-1, 19-21 (>= 7*22//8 = 19), and every third from layer 4
    assert chosen == [0, 1, 4, 7, 10, 13, 16, 19, 20, 21]


def test_q4_k_m_rules():
    n = 22
    assert mix_type("q4_k_m", "blk.0.attn_v.weight", 0, n) == GGMLType.Q6_K
    assert mix_type("q4_k_m", "blk.3.attn_v.weight", 3, n) == GGMLType.Q4_K
    assert mix_type("Q4_K_M", "model.layers.4.mlp.down_proj.weight", 4, n) == GGMLType.Q6_K
    assert mix_type("q4_k_m", "model.layers.4.mlp.up_proj.weight", 4, n) == GGMLType.Q4_K
    assert mix_type("q5_k_m", "blk.21.ffn_down.weight", 21, n) == GGMLType.Q6_K
    assert mix_type("q5_k_m", "blk.5.attn_q.weight", 5, n) == GGMLType.Q5_K
    assert mix_type("q4_k_m", "output.weight", None, n) == GGMLType.Q6_K
    assert mix_type("q4_k_m", "lm_head.weight", None, n) == GGMLType.Q6_K
    assert mix_type("q4_k_m", "token_embd.weight", None, n) == GGMLType.Q4_K
    assert mix_type("q4_k_m", "token_embd.weight", None, n, tied_output=True) == GGMLType.Q6_K
    assert mix_type("Q8_0", "output.weight", None, n) == GGMLType.Q8_0
    assert mix_type("q4_0", "output.weight", None, n) == GGMLType.Q6_K
    assert mix_type("Q4K", "blk.0.attn_v.weight", 0, n) == GGMLType.Q4_K  # plain: uniform
    assert mix_type("q4_k_m", "blk.1.attn_q.weight", 1, n, cols=4160) == GGMLType.Q5_0
    assert fit_type(GGMLType.Q6_K, 4160) == GGMLType.Q8_0
    with pytest.raises(ConfigError, match="q4_k_m"):
        mix_type("q4_k_z", "output.weight", None, n)
