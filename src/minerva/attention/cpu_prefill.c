// Causal paged attention of one prefill chunk on the CPU, in one C call: the chunk's query
// tokens against the first seq_len positions of the cache (its own K/V already written).
//
// torch_paged._prefill gathers the context and calls scaled_dot_product_attention; on CPUs
// without AVX512_BF16 its flash kernel runs at ~20 GFLOP/s and, with the gather and the copies
// around it, costs 300-500 us a layer for 128 tokens of a small model. Here a unit is one KV
// head and a block of TOKEN_BLOCK query tokens: the K and V rows the block can see are widened
// to fp32 once, then each (token, query head) row takes its scores over the rows it sees (eight
// positions at a time, simd.h's vsum8), a softmax in fp32 and the weighted sum of V in fp32.
// As in the flash kernel, scores stay fp32 and, in bf16 / fp16, the probabilities are rounded
// to that dtype before they weigh V; the output is rounded once. Built and loaded by
// minerva.ops.native (see attention/cpu_backend.py).

#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "simd.h"
#include "softmax_row.h"

// Work below this many multiply-adds runs on the calling thread (a fork costs microseconds).
#define PARALLEL_MIN (1 << 14)
// Query tokens per unit: the K / V rows a block sees are widened once for all of them.
#define TOKEN_BLOCK 16


// sum + q[d] * k[d] over d0 <= d < dim, one at a time: the dimensions past whole vectors. One
// compiled copy (noinline) for scores_row and scores_row2, so that the two round alike.
static __attribute__((noinline)) float dot_tail(const float *q, const float *k, int64_t d0,
                                                int64_t dim, float sum) {
    for (int64_t d = d0; d < dim; d++) sum += q[d] * k[d];
    return sum;
}

// s[p] = (q . k[p]) * scale for p < n; k rows dim apart (fp32). Eight positions at a time:
// one accumulator each, the query's vectors loaded once for the eight.
static void scores_row(const float *q, const float *k, int64_t n, int64_t dim, float scale,
                       float *s) {
    const int64_t dv = dim / VL * VL;
    for (int64_t p = 0; p < n; p += 8) {
        const int cnt = n - p < 8 ? (int)(n - p) : 8;
        const float *kr[8];
        for (int j = 0; j < 8; j++) kr[j] = k + (p + (j < cnt ? j : 0)) * dim;
        vec a[8];
        for (int j = 0; j < 8; j++) a[j] = vzero();
        for (int64_t d = 0; d < dv; d += VL) {
            const vec qv = load_f32(q + d);
            UNROLL for (int j = 0; j < 8; j++) a[j] = vfma(qv, load_f32(kr[j] + d), a[j]);
        }
        float sums[8];
        vsum8(a, sums);
        for (int j = 0; j < cnt; j++) {
            s[p + j] = dot_tail(q, kr[j], dv, dim, sums[j]) * scale;
        }
    }
}

// acc[d] = sum over p < n of w[p] * v[p][d] for d0 <= d < dim, one dimension at a time. One
// compiled copy (noinline) for wsum_row and wsum_row2, so that the two sum these the same way.
static __attribute__((noinline)) void wsum_tail(float *acc, const float *w, const float *v,
                                                int64_t n, int64_t dim, int64_t d0) {
    for (int64_t d = d0; d < dim; d++) {
        float a = 0.0f;
        for (int64_t p = 0; p < n; p++) a += w[p] * v[p * dim + d];
        acc[d] = a;
    }
}

// acc[0:dim] = sum over p < n of w[p] * v[p] (v rows dim apart, fp32): chunks of four vectors
// in registers, the dimensions past them one at a time.
static void wsum_row(float *acc, const float *w, const float *v, int64_t n, int64_t dim) {
    int64_t d0 = 0;
    for (; d0 + 4 * VL <= dim; d0 += 4 * VL) {
        vec a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
        const float *vr = v + d0;
        for (int64_t p = 0; p < n; p++, vr += dim) {
            const vec s = vset1(w[p]);
            a0 = vfma(s, load_f32(vr), a0), a1 = vfma(s, load_f32(vr + VL), a1);
            a2 = vfma(s, load_f32(vr + 2 * VL), a2), a3 = vfma(s, load_f32(vr + 3 * VL), a3);
        }
        store_f32(acc + d0, a0), store_f32(acc + d0 + VL, a1);
        store_f32(acc + d0 + 2 * VL, a2), store_f32(acc + d0 + 3 * VL, a3);
    }
    wsum_tail(acc, w, v, n, dim, d0);
}

