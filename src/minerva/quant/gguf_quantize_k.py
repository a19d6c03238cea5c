"""K-quant quantizers (Q2_K .. Q6_K): llama.cpp's reference algorithms, vectorised in numpy.

These are the `quantize_row_q*_K_ref` searches that `llama-quantize` runs without an importance
matrix, written here from their description: per sub-block a scale (and min) search, the
sub-block scales quantized to 4/6/8 bits against one fp16 super-scale, then every value re-coded
against the stored scales. Each search step runs over all sub-blocks at once. This is the twin
of the C quantizer (ops/cpu_quantize.c). gguf-py has no K quantizers to compare bytes with, so
the tests bound the round-trip error per type and check that re-quantizing is stable. Sums are numpy's (pairwise) where llama.cpp's are sequential, so a
rare tie may resolve differently; the format and the error are the same.
"""

from __future__ import annotations

import numpy as np

from minerva.quant.gguf_types import GGMLType

F32 = np.float32
QK_K = 256
GROUP_MAX_EPS = F32(1e-15)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """llama.cpp's nearest_int: round half to even, as int32 (non-finite values give 0)."""
    with np.errstate(invalid="ignore"):
        r = np.nan_to_num(np.rint(v), nan=0, posinf=0, neginf=0)
    return np.clip(r, -(1 << 30), 1 << 30).astype(np.int32)


def _f16(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16)


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    return _f16(v).reshape(-1).view(np.uint8).reshape(-1, 2)


def _weighted_error(w, scale, mn, L, x, use_mad):
    diff = scale[:, None] * L + mn[:, None] - x
    return (w * (np.abs(diff) if use_mad else diff * diff)).sum(axis=1)


def make_qkx2_quants(x, w, nmax, rmin, rdelta, nstep, use_mad):
    """Scale, min and codes 0..nmax of x [n, k] minimising the weighted error of
    scale * L - min over a few candidate scales (llama.cpp's make_qkx2_quants)."""
    mn = np.minimum(x.min(axis=1), F32(0))
    mx = x.max(axis=1)
    flat = mx == mn
    span = np.where(flat, F32(1), mx - mn)
    sum_w = w.sum(axis=1)
    sum_x = (w * x).sum(axis=1)
    iscale = F32(nmax) / span
    scale = F32(1) / iscale
    L = np.clip(nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax).astype(F32)
    best = _weighted_error(w, scale, mn, L, x, use_mad)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for step in range(nstep + 1):  # the min found so far moves the candidates' grid
            span = np.where(flat, F32(1), mx - mn)
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / span
            La = np.clip(nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax).astype(F32)
            sum_l, sum_l2 = (w * La).sum(axis=1), (w * La * La).sum(axis=1)
            sum_xl = (w * La * x).sum(axis=1)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            clamp = this_min > 0
            this_min = np.where(clamp, F32(0), this_min)
            this_scale = np.where(clamp, sum_xl / sum_l2, this_scale)
            err = _weighted_error(w, this_scale, this_min, La, x, use_mad)
            better = (D > 0) & (err < best) & ~flat
            L = np.where(better[:, None], La, L)
            best = np.where(better, err, best)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    scale = np.where(flat, F32(0), scale).astype(F32)
    L = np.where(flat[:, None], F32(0), L)
    return scale, (-mn).astype(F32), L.astype(np.int32)


def _signed_max(x):
    return np.take_along_axis(x, np.abs(x).argmax(axis=1, keepdims=True), axis=1)[:, 0]


def make_qx_quants(x, nmax):
    """Symmetric scale and codes 0..2*nmax-1 of x [n, k], the best of 19 candidate scales
    under x^2 weights (llama.cpp's make_qx_quants, rmse_type 1)."""
    mx = _signed_max(x)
    zero = np.abs(mx) < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)
    w = x * x

    def codes(iscale):
        return np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1).astype(F32)

    def sums(lv):
        return (w * x * lv).sum(axis=1), (w * lv * lv).sum(axis=1)

    with np.errstate(divide="ignore", invalid="ignore"):
        lv = codes(F32(-nmax) / mx)
        sumlx, suml2 = sums(lv)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
        best = scale * sumlx
        for step in [s for s in range(-9, 10) if s != 0]:
            cand = codes(-(F32(nmax) + F32(0.1) * F32(step)) / mx)
            sumlx, suml2 = sums(cand)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            lv = np.where(better[:, None], cand, lv)
            scale = np.where(better, sumlx / suml2, scale).astype(F32)
            best = np.where(better, scale * sumlx, best)
    L = np.where(zero[:, None], 0, lv.astype(np.int32) + nmax)
    return np.where(zero, F32(0), scale).astype(F32), L


