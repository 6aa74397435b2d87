/* IEEE half and bfloat16 conversions (exact, round-to-nearest-even). */
#ifndef DS4_UTIL_HALF_H
#define DS4_UTIL_HALF_H

#include <stdint.h>
#include <string.h>

static inline float ds4_bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t ds4_f32_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float ds4_bf16_to_f32(uint16_t h) { return ds4_bits_to_f32((uint32_t)h << 16); }

static inline uint16_t ds4_f32_to_bf16(float f) {
    uint32_t u = ds4_f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float ds4_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24 is exact in float */
        float v = (float)man * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    if (exp == 31) return ds4_bits_to_f32(sign | 0x7f800000u | (man << 13));
    return ds4_bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

static inline uint16_t ds4_f32_to_f16(float f) {
    uint32_t u = ds4_f32_to_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;          /* NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00u;         /* overflow -> inf */
    if (a < 0x38800000u) {                               /* subnormal or zero */
        float v = ds4_bits_to_f32(a);
        /* round(v / 2^-24) with ties to even via the float adder */
        float scaled = v * 16777216.0f;
        uint32_t m = (uint32_t)scaled;
        float frac = scaled - (float)m;
        if (frac > 0.5f || (frac == 0.5f && (m & 1u))) m++;
        return sign | (uint16_t)m;
    }
    uint32_t exp = (a >> 23) - 112u;
    uint32_t man = a & 0x7fffffu;
    uint32_t h = (exp << 10) | (man >> 13);
    uint32_t rest = man & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return sign | (uint16_t)h;
}

#endif
