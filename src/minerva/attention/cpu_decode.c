// Paged attention for decode rows on the CPU, and the KV-cache write, in one C call each: for
// a cache in the model's dtype, and for a float32 model over a bf16 or fp16 cache.
//
// The torch reference (torch_paged.py) spends ~10 small ops per layer on a decode step (gather,
// two batched matmuls, scale, mask, softmax, casts): 100-200 us on a CPU that streams a whole
// SmolLM layer's weights in ~700 us. This does the same arithmetic with the same roundings:
// scores are rounded to the model dtype (torch's matmul output), scaled and soft-maxed in fp32,
// the probabilities rounded to the model dtype, and the weighted sum of V summed in fp32.
// Built and loaded by minerva.ops.native (see attention/cpu_backend.py).

#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "simd.h"
#include "softmax_row.h"

// Work below this many multiply-adds runs on the calling thread (a fork costs microseconds).
#define PARALLEL_MIN (1 << 14)


// K and V rows read this many positions ahead are prefetched
#define AHEAD 16

// every cache line of bytes [p, p + bytes)
INLINE void prefetch_row(const void *p, int64_t bytes) {
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch((const char *)p + off);
}

#define DEFINE_ATTENTION(QT, QS, T, SUFFIX, NAME, IS_F32, SAME)                                   \
    INLINE void axpy_##NAME(float *acc, float w, const T *v, int64_t dim) { /* acc += w v */    \
        vec wv = vset1(w);                                                                        \
        int64_t d = 0;                                                                            \
        for (; d + VL <= dim; d += VL)                                                            \
            store_f32(acc + d, vfma(wv, load_##SUFFIX(v + d), load_f32(acc + d)));                \
        for (; d < dim; d++) acc[d] += w * f32_of_##SUFFIX(v[d]);                                 \
    }                                                                                             \
                                                                                                  \
    /* acc[0:8 VL] (zeros) = sum over positions [start, len) of w[p - start] * V[p][0:8 VL]: */ \
    /* eight accumulators in registers instead of a load and a store of acc per position.    */ \
    INLINE void wsum8_##NAME(float *acc, const float *w, const T *v0, int64_t token_stride,     \
                               int64_t block_size, const int32_t *block_table, int64_t start,     \
                               int64_t len) {                                                     \
        vec a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();                               \
        vec a4 = vzero(), a5 = vzero(), a6 = vzero(), a7 = vzero();                               \
        for (int64_t p = start; p < len;) {                                                       \
            int64_t blk = p / block_size, stop = (blk + 1) * block_size;                          \
            stop = stop < len ? stop : len;                                                       \
            const T *v = v0 + ((int64_t)block_table[blk] * block_size + p % block_size) *         \
                                  token_stride;                                                   \
            for (; p < stop; p++, v += token_stride) {                                            \
                vec s = vset1(w[p - start]);                                                      \
                a0 = vfma(s, load_##SUFFIX(v), a0);                                               \
                a1 = vfma(s, load_##SUFFIX(v + VL), a1);                                          \
                a2 = vfma(s, load_##SUFFIX(v + 2 * VL), a2);                                      \
                a3 = vfma(s, load_##SUFFIX(v + 3 * VL), a3);                                      \
                a4 = vfma(s, load_##SUFFIX(v + 4 * VL), a4);                                      \
                a5 = vfma(s, load_##SUFFIX(v + 5 * VL), a5);                                      \
                a6 = vfma(s, load_##SUFFIX(v + 6 * VL), a6);                                      \
                a7 = vfma(s, load_##SUFFIX(v + 7 * VL), a7);                                      \
            }                                                                                     \
        }                                                                                         \
        store_f32(acc, a0), store_f32(acc + VL, a1), store_f32(acc + 2 * VL, a2);                 \
        store_f32(acc + 3 * VL, a3), store_f32(acc + 4 * VL, a4), store_f32(acc + 5 * VL, a5);    \
        store_f32(acc + 6 * VL, a6), store_f32(acc + 7 * VL, a7);                                 \
    }                                                                                             \
                                                                                                  \
    /* acc[h * dim + d] += the weighted sums of V[p][d] for dimensions d in [d0, dim) of   */  \
    /* `heads` query heads (weights w + h * n): the dimensions past the register chunks.     */  \
    INLINE void rest_##NAME(float *acc, int64_t heads, int64_t dim, int64_t d0, const float *w, \
                              int64_t n, const T *v0, int64_t token_stride, int64_t block_size,   \
                              const int32_t *block_table, int64_t start, int64_t len) {           \
        for (int64_t p = start; p < len;) {                                                       \
            int64_t blk = p / block_size, stop = (blk + 1) * block_size;                          \
            stop = stop < len ? stop : len;                                                       \
            const T *v = v0 + d0 +                                                                \
                         ((int64_t)block_table[blk] * block_size + p % block_size) * token_stride; \
            for (; p < stop; p++, v += token_stride)                                              \
                for (int64_t h = 0; h < heads; h++)                                               \
                    axpy_##NAME(acc + h * dim + d0, w[h * n + p - start], v, dim - d0);         \
        }                                                                                         \
    }                                                                                             \
                                                                                                  \
    /* scores[g * n + p - start] = (q_g . K[p]) * scale for the `group` query heads qf      */ \
    /* (float32, dim apart) and positions p in [start, len), n = len - start: eight positions */ \
    /* at a time, each K row's vectors against the query's with one accumulator a position  */  \
    /* (eight independent chains; the eight rows' loads in flight together), the eight sums */  \
    /* finished at once (vsum8).                                                            */  \
    INLINE void scores_##NAME(const float *qf, int64_t group, const T *kv,                      \
                                int64_t token_stride, int64_t block_size,                         \
                                const int32_t *block_table, int64_t start, int64_t len,           \
                                int64_t dim, float scale, float *scores) {                        \
        const int64_t n = len - start, dv = dim / VL * VL;                                        \
        int64_t blk = start / block_size, off = start % block_size;                               \
        /* the rows AHEAD positions on, fetched while these are computed: the blocks lie     */   \
        /* anywhere in the cache, and the hardware prefetcher stops at each block's end      */   \
        int64_t pp = start + AHEAD < len ? start + AHEAD : len;                                   \
        int64_t pblk = pp / block_size, poff = pp % block_size;                                   \
        for (int64_t p = start; p < len; p += 8) {                                                \
            const int cnt = len - p < 8 ? (int)(len - p) : 8;                                     \
            const T *k[8];                                                                        \
            for (int j = 0; j < 8; j++) {                                                         \
                if (j >= cnt) { /* past the end: row 0 again, its sums thrown away */             \
                    k[j] = k[0];                                                                  \
                    continue;                                                                     \
                }                                                                                 \
                k[j] = kv + ((int64_t)block_table[blk] * block_size + off) * token_stride;        \
                if (++off == block_size) blk++, off = 0;                                          \
            }                                                                                     \
            for (int j = 0; j < 8 && pp < len; j++, pp++) {                                       \
                prefetch_row(kv + ((int64_t)block_table[pblk] * block_size + poff) * token_stride,  \
                             dim * (int64_t)sizeof(T));                                           \
                if (++poff == block_size) pblk++, poff = 0;                                       \
            }                                                                                     \
            for (int64_t g = 0; g < group; g++) {                                                 \
                const float *qg = qf + g * dim;                                                   \
                vec a[8];                                                                         \
                for (int j = 0; j < 8; j++) a[j] = vzero();                                       \
                for (int64_t d = 0; d < dv; d += VL) {                                            \
                    const vec qv = load_f32(qg + d);                                              \
                    UNROLL for (int j = 0; j < 8; j++) a[j] = vfma(qv, load_##SUFFIX(k[j] + d), a[j]); \
                }                                                                                 \
                float s[8];                                                                       \
                vsum8(a, s);                                                                      \
                for (int j = 0; j < cnt; j++) {                                                   \
                    for (int64_t d = dv; d < dim; d++) s[j] += qg[d] * f32_of_##SUFFIX(k[j][d]);  \
                    if (!IS_F32) s[j] = f32_of_##QS(f32_to_##QS(s[j])); /* matmul output */ \
                    scores[g * n + p - start + j] = s[j] * scale;                                 \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
                                                                                                  \
    /* acc[0:4 VL] and acc[dim:dim + 4 VL] (zeros) = the weighted sums of V[p][0:4 VL] with  */  \
    /* two query heads' weights w and w + n (positions [start, len)): each V row is loaded   */  \
    /* once for both heads of a pair, eight accumulators in registers.                       */  \
    INLINE void wsum4x2_##NAME(float *acc, int64_t dim, const float *w, int64_t n,              \
                                 const T *v0, int64_t token_stride, int64_t block_size,           \
                                 const int32_t *block_table, int64_t start, int64_t len) {        \
        vec a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();                               \
        vec b0 = vzero(), b1 = vzero(), b2 = vzero(), b3 = vzero();                               \
        for (int64_t p = start; p < len;) {                                                       \
            int64_t blk = p / block_size, stop = (blk + 1) * block_size;                          \
            stop = stop < len ? stop : len;                                                       \
            const T *v = v0 + ((int64_t)block_table[blk] * block_size + p % block_size) *         \
                                  token_stride;                                                   \
            /* the next block's first rows, fetched while this one's are summed */                \
            if (stop < len)                                                                       \
                for (int64_t r = 0; r < block_size && r < AHEAD; r++)                             \
                    prefetch_row(v0 + ((int64_t)block_table[blk + 1] * block_size + r) *          \
                                          token_stride, 4 * VL * (int64_t)sizeof(T));             \
            for (; p < stop; p++, v += token_stride) {                                            \
                const vec x0 = load_##SUFFIX(v), x1 = load_##SUFFIX(v + VL);                      \
                const vec x2 = load_##SUFFIX(v + 2 * VL), x3 = load_##SUFFIX(v + 3 * VL);         \
                const vec s = vset1(w[p - start]), t = vset1(w[n + p - start]);                   \
                a0 = vfma(s, x0, a0), a1 = vfma(s, x1, a1), a2 = vfma(s, x2, a2);                 \
                a3 = vfma(s, x3, a3), b0 = vfma(t, x0, b0), b1 = vfma(t, x1, b1);                 \
                b2 = vfma(t, x2, b2), b3 = vfma(t, x3, b3);                                       \
            }                                                                                     \
        }                                                                                         \
        store_f32(acc, a0), store_f32(acc + VL, a1), store_f32(acc + 2 * VL, a2);                 \
        store_f32(acc + 3 * VL, a3), store_f32(acc + dim, b0), store_f32(acc + dim + VL, b1);     \
        store_f32(acc + dim + 2 * VL, b2), store_f32(acc + dim + 3 * VL, b3);                     \
    }                                                                                             \
                                                                                                  \
    /* One (decode row, KV head) and its `group` query heads: out = softmax(q . K * scale) V  */  \
    /* over context positions [start, len). kv points at this KV head in the K plane (V is   */  \
    /* `plane` further). The V rows are read once per pair of query heads (wsum4x2) or per  */   \
    /* head (wsum8, a lone head); dimensions past their chunks through axpy.                */   \
    /* scores: group * (len - start) floats; qf, acc: group * dim floats.                   */   \
    INLINE void group_##NAME(const QT *q, int64_t group, const T *kv, int64_t plane,             \
                               int64_t token_stride, int64_t block_size,                          \
                               const int32_t *block_table, int64_t start, int64_t len,            \
                               int64_t dim, float scale, float *scores, float *qf, float *acc,    \
                               QT *out) {                                                          \
        int64_t n = len - start;                                                                  \
        for (int64_t g = 0; g < group * dim; g++) qf[g] = f32_of_##QS(q[g]), acc[g] = 0.0f;   \
        scores_##NAME(qf, group, kv, token_stride, block_size, block_table, start, len, dim,    \
                        scale, scores);                                                           \
        for (int64_t g = 0; g < group; g++) {                                                     \
            float *sc = scores + g * n;                                                           \
            softmax_row(sc, n);                                                                   \
            if (!IS_F32) /* probabilities in the model dtype, as torch's .to(q.dtype) */          \
                for (int64_t j = 0; j < n; j++) sc[j] = f32_of_##QS(f32_to_##QS(sc[j]));  \
        }                                                                                         \
        int64_t g = 0;                                                                            \
        for (; g + 2 <= group; g += 2) { /* pairs of heads, chunks of 4 vectors */                \
            int64_t d0 = 0;                                                                       \
            for (; d0 + 4 * VL <= dim; d0 += 4 * VL)                                              \
                wsum4x2_##NAME(acc + g * dim + d0, dim, scores + g * n, n, kv + plane + d0,     \
                                 token_stride, block_size, block_table, start, len);              \
            if (d0 < dim)                                                                         \
                rest_##NAME(acc + g * dim, 2, dim, d0, scores + g * n, n, kv + plane,           \
                              token_stride, block_size, block_table, start, len);                 \
        }                                                                                         \
        if (g < group) { /* a lone head: whole chunks of 8 vectors */                             \
            int64_t d0 = 0;                                                                       \
            for (; d0 + 8 * VL <= dim; d0 += 8 * VL)                                              \
                wsum8_##NAME(acc + g * dim + d0, scores + g * n, kv + plane + d0,               \
                               token_stride, block_size, block_table, start, len);                \
            if (d0 < dim)                                                                         \
                rest_##NAME(acc + g * dim, 1, dim, d0, scores + g * n, n, kv + plane,           \
                              token_stride, block_size, block_table, start, len);                 \
        }                                                                                         \
        for (int64_t i = 0; i < group * dim; i++) out[i] = f32_to_##QS(acc[i]);               \
    }                                                                                             \
                                                                                                  \
    /* Unit u: decode row u / (heads / per) and its query heads h .. h + per - 1.           */   \
    INLINE void unit_##NAME(int64_t u, const QT *q, int64_t q_row, const T *kv_cache,            \
                              int64_t plane, int64_t kv_heads, int64_t block_size,                \
                              const int32_t *block_tables, int64_t bt_stride,                     \
                              const int32_t *seq_lens, int64_t heads, int64_t group, int64_t per, \
                              int64_t window, int64_t dim, float scale, float *buf, QT *out) {     \
        int64_t i = u / (heads / per), h = u % (heads / per) * per; /* first q head */           \
        int64_t len = seq_lens[i];                                                                \
        int64_t start = window > 0 && len > window ? len - window : 0;                            \
        group_##NAME(q + i * q_row + h * dim, per, kv_cache + h / group * dim, plane,           \
                       kv_heads * dim, block_size, block_tables + i * bt_stride, start, len, dim, \
                       scale, buf + 2 * per * dim, buf, buf + per * dim,                          \
                       out + (i * heads + h) * dim);                                              \
    }                                                                                             \
                                                                                                  \
    /* q [rows, heads, dim] (rows q_row apart, heads dim apart); kv_cache [2, blocks,        */   \
    /* block_size, kv_heads, dim]; block_tables [rows, bt_stride] and seq_lens [rows] int32; */   \
    /* window 0 = full attention; out [rows, heads, dim] contiguous.                         */   \
    int minerva_decode_attention_##NAME(                                                        \
        const QT *q, int64_t q_row, const T *kv_cache, int64_t num_blocks, int64_t block_size,     \
        int64_t kv_heads, int64_t dim, const int32_t *block_tables, int64_t bt_stride,            \
        const int32_t *seq_lens, int64_t rows, int64_t heads, float scale, int64_t window,        \
        QT *out, int threads) {                                                                    \
        if (rows < 0 || dim < 1 || kv_heads < 1 || heads % kv_heads || threads == 0) return -1;   \
        int64_t longest = 1, work = 0;                                                            \
        for (int64_t i = 0; i < rows; i++) {                                                      \
            longest = seq_lens[i] > longest ? seq_lens[i] : longest;                              \
            work += seq_lens[i];                                                                  \
        }                                                                                         \
        work *= heads * dim;                                                                      \
        int64_t group = heads / kv_heads;                                                         \
        /* few (row, KV head) units for the threads: split each unit's query heads apart */      \
        int64_t team = threads < 0 ? -(int64_t)threads : 0; /* see below */                      \
        int64_t split = rows * kv_heads < 2 * (team ? team : threads) ? group : 1;               \
        int64_t per = group / split; /* query heads per unit */                                  \
        int64_t plane = num_blocks * block_size * kv_heads * dim; /* K to V */                    \
        int64_t units = rows * heads / per;                                                       \
        int failed = 0;                                                                           \
        /* team mode (threads < 0): the caller is one of a region's -threads threads, each of */ \
        /* which calls with the same arguments: it computes its static share of the units   */   \
        /* (as `omp for` would) with no region and no barrier. A unit's values do not depend */  \
        /* on how units are shared out, so both modes give the same bits.                    */  \
        if (team) {                                                                               \
            int t = 0;                                                                            \
            THREAD_NUM(t);                                                                        \
            float *buf = thread_scratch(per * (longest + 2 * dim));                               \
            if (!buf) return -1;                                                                  \
            for (int64_t u = units * t / team; u < units * (t + 1) / team; u++)                   \
                unit_##NAME(u, q, q_row, kv_cache, plane, kv_heads, block_size, block_tables,   \
                              bt_stride, seq_lens, heads, group, per, window, dim, scale, buf,    \
                              out);                                                               \
            return 0;                                                                             \
        }                                                                                         \
        _Pragma("omp parallel num_threads(threads) if (work >= PARALLEL_MIN)") {                  \
            float *buf = thread_scratch(per * (longest + 2 * dim));                               \
            if (!buf) {                                                                           \
                _Pragma("omp atomic write") failed = 1;                                           \
            }                                                                                     \
            _Pragma("omp for schedule(static)") for (int64_t u = 0; u < units; u++) {             \
                if (buf)                                                                          \
                    unit_##NAME(u, q, q_row, kv_cache, plane, kv_heads, block_size,             \
                                  block_tables, bt_stride, seq_lens, heads, group, per, window,   \
                                  dim, scale, buf, out);                                          \
            }                                                                                     \
        }                                                                                         \
        return failed ? -1 : 0;                                                                   \
    }                                                                                             \
                                                                                                  \
    /* kv_cache[0 / 1, slot] = k / v rows ([rows, width], rows k_row / v_row apart), in    */  \
    /* the cache's dtype (rounded to nearest even, as torch's .to()).                        */  \
    int minerva_write_kv_##NAME(const QT *k, int64_t k_row, const QT *v, int64_t v_row,           \
                                T *kv_cache, int64_t num_slots, int64_t width,                    \
                                const int64_t *slots, int64_t rows) {                             \
        for (int64_t i = 0; i < rows; i++)                                                        \
            if (slots[i] < 0 || slots[i] >= num_slots) return -1;                                 \
        for (int64_t i = 0; i < rows; i++) {                                                      \
            T *kd = kv_cache + slots[i] * width, *vd = kv_cache + (num_slots + slots[i]) * width; \
            if (SAME) {                                                                           \
                memcpy(kd, k + i * k_row, (size_t)width * sizeof(T));                             \
                memcpy(vd, v + i * v_row, (size_t)width * sizeof(T));                             \
                continue;                                                                         \
            }                                                                                     \
            for (int64_t j = 0; j < width; j++) {                                                 \
                kd[j] = f32_to_##SUFFIX(f32_of_##QS(k[i * k_row + j]));                           \
                vd[j] = f32_to_##SUFFIX(f32_of_##QS(v[i * v_row + j]));                           \
            }                                                                                     \
        }                                                                                         \
        return 0;                                                                                 \
    }

#ifdef _OPENMP
#define THREAD_NUM(t) (t = omp_get_thread_num())
#else
#define THREAD_NUM(t) ((void)0)
#endif

// (q / out type, its suffix, KV cache type, its suffix, name, q in float32, same types)
DEFINE_ATTENTION(float, f32, float, f32, f32, 1, 1)
DEFINE_ATTENTION(uint16_t, bf16, uint16_t, bf16, bf16, 0, 1)
// a float32 model over a 16-bit cache: the reference widens K and V to float32 (no roundings
// of scores or probabilities), the cache holds each new row rounded to its dtype
DEFINE_ATTENTION(float, f32, uint16_t, bf16, f32_bf16, 1, 0)
#if HAVE_F16
DEFINE_ATTENTION(uint16_t, f16, uint16_t, f16, f16, 0, 1)
DEFINE_ATTENTION(float, f32, uint16_t, f16, f32_f16, 1, 0)
#endif

int minerva_attention_has_f16(void) { return HAVE_F16; }
