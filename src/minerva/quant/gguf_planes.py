"""GGUF blocks rewritten as planes for the GPU kernels (ops/triton_quant.py), and back.

A file block interleaves its scales with its codes (a Q4_K block: d, dmin, 12 bytes of packed
6-bit scales, 128 bytes of nibbles), so a GPU thread reading 16 contiguous bytes of a row would
straddle fields. Here each row is rewritten once, at load, into planes laid end to end: all its
codes, then all its high bits, then its scales, each plane contiguous and the row padded to 16
bytes, so every load of codes is a wide, coalesced one. The codes keep the file's order within
a block (the kernels read them in that order); only the 6-bit Q4_K / Q5_K scales are unpacked
to a byte each. The row grows by at most 3% (Q4_K: 148 bytes per 256 values instead of 144).

Row layouts (K values per row; f16 planes little-endian):
  Q8_0  qs int8 [K] | d f16 [K/32]
  Q4_0  qs [K/2] | d f16 [K/32]
  Q4_K  qs [K/2] | sc u8 [K/32] | m u8 [K/32] | (d, dmin) f16 [K/256, 2]
  Q5_K  qs [K/2] | qh [K/8] | sc u8 [K/32] | m u8 [K/32] | (d, dmin) f16 [K/256, 2]
  Q6_K  ql [K/2] | qh [K/4] | sc int8 [K/16] | d f16 [K/256]
Torch only (any device): `to_planes` runs where the weights already are, `from_planes` undoes it
exactly (the file bytes again), for the twin and for tests.
"""

from __future__ import annotations

import torch

from minerva.quant.gguf_dequant import k4_scale_min
from minerva.quant.gguf_types import BLOCK_GEOMETRY, GGMLType

PLANE_TYPES = frozenset({GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K})
ALIGN = 16  # bytes: each row starts on a 16-byte boundary


def supports(ggml_type: GGMLType, cols: int) -> bool:
    """Whether rows of `cols` values of this type have a plane layout."""
    return ggml_type in PLANE_TYPES and cols % BLOCK_GEOMETRY[ggml_type][0] == 0


def _plane_sizes(ggml_type: GGMLType, k: int) -> list[int]:
    if ggml_type == GGMLType.Q8_0:
        return [k, k // 16]
    if ggml_type == GGMLType.Q4_0:
        return [k // 2, k // 16]
    if ggml_type == GGMLType.Q4_K:
        return [k // 2, k // 32, k // 32, k // 64]
    if ggml_type == GGMLType.Q5_K:
        return [k // 2, k // 8, k // 32, k // 32, k // 64]
    if ggml_type == GGMLType.Q6_K:
        return [k // 2, k // 4, k // 16, k // 128]
    raise ValueError(f"{ggml_type.name} has no plane layout")


def plane_row_bytes(ggml_type: GGMLType, cols: int) -> int:
    """Bytes of one row in the plane layout (padded to ALIGN)."""
    n = sum(_plane_sizes(ggml_type, cols))
    return (n + ALIGN - 1) // ALIGN * ALIGN


def to_planes(data: torch.Tensor, ggml_type: GGMLType, cols: int) -> torch.Tensor:
    """uint8 [rows, file row bytes] -> uint8 [rows, plane_row_bytes], on data's device."""
    block, size = BLOCK_GEOMETRY[ggml_type]
    rows, nb = data.shape[0], cols // block
    b = data.reshape(rows, nb, size)
    if ggml_type in (GGMLType.Q8_0, GGMLType.Q4_0):
        planes = [b[:, :, 2:], b[:, :, :2]]
    elif ggml_type in (GGMLType.Q4_K, GGMLType.Q5_K):
        sc, m = k4_scale_min(b[:, :, 4:16].reshape(rows * nb, 12))
        codes = [b[:, :, 16:144]] if ggml_type == GGMLType.Q4_K else [b[:, :, 48:], b[:, :, 16:48]]
        planes = [*codes, sc.reshape(rows, nb, 8), m.reshape(rows, nb, 8), b[:, :, :4]]
    else:  # Q6_K
        planes = [b[:, :, :128], b[:, :, 128:192], b[:, :, 192:208], b[:, :, 208:210]]
    out = torch.zeros(rows, plane_row_bytes(ggml_type, cols), dtype=torch.uint8, device=b.device)
    start = 0
    for p in planes:
        p = p.reshape(rows, -1)
        out[:, start : start + p.shape[1]] = p
        start += p.shape[1]
    return out


def from_planes(planes: torch.Tensor, ggml_type: GGMLType, cols: int) -> torch.Tensor:
    """The inverse of to_planes: the file's blocks, uint8 [rows, file row bytes]."""
    block, size = BLOCK_GEOMETRY[ggml_type]
    rows, nb = planes.shape[0], cols // block
    parts, start = [], 0
    for n in _plane_sizes(ggml_type, cols):
        parts.append(planes[:, start : start + n].reshape(rows, nb, n // nb))
        start += n
    if ggml_type in (GGMLType.Q8_0, GGMLType.Q4_0):
        fields = [parts[1], parts[0]]
    elif ggml_type in (GGMLType.Q4_K, GGMLType.Q5_K):
        sc, m = parts[-3], parts[-2]
        packed = torch.cat(
            [
                (sc[..., :4] & 0x3F) | ((sc[..., 4:] >> 4) << 6),
                (m[..., :4] & 0x3F) | ((m[..., 4:] >> 4) << 6),
                (sc[..., 4:] & 0x0F) | ((m[..., 4:] & 0x0F) << 4),
            ],
            dim=-1,
        )
        codes = [parts[0]] if ggml_type == GGMLType.Q4_K else [parts[1], parts[0]]
        fields = [parts[-1], packed, *codes]
    else:
        fields = parts
    out = torch.cat(fields, dim=-1)
    assert out.shape[-1] == size
    return out.reshape(rows, nb * size)
