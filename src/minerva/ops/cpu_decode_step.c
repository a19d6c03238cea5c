// A whole decode step of a Llama-family model on the CPU in one call: M decode rows (one new
// token each), activations in the model's dtype (float32, or bf16 / fp16 with dense weights:
// the GGUF kernels take float32 rows), the KV cache in it too or, under float32, in bf16 / fp16
// (the attention kernels passed in read and write it; the step never touches its elements).
//
// The layered forward (models/llama.py) runs ~12 kernels per layer, each behind a Python call,
// a torch allocation and a ctypes call; on a 30-layer 135M-parameter model that glue costs
// more time than the kernels. This file runs the very same kernels in the same order over one
// scratch buffer: their entry points (cpu_quant_x8.c, cpu_quant.c, cpu_gemv.c, cpu_glue.c,
// attention/cpu_decode.c) come in as function pointers, so its logits equal the layered path's
// bit for bit. The only arithmetic of its own is the bias add of a quantized layer (one float
// add, as torch's) and the dequantization of a GGUF token embedding's rows (dequant_row.h, the
// same roundings as quant/gguf_dequant.py). ops/cpu_decode_step.py mirrors the structs and is the only caller.
// Built and loaded by minerva.ops.native.

#ifdef _OPENMP
#include <omp.h>
#endif
#include <limits.h>
#include <sched.h>
#include <stdatomic.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <stdint.h>
#include <string.h>

#include "dequant_row.h"
#include "simd.h"

enum { W_DENSE = 0, W_X8 = 1, W_FILE = 2 };  // how a group's weight is stored
#define MAX_GROUPS 4

typedef int (*x8_fn)(int, const void *, const float *, float *, int64_t, int64_t, int64_t,
                     int64_t, int);  // type, W, x, y, ldy, M, N, K, threads
typedef int (*qgemm_fn)(int, const void *, const float *, float *, int64_t, int64_t, int64_t,
                        int);  // type, W, x, y, M, N, K, threads
// The kernels below take the model dtype's elements (void *: float or uint16_t).
typedef int (*gemv_fn)(const void *, const void *, const void *, void *, int64_t, int64_t,
                       int64_t, int);  // W, x, bias, y, M, N, K, threads
typedef int (*norm_fn)(const void *, const void *, const void *, void *, void *, int64_t,
                       int64_t, float, int);  // x, res, w, out, res_out, rows, cols, eps, threads
typedef int (*rope_fn)(const void *, const void *, const void *, void *, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int);
typedef int (*silu_fn)(const void *, void *, int64_t, int64_t, int);
typedef int (*attend_fn)(const void *, int64_t, const void *, int64_t, int64_t, int64_t, int64_t,
                         const int32_t *, int64_t, const int32_t *, int64_t, int64_t, float,
                         int64_t, void *, int);
typedef int (*write_kv_fn)(const void *, int64_t, const void *, int64_t, void *, int64_t,
                           int64_t, const int64_t *, int64_t);

typedef struct {
    x8_fn x8;
    qgemm_fn qgemm;
    gemv_fn gemv;
    norm_fn norm;
    rope_fn rope;
    silu_fn silu_mul;
    attend_fn attend;
    write_kv_fn write_kv;
} step_kernels;

typedef struct {  // consecutive output rows of a linear layer stored one way
    int32_t kind;   // W_DENSE (float32 [rows, in]), W_X8 or W_FILE (GGUF blocks of `type`)
    int32_t type;   // GGML type id (quantized kinds)
    int64_t rows;
    const void *w;
} step_group;

typedef struct {
    int64_t in, out;
    int32_t n_groups;
    step_group groups[MAX_GROUPS];
    const void *bias;  // [out] in the model dtype, or NULL
} step_linear;

typedef struct {
    step_linear qkv, o, gate_up, down;
    const void *in_norm, *post_norm;
    int64_t window;  // sliding window, 0 = full attention
    const void *q_norm, *k_norm;  // [head_dim] RMSNorm weights of each q / k head, or NULL
} step_layer;

enum { D_F32 = 0, D_BF16 = 1, D_F16 = 2 };

