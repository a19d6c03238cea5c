"""Dequantization of every GGUF type equals the `gguf` package's reference bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minerva.quant.gguf_dequant import dequantize, dequantize_tensor
from minerva.quant.gguf_types import BLOCK_GEOMETRY, IQ4_CODEBOOK, GGMLType, QuantizedTensor

gguf = pytest.importorskip("gguf")

# byte offsets of the fp16 scale fields in each block type
FP16_FIELDS = {
    GGMLType.Q4_0: [0],
    GGMLType.Q4_1: [0, 2],
    GGMLType.Q5_0: [0],
    GGMLType.Q5_1: [0, 2],
    GGMLType.Q8_0: [0],
    GGMLType.Q8_1: [0, 2],
    GGMLType.Q2_K: [80, 82],
    GGMLType.Q3_K: [108],
    GGMLType.Q4_K: [0, 2],
    GGMLType.Q5_K: [0, 2],
    GGMLType.Q6_K: [208],
    GGMLType.IQ4_NL: [0],
    GGMLType.IQ4_XS: [0],
}
EDGE_F16 = np.array([0.0, -0.0, 65504.0, -65504.0, 6.1e-5, 6e-8, -6e-8, 1.0, -1.0], np.float16)


def random_blocks(ggml_type: GGMLType, rows: int, blocks: int, seed: int = 0) -> np.ndarray:
    """uint8 [rows, blocks * size]: random bits, with every fp16 field a finite value (random
    normal ones mixed with the format's extremes, zeros and subnormals)."""
    rng = np.random.default_rng(seed)
    size = BLOCK_GEOMETRY[ggml_type][1]
    data = rng.integers(0, 256, size=(rows * blocks, size), dtype=np.uint8)
    for off in FP16_FIELDS[ggml_type]:
        scales = rng.normal(scale=rng.choice([1e-3, 1.0, 100.0]), size=rows * blocks)
        scales = scales.astype(np.float16)
        edge = rng.random(rows * blocks) < 0.2
        scales[edge] = rng.choice(EDGE_F16, size=int(edge.sum()))
        data[:, off : off + 2] = scales.view(np.uint8).reshape(-1, 2)
    return data.reshape(rows, blocks * size)


def reference(data: np.ndarray, ggml_type: GGMLType) -> np.ndarray:
    if ggml_type == GGMLType.Q8_1:  # gguf-py has no Q8_1 codec (and a stale 40-byte size)
        blocks = data.reshape(-1, 36)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        q = blocks[:, 4:].copy().view(np.int8).astype(np.float32)
        return (q * d).reshape(data.shape[0], -1)
    return gguf.quants.dequantize(data, gguf.GGMLQuantizationType(int(ggml_type)))


@pytest.mark.parametrize("ggml_type", list(FP16_FIELDS), ids=lambda t: t.name)
def test_dequantize_equals_gguf_reference_bit_for_bit(ggml_type):
    block = BLOCK_GEOMETRY[ggml_type][0]
    data = random_blocks(ggml_type, rows=7, blocks=max(1, 512 // block), seed=int(ggml_type))
    ours = dequantize(torch.from_numpy(data), ggml_type).numpy()
    ref = reference(data, ggml_type)
    assert ours.shape == ref.shape == (7, data.shape[1] // BLOCK_GEOMETRY[ggml_type][1] * block)
    assert not np.isnan(ref).any()
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("ggml_type", [GGMLType.F32, GGMLType.F16, GGMLType.BF16])
def test_float_types_decode_exactly(ggml_type):
    values = torch.randn(5, 64) * 10
    dtype = {GGMLType.F32: torch.float32, GGMLType.F16: torch.float16}.get(
        ggml_type, torch.bfloat16
    )
    raw = values.to(dtype).contiguous().view(torch.uint8).reshape(5, -1)
    out = dequantize(raw, ggml_type)
    assert torch.equal(out, values.to(dtype).float())
    if ggml_type != GGMLType.BF16:  # gguf-py's BF16 path takes its own block layout
        ref = gguf.quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType(int(ggml_type)))
        np.testing.assert_array_equal(out.numpy(), ref.reshape(out.shape))


def test_bad_row_bytes_raise():
    with pytest.raises(ValueError, match="multiples of 34"):
        dequantize(torch.zeros(2, 35, dtype=torch.uint8), GGMLType.Q8_0)


def test_dequantize_tensor_takes_read_only_numpy_blocks():
    data = random_blocks(GGMLType.Q4_K, rows=3, blocks=2)
    data.flags.writeable = False  # as a memory-mapped file hands it over
    out = dequantize_tensor(QuantizedTensor(data, GGMLType.Q4_K, (3, 512)))
    assert out.shape == (3, 512) and out.dtype == torch.float32
    assert torch.equal(out, dequantize(torch.from_numpy(data.copy()), GGMLType.Q4_K))


@pytest.mark.parametrize("rows", [1, 3, 9])
@pytest.mark.parametrize("ggml_type", [GGMLType.IQ4_NL, GGMLType.IQ4_XS], ids=lambda t: t.name)
def test_iq4_types_equal_gguf_reference_for_any_row_count(ggml_type, rows):
    """The non-linear codebook types, over odd row counts and several blocks a row."""
    block, size = BLOCK_GEOMETRY[ggml_type]
    for blocks in (1, 3):
        data = random_blocks(ggml_type, rows=rows, blocks=blocks, seed=rows * 10 + blocks)
        ours = dequantize(torch.from_numpy(data), ggml_type).numpy()
        ref = reference(data, ggml_type)
        assert ours.shape == (rows, blocks * block)
        np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


def test_iq4_nl_indices_pick_codebook_values():
    """A block of d = 1 whose 32 indices run 0..15 twice decodes to the codebook twice."""
    qs = np.array([j | (j << 4) for j in range(16)], np.uint8)
    block = np.concatenate([np.array([1.0], np.float16).view(np.uint8), qs])[None]
    out = dequantize(torch.from_numpy(block), GGMLType.IQ4_NL)[0].tolist()
    assert out == list(IQ4_CODEBOOK) * 2
