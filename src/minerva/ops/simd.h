// Shared by Minerva's C kernels: one float vector type and the few operations they need, for
// AVX-512 (F/BW/VL), AVX2+FMA+F16C, or plain C that the compiler vectorises (NEON); plus the
// scalar conversions of bf16 / fp16 to and from fp32. minerva.ops.native compiles each kernel with
// -march=native (x86) / -mcpu=native (arm64), which picks the branch below.

#ifndef MINERVA_SIMD_H
#define MINERVA_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 8")

// Eight floats rounded to bf16 (as f32_to_bf16 below: to nearest even, NaNs kept quiet) or to
// fp16, on any AVX2 CPU (the AVX2 branch's stores, and 8 x 8 blocks in cpu_gemm.c).
#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define HAVE_X8 1
INLINE __m256i bf16_bits8(__m256 v) {
    // each lane's bf16 in the top half of its 32 bits, the bottom half zero
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    __m256i quiet = _mm256_or_si256(u, _mm256_set1_epi32(0x400000));
    __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    r = _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(quiet), nan));
    return _mm256_and_si256(r, _mm256_set1_epi32((int)0xffff0000u));
}
INLINE __m128i bf16x8(__m256 v) {
    __m256i r = _mm256_srli_epi32(bf16_bits8(v), 16);  // < 2^16: the unsigned pack is exact
    __m256i packed = _mm256_packus_epi32(r, r);  // per 128-bit half: [r0-3 r0-3 | r4-7 r4-7]
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
}
INLINE __m128i f16x8(__m256 v) {
    return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define SIMD_PATH "avx512"
#define VL 16  // floats per vector
#define HAVE_F16 1
typedef __m512 vec;
INLINE vec vzero(void) { return _mm512_setzero_ps(); }
INLINE vec vset1(float v) { return _mm512_set1_ps(v); }
INLINE vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
INLINE vec vmul(vec a, vec b) { return _mm512_mul_ps(a, b); }
INLINE vec vmax(vec a, vec b) { return _mm512_max_ps(a, b); }
INLINE vec vmin(vec a, vec b) { return _mm512_min_ps(a, b); }
INLINE vec vdiv(vec a, vec b) { return _mm512_div_ps(a, b); }
INLINE vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
INLINE vec vround(vec a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT); }
INLINE vec vpow2i(vec n) {  // 2^n for whole n in [-126, 127]
    __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
}
INLINE float vsum(vec v) { return _mm512_reduce_add_ps(v); }
INLINE vec load_f32(const float *p) { return _mm512_loadu_ps(p); }
INLINE void store_f32(float *p, vec v) { _mm512_storeu_ps(p, v); }
INLINE vec load_bf16(const uint16_t *p) {  // bf16 is the top half of an fp32
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
INLINE vec load_f16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
INLINE __m512i bf16_bits(vec v) {  // f32_to_bf16 of each lane, in the top half of its 32 bits
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x400000));
    return _mm512_and_si512(r, _mm512_set1_epi32((int)0xffff0000u));
}
INLINE vec vround_bf16(vec v) { return _mm512_castsi512_ps(bf16_bits(v)); }
INLINE void store_bf16(uint16_t *p, vec v) {
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16_bits(v), 16)));
}
INLINE void store_f16(uint16_t *p, vec v) {
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
INLINE vec vround_f16(vec v) { return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)); }

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define SIMD_PATH "avx2"
#define SIMD_AVX2 1
#define VL 8
#define HAVE_F16 1
typedef __m256 vec;
INLINE vec vzero(void) { return _mm256_setzero_ps(); }
INLINE vec vset1(float v) { return _mm256_set1_ps(v); }
INLINE vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
INLINE vec vmul(vec a, vec b) { return _mm256_mul_ps(a, b); }
INLINE vec vmax(vec a, vec b) { return _mm256_max_ps(a, b); }
INLINE vec vmin(vec a, vec b) { return _mm256_min_ps(a, b); }
INLINE vec vdiv(vec a, vec b) { return _mm256_div_ps(a, b); }
INLINE vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
INLINE vec vround(vec a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT); }
INLINE vec vpow2i(vec n) {
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
}
INLINE float vsum(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
INLINE vec load_f32(const float *p) { return _mm256_loadu_ps(p); }
INLINE void store_f32(float *p, vec v) { _mm256_storeu_ps(p, v); }
INLINE vec load_bf16(const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
INLINE vec load_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
INLINE vec vround_bf16(vec v) { return _mm256_castsi256_ps(bf16_bits8(v)); }
INLINE void store_bf16(uint16_t *p, vec v) { _mm_storeu_si128((__m128i *)p, bf16x8(v)); }
INLINE void store_f16(uint16_t *p, vec v) { _mm_storeu_si128((__m128i *)p, f16x8(v)); }
INLINE vec vround_f16(vec v) { return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)); }

