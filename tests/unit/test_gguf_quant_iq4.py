"""quant/gguf_quantize_iq4.py: IQ4_NL / IQ4_XS quantization. The bytes equal llama.cpp's own
quantizer's (tests/model/test_llama_cpp_tokens.py compares whole files); here the pieces: the
nearest-index table against its twin, the round trip against the evenly spaced 4-bit types, and
the corner cases (all-zero blocks, the IQ4_XS fallback)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minerva.quant.gguf_dequant import dequantize
from minerva.quant.gguf_mix import fit_type, mix_type
from minerva.quant.gguf_quantize import quantize_array
from minerva.quant.gguf_quantize_iq4 import VALUES, _reference_best_index, best_index
from minerva.quant.gguf_types import GGMLType

IQ4 = [GGMLType.IQ4_NL, GGMLType.IQ4_XS]


def test_index_table_equals_the_searched_nearest_index():
    """Random values, every midpoint between codebook values and the floats just beside them
    (llama.cpp takes the upper index on an exact tie), the ends and beyond."""
    rng = np.random.default_rng(0)
    mids = ((VALUES[1:] + VALUES[:-1]) / 2).astype(np.float32)
    v = np.concatenate([
        (rng.standard_normal(1 << 16) * 60).astype(np.float32),
        mids, np.nextafter(mids, np.float32(-1e9)), np.nextafter(mids, np.float32(1e9)),
        np.array([-1e30, -128, -127, 0, 113, 127.9, 128, 1e30], np.float32),
    ])  # fmt: skip
    assert np.array_equal(best_index(v), _reference_best_index(v))
    assert best_index(mids).tolist() == list(range(1, 16))  # ties go up


def round_trip_error(x: np.ndarray, ggml_type: GGMLType) -> float:
    data = quantize_array(x, ggml_type)
    return float(((dequantize(torch.from_numpy(data), ggml_type).numpy() - x) ** 2).mean())


@pytest.mark.parametrize("ggml_type", IQ4, ids=lambda t: t.name)
def test_round_trip_beats_the_evenly_spaced_4_bit_type(ggml_type):
    """Gaussian weights (as trained layers' are, roughly): the codebook, denser near zero, and
    the scale search give a smaller error than Q4_0's evenly spaced codes at the same bits."""
    x = np.random.default_rng(1).standard_normal((16, 512)).astype(np.float32)
    err = round_trip_error(x, ggml_type)
    assert err < 0.8 * round_trip_error(x, GGMLType.Q4_0)
    assert err < 0.02  # of a unit variance


@pytest.mark.parametrize("ggml_type", IQ4, ids=lambda t: t.name)
def test_zero_blocks_decode_to_zero(ggml_type):
    x = np.zeros((3, 256), np.float32)
    x[1, 40:50] = np.linspace(-2, 3, 10)  # one live block among zero ones
    out = dequantize(torch.from_numpy(quantize_array(x, ggml_type)), ggml_type).numpy()
    assert np.array_equal(out[0], x[0]) and np.array_equal(out[2], x[2])
    assert np.abs(out[1] - x[1]).max() < 0.25  # 4 bits over a range of 5


def test_iq4_xs_falls_back_to_iq4_nl_on_rows_of_partial_super_blocks():
    assert fit_type(GGMLType.IQ4_XS, 576) == GGMLType.IQ4_NL
    assert fit_type(GGMLType.IQ4_XS, 512) == GGMLType.IQ4_XS
    assert mix_type("IQ4_XS", "blk.0.attn_q.weight", 0, 8, cols=576) == GGMLType.IQ4_NL
    assert mix_type("iq4_xs", "output.weight", None, 8, cols=512) == GGMLType.Q6_K
    with pytest.raises(ValueError, match="multiples of 256"):
        quantize_array(np.zeros((2, 96), np.float32), GGMLType.IQ4_XS)
