// Matrix-vector products for CPU decode: y[m, n] = dot(W[n, :], x[m, :]) + bias[n].
//
// W is [N, K] row-major (torch Linear layout), x is [M, K], y is [M, N]; all share one dtype:
// fp32, bf16 or fp16. Sums run in fp32 and each output is rounded once, like torch. Each thread
// takes a contiguous range of output rows (static split) and streams its part of W once: the
// rows are cut into L2-sized tiles and every chunk of up to 4 rows of x passes over a tile
// while it is cached, each loaded W vector feeding 4 W rows x 4 x rows of accumulators.
//
// Three builds of the same code: AVX-512 (F/BW/VL) and AVX2+FMA+F16C intrinsics, and a plain-C
// fallback the compiler vectorises (NEON). ops/cpu_linear.py compiles it at first use with
// -O2 -march=native -fopenmp; loaded after torch, it shares torch's OpenMP runtime and threads.

#ifdef _OPENMP
#include <omp.h>
#endif

#include "simd.h"

#define MAX_ROWS 4  // rows of x per pass over a tile of W (register blocking)
#define TILE_BYTES (128 << 10)  // W bytes per tile: fits L2 with room for x
#define PASS_ROWS 256  // rows of x per pass over all of W
// Prefetch this far ahead in each W row: +40% GB/s for bf16 rows of 576 (SmolLM) on a Xeon
// whose hardware prefetcher starts too late on short rows; neutral on long rows.
#define PREFETCH_BYTES 4096
#define ROWS_PER_BLOCK 4

// Work below this many weight elements runs on the calling thread (a fork costs microseconds).
#define PARALLEL_MIN (1 << 16)

// ---- the kernel, once per weight type -----------------------------------------------------
// block: ROWS_PER_BLOCK rows of W against M rows of xf (row stride KP, zero padded); M is a
// constant at every call site, so after inlining the accumulators live in registers. The last
// partial vector of each W row is copied into a zeroed buffer (the padded x is zero there too).

