"""Dequantize GGUF blocks in torch: uint8 [rows, row_bytes] -> float32 [rows, cols].

Each type is decoded for all blocks at once (no Python loop over blocks) with the same float32
operations in the same order as the `gguf` package's numpy reference, so the results are equal
bit for bit (tests/unit/test_gguf_quant_dequant.py). This is the torch twin every kernel is
checked against, and the fallback for types without a C kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from minerva.quant.gguf_types import BLOCK_GEOMETRY, IQ4_CODEBOOK, GGMLType, QuantizedTensor

QK_K = 256
_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)  # 2-bit fields of a byte
_IQ4_VALUES = {torch.device("cpu"): torch.tensor(IQ4_CODEBOOK, dtype=torch.float32)}


def _f16(b: torch.Tensor) -> torch.Tensor:
    """Two little-endian bytes per row [n, 2] -> float32 [n, 1]."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, ..., B] bytes -> [n, ..., 2, B]: low nibbles, then high nibbles."""
    return torch.stack([qs & 0x0F, qs >> 4], dim=-2)


def _bits(b: torch.Tensor, count: int) -> torch.Tensor:
    """[n, B] bytes -> [n, count, B]: bit i of every byte in plane i."""
    shifts = torch.arange(count, dtype=torch.uint8, device=b.device).view(1, count, 1)
    return (b.unsqueeze(1) >> shifts) & 1


def _le_bits32(qh: torch.Tensor) -> torch.Tensor:
    """[n, 4] bytes of a little-endian uint32 -> [n, 32] bits, bit j at column j."""
    shifts = torch.arange(8, dtype=torch.uint8, device=qh.device).view(1, 1, 8)
    return ((qh.unsqueeze(-1) >> shifts) & 1).reshape(qh.shape[0], 32)


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b[:, :2])
    q = _nibbles(b[:, 2:]).reshape(b.shape[0], 32).to(torch.int8) - 8
    return d * q.float()


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    q = _nibbles(b[:, 4:]).reshape(b.shape[0], 32).float()
    return d * q + m


def _q5(b: torch.Tensor) -> torch.Tensor:
    """The 5-bit codes 0..31 of Q5_0 / Q5_1 blocks whose qh starts at byte `off`."""
    off = b.shape[1] - 20
    ql = _nibbles(b[:, off + 4 :]).reshape(b.shape[0], 32)
    return ql | (_le_bits32(b[:, off : off + 4]) << 4)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b[:, :2]) * (_q5(b).to(torch.int8) - 16).float()


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    return d * _q5(b).float() + m


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    return b[:, 2:].contiguous().view(torch.int8).float() * _f16(b[:, :2])


def _q8_1(b: torch.Tensor) -> torch.Tensor:
    # llama.cpp's block_q8_1: d, s (= d * sum(q), for the dot product), then 32 int8
    return b[:, 4:].contiguous().view(torch.int8).float() * _f16(b[:, :2])


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0xF).float()).view(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).view(n, 16, 1)
    shifts = _SHIFTS.to(b.device).view(1, 1, 4, 1)
    q = ((qs.reshape(n, 2, 1, 32) >> shifts) & 3).reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k_scales(sc: torch.Tensor) -> torch.Tensor:
    """12 packed bytes -> 16 signed 6-bit scales (low nibbles in 0..7, top 2 bits in 8..11)."""
    n = sc.shape[0]
    low = _nibbles(sc[:, :8]).reshape(n, 16) & 0x0F
    shifts = _SHIFTS.to(sc.device).view(1, 4, 1)
    high = ((sc[:, 8:12].reshape(n, 1, 4) >> shifts) & 3).reshape(n, 16)
    return ((low | (high << 4)).to(torch.int8) - 32).float()


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    hmask, qs, sc, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    dl = (d * _q3_k_scales(sc)).view(n, 16, 1)
    shifts = _SHIFTS.to(b.device).view(1, 1, 4, 1)
    ql = ((qs.reshape(n, 2, 1, 32) >> shifts) & 3).reshape(n, 16, 16)
    qh = _bits(hmask, 8).reshape(n, 16, 16) ^ 1  # a set bit means "no -4 offset"
    q = (ql.to(torch.int8) - (qh << 2).to(torch.int8)).float()
    return (dl * q).reshape(n, QK_K)


