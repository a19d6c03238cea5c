// GGUF blocks rewritten for the CPU's vectors ("x8"): y[m, n] = dot(W[n, :], x[m, :]).
//
// At load, every group of 8 consecutive rows of W is rewritten block by block so that one
// 32-byte load holds 4 codes of each of the 8 rows (row r in bytes 4r..4r+3) and the scales of
// the 8 rows' blocks sit together. Then the 4 activation codes those lanes multiply are one
// broadcast, the integer products of 8 rows land in the 8 lanes of one vector (no horizontal
// sums, no per-row scale shuffles), and each block's scales apply to 8 rows at once. A block
// group takes exactly the bytes of its 8 file blocks, so memory use does not change. (llama.cpp's
// CPU "repack" buffers rest on the same idea; this layout is our own.) Types: Q4_0, Q5_0, Q5_1,
// Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, with AVX2; elsewhere minerva_x8_supports says no and the
// file layout is kept.
// minerva_x8_unpack restores the file bytes exactly (the dequantize-then-matmul twin reads them).
//
// Layouts, per group of 8 rows and block index b (offsets in bytes; c(r, i) is code i of row
// r's block, as the file stores it: unsigned for Q4_0 / Q4_K / Q6_K, signed for Q8_0):
//   Q8_0 (272 B): d[8] fp16 | 8 x 32 B: byte 16 + 32g + 4r + t = c(r, 4g + t)
//   Q4_0 (144 B): d[8] fp16 | 4 x 32 B: byte 16 + 32L + 4r + t = c(r, 8L + t) | c(r, 8L + 4 + t) << 4
//   Q5_0 (176 B): Q4_0's 144 B (low 4 bits) | 32 B: byte 144 + 8L + r = byte L of row r's qh
//     (bit t: bit 4 of c(r, 8L + t), bit 4 + t: of c(r, 8L + 4 + t))
//   Q5_1 (192 B): d[8] | m[8] fp16 | Q5_0's nibbles and high bits, 16 bytes further on
//   Q4_K (1152 B): d[8] | dmin[8] | 64 B: byte 32 + 32h + 8j + r = low 4 bits of scale(4h + j, r)
//     | low 4 bits of min(4h + j, r) << 4 | 32 B: byte 96 + 8j + r = the top 2 bits of scale(j),
//     min(j), scale(4 + j), min(4 + j) | 1024 B: byte 128 + 128s + 32L + 4r + t =
//     c(r, 32s + 8L + t) | c(r, 32s + 8L + 4 + t) << 4
//   Q5_K (1408 B): Q4_K's 1152 B | 256 B: byte 1152 + 32s + 4r + t, bit k = bit 4 of
//     c(r, 32s + 4k + t)
//   Q6_K (1680 B): d[8] | scales int8: byte 16 + 8s + r | low 4 bits: byte 144 + 64s + 32L + 4r + t
//     = c(r, 16s + 8L + t) & 15 | (c(r, 16s + 8L + 4 + t) & 15) << 4 | top 2 bits: byte
//     1168 + 32s + 4r + t = sum over k of (c(r, 16s + 4k + t) >> 4) << 2k
//   IQ4_NL (144 B): Q4_0's bytes (a block is d and 16 bytes of nibbles, as Q4_0's); the nibbles
//     are indices into the codebook, looked up with a byte shuffle
//   IQ4_XS (1088 B): d[8] | 32 B: byte 16 + 8j + r = low 4 bits of scale(j, r) | of scale(4 + j, r)
//     << 4 | 16 B: byte 48 + 8k + r, bits 2u, 2u + 1 = the top 2 bits of scale(4k + u, r) (scales
//     6 bits, stored + 32) | 1024 B: byte 64 + 128s + 32L + 4r + t = c(r, 32s + 8L + t) |
//     c(r, 32s + 8L + 4 + t) << 4

#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include "iq4.h"
#include "quant_act.h"

#define MAX_ROWS 8              // rows of x per pass over a tile of W (kernels take 4 or 8)
#define TILE_BYTES (256 << 10)  // W bytes per tile
#define PARALLEL_MIN (1 << 16)  // below this many weight values, one thread
#define DYNAMIC_ROWS 16         // from this many rows of x, tiles are scheduled dynamically
#define ROWS_OUTER_BYTES (384 << 10)  // W up to this size: blocks of rows of x outer (rows_outer)
#define ROW_BLOCK 32            // rows of x per task then

enum { T_Q4_0 = 2, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14 };
enum { T_IQ4_NL = 20, T_IQ4_XS = 23 };

// block (values, file bytes) of the types with an x8 layout; 0 otherwise
static int x8_geometry(int type, int *block, int *bytes) {
    switch (type) {
    case T_Q4_0: *block = QK, *bytes = 18; return 1;
    case T_Q5_0: *block = QK, *bytes = 22; return 1;
    case T_Q5_1: *block = QK, *bytes = 24; return 1;
    case T_Q8_0: *block = QK, *bytes = 34; return 1;
    case T_Q4_K: *block = QK_K, *bytes = 144; return 1;
    case T_Q5_K: *block = QK_K, *bytes = 176; return 1;
    case T_Q6_K: *block = QK_K, *bytes = 210; return 1;
    case T_IQ4_NL: *block = QK, *bytes = 18; return 1;
    case T_IQ4_XS: *block = QK_K, *bytes = 136; return 1;
    default: return 0;
    }
}

// ---- one block of one row <-> its codes and scales (plain C; load time only) --------------

typedef struct {
    uint16_t d, dmin;           // fp16 bits as stored
    uint8_t sc[16], mn[16];     // Q4_K: 8 scales, 8 mins (6 bits); Q6_K: 16 int8 scales
    uint8_t c[QK_K];            // codes as stored (Q8_0: int8 bits)
} block_codes;

static void decode_block(int type, const uint8_t *blk, block_codes *o) {
    memcpy(&o->d, blk + (type == T_Q6_K ? 208 : 0), 2);
    if (type == T_Q8_0) {
        memcpy(o->c, blk + 2, QK);
    } else if (type == T_Q4_0) {
        for (int l = 0; l < 16; l++) o->c[l] = blk[2 + l] & 15, o->c[l + 16] = blk[2 + l] >> 4;
    } else if (type == T_Q5_0 || type == T_Q5_1) {  // d, (m,) qh (bit j: bit 4 of code j), qs
        const int h = type == T_Q5_1 ? 4 : 2;
        uint32_t qh;
        if (type == T_Q5_1) memcpy(&o->dmin, blk + 2, 2);
        memcpy(&qh, blk + h, 4);
        for (int l = 0; l < 16; l++) {
            o->c[l] = (uint8_t)((blk[h + 4 + l] & 15) | (((qh >> l) & 1) << 4));
            o->c[l + 16] = (uint8_t)((blk[h + 4 + l] >> 4) | (((qh >> (l + 16)) & 1) << 4));
        }
    } else if (type == T_Q4_K || type == T_Q5_K) {
        const int five = type == T_Q5_K;
        const uint8_t *s = blk + 4, *qs = blk + (five ? 48 : 16), *qh = blk + 16;
        memcpy(&o->dmin, blk + 2, 2);
        for (int j = 0; j < 4; j++) {
            o->sc[j] = s[j] & 63, o->mn[j] = s[j + 4] & 63;
            o->sc[j + 4] = (s[j + 8] & 15) | ((s[j] >> 6) << 4);
            o->mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
        }
        for (int q = 0; q < 4; q++)
            for (int l = 0; l < 32; l++) {
                o->c[64 * q + l] = qs[32 * q + l] & 15, o->c[64 * q + 32 + l] = qs[32 * q + l] >> 4;
                if (five) {
                    o->c[64 * q + l] |= (uint8_t)(((qh[l] >> (2 * q)) & 1) << 4);
                    o->c[64 * q + 32 + l] |= (uint8_t)(((qh[l] >> (2 * q + 1)) & 1) << 4);
                }
            }
    } else if (type == T_IQ4_XS) {  // d, scales_h, scales_l [4], qs [128]
        for (int j = 0; j < 8; j++) {
            o->sc[j] = (uint8_t)iq4xs_scale_bits(blk, j);
            for (int l = 0; l < 16; l++)
                o->c[32 * j + l] = blk[8 + 16 * j + l] & 15, o->c[32 * j + 16 + l] = blk[8 + 16 * j + l] >> 4;
        }
    } else {  // Q6_K: ql [128], qh [64], scales [16]
        const uint8_t *ql = blk, *qh = blk + 128;
        memcpy(o->sc, blk + 192, 16);
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const uint8_t hb = qh[32 * h + l], b0 = ql[64 * h + l], b1 = ql[64 * h + 32 + l];
                o->c[128 * h + l] = (b0 & 15) | ((hb & 3) << 4);
                o->c[128 * h + 32 + l] = (b1 & 15) | (((hb >> 2) & 3) << 4);
                o->c[128 * h + 64 + l] = (b0 >> 4) | (((hb >> 4) & 3) << 4);
                o->c[128 * h + 96 + l] = (b1 >> 4) | (((hb >> 6) & 3) << 4);
            }
    }
}

