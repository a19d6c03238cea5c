// GGUF block matmuls for CPU: y[m, n] = dot(W[n, :], x[m, :]) with W kept in its GGUF blocks.
//
// W is [N, row_bytes] in the blocks of any of the 13 quantized types (Q8_0, Q8_1, Q4_0, Q4_1,
// Q5_0, Q5_1, Q2_K .. Q6_K, IQ4_NL, IQ4_XS), x float32 [M, K], y float32 [M, N]. As in
// llama.cpp, each row of
// x is first quantized to 8-bit blocks (Q8_0-style blocks of 32 with an fp16-rounded scale for
// the 32-value types; Q8_K super-blocks of 256 with an fp32 scale
// and sums of 16 codes for the K types) so that every block product is an integer dot product
// (AVX2 maddubs, or VNNI dpbusd where the CPU has it), scaled once per block in fp32.
// Threads (torch's OpenMP pool) split the rows of W; each streams its part once, in L2-sized
// tiles that every chunk of up to MAX_ROWS rows of x passes over while they are cached.
// ops/cpu_quant.py builds it at first use (minerva's native module); quant/gguf_matmul.py keeps
// the dequantize-then-matmul twin it is tested against.

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>  // simd.h's plain-C branch uses F16C conversions without including it
#endif
#include "iq4.h"
#include "quant_act.h"
#define MAX_ROWS 4              // rows of x per pass over a tile of W
#define TILE_BYTES (256 << 10)  // W bytes per tile
#define PARALLEL_MIN (1 << 16)  // below this many weight values, one thread

enum { T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8, T_Q8_1 = 9 };
enum { T_Q2_K = 10, T_Q3_K = 11, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14 };
enum { T_IQ4_NL = 20, T_IQ4_XS = 23 };

// IQ4_XS: the signed scale of sub-block j (iq4.h has the codebook and the stored bits)
INLINE int iq4xs_scale(const uint8_t *blk, const int j) { return iq4xs_scale_bits(blk, j) - 32; }

// ---- scale decoding shared by both builds -----------------------------------------------

// Q4_K / Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins.
INLINE void k4_scales(const uint8_t *s, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0xF) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
}

// sum over the 8 sub-blocks of 32 of min * (sum of the 32 activation codes)
INLINE int k4_min_dot(const uint8_t mn[8], const int16_t *bsum) {
    int s = 0;
    for (int j = 0; j < 8; j++) s += mn[j] * (bsum[2 * j] + bsum[2 * j + 1]);
    return s;
}

#if defined(__AVX2__)
#include <immintrin.h>

// acc + per-lane sums of 4 products of unsigned bytes u and signed bytes s (no overflow here:
// |u| <= 128 and |s| <= 127 keep maddubs' int16 pairs unsaturated, so both paths agree)
INLINE __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

INLINE float hsum_f32(__m256 v) {  // simd.h's vsum is 512-bit wide on AVX-512 builds
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// the 32 high bits of Q5_0 / Q5_1 (a little-endian uint32) as bytes 0x10 or 0
INLINE __m256i high_bits_x16(const uint8_t *qh) {
    uint32_t bits;
    memcpy(&bits, qh, 4);
    const __m256i spread = _mm256_shuffle_epi8(  // byte j <- byte j / 8 of the word
        _mm256_set1_epi32((int)bits),
        _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

// one 32-value block of type T as int8 codes (0-15 / 0-31 for the _1 types, else signed)
INLINE __m256i legacy_codes(const uint8_t *blk, const int T) {
    if (T == T_Q8_0 || T == T_Q8_1)
        return _mm256_loadu_si256((const __m256i *)(blk + (T == T_Q8_0 ? 2 : 4)));
    const int off = T == T_Q4_0 || T == T_IQ4_NL ? 2 : T == T_Q4_1 ? 4 : T == T_Q5_0 ? 6 : 8;
    const __m128i t = _mm_loadu_si128((const __m128i *)(blk + off));
    __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
    if (T == T_IQ4_NL)  // the codebook's values, looked up 16 at a time per lane
        return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)IQ4_VALUES)), q);
    if (T == T_Q5_0 || T == T_Q5_1) q = _mm256_or_si256(q, high_bits_x16(blk + off - 4));
    if (T == T_Q4_0) q = _mm256_sub_epi8(q, _mm256_set1_epi8(8));
    if (T == T_Q5_0) q = _mm256_sub_epi8(q, _mm256_set1_epi8(16));
    return q;
}

