"""Quantize float weights into GGUF blocks: float [rows, cols] -> uint8 [rows, row_bytes].

The 32-element types (Q8_0, Q8_1, Q4_0, Q4_1, Q5_0, Q5_1) follow llama.cpp's
`quantize_row_*_ref` with the same float32 operations as the `gguf` package's numpy quantizer,
so the bytes are equal to `gguf.quants.quantize` (tests/unit/test_gguf_quant_quantize.py). The
K types run in C (ops/cpu_quantize.c) with the numpy searches of gguf_quantize_k.py as their
twin and fallback; IQ4_NL / IQ4_XS search their scales in numpy (gguf_quantize_iq4.py). The numpy code is vectorised over blocks, in chunks of rows so the
temporaries of a big matrix stay small.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from minerva.ops import cpu_quantize
from minerva.quant.gguf_quantize_iq4 import quantize_iq4_nl, quantize_iq4_xs
from minerva.quant.gguf_quantize_k import K_QUANTIZERS
from minerva.quant.gguf_types import BLOCK_GEOMETRY, GGMLType, QuantizedTensor, row_bytes

CHUNK_ELEMENTS = 1 << 20  # values quantized per numpy pass (bounds the temporaries)
F32 = np.float32


QUANTIZER_VERSION = 1
"""Part of the weight cache's key for in-situ quantization (runner/model_loading.py): bump it
when quantize_tensor or the mix rules (gguf_mix.py) change the bytes a float folder becomes."""


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """float32 [n] or [n, 1] -> the fp16 bytes [n, 2] (round to nearest even, as ggml)."""
    return v.reshape(-1).astype(np.float16).view(np.uint8).reshape(-1, 2)


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, F32(0), F32(1) / d).astype(F32)


def _signed_max(x: np.ndarray) -> np.ndarray:
    """The value of largest magnitude in each block (the first one on ties) [n, 1]."""
    return np.take_along_axis(x, np.abs(x).argmax(axis=1, keepdims=True), axis=1)


def _round_away(v: np.ndarray) -> np.ndarray:
    """C's roundf: halves away from zero."""
    a = np.abs(v)
    fl = np.floor(a)
    return np.sign(v) * (fl + np.floor(F32(2) * (a - fl)))


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """uint8 codes [n, 32] -> [n, 16]: element j in the low nibble, j + 16 in the high one."""
    return q[:, :16] | (q[:, 16:] << np.uint8(4))


def _pack_high_bits(q: np.ndarray) -> np.ndarray:
    """Bit 4 of 32 codes -> a little-endian uint32 as 4 bytes [n, 4]."""
    return np.packbits((q >> np.uint8(4)) & np.uint8(1), axis=1, bitorder="little")


def _q8_0(x: np.ndarray) -> np.ndarray:
    d = (np.abs(x).max(axis=1, keepdims=True) / F32(127)).astype(F32)
    q = _round_away(x * _inverse(d)).astype(np.int8).view(np.uint8)
    return np.concatenate([_f16_bytes(d), q], axis=1)


def _q8_1(x: np.ndarray) -> np.ndarray:
    d = (np.abs(x).max(axis=1, keepdims=True) / F32(127)).astype(F32)
    q = _round_away(x * _inverse(d)).astype(np.int8)
    s = q.astype(np.int32).sum(axis=1, keepdims=True).astype(F32) * d
    return np.concatenate([_f16_bytes(d), _f16_bytes(s), q.view(np.uint8)], axis=1)


def _codes(v: np.ndarray, top: int) -> np.ndarray:
    """C's (int8_t)(v) then MIN(top, .): truncation toward zero, as uint8."""
    return np.trunc(v, dtype=F32).astype(np.uint8).clip(0, top)


def _q4_0(x: np.ndarray) -> np.ndarray:
    d = (_signed_max(x) / F32(-8)).astype(F32)
    q = _codes(x * _inverse(d) + F32(8.5), 15)
    return np.concatenate([_f16_bytes(d), _pack_nibbles(q)], axis=1)