#else  // plain C: small fixed-size arrays the compiler maps onto its vector registers
#define SIMD_PATH "generic"
#define SIMD_GENERIC 1
#define VL 8
#if defined(__FLT16_MAX__) || defined(__ARM_FP16_FORMAT_IEEE)
#define HAVE_F16 1
#if defined(__FLT16_MAX__)
typedef _Float16 half_t;
#else
typedef __fp16 half_t;
#endif
#else
#define HAVE_F16 0
#endif
typedef struct {
    float v[VL];
} vec;
#define LANEWISE(expr)                                  \
    vec r;                                              \
    for (int i = 0; i < VL; i++) r.v[i] = (expr);       \
    return r
INLINE vec vzero(void) { LANEWISE(0.0f); }
INLINE vec vset1(float v) { LANEWISE(v); }
INLINE vec vadd(vec a, vec b) { LANEWISE(a.v[i] + b.v[i]); }
INLINE vec vmul(vec a, vec b) { LANEWISE(a.v[i] * b.v[i]); }
INLINE vec vmax(vec a, vec b) { LANEWISE(a.v[i] > b.v[i] ? a.v[i] : b.v[i]); }
INLINE vec vmin(vec a, vec b) { LANEWISE(a.v[i] < b.v[i] ? a.v[i] : b.v[i]); }
INLINE vec vdiv(vec a, vec b) { LANEWISE(a.v[i] / b.v[i]); }
INLINE vec vfma(vec a, vec b, vec c) { LANEWISE(a.v[i] * b.v[i] + c.v[i]); }
INLINE vec vround(vec a) { LANEWISE(__builtin_rintf(a.v[i])); }
INLINE float pow2i(float n) {
    int32_t bits = ((int32_t)n + 127) << 23;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
INLINE vec vpow2i(vec n) { LANEWISE(pow2i(n.v[i])); }
INLINE float vsum(vec a) {
    float s = 0.0f;
    for (int i = 0; i < VL; i++) s += a.v[i];
    return s;
}
INLINE vec load_f32(const float *p) {
    vec r;
    memcpy(r.v, p, sizeof r.v);
    return r;
}
INLINE void store_f32(float *p, vec v) { memcpy(p, v.v, sizeof v.v); }
INLINE vec load_bf16(const uint16_t *p) {
    vec r;
    for (int i = 0; i < VL; i++) {
        uint32_t u = (uint32_t)p[i] << 16;
        memcpy(&r.v[i], &u, 4);
    }
    return r;
}
#if HAVE_F16
INLINE vec load_f16(const uint16_t *p) {
    vec r;
    for (int i = 0; i < VL; i++) {
        half_t h;
        memcpy(&h, p + i, 2);
        r.v[i] = (float)h;
    }
    return r;
}
#endif
#endif

// out[j] = the sum of a[j]'s lanes, j < 8 (eight dot products' last step at once: AVX2 adds
// the vectors pairwise, 7 additions for 8 sums instead of 3 shuffles and adds each)
#ifdef SIMD_AVX2
INLINE void vsum8(const vec *a, float *out) {
    const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);  // 128-bit halves
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                                        _mm256_permute2f128_ps(u0, u1, 0x31)));
}
#else
INLINE void vsum8(const vec *a, float *out) {
    for (int j = 0; j < 8; j++) out[j] = vsum(a[j]);
}
#endif

