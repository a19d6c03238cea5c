// softmax_row: one row of attention scores normalised in place, in fp32, with simd.h's
// vectors; the CPU decode and prefill attention kernels share it (included after simd.h).
#ifndef MINERVA_SOFTMAX_ROW_H
#define MINERVA_SOFTMAX_ROW_H

#include <math.h>
#include <stdint.h>

// x[0:n] = softmax(x[0:n]) in place, in fp32 (n >= 1).
static void softmax_row(float *x, int64_t n) {
    vec topv = vset1(-INFINITY);
    int64_t j = 0;
    for (; j + VL <= n; j += VL) topv = vmax(topv, load_f32(x + j));
    float top = -INFINITY, lanes[VL];
    store_f32(lanes, topv);
    for (int l = 0; l < VL; l++) top = lanes[l] > top ? lanes[l] : top;
    for (; j < n; j++) top = x[j] > top ? x[j] : top;
    vec minus_top = vset1(-top), sum = vzero();
    for (j = 0; j + VL <= n; j += VL) {
        vec e = vexp_neg(vadd(load_f32(x + j), minus_top));
        store_f32(x + j, e);
        sum = vadd(sum, e);
    }
    float total = vsum(sum);
    if (j < n) {  // the tail through one padded vector
        float tail[VL];
        for (int l = 0; l < VL; l++) tail[l] = j + l < n ? x[j + l] - top : 0.0f;
        store_f32(tail, vexp_neg(load_f32(tail)));
        for (int l = 0; j < n; j++, l++) x[j] = tail[l], total += tail[l];
    }
    vec inv = vset1(1.0f / total);
    for (j = 0; j + VL <= n; j += VL) store_f32(x + j, vmul(load_f32(x + j), inv));
    for (; j < n; j++) x[j] *= 1.0f / total;
}

#endif
