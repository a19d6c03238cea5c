// One row of GGUF blocks -> float32, as quant/gguf_dequant.py's `dequantize` computes it, bit
// for bit: the same products in the same order, each rounded to float32 on its own (the
// function is built without floating-point contraction, so `d * q - m` stays a product and a
// difference, as torch's two element-wise ops, never one fused multiply-add).
//
// The decode step (cpu_decode_step.c) gathers a quantized token embedding's rows with it: the
// layered path's Embedding.forward dequantizes the same rows in torch, some 20 small ops per
// call, which cost more than a whole decode step of the demo model at Q4_K_M.
// Types: Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS (dequant_row_supports); the others
// stay in torch.

#ifndef MINERVA_DEQUANT_ROW_H
#define MINERVA_DEQUANT_ROW_H

#include <stdint.h>
#include <string.h>

#include "iq4.h"

enum { DQ_Q4_0 = 2, DQ_Q4_1 = 3, DQ_Q8_0 = 8, DQ_Q4_K = 12, DQ_Q5_K = 13, DQ_Q6_K = 14 };
enum { DQ_IQ4_NL = 20, DQ_IQ4_XS = 23 };

// (values, bytes) of one block of a supported type; 0 otherwise
static int dequant_row_geometry(int type, int64_t *block, int64_t *bytes) {
    switch (type) {
    case DQ_Q4_0: *block = 32, *bytes = 18; return 1;
    case DQ_Q4_1: *block = 32, *bytes = 20; return 1;
    case DQ_Q8_0: *block = 32, *bytes = 34; return 1;
    case DQ_Q4_K: *block = 256, *bytes = 144; return 1;
    case DQ_Q5_K: *block = 256, *bytes = 176; return 1;
    case DQ_Q6_K: *block = 256, *bytes = 210; return 1;
    case DQ_IQ4_NL: *block = 32, *bytes = 18; return 1;
    case DQ_IQ4_XS: *block = 256, *bytes = 136; return 1;
    default: return 0;
    }
}

static float dq_f16(const uint8_t *p) {  // IEEE half -> float, exact (no F16C needed)
    const uint32_t h = (uint32_t)p[0] | (uint32_t)p[1] << 8;
    const uint32_t sign = (h & 0x8000u) << 16, e = (h >> 10) & 31, m = h & 0x3FFu;
    uint32_t u;
    if (e == 31) {
        u = sign | 0x7F800000u | m << 13;  // inf, NaN
    } else if (e) {
        u = sign | (e + 112) << 23 | m << 13;
    } else {  // zero or subnormal: m * 2^-24, exact in float
        float f = (float)m * 5.9604644775390625e-8f;
        memcpy(&u, &f, 4);
        u |= sign;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// Q4_K / Q5_K: 12 packed bytes -> 8 six-bit scales and mins (gguf_dequant.k4_scale_min)
static void dq_k4_scale_min(const uint8_t *s, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 0x3F, mn[j] = s[4 + j] & 0x3F;
        sc[4 + j] = (uint8_t)((s[8 + j] & 0x0F) | ((s[j] >> 2) & 0x30));
        mn[4 + j] = (uint8_t)((s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30));
    }
}

// K values of one row (K a multiple of the block) from `row`; 0, or -1 for another type
__attribute__((optimize("fp-contract=off"))) static int dequant_row(int type, const uint8_t *row,
                                                                     int64_t K, float *out) {
    int64_t block, bytes;
    if (!dequant_row_geometry(type, &block, &bytes) || K % block) return -1;
    for (int64_t b = 0; b < K / block; b++, row += bytes, out += block) {
        switch (type) {
        case DQ_Q4_0: {  // d * (nibble - 8): low nibbles are values 0-15, high ones 16-31
            const float d = dq_f16(row);
            for (int l = 0; l < 16; l++) {
                out[l] = d * (float)((row[2 + l] & 15) - 8);
                out[l + 16] = d * (float)((row[2 + l] >> 4) - 8);
            }
            break;
        }
        case DQ_Q4_1: {  // d * nibble + m
            const float d = dq_f16(row), m = dq_f16(row + 2);
            for (int l = 0; l < 16; l++) {
                const float lo = d * (float)(row[4 + l] & 15), hi = d * (float)(row[4 + l] >> 4);
                out[l] = lo + m;
                out[l + 16] = hi + m;
            }
            break;
        }
        case DQ_Q8_0: {  // q * d
            const float d = dq_f16(row);
            for (int l = 0; l < 32; l++) out[l] = (float)(int8_t)row[2 + l] * d;
            break;
        }
        case DQ_Q4_K:
        case DQ_Q5_K: {  // (d * sc) * q - dmin * m per subblock of 32
            const float d = dq_f16(row), dmin = dq_f16(row + 2);
            uint8_t sc[8], mn[8];
            dq_k4_scale_min(row + 4, sc, mn);
            const int five = type == DQ_Q5_K;
            const uint8_t *qh = row + 16, *qs = row + (five ? 48 : 16);
            for (int j = 0; j < 8; j++) {  // subblock j: nibble j & 1 of bytes 32 (j / 2) + l
                const float dl = d * (float)sc[j], dm = dmin * (float)mn[j];
                for (int l = 0; l < 32; l++) {
                    int q = (qs[32 * (j / 2) + l] >> (4 * (j & 1))) & 15;
                    if (five) q |= ((qh[l] >> j) & 1) << 4;
                    const float p = dl * (float)q;
                    out[32 * j + l] = p - dm;
                }
            }
            break;
        }
        case DQ_Q6_K: {  // (d * sc) * (q - 32) per 16 values
            const uint8_t *ql = row, *qh = row + 128;
            const int8_t *sc = (const int8_t *)(row + 192);
            const float d = dq_f16(row + 208);
            for (int v = 0; v < 256; v++) {  // half h, low nibbles of 64 bytes, then high ones
                const int h = v / 128, r = v % 128;
                const int lo = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 15;
                const int hi = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
                const float dl = d * (float)sc[v / 16];
                out[v] = dl * (float)((int8_t)(lo | hi << 4) - 32);
            }
            break;
        }
        case DQ_IQ4_NL: {  // d * value: low nibbles are values 0-15, high ones 16-31
            const float d = dq_f16(row);
            for (int l = 0; l < 16; l++) {
                out[l] = d * (float)IQ4_VALUES[row[2 + l] & 15];
                out[l + 16] = d * (float)IQ4_VALUES[row[2 + l] >> 4];
            }
            break;
        }
        case DQ_IQ4_XS: {  // (d * (scale - 32)) * value per sub-block of 32
            const float d = dq_f16(row);
            for (int j = 0; j < 8; j++) {
                const float dl = d * (float)(iq4xs_scale_bits(row, j) - 32);
                const uint8_t *qs = row + 8 + 16 * j;
                for (int l = 0; l < 16; l++) {
                    out[32 * j + l] = dl * (float)IQ4_VALUES[qs[l] & 15];
                    out[32 * j + 16 + l] = dl * (float)IQ4_VALUES[qs[l] >> 4];
                }
            }
            break;
        }
        }
    }
    return 0;
}

#endif