// 32-value types: signed codes use the sign trick (|w| . sign(a, w)); the _1 types' unsigned
// codes go straight into maddubs, and their offset m adds m * (d_a * sum of a's codes)
INLINE void dot_legacy(const uint8_t *w, const act_row *a, const int M, int64_t nb, float *out,
                       const int T, const int bytes) {
    const int offset = T == T_Q4_1 || T == T_Q5_1;
    __m256 acc[MAX_ROWS];
    float accm[MAX_ROWS];
    UNROLL for (int m = 0; m < M; m++) acc[m] = _mm256_setzero_ps(), accm[m] = 0.0f;
    for (int64_t ib = 0; ib < nb; ib++) {
        const uint8_t *blk = w + ib * bytes;
        __builtin_prefetch(blk + 1024);
        const __m256i wq = legacy_codes(blk, T);
        const float wd = f16_at(blk);
        const __m256i ax = offset ? wq : _mm256_sign_epi8(wq, wq);
        UNROLL for (int m = 0; m < M; m++) {
            const __m256i aq = _mm256_loadu_si256((const __m256i *)(a[m].q + ib * QK));
            const __m256i sy = offset ? aq : _mm256_sign_epi8(aq, wq);
            const __m256i p = dot_u8s8(_mm256_setzero_si256(), ax, sy);
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(wd * a[m].d[ib]), acc[m]);
            if (offset) accm[m] += f16_at(blk + 2) * a[m].s[ib];
        }
    }
    UNROLL for (int m = 0; m < M; m++) out[m] = hsum_f32(acc[m]) + accm[m];
}

// Q4_K / Q5_K scales and mins as uint32 words: bytes 0-7 the 8 scales, 8-15 the 8 mins
// (the 12-byte packing of k4_scales, unpacked four at a time)
INLINE void k4_scale_words(const uint8_t *s, uint32_t u[4]) {
    uint32_t w[3];
    memcpy(w, s, 12);
    u[0] = w[0] & 0x3f3f3f3fu;
    u[1] = (w[2] & 0x0f0f0f0fu) | (((w[0] >> 6) & 0x03030303u) << 4);
    u[2] = w[1] & 0x3f3f3f3fu;
    u[3] = ((w[2] >> 4) & 0x0f0f0f0fu) | (((w[1] >> 6) & 0x03030303u) << 4);
}

// Q4_K / Q5_K: codes 0-15 (0-31) per 64 values in qs (and bit planes of qh), sub-block scales
INLINE void dot_k4(const uint8_t *w, const act_row *a, const int M, int64_t nb, float *out,
                   const int five) {
    const int bytes = five ? 176 : 144;
    __m256 acc[MAX_ROWS];
    UNROLL for (int m = 0; m < M; m++) acc[m] = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    const __m256i ones16 = _mm256_set1_epi16(1);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = w + i * bytes;
        const uint8_t *qs = blk + (five ? 48 : 16);
        __builtin_prefetch(blk + 2048);
        uint32_t u[4];
        k4_scale_words(blk + 4, u);
        // int16 scales: 8 scales then 8 mins, each 128-bit lane holding all 16
        const __m128i sm = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)u[1], (int)u[0]));
        const __m256i scales = _mm256_broadcastsi128_si256(sm);
        const __m256i mins = _mm256_cvtepu8_epi32(_mm_set_epi32(0, 0, (int)u[3], (int)u[2]));
        const __m256i hb = five ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : one;
        __m256i sumi[MAX_ROWS];
        UNROLL for (int m = 0; m < M; m++) sumi[m] = _mm256_setzero_si256();
        UNROLL for (int c = 0; c < 4; c++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
            __m256i lo = _mm256_and_si256(q, low4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
            if (five) {
                const __m128i s0 = _mm_cvtsi32_si128(2 * c), s1 = _mm_cvtsi32_si128(2 * c + 1);
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hb, s0), one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hb, s1), one), 4));
            }
            // broadcast int16 scale 2c (bytes 4c, 4c+1) and 2c+1 (bytes 4c+2, 4c+3)
            const __m256i k0 = _mm256_set1_epi16((short)(((4 * c + 1) << 8) | (4 * c)));
            const __m256i k1 = _mm256_set1_epi16((short)(((4 * c + 3) << 8) | (4 * c + 2)));
            const __m256i s0 = _mm256_shuffle_epi8(scales, k0), s1 = _mm256_shuffle_epi8(scales, k1);
            UNROLL for (int m = 0; m < M; m++) {
                const int8_t *aq = a[m].q + i * QK_K + 64 * c;
                const __m256i a0 = _mm256_loadu_si256((const __m256i *)aq);
                const __m256i a1 = _mm256_loadu_si256((const __m256i *)(aq + 32));
                const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a0), s0);
                const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a1), s1);
                sumi[m] = _mm256_add_epi32(sumi[m], _mm256_add_epi32(p0, p1));
            }
        }
        const float d = f16_at(blk), dmin = f16_at(blk + 2);
        UNROLL for (int m = 0; m < M; m++) {
            const float da = a[m].d[i];
            // sums of the activation codes per sub-block of 32, times the mins
            const __m256i bs = _mm256_loadu_si256((const __m256i *)(a[m].bsum + i * 16));
            const __m256i mdot = _mm256_mullo_epi32(_mm256_madd_epi16(bs, ones16), mins);
            acc[m] = _mm256_fmadd_ps(_mm256_set1_ps(d * da), _mm256_cvtepi32_ps(sumi[m]), acc[m]);
            acc[m] = _mm256_fmadd_ps(_mm256_set1_ps(-dmin * da), _mm256_cvtepi32_ps(mdot), acc[m]);
        }
    }
    UNROLL for (int m = 0; m < M; m++) out[m] = hsum_f32(acc[m]);
}

