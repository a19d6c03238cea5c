// The layer glue of a CPU decode step in one call each: residual add + RMSNorm, RoPE and
// SiLU * mul.
//
// torch spends 5-10 us per small op on the CPU; a decode step of a 30-layer model runs hundreds
// of them. These do the same arithmetic in one pass with the same roundings as the torch path
// in layers.py / rope.py (which follows transformers): in bf16/fp16 the residual sum is rounded
// before it is normalised, the normalised value before the weight multiplies it, and x * cos
// before the rotated half is added. Whole vectors of simd.h (whose 16-bit stores round as the
// scalar conversions do); the tails one element at a time.
// Built and loaded by minerva.ops.native (see ops/cpu_ops.py).

#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "simd.h"
#include "silu_mul_row.h"

// Work below this many elements runs on the calling thread (a fork costs microseconds).
#define PARALLEL_MIN (1 << 15)

// IS_F32: fp32 keeps every intermediate in fp32 (no rounding steps to emulate). Whole vectors
// go through simd.h (vround_T rounds a lane as f32_to_T does); the tails run the same steps
// one element at a time.
#define DEFINE_GLUE(T, SUFFIX, IS_F32)                                                           \
    /* out = w * norm(x + res); res_out = x + res. res / res_out may be NULL (no residual). */   \
    int minerva_add_rms_norm_##SUFFIX(const T *x, const T *res, const T *w, T *out, T *res_out,  \
                                      int64_t rows, int64_t cols, float eps, int threads) {      \
        if (rows < 0 || cols < 1 || threads < 1) return -1;                                     \
        _Pragma("omp parallel for num_threads(threads) if (rows * cols >= PARALLEL_MIN)")       \
        for (int64_t i = 0; i < rows; i++) {                                                    \
            const T *xr = x + i * cols;                                                         \
            T *o = out + i * cols;                                                              \
            int64_t j = 0;                                                                      \
            if (res) {                                                                          \
                const T *rr = res + i * cols;                                                   \
                T *ro = res_out + i * cols;                                                     \
                for (j = 0; j + VL <= cols; j += VL)                                            \
                    store_##SUFFIX(ro + j, vadd(load_##SUFFIX(xr + j), load_##SUFFIX(rr + j))); \
                for (; j < cols; j++)                                                           \
                    ro[j] = f32_to_##SUFFIX(f32_of_##SUFFIX(xr[j]) + f32_of_##SUFFIX(rr[j]));  \
                xr = ro; /* normalise the new residual stream */                                \
            }                                                                                   \
            vec squares = vzero();                                                              \
            for (j = 0; j + VL <= cols; j += VL) {                                              \
                vec v = load_##SUFFIX(xr + j);                                                  \
                squares = vfma(v, v, squares);                                                  \
            }                                                                                   \
            float sum = vsum(squares);                                                          \
            for (; j < cols; j++) sum += f32_of_##SUFFIX(xr[j]) * f32_of_##SUFFIX(xr[j]);      \
            float inv = 1.0f / sqrtf(sum / (float)cols + eps);                                  \
            vec vinv = vset1(inv);                                                              \
            for (j = 0; j + VL <= cols; j += VL) {                                              \
                vec h = vround_##SUFFIX(vmul(load_##SUFFIX(xr + j), vinv));                     \
                store_##SUFFIX(o + j, vmul(load_##SUFFIX(w + j), h));                           \
            }                                                                                   \
            for (; j < cols; j++) {                                                             \
                float h = f32_of_##SUFFIX(xr[j]) * inv;                                         \
                if (!IS_F32) h = f32_of_##SUFFIX(f32_to_##SUFFIX(h));                           \
                o[j] = f32_to_##SUFFIX(f32_of_##SUFFIX(w[j]) * h);                              \
            }                                                                                   \
        }                                                                                       \
        return 0;                                                                               \
    }                                                                                           \
                                                                                                \
    /* out[t, h] = x[t, h] * cos[t] + roll(x[t, h], D / 2) * sin[t] (sin sign-folded), with x   \
       rows `x_row` apart and heads `x_head` apart; cos, sin [T, D]; out [T, H, D]. */          \
    int minerva_rope_##SUFFIX(const T *x, const T *cos, const T *sin, T *out, int64_t tokens,    \
                              int64_t heads, int64_t dim, int64_t x_row, int64_t x_head,         \
                              int threads) {                                                    \
        if (tokens < 0 || heads < 1 || dim < 2 || dim % 2 || threads < 1) return -1;           \
        int64_t half = dim / 2;                                                                 \
        int64_t whole = half % VL ? 0 : half; /* the vector loop needs whole halves */          \
        _Pragma("omp parallel for num_threads(threads) if (tokens * heads * dim >= PARALLEL_MIN)") \
        for (int64_t t = 0; t < tokens; t++) {                                                  \
            const T *c = cos + t * dim, *s = sin + t * dim;                                     \
            for (int64_t h = 0; h < heads; h++) {                                               \
                const T *xv = x + t * x_row + h * x_head;                                       \
                T *o = out + (t * heads + h) * dim;                                             \
                for (int64_t d = 0; d < whole; d += VL) {                                       \
                    vec lo = load_##SUFFIX(xv + d), hi = load_##SUFFIX(xv + d + half);          \
                    vec a = vround_##SUFFIX(vmul(lo, load_##SUFFIX(c + d)));                    \
                    vec b = vround_##SUFFIX(vmul(hi, load_##SUFFIX(c + d + half)));             \
                    store_##SUFFIX(o + d, vfma(hi, load_##SUFFIX(s + d), a));                     \
                    store_##SUFFIX(o + d + half, vfma(lo, load_##SUFFIX(s + d + half), b));       \
                }                                                                               \
                for (int64_t d = whole ? dim : 0; d < dim; d++) {                               \
                    float a = f32_of_##SUFFIX(xv[d]) * f32_of_##SUFFIX(c[d]);                   \
                    if (!IS_F32) a = f32_of_##SUFFIX(f32_to_##SUFFIX(a));                       \
                    float r = f32_of_##SUFFIX(xv[d < half ? d + half : d - half]);              \
                    o[d] = f32_to_##SUFFIX(fmaf(r, f32_of_##SUFFIX(s[d]), a)); /* as vfma */    \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
        return 0;                                                                               \
    }                                                                                           \
                                                                                                \
    /* out[t] = silu(gate[t]) * up[t] for gate_up [T, 2I] (gate | up); out [T, I]. In bf16 /     \
       fp16 silu is rounded before the product, as torch's F.silu(gate) * up. */                \
    int minerva_silu_mul_##SUFFIX(const T *gate_up, T *out, int64_t tokens, int64_t inter,      \
                                  int threads) {                                                \
        if (tokens < 0 || inter < 1 || threads < 1) return -1;                                  \
        _Pragma("omp parallel for num_threads(threads) if (tokens * inter >= PARALLEL_MIN)")    \
        for (int64_t t = 0; t < tokens; t++) {                                                  \
            const T *g = gate_up + t * 2 * inter;                                               \
            silu_mul_row_##SUFFIX(g, g + inter, out + t * inter, inter);                        \
        }                                                                                       \
        return 0;                                                                               \
    }

DEFINE_SILU_MUL_ROW(float, f32, 1)
DEFINE_SILU_MUL_ROW(uint16_t, bf16, 0)
DEFINE_GLUE(float, f32, 1)
DEFINE_GLUE(uint16_t, bf16, 0)
#if HAVE_F16
DEFINE_SILU_MUL_ROW(uint16_t, f16, 0)
DEFINE_GLUE(uint16_t, f16, 0)
#endif

int minerva_glue_has_f16(void) { return HAVE_F16; }