static void encode_block(int type, const block_codes *o, uint8_t *blk) {
    memcpy(blk + (type == T_Q6_K ? 208 : 0), &o->d, 2);
    if (type == T_Q8_0) {
        memcpy(blk + 2, o->c, QK);
    } else if (type == T_Q4_0) {
        for (int l = 0; l < 16; l++) blk[2 + l] = (uint8_t)(o->c[l] | (o->c[l + 16] << 4));
    } else if (type == T_Q5_0 || type == T_Q5_1) {
        const int h = type == T_Q5_1 ? 4 : 2;
        uint32_t qh = 0;
        if (type == T_Q5_1) memcpy(blk + 2, &o->dmin, 2);
        for (int j = 0; j < QK; j++) qh |= (uint32_t)(o->c[j] >> 4) << j;
        memcpy(blk + h, &qh, 4);
        for (int l = 0; l < 16; l++)
            blk[h + 4 + l] = (uint8_t)((o->c[l] & 15) | ((o->c[l + 16] & 15) << 4));
    } else if (type == T_Q4_K || type == T_Q5_K) {
        const int five = type == T_Q5_K;
        uint8_t *s = blk + 4, *qs = blk + (five ? 48 : 16), *qh = blk + 16;
        memcpy(blk + 2, &o->dmin, 2);
        if (five) memset(qh, 0, 32);
        for (int j = 0; j < 4; j++) {
            s[j] = (uint8_t)(o->sc[j] | ((o->sc[j + 4] >> 4) << 6));
            s[j + 4] = (uint8_t)(o->mn[j] | ((o->mn[j + 4] >> 4) << 6));
            s[j + 8] = (uint8_t)((o->sc[j + 4] & 15) | ((o->mn[j + 4] & 15) << 4));
        }
        for (int q = 0; q < 4; q++)
            for (int l = 0; l < 32; l++) {
                const uint8_t lo = o->c[64 * q + l], hi = o->c[64 * q + 32 + l];
                qs[32 * q + l] = (uint8_t)((lo & 15) | ((hi & 15) << 4));
                if (five) qh[l] |= (uint8_t)(((lo >> 4) << (2 * q)) | ((hi >> 4) << (2 * q + 1)));
            }
    } else if (type == T_IQ4_XS) {
        int high = 0;
        memset(blk + 4, 0, 4);
        for (int j = 0; j < 8; j++) {
            high |= (o->sc[j] >> 4) << (2 * j);
            blk[4 + j / 2] |= (uint8_t)((o->sc[j] & 15) << (4 * (j & 1)));
            for (int l = 0; l < 16; l++)
                blk[8 + 16 * j + l] = (uint8_t)(o->c[32 * j + l] | (o->c[32 * j + 16 + l] << 4));
        }
        blk[2] = (uint8_t)high, blk[3] = (uint8_t)(high >> 8);
    } else {
        uint8_t *ql = blk, *qh = blk + 128;
        memcpy(blk + 192, o->sc, 16);
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const uint8_t *c = o->c + 128 * h;
                ql[64 * h + l] = (uint8_t)((c[l] & 15) | ((c[64 + l] & 15) << 4));
                ql[64 * h + 32 + l] = (uint8_t)((c[32 + l] & 15) | ((c[96 + l] & 15) << 4));
                qh[32 * h + l] = (uint8_t)((c[l] >> 4) | ((c[32 + l] >> 4) << 2) |
                                           ((c[64 + l] >> 4) << 4) | ((c[96 + l] >> 4) << 6));
            }
    }
}

// one x8 block group -> the 8 rows' codes and scales (x8_pack_block writes the group)
static void x8_unpack_block(int type, const uint8_t *g, block_codes b[8]) {
    const int k45 = type == T_Q4_K || type == T_Q5_K;
    for (int r = 0; r < 8; r++) {
        uint8_t *c = b[r].c;
        memcpy(&b[r].d, g + 2 * r, 2);
        if (k45) memcpy(&b[r].dmin, g + 16 + 2 * r, 2);
        if (type == T_Q8_0) {
            for (int i = 0; i < QK; i++) c[i] = g[16 + 32 * (i / 4) + 4 * r + i % 4];
        } else if (type == T_Q4_0 || type == T_Q5_0 || type == T_Q5_1) {
            const int o = type == T_Q5_1 ? 16 : 0;  // Q5_1: the mins first
            if (o) memcpy(&b[r].dmin, g + 16 + 2 * r, 2);
            for (int L = 0; L < 4; L++)
                for (int t = 0; t < 4; t++) {
                    const uint8_t p = g[o + 16 + 32 * L + 4 * r + t];
                    c[8 * L + t] = p & 15, c[8 * L + 4 + t] = p >> 4;
                    if (type != T_Q4_0) {
                        const uint8_t h = g[o + 144 + 8 * L + r];
                        c[8 * L + t] |= (uint8_t)(((h >> t) & 1) << 4);
                        c[8 * L + 4 + t] |= (uint8_t)(((h >> (4 + t)) & 1) << 4);
                    }
                }
        } else if (k45) {
            for (int s = 0; s < 8; s++) {
                const uint8_t lo = g[32 + 32 * (s / 4) + 8 * (s % 4) + r];
                const int top = (g[96 + 8 * (s % 4) + r] >> (s < 4 ? 0 : 4)) & 15;
                b[r].sc[s] = (uint8_t)((lo & 15) | ((top & 3) << 4));
                b[r].mn[s] = (uint8_t)((lo >> 4) | ((top >> 2) << 4));
                for (int L = 0; L < 4; L++)
                    for (int t = 0; t < 4; t++) {
                        const uint8_t p = g[128 + 128 * s + 32 * L + 4 * r + t];
                        const int i = 32 * s + 8 * L + t;
                        c[i] = p & 15, c[i + 4] = p >> 4;
                    }
                if (type == T_Q5_K)  // bit k of byte 1152 + 32s + 4r + t: bit 4 of code 32s + 4k + t
                    for (int t = 0; t < 4; t++)
                        for (int k = 0; k < 8; k++)
                            c[32 * s + 4 * k + t] |= (uint8_t)(((g[1152 + 32 * s + 4 * r + t] >> k) & 1) << 4);
            }
        } else if (type == T_IQ4_XS) {
            for (int s = 0; s < 8; s++) {
                const int lo = (g[16 + 8 * (s % 4) + r] >> (s < 4 ? 0 : 4)) & 15;
                b[r].sc[s] = (uint8_t)(lo | ((g[48 + 8 * (s / 4) + r] >> (2 * (s % 4))) & 3) << 4);
                for (int L = 0; L < 4; L++)
                    for (int t = 0; t < 4; t++) {
                        const uint8_t p = g[64 + 128 * s + 32 * L + 4 * r + t];
                        c[32 * s + 8 * L + t] = p & 15, c[32 * s + 8 * L + 4 + t] = p >> 4;
                    }
            }
        } else {  // Q6_K
            for (int s = 0; s < 16; s++) {
                b[r].sc[s] = g[16 + 8 * s + r];
                for (int t = 0; t < 4; t++) {
                    for (int L = 0; L < 2; L++) {
                        const uint8_t p = g[144 + 64 * s + 32 * L + 4 * r + t];
                        const int i = 16 * s + 8 * L + t;
                        c[i] = p & 15, c[i + 4] = p >> 4;
                    }
                    const uint8_t h = g[1168 + 32 * s + 4 * r + t];
                    for (int k = 0; k < 4; k++) c[16 * s + 4 * k + t] |= (uint8_t)(((h >> (2 * k)) & 3) << 4);
                }
            }
        }
    }
}

