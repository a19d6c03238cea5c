"""Quantize float blocks to IQ4_NL / IQ4_XS: 4-bit indices into the non-linear codebook
(gguf_types.IQ4_CODEBOOK) with a searched scale per block of 32.

The search is llama.cpp's `quantize_row_iq4_nl_impl` without an importance matrix (each value
weighted by its square): start from the scale that maps the block's value of largest magnitude
onto the codebook's end (-127), then try 15 scales around it and keep the one that maximises
sum(w q x)^2 / sum(w q^2), the least-squares fit of the block by the chosen codebook values.
IQ4_XS then rounds the 8 block scales of a 256-value super-block to signed 6-bit multiples of one
fp16 scale and picks the indices again for the rounded scales. Numpy, vectorised over blocks;
the weighted sums run element by element in order, as the C loops add them, so the choices of
index and scale are llama.cpp's (tests/unit/test_gguf_quant_iq4.py compares with its files).
"""

from __future__ import annotations

import numpy as np

from minerva.quant.gguf_types import IQ4_CODEBOOK

F32 = np.float32
VALUES = np.array(IQ4_CODEBOOK, dtype=F32)
NTRY = 7  # scales tried on each side of the first guess
GROUP_MAX_EPS = F32(1e-15)  # a block whose values are all below this is stored as zeros


def _reference_best_index(v: np.ndarray) -> np.ndarray:
    """The codebook index nearest to each value, by llama.cpp's rule (`best_index_int8`:
    the upper one on an exact tie), uint8; best_index's twin."""
    mu = np.searchsorted(VALUES, v, side="right").clip(1, 15)  # VALUES[mu - 1] <= v < VALUES[mu]
    lower = (v - VALUES[mu - 1]) < (VALUES[mu] - v)
    idx = np.where(lower, mu - 1, mu)
    return np.where(v <= VALUES[0], 0, np.where(v >= VALUES[15], 15, idx)).astype(np.uint8)


# The midpoints between neighbouring codebook values are multiples of 1/2, so the nearest index
# of v depends only on floor(2 v): a table over floor(2 v) in [-256, 256) (beyond it, the ends).
_HALVES = np.arange(-256, 256, dtype=F32) / F32(2)
_INDEX_OF_HALF = _reference_best_index(_HALVES)


def best_index(v: np.ndarray) -> np.ndarray:
    """The codebook index nearest to each value (the upper one on an exact tie), uint8."""
    k = np.floor(v * F32(2)).clip(-256, 255).astype(np.int32) + 256
    return _INDEX_OF_HALF[k]


def _ordered_sum(terms: np.ndarray) -> np.ndarray:
    """float32 [32, n] -> [n]: summed over the 32 rows in order, as a C loop adds them."""
    total = terms[0].copy()
    for j in range(1, terms.shape[0]):
        total += terms[j]
    return total


def _fit(xt: np.ndarray, wt: np.ndarray, inv_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum w q x, sum w q^2) [n] for the indices of x * inv_scale; xt, wt [32, n] (a block per
    column, so the ordered sums read contiguous rows), inv_scale [n]."""
    q = VALUES[best_index((inv_scale * xt).astype(F32))]
    wq = (wt * q).astype(F32)
    return _ordered_sum((wq * xt).astype(F32)), _ordered_sum((wq * q).astype(F32))


def block_scales(x: np.ndarray) -> np.ndarray:
    """float32 [n, 32] -> the searched scale of each block [n] (0 for an all-zero block)."""
    rows = np.arange(len(x))
    first = np.abs(x).argmax(axis=1)
    amax = np.abs(x)[rows, first]
    live = amax >= GROUP_MAX_EPS
    mx = np.where(live, x[rows, first], F32(1)).astype(F32)  # [n]
    xt = np.ascontiguousarray(x.T)  # [32, n]
    wt = (xt * xt).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = (-mx / VALUES[0]).astype(F32)
        sumqx, sumq2 = _fit(xt, wt, (F32(1) / d).astype(F32))
        d = (sumqx / sumq2).astype(F32)
        best = (d * sumqx).astype(F32)
        for itry in range(-NTRY, NTRY + 1):
            inv = ((F32(itry) + VALUES[0]) / mx).astype(F32)
            sumqx, sumq2 = _fit(xt, wt, inv)
            better = (sumq2 > 0) & ((sumqx * sumqx).astype(F32) > (best * sumq2).astype(F32))
            d = np.where(better, (sumqx / sumq2).astype(F32), d)
            best = np.where(better, (d * sumqx).astype(F32), best)
    return np.where(live, d, F32(0)).astype(F32)


def _pack(idx: np.ndarray) -> np.ndarray:
    """uint8 indices [n, 32] -> [n, 16]: index j in the low nibble, j + 16 in the high one."""
    return idx[:, :16] | (idx[:, 16:] << np.uint8(4))


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, F32(0), F32(1) / d).astype(F32)


def quantize_iq4_nl(x: np.ndarray) -> np.ndarray:
    """float32 blocks [n, 32] -> IQ4_NL blocks uint8 [n, 18]."""
    x = x.astype(F32, copy=False)
    d = block_scales(x)
    idx = best_index((_inverse(d)[:, None] * x).astype(F32))
    dh = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return np.concatenate([dh, _pack(idx)], axis=1)


def _nearest_int(v: np.ndarray) -> np.ndarray:
    """llama.cpp's nearest_int: round half to even (the 1.5 * 2^23 trick)."""
    return np.rint(v).astype(np.int32)


def quantize_iq4_xs(x: np.ndarray) -> np.ndarray:
    """float32 super-blocks [n, 256] -> IQ4_XS blocks uint8 [n, 136]."""
    x = x.astype(F32, copy=False)
    n = x.shape[0]
    sub = x.reshape(n * 8, 32)
    scales = block_scales(sub).reshape(n, 8)
    first = np.abs(scales).argmax(axis=1)  # the first scale of largest magnitude, signed
    max_scale = scales[np.arange(n), first]
    d = (-max_scale / F32(32)).astype(F32)  # [n]
    inv_d = _inverse(d)
    ls = _nearest_int((inv_d[:, None] * scales).astype(F32)).clip(-32, 31)  # [n, 8]
    dl = (d[:, None] * ls.astype(F32)).astype(F32)
    idx = best_index((_inverse(dl).reshape(-1, 1) * sub).astype(F32))  # [n * 8, 32]
    biased = (ls + 32).astype(np.uint16)
    low = (biased & 15).astype(np.uint8)
    scales_l = low[:, 0::2] | (low[:, 1::2] << np.uint8(4))  # [n, 4]
    high = ((biased >> 4) << (2 * np.arange(8, dtype=np.uint16))).sum(axis=1).astype(np.uint16)
    dh = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    parts = [dh, high.view(np.uint8).reshape(-1, 2), scales_l, _pack(idx).reshape(n, 128)]
    return np.concatenate(parts, axis=1)
