// The conversions around cpu_gemm.py's fp32 GEMM of bf16 / fp16 operands: inputs and weight
// tiles to fp32 before it, and its fp32 output, [weight rows, input rows], rounded into its
// columns of the [input rows, N] result after it.
//
// torch's copy of a transposed fp32 view into a bf16 tensor goes element by element (5-10x the
// time of a contiguous copy). Here whole 8 x 8 blocks are loaded, transposed in registers and
// rounded with simd.h's eight-lane conversions (which round as f32_to_bf16 / f32_to_f16); the
// edges run the scalar conversions. The widening copies are exact; in C they skip torch's
// per-call costs (tens of microseconds at these sizes). Built and loaded by minerva.ops.native
// (cpu_gemm.py).

#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "simd.h"
#include "silu_mul_row.h"

// Work below this many elements runs on the calling thread (a fork costs microseconds).
#define PARALLEL_MIN (1 << 15)

#ifdef HAVE_X8
// r[c] <- column c of the 8 x 8 block whose rows are r[0..7]
INLINE void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int k = 0; k < 8; k += 2) {
        t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
        t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
    }
    for (int k = 0; k < 8; k += 4) {
        u[k] = _mm256_shuffle_ps(t[k], t[k + 2], 0x44);
        u[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], 0xEE);
        u[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0x44);
        u[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0xEE);
    }
    for (int k = 0; k < 4; k++) {
        r[k] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x20);
        r[k + 4] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x31);
    }
}

// DST[c * LDD + k] = SRC[k * LDS + c] rounded, for one 8 x 8 block (k, c < 8)
#define ROUND8X8(SUFFIX, SRC, LDS, DST, LDD)                                                   \
    do {                                                                                       \
        __m256 r[8];                                                                           \
        for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps((SRC) + k * (LDS));                 \
        transpose8(r);                                                                         \
        for (int c = 0; c < 8; c++)                                                            \
            _mm_storeu_si128((__m128i *)((DST) + c * (LDD)), SUFFIX##x8(r[c]));                \
    } while (0)
#else
#define ROUND8X8(SUFFIX, SRC, LDS, DST, LDD) (void)0
#endif

// dst[j * ld + i] = src[i * m + j] rounded, for i < n (weight rows), j < m (input rows).
#define DEFINE_STORE(SUFFIX, X8)                                                                \
    int minerva_gemm_store_##SUFFIX(const float *src, int64_t n, int64_t m, uint16_t *dst,     \
                                    int64_t ld, int threads) {                                 \
        if (n < 0 || m < 0 || ld < n || threads < 1) return -1;                                \
        int64_t blocks = (n + 7) / 8;                                                          \
        _Pragma("omp parallel for num_threads(threads) if (n * m >= PARALLEL_MIN)")            \
        for (int64_t b = 0; b < blocks; b++) {                                                 \
            int64_t i0 = b * 8, rows = n - i0 < 8 ? n - i0 : 8;                               \
            int64_t j = 0;                                                                     \
            if (X8 && rows == 8) {                                                             \
                for (; j + 8 <= m; j += 8)                                                     \
                    ROUND8X8(SUFFIX, src + i0 * m + j, m, dst + j * ld + i0, ld);              \
            }                                                                                  \
            for (; j < m; j++)                                                                 \
                for (int64_t i = i0; i < i0 + rows; i++)                                       \
                    dst[j * ld + i] = f32_to_##SUFFIX(src[i * m + j]);                         \
        }                                                                                      \
        return 0;                                                                              \
    }

#ifdef HAVE_X8
DEFINE_STORE(bf16, 1)
DEFINE_STORE(f16, 1)
#else
DEFINE_STORE(bf16, 0)
#if HAVE_F16
DEFINE_STORE(f16, 0)
#endif
#endif