// Q2_K / Q3_K: 16 scales of 16 values; code vector k of half h covers groups 8h+2k, 8h+2k+1
INLINE __m256i group_scales(__m256i sc16, const int h, const int k) {
    const __m256i pair = _mm256_set_epi8(3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2,
                                         1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0);
    return _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(sc16, _mm256_set1_epi32(4 * h + k)), pair);
}

// the 16 signed scales of a Q3_K block (6 bits, stored +32)
INLINE void q3_scales(const uint8_t *s, int8_t out[16]) {
    for (int j = 0; j < 16; j++) {
        const int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
        out[j] = (int8_t)((lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
    }
}

// Q2_K: codes 0-3, value d * sc * q - dmin * m; Q3_K: codes 0-7 (2 bits + hmask), value
// d * s * (q - 4); the offsets come out through the activation sums of 16
INLINE void dot_k23(const uint8_t *w, const act_row *a, const int M, int64_t nb, float *out,
                    const int three) {
    const int bytes = three ? 110 : 84;
    __m256 acc[MAX_ROWS];
    UNROLL for (int m = 0; m < M; m++) acc[m] = _mm256_setzero_ps();
    const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = w + i * bytes;
        const uint8_t *qs = blk + (three ? 32 : 16);
        __builtin_prefetch(blk + 1024);
        __m256i sc16, off16;  // int16 scales, and what multiplies the sums of 16 codes
        if (three) {
            int8_t s[16];
            q3_scales(blk + 96, s);
            sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)s));
            off16 = _mm256_slli_epi16(sc16, 2);  // 4 * s
        } else {
            const __m128i raw = _mm_loadu_si128((const __m128i *)blk);
            sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(raw, _mm_set1_epi8(0x0F)));
            off16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0F)));
        }
        const __m256i hm = three ? _mm256_loadu_si256((const __m256i *)blk) : one;
        __m256i sumi[MAX_ROWS], offs[MAX_ROWS];
        UNROLL for (int m = 0; m < M; m++) {
            const __m256i bs = _mm256_loadu_si256((const __m256i *)(a[m].bsum + i * 16));
            offs[m] = _mm256_madd_epi16(bs, off16);
            sumi[m] = _mm256_setzero_si256();
        }
        UNROLL for (int h = 0; h < 2; h++) {
            const __m256i qv = _mm256_loadu_si256((const __m256i *)(qs + 32 * h));
            UNROLL for (int k = 0; k < 4; k++) {
                __m256i q = _mm256_and_si256(_mm256_srli_epi16(qv, 2 * k), m3);
                if (three) {
                    const __m128i sh = _mm_cvtsi32_si128(4 * h + k);
                    q = _mm256_or_si256(q, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hm, sh), one), 2));
                }
                const __m256i s = group_scales(sc16, h, k);
                UNROLL for (int m = 0; m < M; m++) {
                    const __m256i av = _mm256_loadu_si256(
                        (const __m256i *)(a[m].q + i * QK_K + 128 * h + 32 * k));
                    sumi[m] = _mm256_add_epi32(sumi[m], _mm256_madd_epi16(_mm256_maddubs_epi16(q, av), s));
                }
            }
        }
        const float d = f16_at(blk + (three ? 108 : 80));
        UNROLL for (int m = 0; m < M; m++) {
            const float da = a[m].d[i];
            if (three) {
                acc[m] = _mm256_fmadd_ps(_mm256_set1_ps(d * da), _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[m], offs[m])), acc[m]);
            } else {
                acc[m] = _mm256_fmadd_ps(_mm256_set1_ps(d * da), _mm256_cvtepi32_ps(sumi[m]), acc[m]);
                acc[m] = _mm256_fmadd_ps(_mm256_set1_ps(-f16_at(blk + 82) * da), _mm256_cvtepi32_ps(offs[m]), acc[m]);
            }
        }
    }
    UNROLL for (int m = 0; m < M; m++) out[m] = hsum_f32(acc[m]);
}

