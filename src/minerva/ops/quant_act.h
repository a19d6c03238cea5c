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