def make_q3_quants(x, nmax):
    """Symmetric scale and codes of x [n, k] by coordinate descent on the x^2-weighted error
    (llama.cpp's make_q3_quants with do_rmse): one element at a time, all sub-blocks at once."""
    mx = _signed_max(x)
    zero = np.abs(mx) < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)
    L = np.clip(nearest_int((F32(-nmax) / mx)[:, None] * x), -nmax, nmax - 1).astype(F32)
    w = x * x
    sumlx, suml2 = (w * x * L).sum(axis=1), (w * L * L).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(5):  # a pass that changes nothing leaves the state as it was
            for i in range(x.shape[1]):
                wi, xi, li = w[:, i], x[:, i], L[:, i]
                slx = sumlx - wi * xi * li
                sl2 = suml2 - wi * li * li
                new = np.clip(nearest_int(xi * sl2 / slx), -nmax, nmax - 1).astype(F32)
                slx2 = slx + wi * xi * new
                sl22 = sl2 + wi * new * new
                take = (slx > 0) & (new != li) & (sl22 > 0)
                take &= slx2 * slx2 * suml2 > sumlx * sumlx * sl22
                L[:, i] = np.where(take, new, li)
                sumlx = np.where(take, slx2, sumlx)
                suml2 = np.where(take, sl22, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    L = np.where(zero[:, None], 0, L.astype(np.int32) + nmax)
    return np.where(zero, F32(0), scale), L


def _requantize(x, d, offset, lo, hi, keep):
    """Codes of x [n, k] against the stored per-row scale d [n] (and offset): where d is 0,
    keep the search's codes."""
    with np.errstate(divide="ignore", invalid="ignore"):
        L = np.clip(nearest_int((x + offset[:, None]) / d[:, None]), lo, hi)
    return np.where((d == 0)[:, None], keep, L)


def _pack_2bit(L):
    """[nb, 256] codes 0..3 -> [nb, 64]: per 128 values, byte l holds l, l+32, l+64, l+96."""
    q = L.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def _first_abs_max(v):
    """Per row, the entry of largest magnitude (the first on ties), as in llama.cpp's loops."""
    return np.take_along_axis(v, np.abs(v).argmax(axis=1, keepdims=True), axis=1)[:, 0]


def quantize_q2_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    sub = x.reshape(nb * 16, 16)
    scales, mins, L = make_qkx2_quants(sub, np.abs(sub), 3, -0.5, 0.1, 15, True)
    scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.where(
            max_scale[:, None] > 0, nearest_int((F32(15) / max_scale)[:, None] * scales), 0
        )
        lm = np.where(max_min[:, None] > 0, nearest_int((F32(15) / max_min)[:, None] * mins), 0)
    packed = ((ls & 0xFF) | ((lm << 4) & 0xFF)).astype(np.uint8)  # [nb, 16]
    d = _f16(np.where(max_scale > 0, max_scale / F32(15), F32(0)))
    dmin = _f16(np.where(max_min > 0, max_min / F32(15), F32(0)))
    dl = (d.astype(F32)[:, None] * (packed & 0xF).astype(F32)).reshape(-1)
    ml = (dmin.astype(F32)[:, None] * (packed >> 4).astype(F32)).reshape(-1)
    L = _requantize(sub, dl, ml, 0, 3, L).reshape(nb, QK_K)
    return np.concatenate(
        [packed, _pack_2bit(L), d.view(np.uint8).reshape(-1, 2), _f16_bytes(dmin)], axis=1
    )


def _pack_q3_scales(ls):
    """16 codes 0..63 [nb, 16] -> 12 bytes: low nibbles two per byte, top 2 bits four per byte."""
    ls = ls.astype(np.uint8)
    low = (ls[:, :8] & 0xF) | ((ls[:, 8:] & 0xF) << 4)
    hi = (ls >> 4).reshape(-1, 4, 4)  # [nb, j // 4, j % 4]
    high = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)
    return np.concatenate([low, high], axis=1)