INLINE void dot_q6_k(const uint8_t *w, const act_row *a, const int M, int64_t nb, float *out) {
    __m256 acc[MAX_ROWS];
    UNROLL for (int m = 0; m < M; m++) acc[m] = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(0x0F), three = _mm256_set1_epi8(3);
    // picks int16 lane 0 into the low 128 bits and lane 1 into the high ones
    const __m256i pair = _mm256_set_epi8(3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2,
                                         1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = w + i * 210;
        __builtin_prefetch(blk + 2048);
        // the 16 scales as int16, and 32 * scales for the +32 offset of the codes
        const __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 192)));
        const __m256i sc32 = _mm256_slli_epi16(sc, 5);
        __m256i sumi[MAX_ROWS];
        UNROLL for (int m = 0; m < M; m++) {
            const __m256i bs = _mm256_loadu_si256((const __m256i *)(a[m].bsum + i * 16));
            sumi[m] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_madd_epi16(bs, sc32));
        }
        UNROLL for (int h = 0; h < 2; h++) {
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * h));
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(blk + 64 * h));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(blk + 64 * h + 32));
            __m256i q[4];  // codes 0-63 of values 128h + 32k ...
            q[0] = _mm256_and_si256(l0, low4);
            q[1] = _mm256_and_si256(l1, low4);
            q[2] = _mm256_and_si256(_mm256_srli_epi16(l0, 4), low4);
            q[3] = _mm256_and_si256(_mm256_srli_epi16(l1, 4), low4);
            UNROLL for (int k = 0; k < 4; k++) {
                const __m256i top = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), three);
                q[k] = _mm256_or_si256(q[k], _mm256_slli_epi16(top, 4));
            }
            UNROLL for (int k = 0; k < 4; k++) {
                // groups g = 8h + 2k and g + 1: int32 lane 4h + k of sc holds both
                const __m256i both = _mm256_permutevar8x32_epi32(sc, _mm256_set1_epi32(4 * h + k));
                const __m256i s = _mm256_shuffle_epi8(both, pair);
                UNROLL for (int m = 0; m < M; m++) {
                    const __m256i av = _mm256_loadu_si256(
                        (const __m256i *)(a[m].q + i * QK_K + 128 * h + 32 * k));
                    sumi[m] = _mm256_add_epi32(
                        sumi[m], _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], av), s));
                }
            }
        }
        const float d = f16_at(blk + 208);
        UNROLL for (int m = 0; m < M; m++)
            acc[m] = _mm256_fmadd_ps(_mm256_set1_ps(d * a[m].d[i]), _mm256_cvtepi32_ps(sumi[m]), acc[m]);
    }
    UNROLL for (int m = 0; m < M; m++) out[m] = hsum_f32(acc[m]);
}

