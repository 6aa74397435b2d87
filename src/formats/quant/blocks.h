/* Byte layouts of the quantized block formats (ggml-compatible) and the
 * small decoding helpers every consumer shares: the quantizers, the
 * dequantizers, the dot kernels and the tests all read a block through these
 * definitions and nothing else, so a layout is described exactly once.
 *
 * All fp16 fields are IEEE half stored little-endian; blocks are packed
 * back-to-back inside a row. A row pointer must be aligned to its block
 * struct's alignment (2 bytes for the fp16-scaled formats, 4 for Q8_K). */
#ifndef DS4_FORMATS_QUANT_BLOCKS_H
#define DS4_FORMATS_QUANT_BLOCKS_H

#include <stdint.h>
#include <string.h>

#include "util/half.h"

#define DS4_QK8_0 32   /* values per Q8_0 block */
#define DS4_QK_K 256   /* values per K-quant / IQ2 super-block */
#define DS4_QK_MXFP4 32

/* Q8_0: value = d * qs[i]. */
typedef struct {
    uint16_t d;
    int8_t qs[DS4_QK8_0];
} ds4_block_q8_0;
_Static_assert(sizeof(ds4_block_q8_0) == 34, "Q8_0 block is 34 bytes");

/* Q2_K: 16 sub-blocks of 16. scales[k] low nibble = scale code, high nibble
 * = min code; value = d*(scales[k]&15)*q - dmin*(scales[k]>>4), q in 0..3.
 * qs packs four 2-bit values per byte; see ds4_q2k_q(). */
typedef struct {
    uint8_t scales[DS4_QK_K / 16];
    uint8_t qs[DS4_QK_K / 4];
    uint16_t d;
    uint16_t dmin;
} ds4_block_q2_K;
_Static_assert(sizeof(ds4_block_q2_K) == 84, "Q2_K block is 84 bytes");

/* Q4_K: 8 sub-blocks of 32 with 6-bit scale and min codes packed into 12
 * bytes (ds4_q4k_scale_min / ds4_q4k_pack_scales); value = d*sc*q - dmin*m,
 * q in 0..15. */
typedef struct {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qs[DS4_QK_K / 2];
} ds4_block_q4_K;
_Static_assert(sizeof(ds4_block_q4_K) == 144, "Q4_K block is 144 bytes");

/* Q8_K: activation-only format (never stored in files). value = d * qs[i];
 * bsums[k] = sum of qs[16k .. 16k+15], which lets the K-quant kernels fold
 * the per-sub-block minimum in with one multiply per sub-block. ds4's own
 * quantizer keeps qs in [-127, 127] (the SIMD kernels rely on it). */
typedef struct {
    float d;
    int8_t qs[DS4_QK_K];
    int16_t bsums[DS4_QK_K / 16];
} ds4_block_q8_K;
_Static_assert(sizeof(ds4_block_q8_K) == 292, "Q8_K block is 292 bytes");

/* IQ2_XXS: 8 groups of 32 values, each 8 bytes: bytes 0..3 index the
 * 256-entry grid (8 magnitudes each); bytes 4..7 are a little-endian u32
 * holding four 7-bit sign indices (bits 7k..7k+6) and a 4-bit scale (bits
 * 28..31). value = d*(0.5+scale)*0.25 * grid * sign. */
typedef struct {
    uint16_t d;
    uint8_t qs[DS4_QK_K / 4];
} ds4_block_iq2_xxs;
_Static_assert(sizeof(ds4_block_iq2_xxs) == 66, "IQ2_XXS block is 66 bytes");

/* MXFP4 (ggml block_mxfp4): shared E8M0 exponent, then 16 bytes of E2M1
 * codes in split-half order: qs[j] low nibble = value j, high nibble =
 * value j+16. */
typedef struct {
    uint8_t e;
    uint8_t qs[DS4_QK_MXFP4 / 2];
} ds4_block_mxfp4;
_Static_assert(sizeof(ds4_block_mxfp4) == 17, "MXFP4 block is 17 bytes");

/* ---- tables (facts of the formats; defined in iq2_tables.c / mxfp4.c) ---- */

/* E2M1 code -> value times two (so every value is an integer); codes 8..15
 * are the negatives of 0..7. */
extern const int8_t ds4_e2m1_x2[16];
/* IQ2_XXS grid: entry g holds the 8 magnitudes (each 8, 25 or 43). */
extern const uint8_t ds4_iq2xxs_grid[256][8];
/* 7-bit sign index -> 8 sign bits; bit 7 is the parity of the other seven,
 * so every group of 8 has an even number of negated values. */
