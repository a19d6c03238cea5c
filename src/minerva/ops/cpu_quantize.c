// K-quant quantizers (Q2_K .. Q6_K) in C: llama.cpp's reference algorithms (the searches
// `llama-quantize` runs without an importance matrix), block by block, OpenMP over blocks.
//
// quant/gguf_quantize_k.py holds the same algorithms vectorised in numpy (the twin these are
// tested against); this file exists because in-situ quantization of a 1B model in numpy takes
// minutes. Sums run in order (8 lanes at a time with AVX2) here, pairwise in numpy, so a rare
// tie may resolve differently.

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include "simd.h"

#define QK_K 256
#define EPS 1e-15f

INLINE int nearest_int(float v) { return (int)rintf(v); }
INLINE int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

INLINE void put_f16(uint8_t *p, float v) {
    const uint16_t h = f32_to_f16(v);
    memcpy(p, &h, 2);
}

INLINE float get_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return f32_of_f16(h);
}

// one candidate scale of qkx2: codes of x against (iscale, mn) into aux, and their weighted
// sums; then the weighted error of (scale, min) with those codes. AVX2: 8 values at a time
// (n is 16 or 32), so the sums round in another order than the plain loops.
#if defined(__AVX2__) && defined(__FMA__)
INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE void cand_sums(int n, int nmax, const float *x, const float *w, float iscale, float mn,
                      float *aux, float *sl, float *sl2, float *sxl) {
    __m256 a = _mm256_setzero_ps(), b = a, c = a;
    const __m256 vi = _mm256_set1_ps(iscale), vm = _mm256_set1_ps(mn);
    const __m256 top = _mm256_set1_ps((float)nmax), zero = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) {
        const __m256 xv = _mm256_loadu_ps(x + i), wv = _mm256_loadu_ps(w + i);
        __m256 l = _mm256_round_ps(_mm256_mul_ps(vi, _mm256_sub_ps(xv, vm)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        l = _mm256_min_ps(_mm256_max_ps(l, zero), top);
        _mm256_storeu_ps(aux + i, l);
        const __m256 wl = _mm256_mul_ps(wv, l);
        a = _mm256_add_ps(a, wl);
        b = _mm256_fmadd_ps(wl, l, b);
        c = _mm256_fmadd_ps(wl, xv, c);
    }
    *sl = hsum8(a), *sl2 = hsum8(b), *sxl = hsum8(c);
}

INLINE float cand_error(int n, const float *x, const float *w, const float *aux, float scale,
                        float mn, int use_mad) {
    __m256 e = _mm256_setzero_ps();
    const __m256 vs = _mm256_set1_ps(scale), vm = _mm256_set1_ps(mn);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int i = 0; i < n; i += 8) {
        const __m256 diff = _mm256_sub_ps(_mm256_fmadd_ps(vs, _mm256_loadu_ps(aux + i), vm), _mm256_loadu_ps(x + i));
        const __m256 d2 = use_mad ? _mm256_andnot_ps(sign, diff) : _mm256_mul_ps(diff, diff);
        e = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), d2, e);
    }
    return hsum8(e);
}
#else
INLINE void cand_sums(int n, int nmax, const float *x, const float *w, float iscale, float mn,
                      float *aux, float *sl, float *sl2, float *sxl) {
    float a = 0, b = 0, c = 0;
    for (int i = 0; i < n; i++) {
        const int l = clampi(nearest_int(iscale * (x[i] - mn)), 0, nmax);
        aux[i] = (float)l;
        a += w[i] * l;
        b += w[i] * l * l;
        c += w[i] * l * x[i];
    }
    *sl = a, *sl2 = b, *sxl = c;
}

INLINE float cand_error(int n, const float *x, const float *w, const float *aux, float scale,
                        float mn, int use_mad) {
    float e = 0;
    for (int i = 0; i < n; i++) {
        const float diff = scale * aux[i] + mn - x[i];
        e += w[i] * (use_mad ? fabsf(diff) : diff * diff);
    }
    return e;
}
#endif