typedef struct {
    int64_t layers, hidden, heads, kv_heads, head_dim, intermediate, vocab, max_positions;
    float eps, scale;
    int32_t dtype;  // D_F32, D_BF16 or D_F16: activations, norms, rope tables, KV cache
    const step_layer *layer;  // [layers]
    const void *final_norm;
    step_linear head;
    const void *cos, *sin;  // [max_positions, head_dim] (sin sign-folded, as rope.py)
    step_kernels k;
    const void *embed;   // [embed_rows, hidden] token embeddings, or NULL (the caller embeds)
    int64_t embed_rows;
    int32_t embed_type;  // 0: embed is in the model dtype; else the GGML type of its row blocks
    int64_t embed_row_bytes;  // bytes of one row of embed's blocks (embed_type != 0)
    int32_t team;  // 1: with several threads, the layers in one OpenMP region (see team_step)
} step_model;

// Scratch of one step of M rows (elements of the model dtype; tmp also takes float32 rows of
// the file kernel): the buffers below, laid out by `carve`.
typedef struct {
    char *res, *x, *xn, *qkv, *qk, *att, *gate_up, *act, *tmp;
    char *res2;  // in one region, the residual stream alternates between res and res2
} step_buffers;

#define ES(m) ((m)->dtype == D_F32 ? 4 : 2)  // bytes per element
#define AT(p, m, i) ((char *)(p) + (int64_t)(i) * ES(m))  // element i of a model-dtype buffer

static int64_t carve(const step_model *m, int64_t M, char *base, step_buffers *b) {
    const int64_t qkv_w = (m->heads + 2 * m->kv_heads) * m->head_dim;
    const int64_t widest = m->vocab > 2 * m->intermediate ? m->vocab : 2 * m->intermediate;
    const int64_t sizes[10] = {m->hidden, m->hidden, m->hidden, qkv_w,
                               (m->heads + m->kv_heads) * m->head_dim, m->heads * m->head_dim,
                               2 * m->intermediate, m->intermediate,
                               widest > qkv_w ? widest : qkv_w, m->hidden};
    char **slots[10] = {&b->res, &b->x,   &b->xn,      &b->qkv, &b->qk,
                        &b->att, &b->gate_up, &b->act, &b->tmp, &b->res2};
    int64_t at = 0;
    for (int i = 0; i < 10; i++) {
        if (base) *slots[i] = base + at;
        at += (M * sizes[i] * 4 + 63) / 64 * 64;  // room for float32, 64-byte aligned starts
    }
    return at;
}

// rows [n, row_bytes] of GGUF blocks of `type` -> out [n, K] float32 (dequant_row.h; exported
// for its test against quant/gguf_dequant.py); 0, or -1 for a type it does not take.
int minerva_step_dequant_rows(int type, const uint8_t *rows, int64_t n, int64_t row_bytes,
                              int64_t K, float *out) {
    for (int64_t i = 0; i < n; i++)
        if (dequant_row(type, rows + i * row_bytes, K, out + i * K)) return -1;
    return 0;
}

int minerva_step_dequant_supports(int type) {
    int64_t block, bytes;
    return dequant_row_geometry(type, &block, &bytes);
}

int64_t minerva_step_work_bytes(const step_model *m, int64_t M) {
    step_buffers b;
    return carve(m, M, NULL, &b);
}

// The GGUF groups of a layer, float32 rows: y [M, l->out] = x @ W^T (+ bias, one float add).
static int quantized(const step_model *m, const step_linear *l, const float *x, float *y,
                     float *tmp, int64_t M, int threads) {
    int64_t start = 0;
    for (int g = 0; g < l->n_groups; g++) {
        const step_group *gr = &l->groups[g];
        int rc;
        if (gr->kind == W_X8) {
            rc = m->k.x8(gr->type, gr->w, x, y + start, l->out, M, gr->rows, l->in, threads);
        } else if (gr->kind == W_FILE && (M == 1 || l->n_groups == 1)) {
            rc = m->k.qgemm(gr->type, gr->w, x, y + start, M, gr->rows, l->in, threads);
        } else if (gr->kind == W_FILE) {  // rows of the group apart in y: through tmp
            rc = m->k.qgemm(gr->type, gr->w, x, tmp, M, gr->rows, l->in, threads);
            for (int64_t r = 0; r < M; r++)
                memcpy(y + r * l->out + start, tmp + r * gr->rows, (size_t)gr->rows * 4);
        } else {
            return -1;
        }
        if (rc) return rc;
        start += gr->rows;
    }
    if (start != l->out) return -1;
    if (l->bias) {
        const float *bias = (const float *)l->bias;
        for (int64_t r = 0; r < M; r++)
            for (int64_t j = 0; j < l->out; j++) y[r * l->out + j] += bias[j];
    }
    return 0;
}