// the 8 rows' file blocks -> one x8 block group (x8_unpack_block reads it back)
static void x8_pack_block(int type, const uint8_t *const blk[8], uint8_t *restrict g) {
    for (int r = 0; r < 8; r++) {
        const uint8_t *restrict f = blk[r];
        memcpy(g + 2 * r, f + (type == T_Q6_K ? 208 : 0), 2);
        if (type == T_Q8_0) {
            for (int k = 0; k < 8; k++) memcpy(g + 16 + 32 * k + 4 * r, f + 2 + 4 * k, 4);
        } else if (type == T_Q4_0 || type == T_Q5_0 || type == T_Q5_1) {
            const int one = type == T_Q5_1, at = one ? 16 : 0;  // Q5_1: m[8] after d[8]
            const uint8_t *q = f + (type == T_Q4_0 ? 2 : one ? 8 : 6);  // byte l: codes l, l + 16
            if (one) memcpy(g + 16 + 2 * r, f + 2, 2);
            if (type != T_Q4_0)  // qh, byte by byte
                for (int L = 0; L < 4; L++) g[at + 144 + 8 * L + r] = f[(one ? 4 : 2) + L];
            for (int t = 0; t < 4; t++) {
                uint8_t *o = g + at + 16 + 4 * r + t;
                o[0] = (uint8_t)((q[t] & 15) | (q[4 + t] << 4));
                o[32] = (uint8_t)((q[8 + t] & 15) | (q[12 + t] << 4));
                o[64] = (uint8_t)((q[t] >> 4) | (q[4 + t] & 0xF0));
                o[96] = (uint8_t)((q[8 + t] >> 4) | (q[12 + t] & 0xF0));
            }
        } else if (type == T_Q4_K || type == T_Q5_K) {
            const int five = type == T_Q5_K;
            const uint8_t *sk = f + 4;  // the 12-byte packing of 8 scales and 8 mins
            uint8_t sc[8], mn[8];
            for (int j = 0; j < 4; j++) {
                sc[j] = sk[j] & 63, mn[j] = sk[j + 4] & 63;
                sc[j + 4] = (sk[j + 8] & 15) | ((sk[j] >> 6) << 4);
                mn[j + 4] = (sk[j + 8] >> 4) | ((sk[j + 4] >> 6) << 4);
            }
            memcpy(g + 16 + 2 * r, f + 2, 2);
            for (int j = 0; j < 4; j++) {
                g[32 + 8 * j + r] = (uint8_t)((sc[j] & 15) | ((mn[j] & 15) << 4));
                g[64 + 8 * j + r] = (uint8_t)((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
                g[96 + 8 * j + r] = (uint8_t)((sc[j] >> 4) | ((mn[j] >> 4) << 2) |
                                              ((sc[j + 4] >> 4) << 4) | ((mn[j + 4] >> 4) << 6));
            }
            // chunk q of qs: codes 64q + l (low nibbles) and 64q + 32 + l (high)
            for (int q = 0; q < 4; q++) {
                const uint8_t *src = f + (five ? 48 : 16) + 32 * q;
                uint8_t *lo = g + 128 + 256 * q + 4 * r, *hi = lo + 128;
#if defined(__SSSE3__)
                // a: bytes 8L + t, c: bytes 8L + 4 + t, as 16 lanes 4L + t
                const __m128i pick = _mm_set_epi8(11, 10, 9, 8, 3, 2, 1, 0, 11, 10, 9, 8, 3, 2, 1, 0);
                const __m128i x0 = _mm_loadu_si128((const __m128i *)src);
                const __m128i x1 = _mm_loadu_si128((const __m128i *)(src + 16));
                const __m128i a = _mm_unpacklo_epi64(_mm_shuffle_epi8(x0, pick), _mm_shuffle_epi8(x1, pick));
                const __m128i c = _mm_unpacklo_epi64(_mm_shuffle_epi8(_mm_srli_si128(x0, 4), pick),
                                                     _mm_shuffle_epi8(_mm_srli_si128(x1, 4), pick));
                const __m128i m4 = _mm_set1_epi8(15), h4 = _mm_set1_epi8((char)0xF0);
                const __m128i vl = _mm_or_si128(_mm_and_si128(a, m4), _mm_slli_epi16(_mm_and_si128(c, m4), 4));
                const __m128i vh = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(a, 4), m4), _mm_and_si128(c, h4));
                uint8_t tl[16], th[16];
                _mm_storeu_si128((__m128i *)tl, vl);
                _mm_storeu_si128((__m128i *)th, vh);
                for (int L = 0; L < 4; L++) memcpy(lo + 32 * L, tl + 4 * L, 4), memcpy(hi + 32 * L, th + 4 * L, 4);
#else
                for (int L = 0; L < 4; L++)
                    for (int t = 0; t < 4; t++) {
                        const uint8_t a = src[8 * L + t], c = src[8 * L + 4 + t];
                        lo[32 * L + t] = (uint8_t)((a & 15) | (c << 4));
                        hi[32 * L + t] = (uint8_t)((a >> 4) | (c & 0xF0));
                    }
#endif
            }
            if (five) {  // bit s of the file's qh[4k + t] is bit 4 of code 32s + 4k + t
                const uint8_t *qh = f + 16;
#if defined(__SSSE3__)
                // lanes 8t + k = qh[4k + t] (t = 0, 1 in lo; 2, 3 in hi): a byte's bit sb moved to
                // bit 7 and gathered by movemask gives the 4 output bytes of sub-block sb at once
                const __m128i pick = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
                const __m128i a = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)qh), pick);
                const __m128i b = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(qh + 16)), pick);
                const __m128i lo = _mm_unpacklo_epi32(a, b), hi = _mm_unpackhi_epi32(a, b);
                for (int sb = 0; sb < 8; sb++) {
                    const __m128i n = _mm_cvtsi32_si128(7 - sb);
                    const uint32_t v = (uint32_t)_mm_movemask_epi8(_mm_sll_epi16(lo, n)) |
                                       (uint32_t)_mm_movemask_epi8(_mm_sll_epi16(hi, n)) << 16;
                    memcpy(g + 1152 + 32 * sb + 4 * r, &v, 4);
                }
#else
                for (int sb = 0; sb < 8; sb++)
                    for (int t = 0; t < 4; t++) {
                        uint8_t v = 0;
                        for (int k = 0; k < 8; k++) v |= (uint8_t)(((qh[4 * k + t] >> sb) & 1) << k);
                        g[1152 + 32 * sb + 4 * r + t] = v;
                    }
#endif
            }
        } else if (type == T_IQ4_XS) {  // through the codes (load time only)
            block_codes b;
            decode_block(type, f, &b);
            for (int j = 0; j < 4; j++) g[16 + 8 * j + r] = (uint8_t)((b.sc[j] & 15) | (b.sc[j + 4] & 15) << 4);
            for (int k = 0; k < 2; k++) {
                uint8_t v = 0;
                for (int u = 0; u < 4; u++) v |= (uint8_t)((b.sc[4 * k + u] >> 4) << (2 * u));
                g[48 + 8 * k + r] = v;
            }
            for (int s = 0; s < 8; s++)
                for (int L = 0; L < 4; L++)
                    for (int t = 0; t < 4; t++)
                        g[64 + 128 * s + 32 * L + 4 * r + t] =
                            (uint8_t)(b.c[32 * s + 8 * L + t] | b.c[32 * s + 8 * L + 4 + t] << 4);
        } else {  // Q6_K: code 128h + 32k + l has its low bits in ql[64h + 32(k & 1) + l]
            // (nibble k >> 1) and its top bits in qh[32h + l] (bits 2k, 2k + 1)
            for (int r2 = 0; r2 < 16; r2++) g[16 + 8 * r2 + r] = f[192 + r2];
            for (int s = 0; s < 16; s++) {
                const int h = s / 8, k = (s / 2) % 4, l0 = 16 * (s % 2);
                const uint8_t *ql = f + 64 * h + 32 * (k & 1) + l0, *qh = f + 128 + 32 * h + l0;
                const int ls = 4 * (k >> 1), hs = 2 * k;
#if defined(__SSSE3__)
                // lanes 4u + t: the low and top bits of code 16s + 4u + t
                const __m128i m4 = _mm_set1_epi8(15), m2 = _mm_set1_epi8(3);
                const __m128i v = _mm_and_si128(_mm_srl_epi16(_mm_loadu_si128((const __m128i *)ql), _mm_cvtsi32_si128(ls)), m4);
                const __m128i y = _mm_and_si128(_mm_srl_epi16(_mm_loadu_si128((const __m128i *)qh), _mm_cvtsi32_si128(hs)), m2);
                const __m128i w = _mm_or_si128(v, _mm_slli_epi16(_mm_srli_si128(v, 4), 4));  // lanes t, 8 + t
                const __m128i z = _mm_or_si128(y, _mm_slli_epi16(_mm_srli_si128(y, 4), 2));
                const __m128i z2 = _mm_or_si128(z, _mm_slli_epi16(_mm_srli_si128(z, 8), 4));  // lanes t
                uint8_t tw[16], tz[16];
                _mm_storeu_si128((__m128i *)tw, w);
                _mm_storeu_si128((__m128i *)tz, z2);
                memcpy(g + 144 + 64 * s + 4 * r, tw, 4);
                memcpy(g + 176 + 64 * s + 4 * r, tw + 8, 4);
                memcpy(g + 1168 + 32 * s + 4 * r, tz, 4);
#else
                for (int t = 0; t < 4; t++) {
                    uint8_t c[4], top[4];
                    for (int u = 0; u < 4; u++) {
                        c[u] = (ql[4 * u + t] >> ls) & 15;
                        top[u] = (qh[4 * u + t] >> hs) & 3;
                    }
                    g[144 + 64 * s + 4 * r + t] = (uint8_t)(c[0] | (c[1] << 4));
                    g[176 + 64 * s + 4 * r + t] = (uint8_t)(c[2] | (c[3] << 4));
                    g[1168 + 32 * s + 4 * r + t] = (uint8_t)(top[0] | (top[1] << 2) | (top[2] << 4) | (top[3] << 6));
                }
#endif
            }
        }
    }
}

int minerva_x8_supports(int type) {
    int block, bytes;
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    return x8_geometry(type, &block, &bytes);
#else
    (void)block, (void)bytes, (void)type;
    return 0;
#endif
}

// dir 1: file rows src [N, row_bytes] -> x8 groups dst; dir 0: back. Same byte count.
static int x8_convert(int type, const uint8_t *src, uint8_t *dst, int64_t N, int64_t K,
                      int threads, int dir) {
    int block, bytes;
    if (!x8_geometry(type, &block, &bytes) || N % 8 || K % block || N < 1 || K < 1 || threads < 1)
        return -1;
    const int64_t nb = K / block, rb = nb * bytes, gb = 8 * bytes;
    if (type == T_IQ4_NL) type = T_Q4_0;  // the same bytes, the same rewrite
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t gi = 0; gi < N / 8; gi++) {
        block_codes b[8];
        for (int64_t i = 0; i < nb; i++) {
            if (dir) {
                const uint8_t *rows[8];
                for (int r = 0; r < 8; r++) rows[r] = src + (8 * gi + r) * rb + i * bytes;
                x8_pack_block(type, rows, dst + gi * 8 * rb + i * gb);
            } else {
                memset(b, 0, sizeof(b));
                x8_unpack_block(type, src + gi * 8 * rb + i * gb, b);
                for (int r = 0; r < 8; r++) encode_block(type, b + r, dst + (8 * gi + r) * rb + i * bytes);
            }
        }
    }
    return 0;
}