// scores_row for two query heads that share the K rows (a GQA group): four positions at a
// time for both, so that each K vector is loaded once for the two. Each score's sum runs in the
// same order as scores_row's (vsum8 reduces every vector by the same tree), so the scores are
// the same bits.
static void scores_row2(const float *q0, const float *q1, const float *k, int64_t n,
                        int64_t dim, float scale, float *s0, float *s1) {
    const int64_t dv = dim / VL * VL;
    for (int64_t p = 0; p < n; p += 4) {
        const int cnt = n - p < 4 ? (int)(n - p) : 4;
        const float *kr[4];
        for (int j = 0; j < 4; j++) kr[j] = k + (p + (j < cnt ? j : 0)) * dim;
        vec a[8];
        for (int j = 0; j < 8; j++) a[j] = vzero();
        for (int64_t d = 0; d < dv; d += VL) {
            const vec qa = load_f32(q0 + d), qb = load_f32(q1 + d);
            UNROLL for (int j = 0; j < 4; j++) {
                const vec kv = load_f32(kr[j] + d);
                a[j] = vfma(qa, kv, a[j]);
                a[4 + j] = vfma(qb, kv, a[4 + j]);
            }
        }
        float sums[8];
        vsum8(a, sums);
        for (int j = 0; j < cnt; j++) {
            s0[p + j] = dot_tail(q0, kr[j], dv, dim, sums[j]) * scale;
            s1[p + j] = dot_tail(q1, kr[j], dv, dim, sums[4 + j]) * scale;
        }
    }
}

// wsum_row for two weight rows over the same V rows: each V vector loaded once for the two;
// every lane sums in wsum_row's order (the same bits).
static void wsum_row2(float *acc0, float *acc1, const float *w0, const float *w1,
                      const float *v, int64_t n, int64_t dim) {
    const int64_t whole = dim / (4 * VL) * (4 * VL); /* wsum_row's vector part */
    int64_t d0 = 0;
    for (; d0 < whole; d0 += 2 * VL) {
        vec a0 = vzero(), a1 = vzero(), b0 = vzero(), b1 = vzero();
        const float *vr = v + d0;
        for (int64_t p = 0; p < n; p++, vr += dim) {
            const vec x = load_f32(vr), y = load_f32(vr + VL);
            const vec s = vset1(w0[p]), t = vset1(w1[p]);
            a0 = vfma(s, x, a0), a1 = vfma(s, y, a1);
            b0 = vfma(t, x, b0), b1 = vfma(t, y, b1);
        }
        store_f32(acc0 + d0, a0), store_f32(acc0 + d0 + VL, a1);
        store_f32(acc1 + d0, b0), store_f32(acc1 + d0 + VL, b1);
    }
    wsum_tail(acc0, w0, v, n, dim, d0);
    wsum_tail(acc1, w1, v, n, dim, d0);
}

// Whether units take query heads two at a time (scores_row2 / wsum_row2) where their group
// has an even number of heads; 0 runs every head alone (the twin the tests compare with).
int minerva_prefill_pairs = 1;