def k4_scale_min(sc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K / Q5_K: 12 packed bytes -> 8 six-bit scales and 8 six-bit mins (uint8 [n, 8])."""
    n = sc.shape[0]
    d, m, md = sc[:, 0:4], sc[:, 4:8], sc[:, 8:12]
    scale = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mins = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return scale.reshape(n, 8), mins.reshape(n, 8)


def _k_scaled(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """d * sc * q - dmin * m for Q4_K / Q5_K codes q [n, 8, 32]."""
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, m = k4_scale_min(b[:, 4:16])
    dl = (d * sc.float()).view(n, 8, 1)
    dm = (dmin * m.float()).view(n, 8, 1)
    return (dl * q.float() - dm).reshape(n, QK_K)


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    return _k_scaled(b, _nibbles(b[:, 16:].reshape(n, 4, 32)).reshape(n, 8, 32))


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql = _nibbles(b[:, 48:].reshape(n, 4, 32)).reshape(n, 8, 32)
    qh = _bits(b[:, 16:48], 8)  # [n, 8, 32]
    return _k_scaled(b, ql | (qh << 4))


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql, qh, sc, d = b[:, :128], b[:, 128:192], b[:, 192:208], _f16(b[:, 208:210])
    dl = (d * sc.contiguous().view(torch.int8).float()).view(n, 16, 1)
    low = _nibbles(ql.reshape(n, 2, 64)).reshape(n, 8, 32)
    shifts = _SHIFTS.to(b.device).view(1, 1, 4, 1)
    high = ((qh.reshape(n, 2, 1, 32) >> shifts) & 3).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, 16, 16).float()
    return (dl * q).reshape(n, QK_K)


def _iq4_values(idx: torch.Tensor) -> torch.Tensor:
    """4-bit indices (uint8, any shape) -> their codebook values as float32. The codebook is
    copied to a device once (the first call, a warm-up), so no later call copies from the host:
    the twin may run inside a CUDA graph capture."""
    book = _IQ4_VALUES.get(idx.device)
    if book is None:
        book = _IQ4_VALUES[idx.device] = _IQ4_VALUES[torch.device("cpu")].to(idx.device)
    return book[idx.long()]


def _iq4_nl(b: torch.Tensor) -> torch.Tensor:
    return _f16(b[:, :2]) * _iq4_values(_nibbles(b[:, 2:]).reshape(b.shape[0], 32))


def _iq4_xs(b: torch.Tensor) -> torch.Tensor:
    """d, scales_h (uint16: 2 high bits per sub-block), scales_l (4 low bits per sub-block),
    then 8 sub-blocks of 16 bytes (low nibbles values 0-15, high nibbles 16-31)."""
    n = b.shape[0]
    low = _nibbles(b[:, 4:8].reshape(n, 4, 1)).reshape(n, 8)  # sub-block 2j, 2j + 1 of byte j
    shifts = torch.arange(0, 16, 2, dtype=torch.int32, device=b.device).view(1, 8)
    high = (_f16_bits(b[:, 2:4]) >> shifts) & 3
    scales = (low.to(torch.int32) | (high << 4)) - 32
    dl = (_f16(b[:, :2]) * scales.float()).view(n, 8, 1)
    q = _iq4_values(_nibbles(b[:, 8:].reshape(n, 8, 16)).reshape(n, 8, 32))
    return (dl * q).reshape(n, QK_K)


def _f16_bits(b: torch.Tensor) -> torch.Tensor:
    """Two little-endian bytes per row [n, 2] -> their uint16 value as int32 [n, 1]."""
    return b[:, :1].to(torch.int32) | (b[:, 1:2].to(torch.int32) << 8)


BLOCK_DECODERS: dict[GGMLType, Callable[[torch.Tensor], torch.Tensor]] = {
    GGMLType.Q4_0: _q4_0,
    GGMLType.Q4_1: _q4_1,
    GGMLType.Q5_0: _q5_0,
    GGMLType.Q5_1: _q5_1,
    GGMLType.Q8_0: _q8_0,
    GGMLType.Q8_1: _q8_1,
    GGMLType.Q2_K: _q2_k,
    GGMLType.Q3_K: _q3_k,
    GGMLType.Q4_K: _q4_k,
    GGMLType.Q5_K: _q5_k,
    GGMLType.Q6_K: _q6_k,
    GGMLType.IQ4_NL: _iq4_nl,
    GGMLType.IQ4_XS: _iq4_xs,
}


def dequantize(data: torch.Tensor, ggml_type: GGMLType) -> torch.Tensor:
    """uint8 [rows, row_bytes] in `ggml_type`'s encoding -> float32 [rows, cols]."""
    ggml_type = GGMLType(ggml_type)
    rows = data.shape[0]
    data = data.reshape(rows, -1)
    if ggml_type == GGMLType.F32:
        return data.contiguous().view(torch.float32).clone()
    if ggml_type == GGMLType.F16:
        return data.contiguous().view(torch.float16).float()
    if ggml_type == GGMLType.BF16:
        return data.contiguous().view(torch.bfloat16).float()
    decode = BLOCK_DECODERS.get(ggml_type)
    if decode is None:
        raise NotImplementedError(f"no dequantization for {ggml_type.name}")
    block, size = BLOCK_GEOMETRY[ggml_type]
    if data.shape[1] % size:
        raise ValueError(f"{ggml_type.name} rows hold multiples of {size} bytes")
    blocks = data.reshape(-1, size)  # [rows * blocks_per_row, size]
    return decode(blocks).reshape(rows, data.shape[1] // size * block)


def dequantize_tensor(tensor: QuantizedTensor) -> torch.Tensor:
    """A QuantizedTensor (data a torch tensor or a numpy array / memmap) -> float32 of its
    logical shape, e.g. a quantized token embedding for a layer that takes floats."""
    data = tensor.data
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.array(data, dtype=np.uint8, copy=not data.flags.writeable))
    rows = tensor.shape[0]
    return dequantize(data.reshape(rows, -1), tensor.ggml_type).reshape(tensor.shape)