int minerva_x8_repack(int type, const uint8_t *src, uint8_t *dst, int64_t N, int64_t K, int threads) {
    return x8_convert(type, src, dst, N, K, threads, 1);
}

int minerva_x8_unpack(int type, const uint8_t *src, uint8_t *dst, int64_t N, int64_t K, int threads) {
    return x8_convert(type, src, dst, N, K, threads, 0);
}

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#ifndef PREFETCH_AHEAD
#define PREFETCH_AHEAD 2048  // bytes ahead of the block being read
#endif

// every cache line of the block PREFETCH_AHEAD bytes on (the streams are too many for the
// hardware prefetcher alone to keep one core's loads fed from DRAM)
INLINE void prefetch_block(const uint8_t *g, const int bytes) {
    UNROLL for (int off = 0; off < bytes; off += 64) __builtin_prefetch(g + PREFETCH_AHEAD + off);
}

INLINE __m256i bcast4(const int8_t *p) {  // 4 activation codes into every 32-bit lane
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

INLINE __m256 d8(const uint8_t *p) {  // 8 fp16 scales
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

// 8 bytes (one per row) -> 16 int16 lanes, each row's value twice (maddubs pairs lanes 2r, 2r+1)
INLINE __m256i dup8_u(__m128i bytes8) {
    const __m128i dup = _mm_set_epi8(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    return _mm256_cvtepu8_epi16(_mm_shuffle_epi8(bytes8, dup));
}
INLINE __m256i dup8_s(__m128i bytes8) {
    const __m128i dup = _mm_set_epi8(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(bytes8, dup));
}
// bytes 0-7 (value j of rows 0-7) and 8-15 (value j + 1) -> 16 int16: row r's pair in 2r, 2r+1
INLINE __m256i pairs8_u(__m128i v) {
    const __m128i zip = _mm_set_epi8(15, 7, 14, 6, 13, 5, 12, 4, 11, 3, 10, 2, 9, 1, 8, 0);
    return _mm256_cvtepu8_epi16(_mm_shuffle_epi8(v, zip));
}
INLINE __m256i pairs8_s(__m128i v) {
    const __m128i zip = _mm_set_epi8(15, 7, 14, 6, 13, 5, 12, 4, 11, 3, 10, 2, 9, 1, 8, 0);
    return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(v, zip));
}

INLINE void dot8_q8_0(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nb; b++, g += 272) {
        prefetch_block(g, 272);
        __m256i isum[MAX_ROWS];
        UNROLL for (int m = 0; m < M; m++) isum[m] = _mm256_setzero_si256();
        UNROLL for (int k = 0; k < 8; k++) {
            const __m256i w = _mm256_loadu_si256((const __m256i *)(g + 16 + 32 * k));
            const __m256i aw = _mm256_sign_epi8(w, w);
            UNROLL for (int m = 0; m < M; m++) {
                const __m256i s = _mm256_sign_epi8(bcast4(a[m].q + b * QK + 4 * k), w);
                isum[m] = _mm256_add_epi32(isum[m], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, s), ones));
            }
        }
        const __m256 d = d8(g);
        UNROLL for (int m = 0; m < M; m++)
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[m]), _mm256_mul_ps(d, _mm256_set1_ps(a[m].d[b])), acc[m]);
    }
}

INLINE void dot8_q4_0(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc) {
    const __m256i ones = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(15);
    for (int64_t b = 0; b < nb; b++, g += 144) {
        prefetch_block(g, 144);
        __m256i s16[MAX_ROWS];
        UNROLL for (int m = 0; m < M; m++) s16[m] = _mm256_setzero_si256();
        UNROLL for (int L = 0; L < 4; L++) {
            const __m256i w = _mm256_loadu_si256((const __m256i *)(g + 16 + 32 * L));
            const __m256i lo = _mm256_and_si256(w, low4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), low4);
            UNROLL for (int m = 0; m < M; m++) {
                const int8_t *aq = a[m].q + b * QK + 8 * L;
                // 8 products of codes <= 15 and |a| <= 127 stay within int16
                s16[m] = _mm256_add_epi16(s16[m], _mm256_maddubs_epi16(lo, bcast4(aq)));
                s16[m] = _mm256_add_epi16(s16[m], _mm256_maddubs_epi16(hi, bcast4(aq + 4)));
            }
        }
        const __m256 d = d8(g);
        UNROLL for (int m = 0; m < M; m++) {
            const __m256 isum = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16[m], ones));
            acc[m] = _mm256_fmadd_ps(isum, _mm256_mul_ps(d, _mm256_set1_ps(a[m].d[b])), acc[m]);
            // codes carry +8: subtract 8 * d_w * (d_a * sum of the block's activation codes)
            acc[m] = _mm256_fmadd_ps(d, _mm256_set1_ps(-8.0f * a[m].s[b]), acc[m]);
        }
    }
}

// Q5_0: Q4_0's nibbles with bit 4 from one byte per row and L (lane 4r + t: bit t for the low
// code, 4 + t for the high one); codes <= 31, so the int16 sums go to int32 every L.
INLINE void dot8_q5(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc,
                    const int one) {  // one: Q5_1 (mins m[8] after d[8], 16 bytes further on)
    const int at = one ? 16 : 0, bytes = one ? 192 : 176;
    const __m256i ones = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(15);
    const __m256i bit4 = _mm256_set1_epi8(0x10);
    const __m256i rows = _mm256_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4,
                                          4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
    const __m256i mlo = _mm256_setr_epi8(1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8,
                                         1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8);
    const __m256i mhi = _mm256_slli_epi16(mlo, 4);
    for (int64_t b = 0; b < nb; b++, g += bytes) {
        prefetch_block(g, bytes);
        __m256i s32[MAX_ROWS];
        UNROLL for (int m = 0; m < M; m++) s32[m] = _mm256_setzero_si256();
        UNROLL for (int L = 0; L < 4; L++) {
            const __m256i w = _mm256_loadu_si256((const __m256i *)(g + at + 16 + 32 * L));
            int64_t hb;
            memcpy(&hb, g + at + 144 + 8 * L, 8);
            const __m256i h = _mm256_shuffle_epi8(_mm256_set1_epi64x(hb), rows);
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(w, low4),
                                               _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(h, mlo), mlo), bit4));
            const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(w, 4), low4),
                                               _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(h, mhi), mhi), bit4));
            UNROLL for (int m = 0; m < M; m++) {
                const int8_t *aq = a[m].q + b * QK + 8 * L;
                const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, bcast4(aq)),
                                                   _mm256_maddubs_epi16(hi, bcast4(aq + 4)));
                s32[m] = _mm256_add_epi32(s32[m], _mm256_madd_epi16(p, ones));
            }
        }
        const __m256 d = d8(g);
        // Q5_0's codes carry +16: -16 d_w, Q5_1's offset m_w, times d_a * sum of the codes
        const __m256 off = one ? d8(g + 16) : _mm256_mul_ps(d, _mm256_set1_ps(-16.0f));
        UNROLL for (int m = 0; m < M; m++) {
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[m]), _mm256_mul_ps(d, _mm256_set1_ps(a[m].d[b])), acc[m]);
            acc[m] = _mm256_fmadd_ps(off, _mm256_set1_ps(a[m].s[b]), acc[m]);
        }
    }
}

INLINE void dot8_q5_0(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc) {
    dot8_q5(g, a, M, nb, acc, 0);
}
INLINE void dot8_q5_1(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc) {
    dot8_q5(g, a, M, nb, acc, 1);
}