def _q4_1(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    d = ((hi - lo) / F32(15)).astype(F32)
    q = _codes((x - lo) * _inverse(d) + F32(0.5), 15)
    return np.concatenate([_f16_bytes(d), _f16_bytes(lo), _pack_nibbles(q)], axis=1)


def _q5_0(x: np.ndarray) -> np.ndarray:
    d = (_signed_max(x) / F32(-16)).astype(F32)
    q = _codes(x * _inverse(d) + F32(16.5), 31)
    qs = _pack_nibbles(q & np.uint8(0x0F))
    return np.concatenate([_f16_bytes(d), _pack_high_bits(q), qs], axis=1)


def _q5_1(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    d = ((hi - lo) / F32(31)).astype(F32)
    q = _codes((x - lo) * _inverse(d) + F32(0.5), 31)
    qs = _pack_nibbles(q & np.uint8(0x0F))
    return np.concatenate([_f16_bytes(d), _f16_bytes(lo), _pack_high_bits(q), qs], axis=1)


BLOCK_QUANTIZERS: dict[GGMLType, Callable[[np.ndarray], np.ndarray]] = {
    GGMLType.Q8_0: _q8_0,
    GGMLType.Q8_1: _q8_1,
    GGMLType.Q4_0: _q4_0,
    GGMLType.Q4_1: _q4_1,
    GGMLType.Q5_0: _q5_0,
    GGMLType.Q5_1: _q5_1,
    **K_QUANTIZERS,
    GGMLType.IQ4_NL: quantize_iq4_nl,
    GGMLType.IQ4_XS: quantize_iq4_xs,
}
QUANTIZABLE = frozenset(BLOCK_QUANTIZERS) | {GGMLType.F32, GGMLType.F16, GGMLType.BF16}


def quantize_array(values: np.ndarray, ggml_type: GGMLType, native: bool = True) -> np.ndarray:
    """float [rows, cols] -> uint8 [rows, row_bytes] in `ggml_type`'s encoding; the K types go
    through the C quantizer (ops/cpu_quantize.c) unless `native` is False or it is unavailable."""
    ggml_type = GGMLType(ggml_type)
    values = np.ascontiguousarray(values, dtype=F32)
    rows, cols = values.shape
    nbytes = row_bytes(ggml_type, cols)  # raises on a row that is not whole blocks
    if ggml_type == GGMLType.F32:
        return values.view(np.uint8).copy()
    if ggml_type == GGMLType.F16:
        return values.astype(np.float16).view(np.uint8)
    if ggml_type == GGMLType.BF16:
        bf16 = torch.from_numpy(values).to(torch.bfloat16)  # round to nearest even, as ggml
        return bf16.view(torch.int16).numpy().view(np.uint8).copy()
    quantizer = BLOCK_QUANTIZERS.get(ggml_type)
    if quantizer is None:
        raise NotImplementedError(f"no quantizer for {ggml_type.name}")
    block, size = BLOCK_GEOMETRY[ggml_type]
    if native and ggml_type in K_QUANTIZERS:
        fast = cpu_quantize.quantize_k(values.reshape(-1, block), ggml_type)
        if fast is not None:
            return fast.reshape(rows, nbytes)
    out = np.empty((rows, nbytes), dtype=np.uint8)
    step = max(1, CHUNK_ELEMENTS // cols)
    for r in range(0, rows, step):
        part = values[r : r + step].reshape(-1, block)  # [blocks, block]
        out[r : r + step] = quantizer(part).reshape(-1, nbytes)
    return out


def quantize_tensor(
    weight: torch.Tensor,
    ggml_type: GGMLType,
    progress: Callable[[int], None] | None = None,
) -> QuantizedTensor:
    """A 2-D float weight [out, in] -> its GGUF blocks (uint8 torch tensor [out, row_bytes]).

    `progress`, if given, is called with the number of values done after the tensor."""
    if weight.dim() != 2:
        raise ValueError(f"quantize_tensor takes a 2-D weight, not shape {tuple(weight.shape)}")
    values = weight.detach().to(device="cpu", dtype=torch.float32).numpy()
    data = torch.from_numpy(quantize_array(values, ggml_type))
    if progress is not None:
        progress(weight.numel())
    return QuantizedTensor(data=data, ggml_type=GGMLType(ggml_type), shape=tuple(weight.shape))