// IQ4_XS: 8 sub-blocks of 32 codebook values (signed, |v| <= 127: the sign trick as for Q8_0),
// each with its own signed scale; two sub-blocks per 32-byte load of indices
INLINE void dot_iq4_xs(const uint8_t *w, const act_row *a, const int M, int64_t nb, float *out) {
    __m256 acc[MAX_ROWS];
    UNROLL for (int m = 0; m < M; m++) acc[m] = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i book = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)IQ4_VALUES));
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = w + i * 136;
        __builtin_prefetch(blk + 1024);
        __m256i sumi[MAX_ROWS];
        UNROLL for (int m = 0; m < M; m++) sumi[m] = _mm256_setzero_si256();
        UNROLL for (int c = 0; c < 4; c++) {  // sub-blocks 2c, 2c + 1
            const __m256i q = _mm256_loadu_si256((const __m256i *)(blk + 8 + 32 * c));
            const __m256i lo = _mm256_shuffle_epi8(book, _mm256_and_si256(q, low4));
            const __m256i hi = _mm256_shuffle_epi8(book, _mm256_and_si256(_mm256_srli_epi16(q, 4), low4));
            // lo: values 0-15 of both sub-blocks, hi: values 16-31 -> one sub-block per vector
            const __m256i v0 = _mm256_permute2x128_si256(lo, hi, 0x20);
            const __m256i v1 = _mm256_permute2x128_si256(lo, hi, 0x31);
            const __m256i s0 = _mm256_set1_epi16((short)iq4xs_scale(blk, 2 * c));
            const __m256i s1 = _mm256_set1_epi16((short)iq4xs_scale(blk, 2 * c + 1));
            const __m256i u0 = _mm256_sign_epi8(v0, v0), u1 = _mm256_sign_epi8(v1, v1);
            UNROLL for (int m = 0; m < M; m++) {
                const int8_t *aq = a[m].q + i * QK_K + 64 * c;
                const __m256i a0 = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)aq), v0);
                const __m256i a1 = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(aq + 32)), v1);
                // pairs of products <= 2 * 127 * 127 stay within int16
                const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(u0, a0), s0);
                const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(u1, a1), s1);
                sumi[m] = _mm256_add_epi32(sumi[m], _mm256_add_epi32(p0, p1));
            }
        }
        const float d = f16_at(blk);
        UNROLL for (int m = 0; m < M; m++)
            acc[m] = _mm256_fmadd_ps(_mm256_set1_ps(d * a[m].d[i]), _mm256_cvtepi32_ps(sumi[m]), acc[m]);
    }
    UNROLL for (int m = 0; m < M; m++) out[m] = hsum_f32(acc[m]);
}

#else  // plain C: the same integer sums, element by element

INLINE int dot32(const int8_t *w, const int8_t *x, int n) {
    int s = 0;
    for (int j = 0; j < n; j++) s += w[j] * x[j];
    return s;
}

INLINE void dot_legacy(const uint8_t *w, const act_row *a, const int M, int64_t nb, float *out,
                       const int T, const int bytes) {
    const int offset = T == T_Q4_1 || T == T_Q5_1;
    float acc[MAX_ROWS] = {0};
    int8_t q[QK];
    for (int64_t ib = 0; ib < nb; ib++) {
        const uint8_t *blk = w + ib * bytes;
        if (T == T_Q8_0 || T == T_Q8_1) {
            memcpy(q, blk + (T == T_Q8_0 ? 2 : 4), QK);
        } else if (T == T_IQ4_NL) {
            for (int j = 0; j < 16; j++) q[j] = IQ4_VALUES[blk[2 + j] & 15], q[j + 16] = IQ4_VALUES[blk[2 + j] >> 4];
        } else {
            const int off = T == T_Q4_0 ? 2 : T == T_Q4_1 ? 4 : T == T_Q5_0 ? 6 : 8;
            const int five = T == T_Q5_0 || T == T_Q5_1;
            const int zero = T == T_Q4_0 ? 8 : T == T_Q5_0 ? 16 : 0;
            uint32_t qh = 0;
            if (five) memcpy(&qh, blk + off - 4, 4);
            for (int j = 0; j < 16; j++) {
                const int h0 = five ? (int)((qh >> j) & 1) << 4 : 0;
                const int h1 = five ? (int)((qh >> (j + 16)) & 1) << 4 : 0;
                q[j] = (int8_t)(((blk[off + j] & 0xF) | h0) - zero);
                q[j + 16] = (int8_t)(((blk[off + j] >> 4) | h1) - zero);
            }
        }
        const float wd = f16_at(blk);
        for (int m = 0; m < M; m++) {
            acc[m] += (float)dot32(q, a[m].q + ib * QK, QK) * (wd * a[m].d[ib]);
            if (offset) acc[m] += f16_at(blk + 2) * a[m].s[ib];
        }
    }
    for (int m = 0; m < M; m++) out[m] = acc[m];
}