// exp(x) for x <= 0 (e.g. scores minus their max): Cody-Waite reduction and the Cephes
// polynomial, within 2 ulp of expf; below -87 it returns ~1e-38 instead of underflowing.
INLINE vec vexp_neg(vec x) {
    x = vmax(x, vset1(-87.0f));
    vec n = vround(vmul(x, vset1(1.44269504088896341f)));
    vec r = vfma(n, vset1(-0.693359375f), x);
    r = vfma(n, vset1(2.12194440e-4f), r);
    vec p = vset1(1.9875691500e-4f);
    p = vfma(p, r, vset1(1.3981999507e-3f));
    p = vfma(p, r, vset1(8.3334519073e-3f));
    p = vfma(p, r, vset1(4.1665795894e-2f));
    p = vfma(p, r, vset1(1.6666665459e-1f));
    p = vfma(p, r, vset1(5.0000001201e-1f));
    p = vfma(vmul(p, r), r, vadd(r, vset1(1.0f)));
    return vmul(p, vpow2i(n));
}

// silu(x) = x / (1 + exp(-x)), exp through vexp_neg's polynomial (valid up to 2^127 for the
// positive arguments of x >= -88; below that silu is -0 within float precision anyway).
INLINE vec vsilu(vec x) {
    vec e = vexp_neg(vmin(vmul(x, vset1(-1.0f)), vset1(88.0f)));
    return vdiv(x, vadd(vset1(1.0f), e));
}

// ---- scalar conversions ---------------------------------------------------------------------

INLINE float f32_of_f32(float v) { return v; }
INLINE float f32_to_f32(float v) { return v; }
INLINE float f32_of_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
INLINE uint16_t f32_to_bf16(float f) {  // round to nearest even; NaNs stay quiet NaNs
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
#if HAVE_F16
#if defined(__F16C__)
INLINE float f32_of_f16(uint16_t h) { return _cvtsh_ss(h); }
INLINE uint16_t f32_to_f16(float f) { return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
#else
INLINE float f32_of_f16(uint16_t h) {
    half_t v;
    memcpy(&v, &h, 2);
    return (float)v;
}
INLINE uint16_t f32_to_f16(float f) {
    half_t v = (half_t)f;
    uint16_t h;
    memcpy(&h, &v, 2);
    return h;
}
#endif
#endif

// ---- vector stores into 16-bit types, and round trips through them (x86 above; here the
// lanes go through the scalar conversions). vround_T(v): v rounded to T's precision, in fp32.

INLINE vec vround_f32(vec v) { return v; }
#ifdef SIMD_GENERIC
INLINE vec vround_bf16(vec a) { LANEWISE(f32_of_bf16(f32_to_bf16(a.v[i]))); }
INLINE void store_bf16(uint16_t *p, vec v) {
    for (int i = 0; i < VL; i++) p[i] = f32_to_bf16(v.v[i]);
}
#if HAVE_F16
INLINE vec vround_f16(vec a) { LANEWISE(f32_of_f16(f32_to_f16(a.v[i]))); }
INLINE void store_f16(uint16_t *p, vec v) {
    for (int i = 0; i < VL; i++) p[i] = f32_to_f16(v.v[i]);
}
#endif
#endif

// ---- per-thread scratch memory, grown on demand and kept --------------------------------------

#include <stdlib.h>
INLINE float *thread_scratch(int64_t n) {
    static __thread float *buf = NULL;
    static __thread int64_t cap = 0;
    if (n > cap) {
        free(buf);
        buf = (float *)malloc((size_t)n * sizeof(float));
        cap = buf ? n : 0;
    }
    return buf;
}

#endif