// Q4_K, and Q5_K (`five`: Q4_K's layout plus a plane of fifth bits, bit k of a byte for group
// k of the subblock; 1408-byte groups)
INLINE void dot8_k45(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc,
                     const int five) {
    const __m256i low4 = _mm256_set1_epi8(15), top = _mm256_set1_epi8(0x30);
    const __m256i bit4 = _mm256_set1_epi8(0x10), ones = _mm256_set1_epi16(1);
    const int bytes = five ? 1408 : 1152;
    // int16 sums of 2L maddubs per madd: codes <= 15 allow all 4 L (8 products of |a| <= 127),
    // codes <= 31 two at a time
    const int per_madd = five ? 2 : 4;
    for (int64_t i = 0; i < nb; i++, g += bytes) {
        prefetch_block(g, bytes);
        // scales and mins of subblocks 0-3 (h = 0) and 4-7 (h = 1): byte 8j + r
        const __m256i lo0 = _mm256_loadu_si256((const __m256i *)(g + 32));
        const __m256i lo1 = _mm256_loadu_si256((const __m256i *)(g + 64));
        const __m256i hi = _mm256_loadu_si256((const __m256i *)(g + 96));
        __m256i sc[2], mn[2];
        sc[0] = _mm256_or_si256(_mm256_and_si256(lo0, low4), _mm256_and_si256(_mm256_slli_epi16(hi, 4), top));
        mn[0] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lo0, 4), low4),
                                _mm256_and_si256(_mm256_slli_epi16(hi, 2), top));
        sc[1] = _mm256_or_si256(_mm256_and_si256(lo1, low4), _mm256_and_si256(hi, top));
        mn[1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lo1, 4), low4),
                                _mm256_and_si256(_mm256_srli_epi16(hi, 2), top));
        __m256i sumi[MAX_ROWS], msum[MAX_ROWS], bs[MAX_ROWS];
        UNROLL for (int m = 0; m < M; m++) {
            sumi[m] = msum[m] = _mm256_setzero_si256();
            // sums of 32 activation codes, as int16 pairs (j, j + 1) in int32 lanes 0, 1, 4, 5
            const __m256i b16 = _mm256_loadu_si256((const __m256i *)(a[m].bsum + i * 16));
            const __m256i b32 = _mm256_madd_epi16(b16, ones);
            bs[m] = _mm256_packs_epi32(b32, b32);
        }
        UNROLL for (int s = 0; s < 8; s++) {
            const __m128i half = (s & 2) ? _mm256_extracti128_si256(sc[s >> 2], 1) : _mm256_castsi256_si128(sc[s >> 2]);
            const __m256i scale = dup8_u((s & 1) ? _mm_srli_si128(half, 8) : half);
            const __m256i h = five ? _mm256_loadu_si256((const __m256i *)(g + 1152 + 32 * s)) : ones;
            UNROLL for (int L0 = 0; L0 < 4; L0 += per_madd) {
                __m256i p16[MAX_ROWS];
                UNROLL for (int m = 0; m < M; m++) p16[m] = _mm256_setzero_si256();
                UNROLL for (int L = L0; L < L0 + per_madd; L++) {
                    const __m256i w = _mm256_loadu_si256((const __m256i *)(g + 128 + 128 * s + 32 * L));
                    __m256i wl = _mm256_and_si256(w, low4);
                    __m256i wh = _mm256_and_si256(_mm256_srli_epi16(w, 4), low4);
                    if (five) {  // bits 2L and 2L + 1 of h (groups 2L, 2L + 1) moved to bit 4
                        const int k0 = 2 * L, k1 = 2 * L + 1;
                        const __m256i h0 = k0 <= 4 ? _mm256_slli_epi16(h, 4 - k0) : _mm256_srli_epi16(h, k0 - 4);
                        const __m256i h1 = k1 <= 4 ? _mm256_slli_epi16(h, 4 - k1) : _mm256_srli_epi16(h, k1 - 4);
                        wl = _mm256_or_si256(wl, _mm256_and_si256(h0, bit4));
                        wh = _mm256_or_si256(wh, _mm256_and_si256(h1, bit4));
                    }
                    UNROLL for (int m = 0; m < M; m++) {
                        const int8_t *aq = a[m].q + i * QK_K + 32 * s + 8 * L;
                        p16[m] = _mm256_add_epi16(p16[m], _mm256_maddubs_epi16(wl, bcast4(aq)));
                        p16[m] = _mm256_add_epi16(p16[m], _mm256_maddubs_epi16(wh, bcast4(aq + 4)));
                    }
                }
                UNROLL for (int m = 0; m < M; m++) sumi[m] = _mm256_add_epi32(sumi[m], _mm256_madd_epi16(p16[m], scale));
            }
            if (s & 1) {  // mins of subblocks s - 1, s against their activation sums
                const __m128i mhalf = (s & 2) ? _mm256_extracti128_si256(mn[s >> 2], 1) : _mm256_castsi256_si128(mn[s >> 2]);
                const __m256i mins = pairs8_u(mhalf);
                const int lane = ((s >> 2) << 2) | ((s >> 1) & 1);
                UNROLL for (int m = 0; m < M; m++) {
                    const __m256i pair = _mm256_permutevar8x32_epi32(bs[m], _mm256_set1_epi32(lane));
                    msum[m] = _mm256_add_epi32(msum[m], _mm256_madd_epi16(mins, pair));
                }
            }
        }
        const __m256 d = d8(g), dmin = d8(g + 16);
        UNROLL for (int m = 0; m < M; m++) {
            const __m256 da = _mm256_set1_ps(a[m].d[i]);
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[m]), _mm256_mul_ps(d, da), acc[m]);
            acc[m] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum[m]), _mm256_mul_ps(dmin, da), acc[m]);
        }
    }
}

INLINE void dot8_q4_k(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc) {
    dot8_k45(g, a, M, nb, acc, 0);
}
INLINE void dot8_q5_k(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc) {
    dot8_k45(g, a, M, nb, acc, 1);
}

// Q6_K: the 6-bit codes (0..63) of subblock s of the 8 rows, as 4 vectors of 4 codes a row
// (the layout comment at the top: low 4 bits in bytes 144 + 64s.., top 2 bits in 1168 + 32s..)
INLINE void q6k_codes(const uint8_t *g, const int s, __m256i *v0, __m256i *v1, __m256i *v2,
                      __m256i *v3) {
    const __m256i low4 = _mm256_set1_epi8(15), top = _mm256_set1_epi8(0x30);
    const __m256i q0 = _mm256_loadu_si256((const __m256i *)(g + 144 + 64 * s));
    const __m256i q1 = _mm256_loadu_si256((const __m256i *)(g + 176 + 64 * s));
    const __m256i h = _mm256_loadu_si256((const __m256i *)(g + 1168 + 32 * s));
    *v0 = _mm256_or_si256(_mm256_and_si256(q0, low4), _mm256_and_si256(_mm256_slli_epi16(h, 4), top));
    *v1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q0, 4), low4),
                          _mm256_and_si256(_mm256_slli_epi16(h, 2), top));
    *v2 = _mm256_or_si256(_mm256_and_si256(q1, low4), _mm256_and_si256(h, top));
    *v3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q1, 4), low4),
                          _mm256_and_si256(_mm256_srli_epi16(h, 2), top));
}

INLINE void dot8_q6_k(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc) {
    for (int64_t i = 0; i < nb; i++, g += 1680) {
        prefetch_block(g, 1680);
        __m256i sumi[MAX_ROWS], offs[MAX_ROWS];
        UNROLL for (int m = 0; m < M; m++) sumi[m] = offs[m] = _mm256_setzero_si256();
        UNROLL for (int s = 0; s < 16; s++) {
            const __m256i scale = dup8_s(_mm_loadl_epi64((const __m128i *)(g + 16 + 8 * s)));
            __m256i v0, v1, v2, v3;
            q6k_codes(g, s, &v0, &v1, &v2, &v3);
            UNROLL for (int m = 0; m < M; m++) {
                const int8_t *aq = a[m].q + i * QK_K + 16 * s;
                // two products of codes <= 63 and |a| <= 127 per int16, two of them summed
                const __m256i p01 = _mm256_add_epi16(_mm256_maddubs_epi16(v0, bcast4(aq)),
                                                     _mm256_maddubs_epi16(v1, bcast4(aq + 4)));
                const __m256i p23 = _mm256_add_epi16(_mm256_maddubs_epi16(v2, bcast4(aq + 8)),
                                                     _mm256_maddubs_epi16(v3, bcast4(aq + 12)));
                sumi[m] = _mm256_add_epi32(sumi[m], _mm256_add_epi32(_mm256_madd_epi16(p01, scale),
                                                                     _mm256_madd_epi16(p23, scale)));
            }
            if (s & 1) {  // codes carry +32: scales of s - 1, s against their activation sums
                const __m256i sp = pairs8_s(_mm_loadu_si128((const __m128i *)(g + 16 + 8 * (s - 1))));
                UNROLL for (int m = 0; m < M; m++) {
                    int32_t pair;
                    memcpy(&pair, a[m].bsum + i * 16 + s - 1, 4);
                    offs[m] = _mm256_add_epi32(offs[m], _mm256_madd_epi16(sp, _mm256_set1_epi32(pair)));
                }
            }
        }
        const __m256 d = d8(g);
        UNROLL for (int m = 0; m < M; m++) {
            const __m256i tot = _mm256_sub_epi32(sumi[m], _mm256_slli_epi32(offs[m], 5));
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot), _mm256_mul_ps(d, _mm256_set1_ps(a[m].d[i])), acc[m]);
        }
    }
}

// ---- the same products for 2-8 rows of x (prefill) ---------------------------------------
//
// With 4 rows, the single-row kernels above keep sums per row for the whole block (products,
// mins or offsets, activation sums, scales: 20+ vectors for AVX2's 16 registers), so the
// compiler spills inside the hot loop; and it reassociates integer sums that start at zero
// into long trees of live partial sums. These forms hold one subblock's decoded codes in
// registers while every row takes them, keep one running sum per row (KEEP stops the
// reassociation), and take the mins / the codes' offset against the activation sums once per
// block, after the codes. Q4_K / Q5_K / Q6_K take 8 rows at once (the codes' decoding is then
// shared by 8 rows; the rows' running sums live in memory between subblocks), Q8_0 4 (it has
// nothing to decode). The integer sums and the float steps are those of the single-row
// kernels, so the results are bit-identical to them (tests/unit/test_gguf_quant_x8.py).

// v is computed here, in a register, in this order among KEEP points: no reassociation of its
// sums, and no loads hoisted far ahead of their use (which costs registers)
#define KEEP(v) __asm__ volatile("" : "+x"(v))

INLINE __m256i bcast4_pinned(const int8_t *p) {
    __m256i v = bcast4(p);
    KEEP(v);
    return v;
}