INLINE void dot_k4(const uint8_t *w, const act_row *a, const int M, int64_t nb, float *out,
                   const int five) {
    float acc[MAX_ROWS] = {0};
    int8_t q[QK_K];
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = w + i * (five ? 176 : 144);
        const uint8_t *qs = blk + (five ? 48 : 16), *qh = blk + 16;
        uint8_t sc[8], mn[8];
        k4_scales(blk + 4, sc, mn);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                q[64 * c + l] = (int8_t)(qs[32 * c + l] & 0xF);
                q[64 * c + 32 + l] = (int8_t)(qs[32 * c + l] >> 4);
                if (five) {
                    q[64 * c + l] |= (int8_t)(((qh[l] >> (2 * c)) & 1) << 4);
                    q[64 * c + 32 + l] |= (int8_t)(((qh[l] >> (2 * c + 1)) & 1) << 4);
                }
            }
        const float d = f16_at(blk), dmin = f16_at(blk + 2);
        for (int m = 0; m < M; m++) {
            int s = 0;
            for (int j = 0; j < 8; j++) s += sc[j] * dot32(q + 32 * j, a[m].q + i * QK_K + 32 * j, 32);
            const float da = a[m].d[i];
            acc[m] += d * da * (float)s - dmin * da * (float)k4_min_dot(mn, a[m].bsum + i * 16);
        }
    }
    for (int m = 0; m < M; m++) out[m] = acc[m];
}

INLINE void q3_scales(const uint8_t *s, int8_t out[16]) {
    for (int j = 0; j < 16; j++) {
        const int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
        out[j] = (int8_t)((lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
    }
}

INLINE void dot_k23(const uint8_t *w, const act_row *a, const int M, int64_t nb, float *out,
                    const int three) {
    float acc[MAX_ROWS] = {0};
    int8_t q[QK_K];
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = w + i * (three ? 110 : 84);
        const uint8_t *qs = blk + (three ? 32 : 16);
        int sc[16], off[16];
        if (three) {
            int8_t s[16];
            q3_scales(blk + 96, s);
            for (int g = 0; g < 16; g++) sc[g] = s[g], off[g] = 4 * s[g];
        } else {
            for (int g = 0; g < 16; g++) sc[g] = blk[g] & 0xF, off[g] = blk[g] >> 4;
        }
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < 4; k++)
                for (int l = 0; l < 32; l++) {
                    int v = (qs[32 * h + l] >> (2 * k)) & 3;
                    if (three) v |= ((blk[l] >> (4 * h + k)) & 1) << 2;
                    q[128 * h + 32 * k + l] = (int8_t)v;
                }
        const float d = f16_at(blk + (three ? 108 : 80)), dmin = three ? 0.0f : f16_at(blk + 82);
        for (int m = 0; m < M; m++) {
            int s = 0, o = 0;
            for (int g = 0; g < 16; g++) {
                s += sc[g] * dot32(q + 16 * g, a[m].q + i * QK_K + 16 * g, 16);
                o += off[g] * a[m].bsum[i * 16 + g];
            }
            const float da = a[m].d[i];
            acc[m] += three ? d * da * (float)(s - o) : d * da * (float)s - dmin * da * (float)o;
        }
    }
    for (int m = 0; m < M; m++) out[m] = acc[m];
}

INLINE void dot_q6_k(const uint8_t *w, const act_row *a, const int M, int64_t nb, float *out) {
    float acc[MAX_ROWS] = {0};
    int8_t q[QK_K];
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = w + i * 210, *ql = blk, *qh = blk + 128;
        const int8_t *sc = (const int8_t *)(blk + 192);
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const uint8_t hb = qh[32 * h + l], b0 = ql[64 * h + l], b1 = ql[64 * h + 32 + l];
                q[128 * h + l] = (int8_t)(((b0 & 0xF) | ((hb & 3) << 4)) - 32);
                q[128 * h + 32 + l] = (int8_t)(((b1 & 0xF) | (((hb >> 2) & 3) << 4)) - 32);
                q[128 * h + 64 + l] = (int8_t)(((b0 >> 4) | (((hb >> 4) & 3) << 4)) - 32);
                q[128 * h + 96 + l] = (int8_t)(((b1 >> 4) | (((hb >> 6) & 3) << 4)) - 32);
            }
        const float d = f16_at(blk + 208);
        for (int m = 0; m < M; m++) {
            int s = 0;
            for (int g = 0; g < 16; g++) s += sc[g] * dot32(q + 16 * g, a[m].q + i * QK_K + 16 * g, 16);
            acc[m] += d * a[m].d[i] * (float)s;
        }
    }
    for (int m = 0; m < M; m++) out[m] = acc[m];
}