// y [M, l->out] = x [M, l->in] @ W^T (+ bias): a dense layer through the GEMV of the model
// dtype (bias inside, as F.linear), GGUF groups (float32 models only) group by group.
static int linear(const step_model *m, const step_linear *l, const void *x, void *y, void *tmp,
                  int64_t M, int threads) {
    if (l->n_groups == 1 && l->groups[0].kind == W_DENSE)
        return m->k.gemv(l->groups[0].w, x, l->bias, y, M, l->out, l->in, threads);
    if (m->dtype != D_F32) return -1;
    return quantized(m, l, (const float *)x, (float *)y, (float *)tmp, M, threads);
}

// ---- one OpenMP region per step ---------------------------------------------------------
// With several threads, the layers run inside one parallel region instead of one region per
// kernel (~5 per layer, each a fork, a join and ~3 futex syscalls in libgomp): every thread
// walks the same op list; the GEMVs and the attention run in their kernels' team mode
// (threads < 0: each thread computes its share, see cpu_gemv.c) with a barrier of our own
// after each (team_wait: no syscall unless a thread had to sleep), RoPE and the KV write on
// thread 0, the norms and SiLU on every thread into its own copy (see layers): 6 barriers a
// layer.
// The kernels' values do not depend on how their work is shared out, so the logits are the
// same bits as the region-per-kernel path's (tests/model/test_cpu_decode_step.py runs both).

typedef struct {
    _Atomic int count, gen;  // the barrier: arrivals, and its generation (a futex word)
    _Atomic int sleepers;    // threads blocked on gen
    _Atomic int rc;          // the first failure of any thread (all threads finish every op)
    int nt;                  // threads in the region
} step_team;

