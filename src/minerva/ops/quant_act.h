// The rows of x quantized as llama.cpp quantizes activations, shared by the GGUF block kernels
// (cpu_quant.c: the file layout, cpu_quant_x8.c: the interleaved one). Q8_0-style blocks of 32
// with an fp16-rounded scale for the 32-value types; Q8_K super-blocks of 256 with an fp32
// scale and sums of 16 codes for the K types.

#ifndef MINERVA_QUANT_ACT_H
#define MINERVA_QUANT_ACT_H

#include "simd.h"

#define QK 32
#define QK_K 256

typedef struct {  // one quantized row of x
    const float *d;       // [blocks] scale of each block (32 or 256 values)
    const int8_t *q;      // [K] codes
    const int16_t *bsum;  // [K / 16] sums of 16 codes (K types only)
    const float *s;       // [K / 32] d * sum of the block's codes (32-value types only)
} act_row;

INLINE float f16_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return f32_of_f16(h);
}

// ---- quantization of the rows of x ------------------------------------------------------

#if defined(__AVX2__) && defined(__FMA__)
// The same two functions with AVX2, giving the same bytes: roundf (half away from zero) as
// trunc(v + copysign(0.49999997, v)), rintf as the vector round to nearest even.
INLINE float hmax8(__m256 m) {
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
}

INLINE __m256i pack32_i8(__m256i a, __m256i b, __m256i c, __m256i d) {  // 32 int32 -> 32 int8
    __m256i x = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
    return _mm256_permutevar8x32_epi32(x, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

INLINE int hsum_i32(__m256i v) {
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
    return _mm_cvtsi128_si32(_mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1)));
}

static void quantize_act_q8_0(const float *x, int64_t K, float *d, int8_t *q, float *s) {
    const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.49999997f);
    for (int64_t b = 0; b < K / QK; b++) {
        const float *xb = x + b * QK;
        __m256 v[4], m = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(xb + 8 * j);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[j]));
        }
        const float db = hmax8(m) / 127.0f;
        const float id = db != 0.0f ? 1.0f / db : 0.0f;
        d[b] = f32_of_f16(f32_to_f16(db));
        __m256i qi[4];
        for (int j = 0; j < 4; j++) {
            __m256 t = _mm256_mul_ps(v[j], _mm256_set1_ps(id));
            t = _mm256_add_ps(t, _mm256_or_ps(_mm256_and_ps(t, sign), half));
            qi[j] = _mm256_cvttps_epi32(t);
        }
        _mm256_storeu_si256((__m256i *)(q + b * QK), pack32_i8(qi[0], qi[1], qi[2], qi[3]));
        __m256i sum = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
        s[b] = d[b] * (float)hsum_i32(sum);
    }
}

static void quantize_act_q8_k(const float *x, int64_t K, float *d, int8_t *q, int16_t *bsum) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < K / QK_K; b++) {
        const float *xb = x + b * QK_K;
        int8_t *qb = q + b * QK_K;
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < QK_K; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + j)));
        const float amax = hmax8(m);
        if (amax == 0.0f) {
            d[b] = 0.0f;
            memset(qb, 0, QK_K);
            memset(bsum + b * 16, 0, 16 * sizeof(int16_t));
            continue;
        }
        float max = 0.0f;  // the first value of largest magnitude, with its sign
        for (int j = 0; j < QK_K; j++)
            if (fabsf(xb[j]) == amax) {
                max = xb[j];
                break;
            }
        const float iscale = -127.0f / max;
        const __m256 is = _mm256_set1_ps(iscale);
        const __m256i top = _mm256_set1_epi32(127);
        for (int j = 0; j < QK_K; j += 32) {
            __m256i qi[4];
            for (int k = 0; k < 4; k++) {
                __m256 t = _mm256_round_ps(_mm256_mul_ps(is, _mm256_loadu_ps(xb + j + 8 * k)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                qi[k] = _mm256_min_epi32(_mm256_cvtps_epi32(t), top);
            }
            _mm256_storeu_si256((__m256i *)(qb + j), pack32_i8(qi[0], qi[1], qi[2], qi[3]));
            bsum[b * 16 + j / 16] = (int16_t)hsum_i32(_mm256_add_epi32(qi[0], qi[1]));
            bsum[b * 16 + j / 16 + 1] = (int16_t)hsum_i32(_mm256_add_epi32(qi[2], qi[3]));
        }
        d[b] = 1.0f / iscale;
    }
}
#else
// llama.cpp's quantize_row_q8_0_ref: d = amax / 127 kept as fp16, codes roundf(x / d).
static void quantize_act_q8_0(const float *x, int64_t K, float *d, int8_t *q, float *s) {
    for (int64_t b = 0; b < K / QK; b++) {
        const float *xb = x + b * QK;
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(xb[j]));
        const float db = amax / 127.0f;
        const float id = db != 0.0f ? 1.0f / db : 0.0f;
        d[b] = f32_of_f16(f32_to_f16(db));
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            q[b * QK + j] = (int8_t)roundf(xb[j] * id);
            sum += q[b * QK + j];
        }
        s[b] = d[b] * (float)sum;  // for the offset of Q4_1 / Q5_1 weights
    }
}

// llama.cpp's quantize_row_q8_K_ref: the value of largest magnitude maps to -127, fp32 scale.
static void quantize_act_q8_k(const float *x, int64_t K, float *d, int8_t *q, int16_t *bsum) {
    for (int64_t b = 0; b < K / QK_K; b++) {
        const float *xb = x + b * QK_K;
        int8_t *qb = q + b * QK_K;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            const float ax = fabsf(xb[j]);
            if (ax > amax) {
                amax = ax;
                max = xb[j];
            }
        }
        if (amax == 0.0f) {
            d[b] = 0.0f;
            memset(qb, 0, QK_K);
            memset(bsum + b * 16, 0, 16 * sizeof(int16_t));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++) {
            const int v = (int)rintf(iscale * xb[j]);
            qb[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int j = 0; j < 16; j++) s += qb[g * 16 + j];
            bsum[b * 16 + g] = (int16_t)s;
        }
        d[b] = 1.0f / iscale;
    }
}

#endif

// Where each row's quantized values live in one float scratch buffer of M * act_row_floats.
INLINE int64_t act_row_floats(int64_t K, int ktype) {
    const int64_t nb = K / (ktype ? QK_K : QK);
    return 2 * nb + (K + 3) / 4 + (ktype ? K / 32 : 0);
}

INLINE void act_rows_init(act_row *a, float *scratch, int64_t M, int64_t K, int ktype) {
    const int64_t nb = K / (ktype ? QK_K : QK), per = act_row_floats(K, ktype);
    for (int64_t m = 0; m < M; m++) {
        float *base = scratch + m * per;
        a[m].d = base;
        a[m].q = (const int8_t *)(base + nb);
        a[m].s = base + nb + (K + 3) / 4;
        a[m].bsum = ktype ? (const int16_t *)(base + 2 * nb + (K + 3) / 4) : NULL;
    }
}

INLINE void quantize_act(const float *x, int64_t K, const act_row *a, int ktype) {
    if (ktype)
        quantize_act_q8_k(x, K, (float *)a->d, (int8_t *)a->q, (int16_t *)a->bsum);
    else
        quantize_act_q8_0(x, K, (float *)a->d, (int8_t *)a->q, (float *)a->s);
}

#endif