INLINE void dot_iq4_xs(const uint8_t *w, const act_row *a, const int M, int64_t nb, float *out) {
    float acc[MAX_ROWS] = {0};
    int8_t q[QK_K];
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = w + i * 136, *qs = blk + 8;
        for (int j = 0; j < 8; j++)
            for (int l = 0; l < 16; l++) {
                q[32 * j + l] = IQ4_VALUES[qs[16 * j + l] & 15];
                q[32 * j + 16 + l] = IQ4_VALUES[qs[16 * j + l] >> 4];
            }
        const float d = f16_at(blk);
        for (int m = 0; m < M; m++) {
            int s = 0;
            for (int j = 0; j < 8; j++) s += iq4xs_scale(blk, j) * dot32(q + 32 * j, a[m].q + i * QK_K + 32 * j, 32);
            acc[m] += d * a[m].d[i] * (float)s;
        }
    }
    for (int m = 0; m < M; m++) out[m] = acc[m];
}
#endif

#define LEGACY(NAME, T, BYTES)                                                                   \
    INLINE void dot_##NAME(const uint8_t *w, const act_row *a, const int M, int64_t nb, float *out) { \
        dot_legacy(w, a, M, nb, out, T, BYTES);                                                  \
    }
LEGACY(q8_0, T_Q8_0, 34)
LEGACY(q8_1, T_Q8_1, 36)
LEGACY(q4_0, T_Q4_0, 18)
LEGACY(q4_1, T_Q4_1, 20)
LEGACY(q5_0, T_Q5_0, 22)
LEGACY(q5_1, T_Q5_1, 24)
LEGACY(iq4_nl, T_IQ4_NL, 18)

INLINE void dot_q2_k(const uint8_t *w, const act_row *a, const int M, int64_t nb, float *out) {
    dot_k23(w, a, M, nb, out, 0);
}
INLINE void dot_q3_k(const uint8_t *w, const act_row *a, const int M, int64_t nb, float *out) {
    dot_k23(w, a, M, nb, out, 1);
}
INLINE void dot_q4_k(const uint8_t *w, const act_row *a, const int M, int64_t nb, float *out) {
    dot_k4(w, a, M, nb, out, 0);
}
INLINE void dot_q5_k(const uint8_t *w, const act_row *a, const int M, int64_t nb, float *out) {
    dot_k4(w, a, M, nb, out, 1);
}

// ---- the driver, once per type ----------------------------------------------------------
// rows n0..n1 of W against M (a compile-time constant after inlining) rows of x

#define DEFINE_ROWS(NAME)                                                                   \
    INLINE void rows_m_##NAME(const uint8_t *W, int64_t rb, int64_t nb, const act_row *a,   \
                              float *y, int64_t N, int64_t n0, int64_t n1, const int M) {    \
        float out[MAX_ROWS];                                                                \
        for (int64_t n = n0; n < n1; n++) {                                                 \
            dot_##NAME(W + n * rb, a, M, nb, out);                                          \
            UNROLL for (int m = 0; m < M; m++) y[m * N + n] = out[m];                       \
        }                                                                                   \
    }                                                                                       \
    static void rows_##NAME(const uint8_t *W, int64_t rb, int64_t nb, const act_row *a,     \
                            float *y, int64_t N, int64_t n0, int64_t n1, int64_t M) {        \
        switch (M) {                                                                        \
        case 1: rows_m_##NAME(W, rb, nb, a, y, N, n0, n1, 1); break;                        \
        case 2: rows_m_##NAME(W, rb, nb, a, y, N, n0, n1, 2); break;                        \
        case 3: rows_m_##NAME(W, rb, nb, a, y, N, n0, n1, 3); break;                        \
        default: rows_m_##NAME(W, rb, nb, a, y, N, n0, n1, 4); break;                       \
        }                                                                                   \
    }