INLINE void dot8_q8_0_rows(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nb; b++, g += 272) {
        prefetch_block(g, 272);
        __m256i isum[MAX_ROWS];
        UNROLL for (int m = 0; m < M; m++) isum[m] = _mm256_setzero_si256();
        UNROLL for (int k = 0; k < 8; k++) {
            const __m256i w = _mm256_loadu_si256((const __m256i *)(g + 16 + 32 * k));
            const __m256i aw = _mm256_sign_epi8(w, w);
            UNROLL for (int m = 0; m < M; m++) {
                const __m256i s = _mm256_sign_epi8(bcast4_pinned(a[m].q + b * QK + 4 * k), w);
                isum[m] = _mm256_add_epi32(isum[m], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, s), ones));
                KEEP(isum[m]);
            }
        }
        const __m256 d = d8(g);
        UNROLL for (int m = 0; m < M; m++)
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[m]), _mm256_mul_ps(d, _mm256_set1_ps(a[m].d[b])), acc[m]);
    }
}

INLINE void dot8_k45_rows(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc,
                          const int five) {
    const __m256i low4 = _mm256_set1_epi8(15), top = _mm256_set1_epi8(0x30);
    const __m256i bit4 = _mm256_set1_epi8(0x10), ones = _mm256_set1_epi16(1);
    const int bytes = five ? 1408 : 1152;
    for (int64_t i = 0; i < nb; i++, g += bytes) {
        prefetch_block(g, bytes);
        const __m256i lo0 = _mm256_loadu_si256((const __m256i *)(g + 32));
        const __m256i lo1 = _mm256_loadu_si256((const __m256i *)(g + 64));
        const __m256i hi = _mm256_loadu_si256((const __m256i *)(g + 96));
        __m256i sc[2];
        sc[0] = _mm256_or_si256(_mm256_and_si256(lo0, low4), _mm256_and_si256(_mm256_slli_epi16(hi, 4), top));
        sc[1] = _mm256_or_si256(_mm256_and_si256(lo1, low4), _mm256_and_si256(hi, top));
        __m256i sumi[MAX_ROWS];
        UNROLL for (int m = 0; m < M; m++) sumi[m] = _mm256_setzero_si256();
        UNROLL for (int s = 0; s < 8; s++) {
            const __m128i half = (s & 2) ? _mm256_extracti128_si256(sc[s >> 2], 1) : _mm256_castsi256_si128(sc[s >> 2]);
            const __m256i scale = dup8_u((s & 1) ? _mm_srli_si128(half, 8) : half);
            // w[j]: codes 32s + 4j + t of the 8 rows (row r in bytes 4r..4r+3)
            __m256i w[8];
            const __m256i h = five ? _mm256_loadu_si256((const __m256i *)(g + 1152 + 32 * s)) : ones;
            UNROLL for (int L = 0; L < 4; L++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(g + 128 + 128 * s + 32 * L));
                w[2 * L] = _mm256_and_si256(v, low4);
                w[2 * L + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
                if (five) {  // bits 2L and 2L + 1 of h moved to bit 4
                    const int k0 = 2 * L, k1 = 2 * L + 1;
                    const __m256i h0 = k0 <= 4 ? _mm256_slli_epi16(h, 4 - k0) : _mm256_srli_epi16(h, k0 - 4);
                    const __m256i h1 = k1 <= 4 ? _mm256_slli_epi16(h, 4 - k1) : _mm256_srli_epi16(h, k1 - 4);
                    w[2 * L] = _mm256_or_si256(w[2 * L], _mm256_and_si256(h0, bit4));
                    w[2 * L + 1] = _mm256_or_si256(w[2 * L + 1], _mm256_and_si256(h1, bit4));
                }
            }
            UNROLL for (int m = 0; m < M; m++) {
                const int8_t *aq = a[m].q + i * QK_K + 32 * s;
                // int16 sums: 16 products of codes <= 15 and |a| <= 128, or 8 of codes <= 31
                if (five) {
                    UNROLL for (int j0 = 0; j0 < 8; j0 += 4) {
                        __m256i p = _mm256_maddubs_epi16(w[j0], bcast4_pinned(aq + 4 * j0));
                        UNROLL for (int j = j0 + 1; j < j0 + 4; j++) {
                            p = _mm256_add_epi16(p, _mm256_maddubs_epi16(w[j], bcast4_pinned(aq + 4 * j)));
                            KEEP(p);
                        }
                        sumi[m] = _mm256_add_epi32(sumi[m], _mm256_madd_epi16(p, scale));
                        KEEP(sumi[m]);
                    }
                } else {
                    // two chains of 4 (codes 4j + t for even and odd j): half the dependent adds
                    __m256i p0 = _mm256_maddubs_epi16(w[0], bcast4_pinned(aq));
                    __m256i p1 = _mm256_maddubs_epi16(w[1], bcast4_pinned(aq + 4));
                    UNROLL for (int j = 2; j < 8; j += 2) {
                        p0 = _mm256_add_epi16(p0, _mm256_maddubs_epi16(w[j], bcast4_pinned(aq + 4 * j)));
                        KEEP(p0);
                        p1 = _mm256_add_epi16(p1, _mm256_maddubs_epi16(w[j + 1], bcast4_pinned(aq + 4 * j + 4)));
                        KEEP(p1);
                    }
                    sumi[m] = _mm256_add_epi32(sumi[m], _mm256_madd_epi16(_mm256_add_epi16(p0, p1), scale));
                    KEEP(sumi[m]);
                }
            }
        }
        // mins of subblocks (2p, 2p + 1) against their activation sums
        __m256i mins[4];
        {
            const __m256i mn0 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lo0, 4), low4),
                                                _mm256_and_si256(_mm256_slli_epi16(hi, 2), top));
            const __m256i mn1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lo1, 4), low4),
                                                _mm256_and_si256(_mm256_srli_epi16(hi, 2), top));
            mins[0] = pairs8_u(_mm256_castsi256_si128(mn0));
            mins[1] = pairs8_u(_mm256_extracti128_si256(mn0, 1));
            mins[2] = pairs8_u(_mm256_castsi256_si128(mn1));
            mins[3] = pairs8_u(_mm256_extracti128_si256(mn1, 1));
        }
        const __m256 d = d8(g), dmin = d8(g + 16);
        UNROLL for (int m = 0; m < M; m++) {
            const __m256i b16 = _mm256_loadu_si256((const __m256i *)(a[m].bsum + i * 16));
            const __m256i b32 = _mm256_madd_epi16(b16, ones);
            const __m256i bs = _mm256_packs_epi32(b32, b32);
            __m256i msum = _mm256_setzero_si256();
            UNROLL for (int p = 0; p < 4; p++) {
                const int lane = ((p >> 1) << 2) | (p & 1);
                const __m256i pair = _mm256_permutevar8x32_epi32(bs, _mm256_set1_epi32(lane));
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(mins[p], pair));
            }
            const __m256 da = _mm256_set1_ps(a[m].d[i]);
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[m]), _mm256_mul_ps(d, da), acc[m]);
            acc[m] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(dmin, da), acc[m]);
        }
    }
}

INLINE void dot8_q4_k_rows(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc) {
    dot8_k45_rows(g, a, M, nb, acc, 0);
}
INLINE void dot8_q5_k_rows(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc) {
    dot8_k45_rows(g, a, M, nb, acc, 1);
}

INLINE void dot8_q6_k_rows(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc) {
    for (int64_t i = 0; i < nb; i++, g += 1680) {
        prefetch_block(g, 1680);
        __m256i sumi[MAX_ROWS];
        UNROLL for (int m = 0; m < M; m++) sumi[m] = _mm256_setzero_si256();
        UNROLL for (int s = 0; s < 16; s++) {
            const __m256i scale = dup8_s(_mm_loadl_epi64((const __m128i *)(g + 16 + 8 * s)));
            __m256i v0, v1, v2, v3;
            q6k_codes(g, s, &v0, &v1, &v2, &v3);
            UNROLL for (int m = 0; m < M; m++) {
                const int8_t *aq = a[m].q + i * QK_K + 16 * s;
                __m256i p01 = _mm256_maddubs_epi16(v0, bcast4_pinned(aq));
                p01 = _mm256_add_epi16(p01, _mm256_maddubs_epi16(v1, bcast4_pinned(aq + 4)));
                KEEP(p01);
                __m256i p23 = _mm256_maddubs_epi16(v2, bcast4_pinned(aq + 8));
                p23 = _mm256_add_epi16(p23, _mm256_maddubs_epi16(v3, bcast4_pinned(aq + 12)));
                KEEP(p23);
                sumi[m] = _mm256_add_epi32(sumi[m], _mm256_add_epi32(_mm256_madd_epi16(p01, scale),
                                                                     _mm256_madd_epi16(p23, scale)));
                KEEP(sumi[m]);
            }
        }
        // codes carry +32: the scales of subblocks (s, s + 1) against their activation sums
        __m256i offs[MAX_ROWS];
        UNROLL for (int m = 0; m < M; m++) offs[m] = _mm256_setzero_si256();
        UNROLL for (int s = 0; s < 16; s += 2) {
            const __m256i sp = pairs8_s(_mm_loadu_si128((const __m128i *)(g + 16 + 8 * s)));
            UNROLL for (int m = 0; m < M; m++) {
                int32_t pair;
                memcpy(&pair, a[m].bsum + i * 16 + s, 4);
                offs[m] = _mm256_add_epi32(offs[m], _mm256_madd_epi16(sp, _mm256_set1_epi32(pair)));
                KEEP(offs[m]);
            }
        }
        const __m256 d = d8(g);
        UNROLL for (int m = 0; m < M; m++) {
            const __m256i tot = _mm256_sub_epi32(sumi[m], _mm256_slli_epi32(offs[m], 5));
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot), _mm256_mul_ps(d, _mm256_set1_ps(a[m].d[i])), acc[m]);
        }
    }
}

