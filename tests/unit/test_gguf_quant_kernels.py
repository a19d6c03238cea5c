"""ops/cpu_quant: the C kernels against a float64 simulation of the same Q8 activation
quantization (tight), and against the dequantize-then-matmul twin (bounded by that quantization)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from minerva.ops import cpu_quant
from minerva.platform import native_kernel_arch
from minerva.quant import gguf_matmul as gguf_method
from minerva.quant.gguf_dequant import dequantize
from minerva.quant.gguf_quantize import quantize_array, quantize_tensor
from minerva.quant.gguf_types import BLOCK_GEOMETRY, GGMLType

KERNEL_TYPES = [GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K]
KERNEL_TYPES += [GGMLType.Q8_1, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1]
KERNEL_TYPES += [GGMLType.Q2_K, GGMLType.Q3_K]
# no quantizer of ours writes these: their weights are random blocks (random indices and
# sub-block scales, finite fp16 scales)
IQ_TYPES = [GGMLType.IQ4_NL, GGMLType.IQ4_XS]
KERNEL_TYPES += IQ_TYPES
F32 = np.float32


@pytest.fixture(scope="module")
def kernel():
    if not cpu_quant.load():
        if native_kernel_arch() and shutil.which("cc"):
            pytest.fail(f"the kernel should build here: {cpu_quant.status()}")
        pytest.skip(f"no CPU kernel here: {cpu_quant.status()}")
    return cpu_quant


def simulate_q8_0(x: np.ndarray) -> np.ndarray:
    """llama.cpp's Q8_0 activation blocks, dequantized in float64."""
    b = x.reshape(-1, 32)
    d = (np.abs(b).max(axis=1, keepdims=True) / F32(127)).astype(F32)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, F32(0), F32(1) / d)
    v = b * inv
    q = np.sign(v) * np.floor(np.abs(v) + F32(0.5))  # roundf (exact for |v| <= 127)
    return (q.astype(np.float64) * d.astype(np.float16).astype(np.float64)).reshape(x.shape)


def simulate_q8_k(x: np.ndarray) -> np.ndarray:
    """llama.cpp's Q8_K activation super-blocks, dequantized in float64."""
    b = x.reshape(-1, 256)
    mx = np.take_along_axis(b, np.abs(b).argmax(axis=1, keepdims=True), axis=1)
    zero = mx == 0
    iscale = (F32(-127) / np.where(zero, F32(1), mx)).astype(F32)
    q = np.minimum(np.rint(iscale * b), 127)
    d = np.where(zero, 0.0, (F32(1) / iscale).astype(F32).astype(np.float64))
    return (q * d).reshape(x.shape)


def random_iq_blocks(ggml_type: GGMLType, n: int, k: int, rng) -> np.ndarray:
    block, size = BLOCK_GEOMETRY[ggml_type]
    data = rng.integers(0, 256, size=(n * k // block, size), dtype=np.uint8)
    d = (rng.standard_normal(n * k // block) * 0.01).astype(np.float16)
    data[:, :2] = d.view(np.uint8).reshape(-1, 2)
    return data.reshape(n, -1)


def case(ggml_type: GGMLType, m: int, n: int = 37, k: int = 768, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(F32)
    x = rng.standard_normal((m, k)).astype(F32) * rng.choice([0.01, 1.0, 30.0], size=(m, 1))
    x[0, :256] = 0.0  # an all-zero activation block
    if m > 1:
        x[1, 5] = 500.0  # an outlier that sets its block's scale
    if ggml_type in IQ_TYPES:
        data = torch.from_numpy(random_iq_blocks(ggml_type, n, k, rng))
    else:
        data = torch.from_numpy(quantize_array(w, ggml_type))
    return torch.from_numpy(x.astype(F32)), data, dequantize(data, ggml_type).double()


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("ggml_type", KERNEL_TYPES, ids=lambda t: t.name)
def test_kernel_equals_float64_simulation_and_twin(kernel, ggml_type, m):
    x, data, wd = case(ggml_type, m, seed=m)
    y = kernel.matmul(x, data, ggml_type, wd.shape[0])
    assert y is not None and y.dtype == torch.float32 and y.shape == (m, wd.shape[0])
    sim = simulate_q8_k if BLOCK_GEOMETRY[ggml_type][0] == 256 else simulate_q8_0
    xs = torch.from_numpy(sim(x.numpy()))
    scale = xs.abs() @ wd.abs().T
    # exact integer block sums; only the fp32 scaling and accumulation over blocks round
    err = (y.double() - xs @ wd.T).abs()
    assert bool((err <= 1e-5 * scale + 1e-30).all()), float((err - 1e-5 * scale).max())
    # against the float twin the difference is the activation rounding, and no more
    bound = (x.double() - xs).abs() @ wd.abs().T + 1e-5 * scale + 1e-30
    assert bool(((y.double() - x.double() @ wd.T).abs() <= bound).all())


def test_threads_do_not_change_the_result(kernel):
    x, data, wd = case(GGMLType.Q4_K, 3, n=300, k=2048)
    torch.set_num_threads(2)
    two = kernel.matmul(x, data, GGMLType.Q4_K, 300)
    torch.set_num_threads(1)
    try:
        one = kernel.matmul(x, data, GGMLType.Q4_K, 300)
    finally:
        torch.set_num_threads(2)
    assert torch.equal(one, two)


def test_types_without_a_kernel_fall_back(kernel):
    x, data, wd = case(GGMLType.Q3_K, 2, k=256)
    assert kernel.matmul(x, data, GGMLType.BF16, wd.shape[0]) is None
    assert kernel.matmul(x.double(), data, GGMLType.Q8_0, wd.shape[0]) is None


def test_kernel_and_twin_agree_within_activation_rounding():
    data = quantize_tensor(torch.randn(64, 512), GGMLType.Q4_K)
    x = torch.randn(4, 512)
    fast = gguf_method.gguf_matmul(x, data.data, GGMLType.Q4_K, 64)
    twin = gguf_method.dequant_matmul(x, data.data, GGMLType.Q4_K)
    w = dequantize(data.data, GGMLType.Q4_K)
    assert bool(((fast - twin).abs() <= 1e-2 * (x.abs() @ w.abs().T)).all())


def test_twin_tiles_give_the_same_result(monkeypatch):
    data = quantize_tensor(torch.randn(50, 256), GGMLType.Q5_K)
    x = torch.randn(20, 256)
    whole = gguf_method.dequant_matmul(x, data.data, GGMLType.Q5_K)
    monkeypatch.setattr(gguf_method, "TILE_ELEMENTS", 256 * 7)
    tiled = gguf_method.dequant_matmul(x, data.data, GGMLType.Q5_K)
    assert torch.allclose(tiled, whole, rtol=1e-5, atol=1e-4)  # fp32 GEMM blocking differs


def test_mismatched_shapes_raise_instead_of_reading_past_the_weight(kernel):
    x, data, wd = case(GGMLType.Q4_K, 2, k=512)
    with pytest.raises(ValueError, match="does not match"):
        kernel.matmul(torch.randn(2, 768), data, GGMLType.Q4_K, wd.shape[0])
    with pytest.raises(ValueError, match="does not match"):
        kernel.matmul(x, data, GGMLType.Q4_K, wd.shape[0] + 1)