DEFINE_ROWS(q8_0)
DEFINE_ROWS(q8_1)
DEFINE_ROWS(q4_0)
DEFINE_ROWS(q4_1)
DEFINE_ROWS(q5_0)
DEFINE_ROWS(q5_1)
DEFINE_ROWS(q2_k)
DEFINE_ROWS(q3_k)
DEFINE_ROWS(q4_k)
DEFINE_ROWS(q5_k)
DEFINE_ROWS(q6_k)
DEFINE_ROWS(iq4_nl)
DEFINE_ROWS(iq4_xs)

typedef void (*rows_fn)(const uint8_t *, int64_t, int64_t, const act_row *, float *, int64_t,
                        int64_t, int64_t, int64_t);

static int geometry(int type, rows_fn *fn, int *block, int *bytes) {
    switch (type) {
    case T_Q8_0: *fn = rows_q8_0, *block = QK, *bytes = 34; return 0;
    case T_Q8_1: *fn = rows_q8_1, *block = QK, *bytes = 36; return 0;
    case T_Q4_0: *fn = rows_q4_0, *block = QK, *bytes = 18; return 0;
    case T_Q4_1: *fn = rows_q4_1, *block = QK, *bytes = 20; return 0;
    case T_Q5_0: *fn = rows_q5_0, *block = QK, *bytes = 22; return 0;
    case T_Q5_1: *fn = rows_q5_1, *block = QK, *bytes = 24; return 0;
    case T_Q2_K: *fn = rows_q2_k, *block = QK_K, *bytes = 84; return 0;
    case T_Q3_K: *fn = rows_q3_k, *block = QK_K, *bytes = 110; return 0;
    case T_Q4_K: *fn = rows_q4_k, *block = QK_K, *bytes = 144; return 0;
    case T_Q5_K: *fn = rows_q5_k, *block = QK_K, *bytes = 176; return 0;
    case T_Q6_K: *fn = rows_q6_k, *block = QK_K, *bytes = 210; return 0;
    case T_IQ4_NL: *fn = rows_iq4_nl, *block = QK, *bytes = 18; return 0;
    case T_IQ4_XS: *fn = rows_iq4_xs, *block = QK_K, *bytes = 136; return 0;
    default: return -1;
    }
}

int minerva_qgemm_supports(int type) {
    rows_fn fn;
    int block, bytes;
    return geometry(type, &fn, &block, &bytes) == 0;
}

// y [M, N] = x [M, K] @ W^T for W [N, K] in `type` blocks; 0 on success, -1 on bad arguments
// or no memory (the caller then takes its torch path).
int minerva_qgemm(int type, const uint8_t *W, const float *x, float *y, int64_t M, int64_t N,
                  int64_t K, int threads) {
    rows_fn rows;
    int block, bytes;
    if (geometry(type, &rows, &block, &bytes) || M < 1 || N < 1 || K < 1 || K % block ||
        threads < 1)
        return -1;
    const int ktype = block == QK_K;
    const int64_t nb = K / block, rb = nb * bytes;
    float *scratch = thread_scratch(M * act_row_floats(K, ktype));
    if (!scratch) return -1;
    act_row *a = (act_row *)malloc((size_t)M * sizeof(act_row));
    if (!a) return -1;
    act_rows_init(a, scratch, M, K, ktype);
    int64_t tile = TILE_BYTES / rb;
    if (tile < 1) tile = 1;
#pragma omp parallel num_threads(threads) if (N * K * M >= PARALLEL_MIN)
    {
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++) quantize_act(x + m * K, K, a + m, ktype);
        int t = 0, nt = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        const int64_t n0 = N * t / nt, n1 = N * (t + 1) / nt;
        for (int64_t t0 = n0; t0 < n1; t0 += tile) {
            const int64_t t1 = t0 + tile < n1 ? t0 + tile : n1;
            for (int64_t m = 0; m < M; m += MAX_ROWS)
                rows(W, rb, nb, a + m, y + m * N, N, t0, t1, M - m < MAX_ROWS ? M - m : MAX_ROWS);
        }
    }
    free(a);
    return 0;
}

const char *minerva_qgemm_path(void) {
#if defined(__AVX2__) && ((defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__))
    return "avx2+vnni";
#elif defined(__AVX2__)
    return "avx2";
#else
    return "generic";
#endif
}