#define DEFINE_PREFILL(QT, QS, T, SUFFIX, NAME, IS_F32)                                          \
    /* Unit u: KV head g and query tokens [t0, t1), the heaviest (last) blocks first.       */  \
    static void unit_##NAME(int64_t u, const QT *q, int64_t q_row, const T *kv_cache,           \
                            int64_t plane, int64_t kv_heads, int64_t block_size,                 \
                            const int32_t *block_table, int64_t ctx0, int64_t tokens,            \
                            int64_t heads, int64_t dim, float scale, int64_t window,             \
                            float *buf, QT *out) {                                               \
        int64_t blocks = (tokens + TOKEN_BLOCK - 1) / TOKEN_BLOCK;                             \
        int64_t b = blocks - 1 - u / kv_heads, g = u % kv_heads, group = heads / kv_heads;     \
        int64_t t0 = b * TOKEN_BLOCK, t1 = t0 + TOKEN_BLOCK < tokens ? t0 + TOKEN_BLOCK : tokens; \
        int64_t hi = ctx0 + t1; /* the block sees positions [lo, hi) */                        \
        int64_t lo = window > 0 && ctx0 + t0 + 1 > window ? ctx0 + t0 + 1 - window : 0;        \
        int64_t n = hi - lo, stride = kv_heads * dim;                                           \
        float *kf = buf, *vf = buf + n * dim, *qf = vf + n * dim, *s = qf + dim;               \
        for (int64_t p = lo; p < hi; p++) { /* widen the block's K and V rows once */          \
            const T *k = kv_cache + ((int64_t)block_table[p / block_size] * block_size +       \
                                     p % block_size) * stride + g * dim;                      \
            float *kd = kf + (p - lo) * dim, *vd = vf + (p - lo) * dim;                        \
            int64_t d = 0;                                                                     \
            for (; d + VL <= dim; d += VL) {                                                   \
                store_f32(kd + d, load_##SUFFIX(k + d));                                       \
                store_f32(vd + d, load_##SUFFIX(k + plane + d));                               \
            }                                                                                  \
            for (; d < dim; d++) kd[d] = f32_of_##SUFFIX(k[d]), vd[d] = f32_of_##SUFFIX(k[plane + d]); \
        }                                                                                      \
        for (int64_t t = t0; t < t1; t++) {                                                    \
            int64_t pos = ctx0 + t; /* sees (pos - window, pos] */                             \
            int64_t first = window > 0 && pos + 1 > window ? pos + 1 - window : 0;             \
            int64_t m = pos + 1 - first;                                                       \
            const float *kt = kf + (first - lo) * dim, *vt = vf + (first - lo) * dim;          \
            int64_t h = g * group;                                                             \
            for (; minerva_prefill_pairs && h + 2 <= (g + 1) * group; h += 2) {                \
                float *qb = s + n + dim, *sb = qb + dim, *accb = sb + n; /* past acc */     \
                const QT *qr = q + t * q_row + h * dim;                                        \
                for (int64_t d = 0; d < dim; d++) {                                            \
                    qf[d] = f32_of_##QS(qr[d]);                                                \
                    qb[d] = f32_of_##QS(qr[dim + d]);                                          \
                }                                                                              \
                scores_row2(qf, qb, kt, m, dim, scale, s, sb);                                 \
                softmax_row(s, m);                                                             \
                softmax_row(sb, m);                                                            \
                if (!IS_F32) {                                                                 \
                    int64_t j = 0;                                                             \
                    for (; j + VL <= m; j += VL) {                                             \
                        store_f32(s + j, vround_##QS(load_f32(s + j)));                        \
                        store_f32(sb + j, vround_##QS(load_f32(sb + j)));                      \
                    }                                                                          \
                    for (; j < m; j++) {                                                       \
                        s[j] = f32_of_##QS(f32_to_##QS(s[j]));                                 \
                        sb[j] = f32_of_##QS(f32_to_##QS(sb[j]));                               \
                    }                                                                          \
                }                                                                              \
                float *acc = s + n;                                                            \
                wsum_row2(acc, accb, s, sb, vt, m, dim);                                       \
                QT *o = out + (t * heads + h) * dim;                                           \
                for (int64_t d = 0; d < dim; d++) {                                            \
                    o[d] = f32_to_##QS(acc[d]);                                                \
                    o[dim + d] = f32_to_##QS(accb[d]);                                         \
                }                                                                              \
            }                                                                                  \
            for (; h < (g + 1) * group; h++) {                                                 \
                const QT *qr = q + t * q_row + h * dim;                                        \
                for (int64_t d = 0; d < dim; d++) qf[d] = f32_of_##QS(qr[d]);                  \
                scores_row(qf, kt, m, dim, scale, s);                                          \
                softmax_row(s, m);                                                             \
                if (!IS_F32) { /* the probabilities in the model dtype, as the flash kernel's */ \
                    int64_t j = 0;                                                             \
                    for (; j + VL <= m; j += VL) store_f32(s + j, vround_##QS(load_f32(s + j))); \
                    for (; j < m; j++) s[j] = f32_of_##QS(f32_to_##QS(s[j]));                  \
                }                                                                              \
                float *acc = s + n; /* past the scores */                                      \
                wsum_row(acc, s, vt, m, dim);                                                  \
                QT *o = out + (t * heads + h) * dim;                                           \
                for (int64_t d = 0; d < dim; d++) o[d] = f32_to_##QS(acc[d]);                  \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    /* q [tokens, heads, dim] (tokens q_row apart, heads dim apart): the last `tokens` of     */ \
    /* seq_len positions, whose K / V the cache [2, blocks, block_size, kv_heads, dim] holds  */ \
    /* already at block_table's blocks; window 0 = full attention; out [tokens, heads, dim]   */ \
    /* contiguous.                                                                            */ \
    int minerva_prefill_attention_##NAME(const QT *q, int64_t q_row, const T *kv_cache,        \
                                         int64_t num_blocks, int64_t block_size,                 \
                                         int64_t kv_heads, int64_t dim,                          \
                                         const int32_t *block_table, int64_t seq_len,            \
                                         int64_t tokens, int64_t heads, float scale,             \
                                         int64_t window, QT *out, int threads) {                 \
        if (tokens < 1 || tokens > seq_len || dim < 1 || kv_heads < 1 || heads % kv_heads ||   \
            window < 0 || threads < 1)                                                         \
            return -1;                                                                         \
        int64_t ctx0 = seq_len - tokens, plane = num_blocks * block_size * kv_heads * dim;     \
        int64_t units = kv_heads * ((tokens + TOKEN_BLOCK - 1) / TOKEN_BLOCK);                 \
        int64_t work = tokens * heads * dim * (window > 0 && window < seq_len ? window : seq_len); \
        int64_t span = TOKEN_BLOCK + (window > 0 && window < seq_len ? window : seq_len);      \
        int failed = 0;                                                                        \
        _Pragma("omp parallel num_threads(threads) if (work >= PARALLEL_MIN)") {               \
            /* K, V; then q, scores, acc of a head, and of the second head of a pair */       \
            float *buf = thread_scratch(2 * span * dim + 2 * (dim + 2 * span + dim));            \
            if (!buf) {                                                                        \
                _Pragma("omp atomic write") failed = 1;                                        \
            }                                                                                  \
            _Pragma("omp for schedule(dynamic)") for (int64_t u = 0; u < units; u++) {         \
                if (buf)                                                                       \
                    unit_##NAME(u, q, q_row, kv_cache, plane, kv_heads, block_size,            \
                                block_table, ctx0, tokens, heads, dim, scale, window, buf,     \
                                out);                                                          \
            }                                                                                  \
        }                                                                                      \
        return failed ? -1 : 0;                                                                \
    }

// (q / out type, its suffix, KV cache type, its suffix, name, q in float32)
DEFINE_PREFILL(float, f32, float, f32, f32, 1)
DEFINE_PREFILL(uint16_t, bf16, uint16_t, bf16, bf16, 0)
DEFINE_PREFILL(float, f32, uint16_t, bf16, f32_bf16, 1)
#if HAVE_F16
DEFINE_PREFILL(uint16_t, f16, uint16_t, f16, f16, 0)
DEFINE_PREFILL(float, f32, uint16_t, f16, f32_f16, 1)
#endif

int minerva_prefill_has_f16(void) { return HAVE_F16; }
