// IQ4_NL / IQ4_XS facts shared by the C kernels (cpu_quant.c, cpu_quant_x8.c, dequant_row.h):
// the codebook a 4-bit index stands for (quant/gguf_types.py's IQ4_CODEBOOK, ggml's
// kvalues_iq4nl) and an IQ4_XS block's 6-bit sub-block scales.

#ifndef MINERVA_IQ4_H
#define MINERVA_IQ4_H

#include <stdint.h>

static const int8_t IQ4_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                      1,    13,   25,  38,  53,  69,  89,  113};

// IQ4_XS block (fp16 d, scales_h, scales_l[4], qs[128]): sub-block j's scale as stored, 0-63
// (4 low bits in scales_l, 2 high in scales_h); its value is the stored one - 32
static inline int iq4xs_scale_bits(const uint8_t *blk, const int j) {
    const int high = ((blk[2] | blk[3] << 8) >> (2 * j)) & 3;
    return ((blk[4 + j / 2] >> (4 * (j & 1))) & 15) | high << 4;
}

#endif