// The gate_up product's output with SiLU * mul applied: src [2 * inter, m] fp32 (gate rows, then
// up rows), dst [m, inter] = silu(gate) * up. Bit for bit minerva_gemm_store_T into an
// [m, 2 * inter] tensor followed by cpu_glue.c's minerva_silu_mul_T: each block of 8 input rows
// is rounded into a per-thread [8, 2 * inter] scratch (in cache) and silu_mul_row.h's row runs
// on it, so the 16-bit gate_up result never makes a round trip through memory.
#define DEFINE_STORE_SILU_MUL(SUFFIX, X8)                                                       \
    int minerva_gemm_store_silu_mul_##SUFFIX(const float *src, int64_t inter, int64_t m,        \
                                             uint16_t *dst, int threads) {                      \
        if (inter < 1 || m < 0 || threads < 1) return -1;                                      \
        int64_t n = 2 * inter, jblocks = (m + 7) / 8;                                          \
        int failed = 0;                                                                        \
        _Pragma("omp parallel num_threads(threads) if (n * m >= PARALLEL_MIN)")                \
        {                                                                                      \
            uint16_t *tmp = malloc((size_t)(8 * n) * sizeof(uint16_t));                        \
            if (!tmp) {                                                                        \
                _Pragma("omp atomic write") failed = 1;                                        \
            }                                                                                  \
            _Pragma("omp for")                                                                 \
            for (int64_t jb = 0; jb < jblocks; jb++) {                                         \
                if (!tmp) continue;                                                            \
                int64_t j0 = jb * 8, cols = m - j0 < 8 ? m - j0 : 8;                           \
                int64_t i0 = 0;                                                                \
                if (X8 && cols == 8) {                                                         \
                    for (; i0 + 8 <= n; i0 += 8)                                               \
                        ROUND8X8(SUFFIX, src + i0 * m + j0, m, tmp + i0, n);                   \
                }                                                                              \
                for (; i0 < n; i0++)                                                           \
                    for (int64_t c = 0; c < cols; c++)                                         \
                        tmp[c * n + i0] = f32_to_##SUFFIX(src[i0 * m + j0 + c]);               \
                for (int64_t c = 0; c < cols; c++)                                             \
                    silu_mul_row_##SUFFIX(tmp + c * n, tmp + c * n + inter,                    \
                                          dst + (j0 + c) * inter, inter);                      \
            }                                                                                  \
            free(tmp);                                                                         \
        }                                                                                      \
        return failed ? -1 : 0;                                                                \
    }

#ifdef HAVE_X8
DEFINE_SILU_MUL_ROW(uint16_t, bf16, 0)
DEFINE_SILU_MUL_ROW(uint16_t, f16, 0)
DEFINE_STORE_SILU_MUL(bf16, 1)
DEFINE_STORE_SILU_MUL(f16, 1)
#else
DEFINE_SILU_MUL_ROW(uint16_t, bf16, 0)
DEFINE_STORE_SILU_MUL(bf16, 0)
#if HAVE_F16
DEFINE_SILU_MUL_ROW(uint16_t, f16, 0)
DEFINE_STORE_SILU_MUL(f16, 0)
#endif
#endif

// dst[i] = src[i] as fp32, i < count (exact).
#define DEFINE_LOAD(SUFFIX)                                                                     \
    int minerva_gemm_load_##SUFFIX(const uint16_t *src, float *dst, int64_t count, int threads) { \
        if (count < 0 || threads < 1) return -1;                                               \
        int64_t chunks = (count + LOAD_CHUNK - 1) / LOAD_CHUNK;                                \
        _Pragma("omp parallel for num_threads(threads) if (chunks > 1)")                       \
        for (int64_t c = 0; c < chunks; c++) {                                                 \
            int64_t i = c * LOAD_CHUNK, end = i + LOAD_CHUNK < count ? i + LOAD_CHUNK : count; \
            for (; i + VL <= end; i += VL) store_f32(dst + i, load_##SUFFIX(src + i));         \
            for (; i < end; i++) dst[i] = f32_of_##SUFFIX(src[i]);                             \
        }                                                                                      \
        return 0;                                                                              \
    }

// Elements one thread widens at a time: below this, no fork (a fork costs microseconds, and
// 64K elements take about as long on one core).
#define LOAD_CHUNK (1 << 16)
DEFINE_LOAD(bf16)
#if HAVE_F16
DEFINE_LOAD(f16)
#endif

int minerva_gemm_has_f16(void) { return HAVE_F16; }
