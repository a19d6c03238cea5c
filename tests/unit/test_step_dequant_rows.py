"""The decode step's own dequantization of a GGUF token embedding's rows (ops/dequant_row.h)
against its twin, quant/gguf_dequant.dequantize (what Embedding.forward runs): bitwise equal
for every type the step takes, on quantized values and on arbitrary bytes (every code, scale
and min, subnormal and non-finite fp16 scales included)."""

from __future__ import annotations

import pytest
import torch

from minerva.ops import cpu_decode_step
from minerva.quant.gguf_dequant import dequantize
from minerva.quant.gguf_quantize import quantize_tensor
from minerva.quant.gguf_types import GGMLType, row_bytes

TYPES = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K]
IQ_TYPES = [GGMLType.IQ4_NL, GGMLType.IQ4_XS]  # no quantizer of ours: arbitrary bytes only
COLS = 512


@pytest.fixture(autouse=True)
def built():
    if cpu_decode_step._bound() is None:
        pytest.skip("no C compiler here")


def assert_bitwise(got: torch.Tensor | None, want: torch.Tensor) -> None:
    assert got is not None and got.shape == want.shape
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))  # NaN payloads too


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_quantized_rows_equal_the_torch_dequantization(ggml_type):
    x = torch.randn(9, COLS, generator=torch.Generator().manual_seed(1)) * 3
    rows = torch.as_tensor(quantize_tensor(x, ggml_type).data).reshape(9, -1)
    assert cpu_decode_step.embeds_blocks(ggml_type)
    assert_bitwise(
        cpu_decode_step.dequantize_rows(rows, ggml_type, COLS), dequantize(rows, ggml_type)
    )


@pytest.mark.parametrize("ggml_type", TYPES + IQ_TYPES, ids=lambda t: t.name)
def test_arbitrary_bytes_equal_the_torch_dequantization(ggml_type):
    g = torch.Generator().manual_seed(2)
    rows = torch.randint(0, 256, (64, row_bytes(ggml_type, COLS)), dtype=torch.uint8, generator=g)
    want = dequantize(rows, ggml_type)
    got = cpu_decode_step.dequantize_rows(rows, ggml_type, COLS)
    assert cpu_decode_step.embeds_blocks(ggml_type)
    finite = torch.isfinite(want)
    assert not finite.all()  # some blocks' fp16 scales are inf / NaN
    assert got is not None and torch.equal(got[finite], want[finite])
    assert torch.equal(torch.isnan(got), torch.isnan(want))


def test_other_types_stay_with_torch():
    for ggml_type in (GGMLType.Q5_0, GGMLType.Q3_K, GGMLType.F16):
        assert not cpu_decode_step.embeds_blocks(ggml_type)
        assert (
            cpu_decode_step.dequantize_rows(torch.zeros(1, 64, dtype=torch.uint8), ggml_type, 32)
            is None
        )