// scale and min with codes 0..nmax minimising the weighted error over candidate scales
static float qkx2(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min,
                  float rmin, float rdelta, int nstep, int use_mad) {
    float mn = x[0], mx = x[0], sum_w = w[0], sum_x = w[0] * x[0];
    for (int i = 1; i < n; i++) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (mn > 0) mn = 0;
    if (mx == mn) {
        memset(L, 0, (size_t)n);
        *the_min = -mn;
        return 0.0f;
    }
    float iscale = nmax / (mx - mn), scale = 1 / iscale, best = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clampi(nearest_int(iscale * (x[i] - mn)), 0, nmax);
        const float diff = scale * L[i] + mn - x[i];
        best += w[i] * (use_mad ? fabsf(diff) : diff * diff);
    }
    float aux[32];
    for (int step = 0; step <= nstep; step++) {
        iscale = (rmin + rdelta * step + nmax) / (mx - mn);
        float sl, sl2, sxl;
        cand_sums(n, nmax, x, w, iscale, mn, aux, &sl, &sl2, &sxl);
        const float D = sum_w * sl2 - sl * sl;
        if (D > 0) {
            float this_scale = (sum_w * sxl - sum_x * sl) / D;
            float this_min = (sl2 * sum_x - sl * sxl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sxl / sl2;
            }
            const float err = cand_error(n, x, w, aux, this_scale, this_min, use_mad);
            if (err < best) {
                for (int i = 0; i < n; i++) L[i] = (uint8_t)aux[i];
                best = err;
                scale = this_scale;
                mn = this_min;
            }
        }
    }
    *the_min = -mn;
    return scale;
}

INLINE float signed_max(int n, const float *x, float *amax) {
    float mx = 0, am = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > am) am = fabsf(x[i]), mx = x[i];
    *amax = am;
    return mx;
}