// IQ4_NL / IQ4_XS: the codebook (iq4.h) in both 128-bit lanes (byte shuffles look 16 indices up at once)
INLINE __m256i iq4_book(void) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)IQ4_VALUES));
}

// 32 bytes of index pairs -> the codebook values of the low and of the high nibbles
INLINE void iq4_lookup(const __m256i book, const __m256i w, __m256i *lo, __m256i *hi) {
    const __m256i low4 = _mm256_set1_epi8(15);
    *lo = _mm256_shuffle_epi8(book, _mm256_and_si256(w, low4));
    *hi = _mm256_shuffle_epi8(book, _mm256_and_si256(_mm256_srli_epi16(w, 4), low4));
}

// IQ4_NL (Q4_0's layout): signed values |v| <= 127, the sign trick of Q8_0; each maddubs pair
// (2 * 127 * 127) fills an int16, so every one goes to int32 at once. pin (2-4 rows of x): the
// running sums kept in order (KEEP), 1.05-1.15x at 128 rows but 0.88-0.98x at 1 row, so 1 row
// leaves them to the compiler (benchmarks/results/cpu_quant_x8_kernels_iq4_nl_pin.json)
INLINE void dot8_iq4_nl_pin(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc,
                            const int pin) {
    const __m256i ones = _mm256_set1_epi16(1), book = iq4_book();
    for (int64_t b = 0; b < nb; b++, g += 144) {
        prefetch_block(g, 144);
        __m256i isum[MAX_ROWS];
        UNROLL for (int m = 0; m < M; m++) isum[m] = _mm256_setzero_si256();
        UNROLL for (int L = 0; L < 4; L++) {
            __m256i lo, hi;
            iq4_lookup(book, _mm256_loadu_si256((const __m256i *)(g + 16 + 32 * L)), &lo, &hi);
            const __m256i ulo = _mm256_sign_epi8(lo, lo), uhi = _mm256_sign_epi8(hi, hi);
            UNROLL for (int m = 0; m < M; m++) {
                const int8_t *aq = a[m].q + b * QK + 8 * L;
                const __m256i a0 = pin ? bcast4_pinned(aq) : bcast4(aq);
                const __m256i a1 = pin ? bcast4_pinned(aq + 4) : bcast4(aq + 4);
                const __m256i p0 = _mm256_maddubs_epi16(ulo, _mm256_sign_epi8(a0, lo));
                const __m256i p1 = _mm256_maddubs_epi16(uhi, _mm256_sign_epi8(a1, hi));
                isum[m] = _mm256_add_epi32(isum[m], _mm256_add_epi32(_mm256_madd_epi16(p0, ones),
                                                                     _mm256_madd_epi16(p1, ones)));
                if (pin) KEEP(isum[m]);
            }
        }
        const __m256 d = d8(g);
        UNROLL for (int m = 0; m < M; m++)
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[m]), _mm256_mul_ps(d, _mm256_set1_ps(a[m].d[b])), acc[m]);
    }
}

INLINE void dot8_iq4_nl(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc) {
    dot8_iq4_nl_pin(g, a, M, nb, acc, 0);
}
INLINE void dot8_iq4_nl_rows(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc) {
    dot8_iq4_nl_pin(g, a, M, nb, acc, 1);
}

// IQ4_XS: IQ4_NL's products per subblock of 32, each times its signed 6-bit scale (madd against
// the scales of the 8 rows), and one fp16 scale per row and super-block. The running sums are
// kept in order as the _rows kernels above keep them (KEEP): left to the compiler, 1 row of x ran
// 1.1-1.2x slower and 4 or 128 rows 1.2-1.4x on TinyLlama's shapes
// (benchmarks/results/cpu_quant_x8_kernels_iq4_xs_pin*.json)
INLINE void dot8_iq4_xs(const uint8_t *g, const act_row *a, const int M, int64_t nb, __m256 *acc) {
    const __m256i low4 = _mm256_set1_epi8(15), two = _mm256_set1_epi8(3);
    const __m256i bias = _mm256_set1_epi8(32), book = iq4_book();
    const __m256i shifts = _mm256_setr_epi64x(0, 2, 4, 6);
    for (int64_t i = 0; i < nb; i++, g += 1088) {
        prefetch_block(g, 1088);
        // scale(s, r) - 32 as int8 at byte 8 (s % 4) + r of sc[s / 4]
        const __m256i lo = _mm256_loadu_si256((const __m256i *)(g + 16));
        int64_t h[2];
        memcpy(h, g + 48, 16);
        __m256i sc[2];
        UNROLL for (int k = 0; k < 2; k++) {
            const __m256i top = _mm256_and_si256(_mm256_srlv_epi64(_mm256_set1_epi64x(h[k]), shifts), two);
            const __m256i low = _mm256_and_si256(k ? _mm256_srli_epi16(lo, 4) : lo, low4);
            sc[k] = _mm256_sub_epi8(_mm256_or_si256(low, _mm256_slli_epi16(top, 4)), bias);
        }
        __m256i sumi[MAX_ROWS];
        UNROLL for (int m = 0; m < M; m++) sumi[m] = _mm256_setzero_si256();
        UNROLL for (int s = 0; s < 8; s++) {
            const __m128i half = (s & 2) ? _mm256_extracti128_si256(sc[s >> 2], 1) : _mm256_castsi256_si128(sc[s >> 2]);
            const __m256i scale = dup8_s((s & 1) ? _mm_srli_si128(half, 8) : half);
            UNROLL for (int L = 0; L < 4; L++) {
                __m256i vl, vh;
                iq4_lookup(book, _mm256_loadu_si256((const __m256i *)(g + 64 + 128 * s + 32 * L)), &vl, &vh);
                const __m256i ul = _mm256_sign_epi8(vl, vl), uh = _mm256_sign_epi8(vh, vh);
                UNROLL for (int m = 0; m < M; m++) {
                    const int8_t *aq = a[m].q + i * QK_K + 32 * s + 8 * L;
                    const __m256i a0 = bcast4_pinned(aq), a1 = bcast4_pinned(aq + 4);
                    const __m256i p0 = _mm256_maddubs_epi16(ul, _mm256_sign_epi8(a0, vl));
                    const __m256i p1 = _mm256_maddubs_epi16(uh, _mm256_sign_epi8(a1, vh));
                    sumi[m] = _mm256_add_epi32(sumi[m], _mm256_add_epi32(_mm256_madd_epi16(p0, scale),
                                                                         _mm256_madd_epi16(p1, scale)));
                    KEEP(sumi[m]);
                }
            }
        }
        const __m256 d = d8(g);
        UNROLL for (int m = 0; m < M; m++)
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[m]), _mm256_mul_ps(d, _mm256_set1_ps(a[m].d[i])), acc[m]);
    }
}


// ROWS: the kernel for 2 or more rows of x (NAME itself where the type has no _rows form); CAP:
// the most rows it takes at once (8 where decoding a subblock's codes is worth sharing among 8
// rows, 4 where the kernel's sums for more rows would not fit the registers)
#define DEFINE_GROUPS(NAME, ROWS, CAP)                                                         \
    INLINE void groups_m_##NAME(const uint8_t *W, int64_t gbytes, int64_t nb, const act_row *a, \
                                float *y, int64_t ldy, int64_t g0, int64_t g1, const int M) {  \
        for (int64_t gi = g0; gi < g1; gi++) {                                                 \
            __m256 acc[MAX_ROWS];                                                              \
            UNROLL for (int m = 0; m < M; m++) acc[m] = _mm256_setzero_ps();                  \
            if (M == 1)                                                                        \
                dot8_##NAME(W + gi * gbytes, a, M, nb, acc);                                   \
            else                                                                               \
                dot8_##ROWS(W + gi * gbytes, a, M, nb, acc);                                   \
            UNROLL for (int m = 0; m < M; m++) _mm256_storeu_ps(y + m * ldy + 8 * gi, acc[m]);\
        }                                                                                      \
    }                                                                                          \
    static void groups_##NAME(const uint8_t *W, int64_t gbytes, int64_t nb, const act_row *a,   \
                              float *y, int64_t ldy, int64_t g0, int64_t g1, int64_t M) {      \
        for (; M > CAP; M -= CAP, a += CAP, y += CAP * ldy)                                    \
            groups_##NAME(W, gbytes, nb, a, y, ldy, g0, g1, CAP);                              \
        switch (M) {                                                                           \
        case 1: groups_m_##NAME(W, gbytes, nb, a, y, ldy, g0, g1, 1); break;                   \
        case 2: groups_m_##NAME(W, gbytes, nb, a, y, ldy, g0, g1, 2); break;                   \
        case 3: groups_m_##NAME(W, gbytes, nb, a, y, ldy, g0, g1, 3); break;                   \
        case 4: groups_m_##NAME(W, gbytes, nb, a, y, ldy, g0, g1, 4); break;                   \
        case 5: if (CAP >= 5) groups_m_##NAME(W, gbytes, nb, a, y, ldy, g0, g1, 5); break;     \
        case 6: if (CAP >= 6) groups_m_##NAME(W, gbytes, nb, a, y, ldy, g0, g1, 6); break;     \
        case 7: if (CAP >= 7) groups_m_##NAME(W, gbytes, nb, a, y, ldy, g0, g1, 7); break;     \
        default: if (CAP >= 8) groups_m_##NAME(W, gbytes, nb, a, y, ldy, g0, g1, 8); break;    \
        }                                                                                      \
    }