#define DEFINE_GEMV(T, SUFFIX)                                                                 \
    INLINE void block_##SUFFIX(const T *w[ROWS_PER_BLOCK], int64_t K, const float *xf,        \
                               int64_t KP, const int M, float out[ROWS_PER_BLOCK][MAX_ROWS]) { \
        enum { R = ROWS_PER_BLOCK };                                                           \
        vec acc[R][MAX_ROWS];                                                                  \
        UNROLL for (int r = 0; r < R; r++)                                                            \
            UNROLL for (int m = 0; m < M; m++) acc[r][m] = vzero();                                   \
        int64_t k = 0;                                                                         \
        for (; k + VL <= K; k += VL) {                                                         \
            vec xv[MAX_ROWS];                                                                  \
            UNROLL for (int m = 0; m < M; m++) xv[m] = load_f32(xf + m * KP + k);                     \
            UNROLL for (int r = 0; r < R; r++) {                                                      \
                __builtin_prefetch((const char *)(w[r] + k) + PREFETCH_BYTES);                 \
                vec wv = load_##SUFFIX(w[r] + k);                                              \
                UNROLL for (int m = 0; m < M; m++) acc[r][m] = vfma(wv, xv[m], acc[r][m]);            \
            }                                                                                  \
        }                                                                                      \
        if (k < K) {                                                                           \
            UNROLL for (int r = 0; r < R; r++) {                                                      \
                T tail[VL];                                                                    \
                memset(tail, 0, sizeof tail);                                                  \
                memcpy(tail, w[r] + k, (size_t)(K - k) * sizeof(T));                           \
                vec wv = load_##SUFFIX(tail);                                                  \
                UNROLL for (int m = 0; m < M; m++)                                                    \
                    acc[r][m] = vfma(wv, load_f32(xf + m * KP + k), acc[r][m]);                \
            }                                                                                  \
        }                                                                                      \
        UNROLL for (int r = 0; r < R; r++)                                                            \
            UNROLL for (int m = 0; m < M; m++) out[r][m] = vsum(acc[r][m]);                           \
    }                                                                                          \
                                                                                               \
    INLINE void rows_##SUFFIX(const T *W, const float *xf, const T *bias, T *y, int64_t N,      \
                              int64_t K, int64_t KP, int64_t n0, int64_t n1, const int M) {     \
        float out[ROWS_PER_BLOCK][MAX_ROWS];                                                   \
        for (int64_t n = n0; n < n1; n += ROWS_PER_BLOCK) {                                    \
            /* past the last row, repeat it: the extra sums are computed and dropped */        \
            const T *w[ROWS_PER_BLOCK];                                                        \
            UNROLL for (int r = 0; r < ROWS_PER_BLOCK; r++) w[r] = W + (n + r < n1 ? n + r : n1 - 1) * K; \
            block_##SUFFIX(w, K, xf, KP, M, out);                                              \
            for (int r = 0; r < ROWS_PER_BLOCK && n + r < n1; r++) {                           \
                float b = bias ? f32_of_##SUFFIX(bias[n + r]) : 0.0f;                          \
                UNROLL for (int m = 0; m < M; m++) y[m * N + n + r] = f32_to_##SUFFIX(out[r][m] + b); \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    INLINE void chunk_##SUFFIX(const T *W, const float *xf, const T *bias, T *y, int64_t N,     \
                               int64_t K, int64_t KP, int64_t n0, int64_t n1, int64_t M) {      \
        switch (M) {                                                                           \
        case 1: rows_##SUFFIX(W, xf, bias, y, N, K, KP, n0, n1, 1); break;                     \
        case 2: rows_##SUFFIX(W, xf, bias, y, N, K, KP, n0, n1, 2); break;                     \
        case 3: rows_##SUFFIX(W, xf, bias, y, N, K, KP, n0, n1, 3); break;                     \
        default: rows_##SUFFIX(W, xf, bias, y, N, K, KP, n0, n1, 4); break;                    \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    /* xf rows m0 <= m < m1 = x's, widened to fp32 and zero padded to KP */                    \
    INLINE void widen_##SUFFIX(const T *x, float *xf, int64_t K, int64_t KP, int64_t m0,        \
                               int64_t m1) {                                                   \
        for (int64_t m = m0; m < m1; m++) {                                                    \
            float *row = xf + m * KP;                                                          \
            for (int64_t k = 0; k < K; k++) row[k] = f32_of_##SUFFIX(x[m * K + k]);            \
            for (int64_t k = K; k < KP; k++) row[k] = 0.0f;                                    \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    /* thread t of nt's share of the output rows: split on block boundaries so only the last  \
       thread has a row tail */                                                                \
    INLINE void share_##SUFFIX(const T *W, const float *xf, const T *bias, T *y, int64_t M,     \
                               int64_t N, int64_t K, int64_t KP, int64_t tile, int t, int nt) { \
        int64_t blocks = (N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;                            \
        int64_t n0 = blocks * t / nt * ROWS_PER_BLOCK;                                         \
        int64_t n1 = blocks * (t + 1) / nt * ROWS_PER_BLOCK;                                   \
        if (n1 > N) n1 = N;                                                                    \
        for (int64_t t0 = n0; t0 < n1; t0 += tile) {                                           \
            int64_t t1 = t0 + tile < n1 ? t0 + tile : n1;                                      \
            for (int64_t m = 0; m < M; m += MAX_ROWS)                                          \
                chunk_##SUFFIX(W, xf + m * KP, bias, y + m * N, N, K, KP, t0, t1,              \
                               M - m < MAX_ROWS ? M - m : MAX_ROWS);                           \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    /* threads < 0: team mode (see minerva_gemv_*): this thread widens all of x itself and    \
       computes its share of the rows of a -threads team, with no region and no barrier */    \
    static void pass_##SUFFIX(const T *W, const T *x, const T *bias, T *y, int64_t M, int64_t N, \
                              int64_t K, float *xf, int threads) {                             \
        int64_t KP = (K + VL - 1) / VL * VL;                                                   \
        /* W rows per tile: a tile stays in L2 while every chunk of x rows passes over it */   \
        int64_t tile = TILE_BYTES / (K * (int64_t)sizeof(T)) / ROWS_PER_BLOCK * ROWS_PER_BLOCK; \
        if (tile < ROWS_PER_BLOCK) tile = ROWS_PER_BLOCK;                                      \
        int direct = sizeof(T) == sizeof(float) && KP == K; /* fp32 x needs no copy */         \
        if (direct) xf = (float *)(void *)x;                                                   \
        if (threads < 0) {                                                                     \
            int t = 0, nt = 1;                                                                 \
            THREAD_ID(t, nt);                                                                  \
            (void)nt;                                                                          \
            if (!direct) widen_##SUFFIX(x, xf, K, KP, 0, M);                                    \
            share_##SUFFIX(W, xf, bias, y, M, N, K, KP, tile, t, -threads);                    \
            return;                                                                            \
        }                                                                                      \
        _Pragma("omp parallel num_threads(threads) if (N * K * M >= PARALLEL_MIN)") {         \
            if (!direct) {                                                                     \
                _Pragma("omp for schedule(static)") for (int64_t m = 0; m < M; m++)            \
                    widen_##SUFFIX(x, xf, K, KP, m, m + 1);                                    \
            }                                                                                  \
            int t = 0, nt = 1;                                                                 \
            THREAD_ID(t, nt);                                                                  \
            share_##SUFFIX(W, xf, bias, y, M, N, K, KP, tile, t, nt);                          \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    /* threads < 0: team mode, for a caller inside a parallel region of -threads threads     \
       (cpu_decode_step.c): each of them calls with the same arguments and computes its share \
       of the rows (values equal to the threads > 0 call's); the caller then waits for all */ \
    int minerva_gemv_##SUFFIX(const T *W, const T *x, const T *bias, T *y, int64_t M,           \
                              int64_t N, int64_t K, int threads) {                             \
        if (M < 1 || N < 1 || K < 1 || threads == 0) return -1;                                \
        int64_t KP = (K + VL - 1) / VL * VL;                                                   \
        int64_t pass = M < PASS_ROWS ? M : PASS_ROWS; /* bounds the scratch for long inputs */ \
        float *xf = thread_scratch(pass * KP);                                                        \
        if (!xf) return -1;                                                                    \
        for (int64_t m = 0; m < M; m += pass) {                                                \
            int64_t rows = M - m < pass ? M - m : pass;                                        \
            pass_##SUFFIX(W, x + m * K, bias, y + m * N, rows, N, K, xf, threads);                      \
        }                                                                                      \
        return 0;                                                                              \
    }

#ifdef _OPENMP
#define THREAD_ID(t, nt) (t = omp_get_thread_num(), nt = omp_get_num_threads())
#else
#define THREAD_ID(t, nt) ((void)0)
#endif

DEFINE_GEMV(float, f32)
DEFINE_GEMV(uint16_t, bf16)
#if HAVE_F16
DEFINE_GEMV(uint16_t, f16)
#endif

int minerva_gemv_has_f16(void) { return HAVE_F16; }
const char *minerva_gemv_path(void) { return SIMD_PATH; }