def quantize_q3_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    sub = x.reshape(nb * 16, 16)
    scales, L = make_q3_quants(sub, 4)
    scales = scales.reshape(nb, 16)
    max_scale = _first_abs_max(scales)
    has = max_scale != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(has, F32(-32) / np.where(has, max_scale, F32(1)), F32(0)).astype(F32)
        ls = np.clip(nearest_int(iscale[:, None] * scales), -32, 31) + 32
        d = _f16(np.where(has, F32(1) / iscale, F32(0)))
    ls = np.where(has[:, None], ls, 0)
    packed = np.where(has[:, None], _pack_q3_scales(ls), 0).astype(np.uint8)
    dl = (d.astype(F32)[:, None] * (ls - 32).astype(F32)).reshape(-1)
    dl = np.where(np.repeat(has, 16), dl, F32(0))
    L = _requantize(sub, dl, np.zeros_like(dl), -4, 3, L - 4) + 4
    L = L.reshape(nb, QK_K)
    high = (L > 3).reshape(nb, 8, 32).astype(np.uint8)  # value j: byte j % 32, bit j // 32
    hmask = np.zeros((nb, 32), np.uint8)
    for bit in range(8):
        hmask |= high[:, bit] << bit
    return np.concatenate(
        [hmask, _pack_2bit(L & 3), packed, d.view(np.uint8).reshape(-1, 2)], axis=1
    )


def _pack_k4_scales(ls, lm):
    """8 scales and 8 mins, 6 bits each [nb, 8] -> the 12 bytes of Q4_K / Q5_K."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    out = np.zeros((ls.shape[0], 12), np.uint8)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return out


def _quantize_k4(x, nmax, rmin, rdelta, nstep):
    """Shared by Q4_K / Q5_K: (header bytes [nb, 16], codes [nb, 256])."""
    nb = x.shape[0]
    sub = x.reshape(nb * 8, 32)
    av_x = np.sqrt((sub * sub).sum(axis=1) / F32(32))
    weights = av_x[:, None] + np.abs(sub)
    scales, mins, L = make_qkx2_quants(sub, weights, nmax, rmin, rdelta, nstep, False)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
    ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63)
    lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63)
    d, dmin = _f16(max_scale / F32(63)), _f16(max_min / F32(63))
    dl = (d.astype(F32)[:, None] * ls.astype(F32)).reshape(-1)
    ml = (dmin.astype(F32)[:, None] * lm.astype(F32)).reshape(-1)
    L = _requantize(sub, dl, ml, 0, nmax, L).reshape(nb, QK_K)
    header = np.concatenate([_f16_bytes(d), _f16_bytes(dmin), _pack_k4_scales(ls, lm)], axis=1)
    return header, L


def _pack_4bit_k(L):
    """[nb, 256] codes 0..15 -> [nb, 128]: per 64 values, byte l holds l (low) and l+32."""
    q = L.reshape(-1, 4, 2, 32).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    header, L = _quantize_k4(x, 15, -1.0, 0.1, 20)
    return np.concatenate([header, _pack_4bit_k(L)], axis=1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    header, L = _quantize_k4(x, 31, -0.5, 0.1, 15)
    high = (L >> 4).reshape(-1, 8, 32).astype(np.uint8)  # value j: byte j % 32, bit j // 32
    qh = np.zeros((L.shape[0], 32), np.uint8)
    for bit in range(8):
        qh |= high[:, bit] << bit
    return np.concatenate([header, qh, _pack_4bit_k(L & 15)], axis=1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    sub = x.reshape(nb * 16, 16)
    scales, L = make_qx_quants(sub, 32)
    scales = scales.reshape(nb, 16)
    max_scale = _first_abs_max(scales)
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = (F32(-128) / np.where(zero, F32(1), max_scale)).astype(F32)
        d = _f16(np.where(zero, F32(0), F32(1) / iscale))
        ls = np.minimum(nearest_int(iscale[:, None] * scales), 127)
    ls = np.where(zero[:, None], 0, ls)
    dl = (d.astype(F32)[:, None] * ls.astype(F32)).reshape(-1)
    L = _requantize(sub, dl, np.zeros_like(dl), -32, 31, L - 32) + 32
    L = np.where(np.repeat(zero, 16)[:, None], 0, L).reshape(nb, 2, 4, 32).astype(np.uint8)
    ql = np.concatenate(
        [
            (L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4),
            (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4),
        ],
        axis=2,
    ).reshape(nb, 128)
    hi = L >> 4
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(
        nb, 64
    )
    sc = ls.astype(np.int8).view(np.uint8)
    return np.concatenate([ql, qh, sc, d.view(np.uint8).reshape(-1, 2)], axis=1)


K_QUANTIZERS = {
    GGMLType.Q2_K: quantize_q2_k,
    GGMLType.Q3_K: quantize_q3_k,
    GGMLType.Q4_K: quantize_q4_k,
    GGMLType.Q5_K: quantize_q5_k,
    GGMLType.Q6_K: quantize_q6_k,
}