DEFINE_GROUPS(q8_0, q8_0_rows, 4)
DEFINE_GROUPS(q4_0, q4_0, 4)
DEFINE_GROUPS(q5_0, q5_0, 4)
DEFINE_GROUPS(q5_1, q5_1, 4)
DEFINE_GROUPS(q4_k, q4_k_rows, 8)
DEFINE_GROUPS(q5_k, q5_k_rows, 8)
DEFINE_GROUPS(q6_k, q6_k_rows, 8)
DEFINE_GROUPS(iq4_nl, iq4_nl_rows, 4)
DEFINE_GROUPS(iq4_xs, iq4_xs, 4)

typedef void (*groups_fn)(const uint8_t *, int64_t, int64_t, const act_row *, float *, int64_t,
                          int64_t, int64_t, int64_t);

#define STACK_ROWS 32  // act_row structs of up to this many rows of x live on the stack

// Thread t of nt's share of the 8-row groups: tile by tile, MAX_ROWS rows of x per pass.
static void x8_share(groups_fn groups, const uint8_t *W, int64_t gbytes, int64_t nb,
                     const act_row *a, float *y, int64_t ldy, int64_t M, int64_t G, int64_t tile,
                     int t, int nt) {
    const int64_t g0 = G * t / nt, g1 = G * (t + 1) / nt;
    for (int64_t t0 = g0; t0 < g1; t0 += tile) {
        const int64_t t1 = t0 + tile < g1 ? t0 + tile : g1;
        for (int64_t m = 0; m < M; m += MAX_ROWS)
            groups(W, gbytes, nb, a + m, y + m * ldy, ldy, t0, t1, M - m < MAX_ROWS ? M - m : MAX_ROWS);
    }
}

// Many rows of x (a prefill's product: compute-bound, not bandwidth-bound): the tiles go to the
// threads as they free up, so a thread slowed by another process on its core (a shared machine)
// delays the product by one tile, not by its whole static share. Every group is still computed
// by one thread with the same arithmetic: the result does not depend on the schedule. Called by
// every thread of the parallel region (an orphaned worksharing loop), with x already quantized.
static void tiles_dynamic(groups_fn groups, const uint8_t *W, int64_t gbytes, int64_t nb,
                          const act_row *a, float *y, int64_t ldy, int64_t M, int64_t G,
                          int64_t tile, int nt) {
    if (tile > G / (4 * nt)) tile = G / (4 * nt);  // at least 4 tiles a thread, for the balance
    if (tile < 1) tile = 1;
    const int64_t tiles = (G + tile - 1) / tile;
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < tiles; i++) {
        const int64_t t0 = i * tile, t1 = t0 + tile < G ? t0 + tile : G;
        for (int64_t m = 0; m < M; m += MAX_ROWS)
            groups(W, gbytes, nb, a + m, y + m * ldy, ldy, t0, t1, M - m < MAX_ROWS ? M - m : MAX_ROWS);
    }
}

// A weight that fits a core's L2 cache whole (rows_outer), against many rows of x, goes the other
// way round: each task quantizes ROW_BLOCK rows of x and takes them against every group, so x is
// read once, its quantized rows stay in L1 while the groups stream from L2, and each row of y is
// written whole, in order, by one task (by tiles of W, each row of y took one short store per
// tile: with a wide y, every row in its own page, a TLB miss and a partial line each time). The
// same arithmetic per group as the tiles': the same bits.
static int rows_outer(int64_t G, int64_t gbytes, int64_t M, int nt) {
    return G * gbytes <= ROWS_OUTER_BYTES && M >= 4 * nt * ROW_BLOCK;  // 4 tasks a thread
}

static void row_blocks_dynamic(groups_fn groups, const uint8_t *W, int64_t gbytes, int64_t nb,
                               const float *x, int64_t K, int ktype, const act_row *a, float *y,
                               int64_t ldy, int64_t M, int64_t G) {
    const int64_t blocks = (M + ROW_BLOCK - 1) / ROW_BLOCK;
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < blocks; i++) {
        const int64_t m0 = i * ROW_BLOCK, m1 = m0 + ROW_BLOCK < M ? m0 + ROW_BLOCK : M;
        for (int64_t m = m0; m < m1; m++) quantize_act(x + m * K, K, a + m, ktype);
        for (int64_t m = m0; m < m1; m += MAX_ROWS)
            groups(W, gbytes, nb, a + m, y + m * ldy, ldy, 0, G, m1 - m < MAX_ROWS ? m1 - m : MAX_ROWS);
    }
}

// y [M, N] (rows ldy >= N floats apart) = x [M, K] @ W^T for W [N, K] in the x8 layout of
// `type`; 0 on success, -1 on bad arguments or no memory (the caller then takes its torch path).
// With ldy > N, one group of a fused layer's output rows writes straight into its columns.
// threads < 0: team mode, for a caller already inside a parallel region of -threads threads
// (cpu_decode_step.c): every thread of it calls with the same arguments, quantizes x into its
// own scratch, computes its static share of the output rows (x8_share) and returns without a
// barrier; the values equal the threads > 0 call's bit for bit (whose tiles go to the threads
// dynamically from DYNAMIC_ROWS rows on, or blocks of rows of x against a small W, rows_outer:
// each group is still one thread's same arithmetic).
int minerva_x8_qgemm_ld(int type, const uint8_t *W, const float *x, float *y, int64_t ldy,
                        int64_t M, int64_t N, int64_t K, int threads) {
    int block, bytes;
    if (!minerva_x8_supports(type) || !x8_geometry(type, &block, &bytes) || M < 1 || N < 8 ||
        N % 8 || K < 1 || K % block || ldy < N || threads == 0)
        return -1;
    const groups_fn groups = type == T_Q8_0 ? groups_q8_0 : type == T_Q4_0 ? groups_q4_0
                           : type == T_Q5_0 ? groups_q5_0 : type == T_Q5_1 ? groups_q5_1
                           : type == T_Q4_K ? groups_q4_k : type == T_Q5_K ? groups_q5_k
                           : type == T_IQ4_NL ? groups_iq4_nl : type == T_IQ4_XS ? groups_iq4_xs
                           : groups_q6_k;
    const int ktype = block == QK_K;
    const int64_t nb = K / block, gbytes = 8 * nb * bytes, G = N / 8;
    float *scratch = thread_scratch(M * act_row_floats(K, ktype));
    if (!scratch) return -1;
    act_row rows[STACK_ROWS];  // no allocation per call for decode-sized M
    act_row *a = M <= STACK_ROWS ? rows : (act_row *)malloc((size_t)M * sizeof(act_row));
    if (!a) return -1;
    act_rows_init(a, scratch, M, K, ktype);
    int64_t tile = TILE_BYTES / gbytes;
    if (tile < 1) tile = 1;
    if (threads < 0) {
#ifdef _OPENMP
        const int t = omp_get_thread_num();
#else
        const int t = 0;
#endif
        for (int64_t m = 0; m < M; m++) quantize_act(x + m * K, K, a + m, ktype);
        x8_share(groups, W, gbytes, nb, a, y, ldy, M, G, tile, t, -threads);
    } else {
#pragma omp parallel num_threads(threads) if (N * K * M >= PARALLEL_MIN)
        {
            int t = 0, nt = 1;
#ifdef _OPENMP
            t = omp_get_thread_num();
            nt = omp_get_num_threads();
#endif
            if (rows_outer(G, gbytes, M, nt)) {
                row_blocks_dynamic(groups, W, gbytes, nb, x, K, ktype, a, y, ldy, M, G);
            } else {
#pragma omp for schedule(static)
                for (int64_t m = 0; m < M; m++) quantize_act(x + m * K, K, a + m, ktype);
                if (M >= DYNAMIC_ROWS)
                    tiles_dynamic(groups, W, gbytes, nb, a, y, ldy, M, G, tile, nt);
                else
                    x8_share(groups, W, gbytes, nb, a, y, ldy, M, G, tile, t, nt);
            }
        }
    }
    if (a != rows) free(a);
    return 0;
}

int minerva_x8_qgemm(int type, const uint8_t *W, const float *x, float *y, int64_t M, int64_t N,
                     int64_t K, int threads) {
    return minerva_x8_qgemm_ld(type, W, x, y, N, M, N, K, threads);
}

#else

int minerva_x8_qgemm_ld(int type, const uint8_t *W, const float *x, float *y, int64_t ldy,
                        int64_t M, int64_t N, int64_t K, int threads) {
    (void)type, (void)W, (void)x, (void)y, (void)ldy, (void)M, (void)N, (void)K, (void)threads;
    return -1;
}

int minerva_x8_qgemm(int type, const uint8_t *W, const float *x, float *y, int64_t M, int64_t N,
                     int64_t K, int threads) {
    (void)type, (void)W, (void)x, (void)y, (void)M, (void)N, (void)K, (void)threads;
    return -1;
}

#endif