// symmetric scale, codes 0..2*nmax-1, best of 19 candidate scales under x^2 weights
static float qx(int n, int nmax, const float *x, int8_t *L) {
    float amax, mx = signed_max(n, x, &amax);
    if (amax < EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = -nmax / mx, sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 != 0 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / mx;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
            const float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

// symmetric scale and codes by coordinate descent on the x^2-weighted error
static float q3(int n, int nmax, const float *x, int8_t *L) {
    float amax, mx = signed_max(n, x, &amax);
    if (amax < EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    const float iscale = -nmax / mx;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (int8_t)clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * L[i];
        suml2 += w * L[i] * L[i];
    }
    for (int itry = 0; itry < 5; itry++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * L[i] * L[i];
                const int nl = clampi(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
                if (nl != L[i]) {
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)nl, sumlx = slx, suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0 ? sumlx / suml2 : 0.0f;
}

INLINE void pack_2bit(const uint8_t *L, uint8_t *qs) {  // 4 codes per byte, 32 bytes per 128
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; l++)
            qs[j / 4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
}

static void block_q2_k(const float *x, uint8_t *y) {  // scales[16] qs[64] d dmin
    uint8_t L[QK_K];
    float w[16], scales[16], mins[16], max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; j++) {
        for (int l = 0; l < 16; l++) w[l] = fabsf(x[16 * j + l]);
        scales[j] = qkx2(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], -0.5f, 0.1f, 15, 1);
        max_scale = scales[j] > max_scale ? scales[j] : max_scale;
        max_min = mins[j] > max_min ? mins[j] : max_min;
    }
    uint8_t *sc = y;
    memset(sc, 0, 16);
    if (max_scale > 0)
        for (int j = 0; j < 16; j++) sc[j] = (uint8_t)nearest_int(15.0f / max_scale * scales[j]);
    put_f16(y + 80, max_scale > 0 ? max_scale / 15.0f : 0.0f);
    if (max_min > 0)
        for (int j = 0; j < 16; j++) sc[j] |= (uint8_t)(nearest_int(15.0f / max_min * mins[j]) << 4);
    put_f16(y + 82, max_min > 0 ? max_min / 15.0f : 0.0f);
    const float d = get_f16(y + 80), dmin = get_f16(y + 82);
    for (int j = 0; j < 16; j++) {
        const float dl = d * (sc[j] & 0xF);
        if (!dl) continue;
        const float ml = dmin * (sc[j] >> 4);
        for (int i = 0; i < 16; i++) L[16 * j + i] = (uint8_t)clampi(nearest_int((x[16 * j + i] + ml) / dl), 0, 3);
    }
    pack_2bit(L, y + 16);
}

static void block_q3_k(const float *x, uint8_t *y) {  // hmask[32] qs[64] scales[12] d
    int8_t L[QK_K];
    float scales[16], amax = 0, max_scale = 0;
    for (int j = 0; j < 16; j++) {
        scales[j] = q3(16, 4, x + 16 * j, L + 16 * j);
        if (fabsf(scales[j]) > amax) amax = fabsf(scales[j]), max_scale = scales[j];
    }
    uint8_t *sc = y + 96;
    memset(sc, 0, 12);
    if (max_scale != 0) {
        const float iscale = -32.0f / max_scale;
        for (int j = 0; j < 16; j++) {
            const int l = clampi(nearest_int(iscale * scales[j]), -32, 31) + 32;
            if (j < 8) sc[j] = l & 0xF;
            else sc[j - 8] |= (uint8_t)((l & 0xF) << 4);
            sc[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
        }
        put_f16(y + 108, 1 / iscale);
    } else {
        put_f16(y + 108, 0.0f);
    }
    const float d = get_f16(y + 108);
    for (int j = 0; j < 16; j++) {
        const int lo = j < 8 ? sc[j] & 0xF : sc[j - 8] >> 4;
        const float dl = d * ((lo | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
        if (!dl) continue;
        for (int i = 0; i < 16; i++) L[16 * j + i] = (int8_t)(clampi(nearest_int(x[16 * j + i] / dl), -4, 3) + 4);
    }
    uint8_t *hmask = y, codes[QK_K];
    memset(hmask, 0, 32);
    for (int j = 0; j < QK_K; j++) {
        if (L[j] > 3) hmask[j % 32] |= (uint8_t)(1 << (j / 32));
        codes[j] = (uint8_t)(L[j] & 3);
    }
    pack_2bit(codes, y + 32);
}

// Q4_K / Q5_K: d dmin scales[12], then (Q5_K) qh[32], then qs[128]
static void block_k4(const float *x, uint8_t *y, const int nmax) {
    uint8_t L[QK_K];
    float w[32], scales[8], mins[8], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++) sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) w[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = nmax == 15 ? qkx2(32, 15, x + 32 * j, w, L + 32 * j, &mins[j], -1.0f, 0.1f, 20, 0)
                               : qkx2(32, 31, x + 32 * j, w, L + 32 * j, &mins[j], -0.5f, 0.1f, 15, 0);
        max_scale = scales[j] > max_scale ? scales[j] : max_scale;
        max_min = mins[j] > max_min ? mins[j] : max_min;
    }
    const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    uint8_t ls[8], lm[8], *s = y + 4;
    for (int j = 0; j < 8; j++) {
        ls[j] = (uint8_t)nearest_int(inv_scale * scales[j]);
        lm[j] = (uint8_t)nearest_int(inv_min * mins[j]);
        ls[j] = ls[j] < 63 ? ls[j] : 63;
        lm[j] = lm[j] < 63 ? lm[j] : 63;
    }
    for (int j = 0; j < 4; j++) {
        s[j] = ls[j] | (uint8_t)((ls[j + 4] >> 4) << 6);
        s[j + 4] = lm[j] | (uint8_t)((lm[j + 4] >> 4) << 6);
        s[j + 8] = (ls[j + 4] & 0xF) | (uint8_t)((lm[j + 4] & 0xF) << 4);
    }
    put_f16(y, max_scale / 63.0f);
    put_f16(y + 2, max_min / 63.0f);
    const float d = get_f16(y), dmin = get_f16(y + 2);
    for (int j = 0; j < 8; j++) {
        const float dl = d * ls[j];
        if (!dl) continue;
        const float ml = dmin * lm[j];
        for (int i = 0; i < 32; i++) L[32 * j + i] = (uint8_t)clampi(nearest_int((x[32 * j + i] + ml) / dl), 0, nmax);
    }
    uint8_t *qs = y + (nmax == 15 ? 16 : 48), *qh = y + 16;
    if (nmax == 31) memset(qh, 0, 32);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            const int a = L[64 * c + l], b = L[64 * c + 32 + l];
            if (nmax == 31) qh[l] |= (uint8_t)(((a >> 4) << (2 * c)) | ((b >> 4) << (2 * c + 1)));
            qs[32 * c + l] = (uint8_t)((a & 0xF) | ((b & 0xF) << 4));
        }
}

static void block_q6_k(const float *x, uint8_t *y) {  // ql[128] qh[64] scales[16] d
    int8_t L[QK_K];
    float scales[16], amax = 0, max_scale = 0;
    for (int j = 0; j < 16; j++) {
        scales[j] = qx(16, 32, x + 16 * j, L + 16 * j);
        if (fabsf(scales[j]) > amax) amax = fabsf(scales[j]), max_scale = scales[j];
    }
    memset(y, 0, 210);
    if (amax < EPS) return;
    const float iscale = -128.0f / max_scale;
    put_f16(y + 208, 1 / iscale);
    int8_t *sc = (int8_t *)(y + 192);
    for (int j = 0; j < 16; j++) {
        const int l = nearest_int(iscale * scales[j]);
        sc[j] = (int8_t)(l < 127 ? l : 127);
    }
    const float d = get_f16(y + 208);
    for (int j = 0; j < 16; j++) {
        const float dl = d * sc[j];
        if (!dl) continue;
        for (int i = 0; i < 16; i++) L[16 * j + i] = (int8_t)(clampi(nearest_int(x[16 * j + i] / dl), -32, 31) + 32);
    }
    uint8_t *ql = y, *qh = y + 128;
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const uint8_t *v = (const uint8_t *)L + 128 * h + l;
            ql[64 * h + l] = (v[0] & 0xF) | (uint8_t)((v[64] & 0xF) << 4);
            ql[64 * h + 32 + l] = (v[32] & 0xF) | (uint8_t)((v[96] & 0xF) << 4);
            qh[32 * h + l] = (uint8_t)((v[0] >> 4) | ((v[32] >> 4) << 2) | ((v[64] >> 4) << 4) | ((v[96] >> 4) << 6));
        }
}

// x [blocks * 256] float32 -> y [blocks * bytes]; 0 on success, -1 for a type it does not do
int minerva_quantize_k(int type, const float *x, uint8_t *y, int64_t blocks, int threads) {
    int bytes;
    switch (type) {
    case 10: bytes = 84; break;
    case 11: bytes = 110; break;
    case 12: bytes = 144; break;
    case 13: bytes = 176; break;
    case 14: bytes = 210; break;
    default: return -1;
    }
#pragma omp parallel for num_threads(threads) schedule(static) if (blocks >= 64)
    for (int64_t b = 0; b < blocks; b++) {
        const float *xb = x + b * QK_K;
        uint8_t *yb = y + b * bytes;
        switch (type) {
        case 10: block_q2_k(xb, yb); break;
        case 11: block_q3_k(xb, yb); break;
        case 12: block_k4(xb, yb, 15); break;
        case 13: block_k4(xb, yb, 31); break;
        default: block_q6_k(xb, yb); break;
        }
    }
    return 0;
}
