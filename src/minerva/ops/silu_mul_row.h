// One row of SiLU * mul in bf16 / fp16 / fp32: o[i] = silu(g[i]) * u[i], i < inter. In bf16 /
// fp16 silu is rounded before the product, as torch's F.silu(gate) * up. Shared by cpu_glue.c
// (the layer glue) and cpu_gemm.c (the same step fused into the gate_up product's output), so
// the two give the same bits by construction.

#ifndef MINERVA_SILU_MUL_ROW_H
#define MINERVA_SILU_MUL_ROW_H

#include "simd.h"

// IS_F32: fp32 keeps silu unrounded. Whole vectors through simd.h (vround_T rounds a lane as
// f32_to_T does); the tail as one partial vector, so that every lane sees the same vsilu.
#define DEFINE_SILU_MUL_ROW(T, SUFFIX, IS_F32)                                                  \
    INLINE void silu_mul_row_##SUFFIX(const T *g, const T *u, T *o, int64_t inter) {          \
        float s[VL];                                                                           \
        int64_t i = 0;                                                                         \
        for (; i + VL <= inter; i += VL) {                                                     \
            vec a = vround_##SUFFIX(vsilu(load_##SUFFIX(g + i)));                              \
            store_##SUFFIX(o + i, vmul(a, load_##SUFFIX(u + i)));                              \
        }                                                                                      \
        if (i == inter) return;                                                                \
        int64_t n = inter - i;                                                                 \
        for (int64_t l = 0; l < VL; l++) s[l] = l < n ? f32_of_##SUFFIX(g[i + l]) : 0.0f;      \
        store_f32(s, vsilu(load_f32(s)));                                                      \
        for (int64_t l = 0; l < n; l++) {                                                      \
            float a = IS_F32 ? s[l] : f32_of_##SUFFIX(f32_to_##SUFFIX(s[l]));                  \
            o[i + l] = f32_to_##SUFFIX(a * f32_of_##SUFFIX(u[i + l]));                         \
        }                                                                                      \
    }

#endif