extern const uint8_t ds4_iq2_signs[128];
/* Same signs expanded to one int8 (+1 or -1) per value, for kernels that
 * apply signs by multiplication. */
extern const int8_t ds4_iq2_sign_pm1[128][8];

/* The three magnitudes of the IQ2_XXS grid, indexed by level 0..2. */
#define DS4_IQ2XXS_LEVEL0 8
#define DS4_IQ2XXS_LEVEL1 25
#define DS4_IQ2XXS_LEVEL2 43

/* ---- field accessors ---- */

static inline float ds4_q_half(uint16_t h) { return ds4_f16_to_f32(h); }

/* Q2_K: the 2-bit value of element i (0..255) of a block. Elements come in
 * two halves of 128; within a half, 32 consecutive values share bit pair
 * 2s..2s+1 of bytes qs[32h .. 32h+31]. Sub-block of element i is i/16. */
static inline int ds4_q2k_q(const uint8_t *qs, int i) {
    int h = i >> 7, s = (i >> 5) & 3, l = i & 31;
    return (qs[32 * h + l] >> (2 * s)) & 3;
}

/* Q4_K: the 4-bit value of element i. Chunk c = i/64 uses qs[32c .. 32c+31]:
 * low nibbles are elements 64c..64c+31, high nibbles 64c+32..64c+63. */
static inline int ds4_q4k_q(const uint8_t *qs, int i) {
    int c = i >> 6, l = i & 31;
    return (i & 32) ? qs[32 * c + l] >> 4 : qs[32 * c + l] & 15;
}

/* Q4_K: 6-bit scale and min codes of sub-block j (0..7). The first four
 * sub-blocks use the low 6 bits of bytes 0..3 (scales) and 4..7 (mins); the
 * last four keep their low nibbles in bytes 8..11 and borrow the top two
 * bits of bytes 0..3 (scale) and 4..7 (min). */
static inline void ds4_q4k_scale_min(const uint8_t *sc12, int j, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = sc12[j] & 63;
        *m = sc12[j + 4] & 63;
    } else {
        *sc = (uint8_t)((sc12[j + 4] & 15) | ((sc12[j - 4] >> 6) << 4));
        *m = (uint8_t)((sc12[j + 4] >> 4) | ((sc12[j] >> 6) << 4));
    }
}

/* The same unpacking for all 8 sub-blocks at once, four codes per 32-bit
 * word (byte j of sc[0]:sc[1] is sc_j, likewise m): word-wide masks and
 * shifts instead of 16 byte accesses, for the kernels. */
static inline void ds4_q4k_unpack_scales(const uint8_t *sc12, uint32_t sc[2], uint32_t m[2]) {
    uint32_t w0, w1, w2;
    memcpy(&w0, sc12, 4);
    memcpy(&w1, sc12 + 4, 4);
    memcpy(&w2, sc12 + 8, 4);
    sc[0] = w0 & 0x3f3f3f3fu;
    m[0] = w1 & 0x3f3f3f3fu;
    sc[1] = (w2 & 0x0f0f0f0fu) | ((w0 >> 2) & 0x30303030u);
    m[1] = ((w2 >> 4) & 0x0f0f0f0fu) | ((w1 >> 2) & 0x30303030u);
}

/* Inverse of ds4_q4k_scale_min for all 8 sub-blocks (codes must be < 64). */
static inline void ds4_q4k_pack_scales(uint8_t sc12[12], const uint8_t sc[8], const uint8_t m[8]) {
    for (int j = 0; j < 4; j++) {
        sc12[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        sc12[j + 4] = (uint8_t)((m[j] & 63) | ((m[j + 4] >> 4) << 6));
        sc12[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
    }
}

/* IQ2_XXS group ib (0..7): the four grid indices and the packed sign/scale
 * word. */
static inline uint32_t ds4_iq2xxs_aux(const ds4_block_iq2_xxs *b, int ib) {
    uint32_t w;
    memcpy(&w, b->qs + 8 * ib + 4, 4);
    return w;
}

/* E8M0 exponent byte e -> 2^(e-128), i.e. half of the block scale 2^(e-127);
 * it pairs with ds4_e2m1_x2 (doubled values). e = 0 and 1 land in the
 * float subnormal range and are built directly from bits so that no
 * library call or flush-to-zero can change them; 255 gives 2^127 (the
 * format's NaN is not special-cased, matching ggml). */
static inline float ds4_e8m0_half(uint8_t e) {
    uint32_t bits = e < 2 ? (uint32_t)0x00200000u << e : (uint32_t)(e - 1) << 23;
    return ds4_bits_to_f32(bits);
}

#endif
