"""quant/gguf_planes.py: the GPU plane layout holds exactly the file's bytes (any bytes, so
every bit of the packed Q4_K / Q5_K scales is covered) and is the size it says."""

from __future__ import annotations

import pytest
import torch

from minerva.quant.gguf_planes import PLANE_TYPES, from_planes, plane_row_bytes, supports, to_planes
from minerva.quant.gguf_types import GGMLType, row_bytes


@pytest.mark.parametrize("ggml_type", sorted(PLANE_TYPES), ids=lambda t: t.name)
@pytest.mark.parametrize("cols", [256, 256 * 43])
def test_planes_round_trip_to_the_file_bytes(ggml_type, cols):
    gen = torch.Generator().manual_seed(int(ggml_type) + cols)
    data = torch.randint(0, 256, (5, row_bytes(ggml_type, cols)), dtype=torch.uint8, generator=gen)
    planes = to_planes(data, ggml_type, cols)
    assert planes.shape == (5, plane_row_bytes(ggml_type, cols))
    assert planes.shape[1] % 16 == 0 and planes.shape[1] <= data.shape[1] * 1.03 + 16
    assert torch.equal(from_planes(planes, ggml_type, cols), data)


def test_q4_k_planes_unpack_the_six_bit_scales():
    from minerva.quant.gguf_dequant import dequantize
    from minerva.quant.gguf_quantize import quantize_tensor

    w = torch.randn(3, 256, generator=torch.Generator().manual_seed(0))
    blocks = quantize_tensor(w, GGMLType.Q4_K).data
    planes = to_planes(blocks, GGMLType.Q4_K, 256)
    qs, sc, mins = planes[:, :128], planes[:, 128:136].float(), planes[:, 136:144].float()
    d, dmin = (planes[:, 144 + 2 * i : 146 + 2 * i].contiguous().view(torch.float16).float()
               for i in range(2))  # fmt: skip
    codes = torch.stack([qs.reshape(3, 4, 32) & 15, qs.reshape(3, 4, 32) >> 4], 2).reshape(3, 8, 32)
    rebuilt = (d * sc).unsqueeze(-1) * codes.float() - (dmin * mins).unsqueeze(-1)
    assert torch.equal(rebuilt.reshape(3, 256), dequantize(blocks, GGMLType.Q4_K))


def test_supported_types_and_shapes():
    assert supports(GGMLType.Q4_K, 512) and not supports(GGMLType.Q4_K, 96)
    assert supports(GGMLType.Q8_0, 96) and not supports(GGMLType.Q3_K, 256)
