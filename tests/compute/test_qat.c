/* The official quantisation simulations on known values. */
#include <math.h>
#include <stdlib.h>

#include "compute/ops.h"
#include "harness.h"

/* Every finite e4m3fn magnitude, built from its bit fields (independent of
 * the rounding code under test). */
static int e4m3_values(float *out) {
    int n = 0;
    for (int e = 0; e < 16; e++)
        for (int m = 0; m < 8; m++) {
            if (e == 15 && m == 7) continue; /* NaN code */
            out[n++] = e == 0 ? ldexpf((float)m, -9) : ldexpf(1.0f + m / 8.0f, e - 7);
        }
    return n;
}

static void test_e4m3(void) {
    float v[128];
    int n = e4m3_values(v);
    CHECK(n == 127 && v[n - 1] == 448.0f);
    for (int i = 0; i < n; i++) {
        CHECKF(ds4_e4m3_round(v[i]) == v[i], "code value %g must be kept", v[i]);
        CHECK(ds4_e4m3_round(-v[i]) == -v[i]);
        if (i + 1 < n) {
            float mid = 0.5f * (v[i] + v[i + 1]);
            /* ties go to the even code; index i is the code itself */
            float want = i % 2 == 0 ? v[i] : v[i + 1];
            CHECKF(ds4_e4m3_round(mid) == want, "tie %g -> %g, want %g", mid, ds4_e4m3_round(mid), want);
            float below = nextafterf(mid, 0), above = nextafterf(mid, 1000);
            CHECK(ds4_e4m3_round(below) == v[i]);
            CHECK(ds4_e4m3_round(above) == v[i + 1]);
        }
    }
    CHECK(ds4_e4m3_round(1000.0f) == 448.0f);
    CHECK(ds4_e4m3_round(-1e9f) == -448.0f);
    CHECK(ds4_e4m3_round(0x1p-11f) == 0.0f); /* a quarter step rounds to zero */
}

static void test_e2m1(void) {
    const float grid[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
    for (int c = 0; c < 8; c++) CHECK(ds4_e2m1_round(grid[c]) == grid[c] && ds4_e2m1_round(-grid[c]) == -grid[c]);
    /* Ties go to the even code: 0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4. */
    const float ties[7][2] = {{0.25f, 0}, {0.75f, 1}, {1.25f, 1}, {1.75f, 2}, {2.5f, 2}, {3.5f, 4}, {5.0f, 4}};
    for (int i = 0; i < 7; i++) CHECKF(ds4_e2m1_round(ties[i][0]) == ties[i][1], "tie %g", ties[i][0]);
    CHECK(ds4_e2m1_round(2.6f) == 3.0f);
    CHECK(ds4_e2m1_round(100.0f) == 6.0f);
}

static void test_block_sims(void) {
    /* A block whose maximum is 448 * 2^k keeps scale 2^k exactly: values on
     * the e4m3 grid times the scale survive unchanged. */
    float v[64], w[64];
    for (int i = 0; i < 64; i++) v[i] = w[i] = ldexpf(1.0f + (i % 8) / 8.0f, (i % 5) - 2) * 4.0f;
    v[0] = w[0] = 448.0f * 4.0f;
    ds4_fp8_sim(v, 64, 64);
    for (int i = 0; i < 64; i++) CHECKF(v[i] == w[i], "fp8 sim changed exact value %g -> %g", w[i], v[i]);
    /* Scale from the block maximum: amax 3 -> scale 2^ceil(log2(3/448)) = 2^-7. */
    float x[2] = {3.0f, 0.01f};
    ds4_fp8_sim(x, 2, 64);
    CHECK(x[0] == 3.0f);
    CHECK(fabsf(x[1] - ds4_e4m3_round(0.01f * 128.0f) / 128.0f) == 0);
    /* FP4: block max 6 -> scale 1 -> plain e2m1 rounding. */
    float y[32];
    for (int i = 0; i < 32; i++) y[i] = (float)i / 5.0f;
    y[31] = 6.0f;
    float z[32];
    for (int i = 0; i < 32; i++) z[i] = y[i];
    ds4_fp4_sim(y, 32, 32);
    for (int i = 0; i < 32; i++) CHECKF(y[i] == ds4_e2m1_round(z[i]), "fp4 %d: %g", i, y[i]);
    /* Zero blocks stay zero (the amax floor prevents a zero scale). */
    float zero[32] = {0};
    ds4_fp4_sim(zero, 32, 32);
    ds4_fp8_sim(zero, 32, 64);
    for (int i = 0; i < 32; i++) CHECK(zero[i] == 0.0f);
}

static void test_hadamard(void) {
    /* Orthonormal: H applied twice is the identity, norms are kept, and the
     * first row is the scaled all-ones vector. */
    for (uint32_t n = 2; n <= 128; n *= 2) {
        float v[128], orig[128];
        double norm0 = 0, norm1 = 0;
        srand(n);
        for (uint32_t i = 0; i < n; i++) {
            orig[i] = v[i] = (float)((double)rand() / RAND_MAX - 0.5);
            norm0 += (double)v[i] * v[i];
        }
        ds4_hadamard(v, n);
        for (uint32_t i = 0; i < n; i++) norm1 += (double)v[i] * v[i];
        CHECKF(fabs(norm0 - norm1) < 1e-5 * norm0, "n=%u norm", n);
        ds4_hadamard(v, n);
        for (uint32_t i = 0; i < n; i++) CHECKF(fabsf(v[i] - orig[i]) < 1e-5f, "n=%u involution", n);
        float e[128] = {0};
        e[0] = 1;
        ds4_hadamard(e, n);
        for (uint32_t i = 0; i < n; i++) CHECKF(fabsf(e[i] - 1.0f / sqrtf((float)n)) < 1e-6f, "n=%u first column", n);
    }
    /* Sylvester order: entry (i, j) of H is (-1)^popcount(i & j). */
    float e[8] = {0};
    e[3] = 1;
    ds4_hadamard(e, 8);
    for (int i = 0; i < 8; i++) CHECK(e[i] == (__builtin_popcount(i & 3) & 1 ? -1 : 1) / sqrtf(8.0f));
}

int main(void) {
    test_e4m3();
    test_e2m1();
    test_block_sims();
    test_hadamard();
    return test_finish();
}