#ifdef __linux__
static void gen_sleep(_Atomic int *gen, int seen) {
    syscall(SYS_futex, (int *)gen, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
}
static void gen_wake(_Atomic int *gen) {
    syscall(SYS_futex, (int *)gen, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}
#else
static void gen_sleep(_Atomic int *gen, int seen) { (void)gen, (void)seen, sched_yield(); }
static void gen_wake(_Atomic int *gen) { (void)gen; }
#endif

// Spin a few microseconds (the threads' shares end about together, and a wake-up syscall
// costs about one), then block: on a busy machine the thread we wait for may need this core.
// The last arrival makes a syscall only when someone sleeps (seq_cst on both sides: either it
// sees the sleeper, or the sleeper's futex wait sees the new generation and returns at once).
static void team_wait(step_team *tm) {
    const int gen = atomic_load_explicit(&tm->gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&tm->count, 1, memory_order_acq_rel) == tm->nt - 1) {
        atomic_store_explicit(&tm->count, 0, memory_order_relaxed);
        atomic_store(&tm->gen, gen + 1);
        if (atomic_load(&tm->sleepers)) gen_wake(&tm->gen);
        return;
    }
    for (int spins = 0; spins < 2048; spins++) {
        if (atomic_load_explicit(&tm->gen, memory_order_acquire) != gen) return;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    atomic_fetch_add(&tm->sleepers, 1);
    while (atomic_load(&tm->gen) == gen) gen_sleep(&tm->gen, gen);
    atomic_fetch_sub(&tm->sleepers, 1);
}

// Whether the layers can run in one region: the file-layout kernel (cpu_quant.c) has no team
// mode, nor has the bias add of a quantized layer (it follows the whole product).
static int team_fits(const step_linear *l) {
    for (int g = 0; g < l->n_groups; g++)
        if (l->groups[g].kind == W_FILE || (l->groups[g].kind == W_X8 && l->bias)) return 0;
    return 1;
}

static int team_step(const step_model *m) {
    if (!m->team || !team_fits(&m->head)) return 0;
    for (int64_t i = 0; i < m->layers; i++) {
        const step_layer *L = &m->layer[i];
        if (!team_fits(&L->qkv) || !team_fits(&L->o) || !team_fits(&L->gate_up) ||
            !team_fits(&L->down))
            return 0;
    }
    return 1;
}

// Whether a step of `threads` threads runs its layers in one region (for the tests)
int minerva_step_in_one_region(const step_model *m, int threads) {
#ifdef _OPENMP
    return threads > 1 && team_step(m);
#else
    (void)m, (void)threads, (void)team_step;  // no OpenMP: always a single thread
    return 0;
#endif
}

typedef struct {  // the step's inputs the layers read
    void *const *kv;
    int64_t num_blocks, block_size, M, bt_stride;
    const int64_t *positions, *slots;
    const int32_t *block_tables, *seq_lens;
} step_inputs;

// Each row's q and k heads RMS-normed in place where the layer has q_norm / k_norm (Qwen3),
// RoPE of them at the row's position, then k and v into the cache
static int rope_and_write(const step_model *m, const step_layer *L, const step_buffers *b,
                          const step_inputs *in, void *kv, int threads) {
    const int64_t H = m->heads, KV = m->kv_heads, D = m->head_dim;
    const int64_t qkv_w = (H + 2 * KV) * D, qk_w = (H + KV) * D;
    int rc = 0;
    for (int64_t r = 0; r < in->M && !rc; r++) {
        char *q = AT(b->qkv, m, r * qkv_w), *k = AT(b->qkv, m, r * qkv_w + H * D);
        if (L->q_norm) {
            rc = m->k.norm(q, NULL, L->q_norm, q, NULL, H, D, m->eps, threads);
            if (!rc) rc = m->k.norm(k, NULL, L->k_norm, k, NULL, KV, D, m->eps, threads);
        }
        if (!rc)
            rc = m->k.rope(q, AT(m->cos, m, in->positions[r] * D),
                           AT(m->sin, m, in->positions[r] * D), AT(b->qk, m, r * qk_w), 1,
                           H + KV, D, qkv_w, D, threads);
    }
    if (!rc)
        rc = m->k.write_kv(AT(b->qk, m, H * D), qk_w, AT(b->qkv, m, qk_w), qkv_w, kv,
                           in->num_blocks * in->block_size, KV * D, in->slots, in->M);
    return rc;
}

// This thread's own copies (team threads but thread 0): the normed rows, the residual it
// computes alongside (thrown away) and the SiLU product; NULL if out of memory.
static char *private_rows(int64_t bytes) {
    static __thread char *buf = NULL;
    static __thread int64_t cap = 0;
    if (bytes > cap) {
        free(buf);
        buf = (char *)malloc((size_t)bytes);
        cap = buf ? bytes : 0;
    }
    return buf;
}

// The layers and the final norm over b->res (the embeddings). tm: NULL (one thread, or a
// region per kernel), or this thread's team (in its region); *xn_out: where this thread's
// normed last hidden rows are (b->xn, or in a team thread's own copy).
//
// In a team, the norms and the SiLU run on every thread, each into its own copy of the
// output (thread 0's are the shared buffers), so the products that read them need no barrier
// first; the norm's new residual goes to the other of res / res2 (thread 0's write; the others
// write their own copy), as nobody may write the residual others still read.
static int layers(const step_model *m, const step_buffers *b, const step_inputs *in,
                  int threads, step_team *tm, void **xn_out) {
    const int64_t H = m->heads, KV = m->kv_heads, D = m->head_dim, hid = m->hidden, M = in->M;
    const int64_t qk_w = (H + KV) * D;
    int t = 0;
#ifdef _OPENMP
    if (tm) t = omp_get_thread_num();
#endif
    const int split = tm ? -tm->nt : threads;  // the GEMVs' and the attention's threads
    const int glue = tm ? 1 : threads;          // the glue's (one thread's alone in a team)
    int rc = 0;
    char *res = b->res, *res_next = tm ? b->res2 : b->res, *res_mine = res_next;
    char *xn = b->xn, *act = b->act;
    if (tm && t > 0) {
        const int64_t rows = (M * hid * 4 + 63) / 64 * 64;
        char *own = private_rows(2 * rows + M * m->intermediate * 4);
        if (own) {
            xn = own, res_mine = own + rows, act = own + 2 * rows;
        } else {
            int zero = 0;
            atomic_compare_exchange_strong(&tm->rc, &zero, -1);
        }
    }
// one op on every thread, each its share (SPLIT) or all of it (ALL), or on thread 0 (ONE);
// in a team a barrier follows SPLIT and ONE
#define FAILED() (tm ? atomic_load_explicit(&tm->rc, memory_order_relaxed) : rc)
#define NOTE(call)                                                                             \
    do {                                                                                       \
        int r_ = (call);                                                                       \
        if (r_ && tm) {                                                                        \
            int zero = 0;                                                                      \
            atomic_compare_exchange_strong(&tm->rc, &zero, r_);                                \
        }                                                                                      \
        if (r_) rc = r_;                                                                       \
    } while (0)
#define SPLIT(call)                                                                            \
    do {                                                                                       \
        if (!FAILED()) NOTE(call);                                                             \
        if (tm) team_wait(tm);                                                                 \
    } while (0)
#define ALL(call)                                                                              \
    do {                                                                                       \
        if (!FAILED()) NOTE(call);                                                             \
    } while (0)
#define ONE(call)                                                                              \
    do {                                                                                       \
        if (t == 0 && !FAILED()) NOTE(call);                                                   \
        if (tm) team_wait(tm);                                                                 \
    } while (0)
// x + residual -> normed xn, new residual (in place without a team)
#define NORM(w)                                                                                \
    do {                                                                                       \
        ALL(m->k.norm(b->x, res, (w), xn, t == 0 ? res_next : res_mine, M, hid, m->eps, glue)); \
        char *swap_ = res;                                                                     \
        res = res_next, res_next = tm ? swap_ : res_next;                                      \
    } while (0)
    ALL(m->k.norm(b->res, NULL, m->layer[0].in_norm, xn, NULL, M, hid, m->eps, glue));
    for (int64_t i = 0; i < m->layers; i++) {  // every thread runs every op: same barriers
        const step_layer *L = &m->layer[i];
        if (i > 0) NORM(L->in_norm);
        SPLIT(linear(m, &L->qkv, xn, b->qkv, b->tmp, M, split));
        ONE(rope_and_write(m, L, b, in, in->kv[i], glue));
        SPLIT(m->k.attend(b->qk, qk_w, in->kv[i], in->num_blocks, in->block_size, KV, D,
                          in->block_tables, in->bt_stride, in->seq_lens, M, H, m->scale,
                          L->window, b->att, split));
        SPLIT(linear(m, &L->o, b->att, b->x, b->tmp, M, split));
        NORM(L->post_norm);
        SPLIT(linear(m, &L->gate_up, xn, b->gate_up, b->tmp, M, split));
        ALL(m->k.silu_mul(b->gate_up, act, M, m->intermediate, glue));
        SPLIT(linear(m, &L->down, act, b->x, b->tmp, M, split));
    }
    NORM(m->final_norm);
#undef NORM
#undef ONE
#undef ALL
#undef SPLIT
#undef NOTE
#undef FAILED
    *xn_out = xn;
    return tm ? atomic_load(&tm->rc) : rc;
}

// x [M, hidden]: the rows' embeddings, or NULL: the step gathers rows `ids` [M] int64 of
// m->embed (F.embedding, a copy; GGUF blocks dequantized); kv [layers]: each layer's cache
// [2, num_blocks, block_size, kv_heads, head_dim] (the attention kernels' dtype); positions, slots
// [M] int64; block_tables [M, bt_stride] and seq_lens [M] int32 (after this step's token);
// logits [M, vocab] float32; work: minerva_step_work_bytes. 0 on success; nonzero if an
// argument is out of range or a kernel failed (the caller then runs the layered path, which
// rewrites the same KV slots with the same values).
int minerva_decode_step(const step_model *m, void *const *kv, int64_t num_blocks,
                        int64_t block_size, const void *x, const int64_t *ids, int64_t M,
                        const int64_t *positions,
                        const int64_t *slots, const int32_t *block_tables, int64_t bt_stride,
                        const int32_t *seq_lens, float *logits, void *work, int threads) {
    if (M < 1 || threads < 1 || num_blocks < 1 || block_size < 1) return -1;
    for (int64_t r = 0; r < M; r++)
        if (positions[r] < 0 || positions[r] >= m->max_positions || seq_lens[r] < 1 ||
            (seq_lens[r] + block_size - 1) / block_size > bt_stride)
            return -1;
    step_buffers b;
    carve(m, M, (char *)work, &b);
    const int64_t hid = m->hidden;
    if (x) {
        memcpy(b.res, x, (size_t)(M * hid * ES(m)));  // the residual stream: the embeddings
    } else {
        if (!m->embed || !ids) return -1;
        for (int64_t r = 0; r < M; r++) {
            if (ids[r] < 0 || ids[r] >= m->embed_rows) return -1;  // F.embedding raises
            if (!m->embed_type) {
                memcpy(AT(b.res, m, r * hid), AT(m->embed, m, ids[r] * hid), (size_t)(hid * ES(m)));
                continue;
            }
            // GGUF blocks (models/embedding.py): dequantized to float32, then the model dtype
            const uint8_t *row = (const uint8_t *)m->embed + ids[r] * m->embed_row_bytes;
            float *f = m->dtype == D_F32 ? (float *)AT(b.res, m, r * hid) : (float *)b.tmp;
            if (dequant_row(m->embed_type, row, hid, f)) return -1;
            uint16_t *h = (uint16_t *)AT(b.res, m, r * hid);
            for (int64_t j = 0; m->dtype != D_F32 && j < hid; j++) {
#if HAVE_F16
                h[j] = m->dtype == D_BF16 ? f32_to_bf16(f[j]) : f32_to_f16(f[j]);
#else
                if (m->dtype != D_BF16) return -1;
                h[j] = f32_to_bf16(f[j]);
#endif
            }
        }
    }
    const step_inputs in = {kv, num_blocks, block_size, M, bt_stride, positions, slots,
                            block_tables, seq_lens};
    int rc;
#ifdef _OPENMP
    if (threads > 1 && team_step(m)) {
        step_team tm;
        atomic_init(&tm.count, 0), atomic_init(&tm.gen, 0), atomic_init(&tm.rc, 0);
        atomic_init(&tm.sleepers, 0);
        tm.nt = 1;
#pragma omp parallel num_threads(threads)
        {
#pragma omp single
            tm.nt = omp_get_num_threads();  // (the runtime may give fewer than asked)
            void *xn;
            layers(m, &b, &in, threads, &tm, &xn);
            // the head too: every thread its share of the vocabulary rows, from its own xn
            if (!atomic_load(&tm.rc)) {
                int r = m->dtype == D_F32 ? linear(m, &m->head, xn, logits, b.tmp, M, -tm.nt)
                                          : linear(m, &m->head, xn, b.tmp, NULL, M, -tm.nt);
                int zero = 0;
                if (r) atomic_compare_exchange_strong(&tm.rc, &zero, r);
            }
        }  // (the region's end waits for every share)
        rc = atomic_load(&tm.rc);
        if (rc || m->dtype == D_F32) return rc;
    } else
#endif
    {
        void *xn;
        rc = layers(m, &b, &in, threads, NULL, &xn);
        if (rc) return rc;
        if (m->dtype == D_F32) return linear(m, &m->head, b.xn, logits, b.tmp, M, threads);
        // half precision: the head's output in the model dtype (tmp: M x vocab), then widened
        rc = linear(m, &m->head, b.xn, b.tmp, NULL, M, threads);
        if (rc) return rc;
    }
    const uint16_t *h = (const uint16_t *)b.tmp;  // widened as the layered path's .float()
    for (int64_t i = 0; i < M * m->vocab; i++) {
#if HAVE_F16
        logits[i] = m->dtype == D_BF16 ? f32_of_bf16(h[i]) : f32_of_f16(h[i]);
#else
        if (m->dtype != D_BF16) return -1;
        logits[i] = f32_of_bf16(h[i]);
#endif
    }
    return 0;
}
