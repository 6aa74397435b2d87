/* Quant formats against golden vectors produced by ggml (tests/data/quant,
 * see its README): dequantization must match bit for bit, our quantizers
 * must reach ggml's reconstruction error on the same data (5% slack). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "formats/quant.h"
#include "formats/quant/blocks.h"
#include "../harness.h"

static void *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Counts values whose bits differ; prints the first few. */
static int count_bit_mismatches(const char *what, const float *got, const float *want, int64_t n) {
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t a, b;
        memcpy(&a, &got[i], 4);
        memcpy(&b, &want[i], 4);
        if (a != b && bad++ < 5)
            fprintf(stderr, "%s: value %lld: got %.9g (0x%08x), ggml %.9g (0x%08x)\n", what, (long long)i,
                    got[i], a, want[i], b);
    }
    return bad;
}

/* File: "DS4QGOLD", u32 type, u32 nblocks, u32 block_bytes, u32 0, blocks,
 * then the f32 values ggml's dequantizer produced. */
static void check_dequant(const char *file, uint32_t type) {
    size_t len;
    uint8_t *buf = read_file(test_path("%s/quant/%s", test_data_dir(), file), &len);
    CHECKF(buf != NULL, "cannot read %s", file);
    if (!buf) return;
    const ds4_quant_traits *t = ds4_quant_traits_get(type);
    CHECK(len >= 24 && memcmp(buf, "DS4QGOLD", 8) == 0);
    CHECK(rd32(buf + 8) == type);
    const uint32_t nb = rd32(buf + 12), bb = rd32(buf + 16);
    CHECK(bb == t->block_bytes);
    const int64_t n = (int64_t)nb * t->block_elems;
    CHECK(len == 24 + (size_t)nb * bb + (size_t)n * 4);
    /* copy into aligned buffers: the file offsets are not block-aligned */
    void *blocks = malloc((size_t)nb * bb);
    float *want = malloc((size_t)n * 4), *got = malloc((size_t)n * 4);
    memcpy(blocks, buf + 24, (size_t)nb * bb);
    memcpy(want, buf + 24 + (size_t)nb * bb, (size_t)n * 4);
    ds4_dequantize_row(type, blocks, got, n);
    int bad = count_bit_mismatches(t->name, got, want, n);
    CHECKF(bad == 0, "%s: %d of %lld values differ from ggml", t->name, bad, (long long)n);
    fprintf(stderr, "%-8s dequant: %lld values, %d mismatches\n", t->name, (long long)n, bad);

    if (type == GGML_TYPE_MXFP4) {
        /* the plane-split arrangement holds the same values: view the
         * blocks as rows of 256 values, repack, decode, repack back */
        const int64_t cols = 256, rows = n / cols;
        uint64_t db, sb;
        ds4_mxfp4_native_plane_bytes(rows, cols, &db, &sb);
        CHECK(db + sb == (uint64_t)nb * bb);
        uint8_t *data = malloc(db), *scale = malloc(sb);
        ds4_mxfp4_blocks_to_native(blocks, rows, cols, data, scale);
        for (int64_t r = 0; r < rows; r++)
            ds4_mxfp4_native_dequantize_row(data + r * cols / 2, scale + r * cols / 32, got + r * cols, cols);
        bad = count_bit_mismatches("MXFP4_NATIVE", got, want, n);
        CHECKF(bad == 0, "MXFP4_NATIVE: %d values differ from ggml", bad);
        void *back = malloc((size_t)nb * bb);
        ds4_mxfp4_native_to_blocks(data, scale, rows, cols, back);
        CHECK(memcmp(back, blocks, (size_t)nb * bb) == 0);
        free(back);
        free(data);
        free(scale);
    }
    free(blocks);
    free(want);
    free(got);
    free(buf);
}

static void check_tables(void) {
    size_t len;
    uint8_t *buf = read_file(test_path("%s/quant/iq2xxs_tables.bin", test_data_dir()), &len);
    CHECK(buf && len == 256 * 8 + 128);
    if (!buf) return;
    CHECKF(memcmp(buf, ds4_iq2xxs_grid, 256 * 8) == 0, "IQ2_XXS grid differs from ggml's");
    CHECKF(memcmp(buf + 256 * 8, ds4_iq2_signs, 128) == 0, "IQ2 sign table differs from ggml's");
    for (int i = 0; i < 128; i++)
        for (int t = 0; t < 8; t++)
            CHECK(ds4_iq2_sign_pm1[i][t] == ((ds4_iq2_signs[i] >> t) & 1 ? -1 : 1));
    free(buf);
}

#define ROWS 64
#define COLS 4096

static uint32_t type_by_name(const char *s) {
    static const uint32_t types[] = {GGML_TYPE_Q8_0, GGML_TYPE_Q2_K, GGML_TYPE_Q4_K, GGML_TYPE_IQ2_XXS,
                                     GGML_TYPE_MXFP4};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcmp(ds4_quant_traits_get(types[i])->name, s) == 0) return types[i];
    return UINT32_MAX;
}

/* quant_rmse.txt: "<type> <none|imatrix> rmse=<r> wrmse=<w>" from ggml on
 * quant_input.f32 (64 x 4096). The importance vector is the per-column mean
 * of x^2 (accumulated in float, rows in order); "none" passes NULL. rmse is
 * plain, wrmse weights each squared error by its column's importance. */
static void check_rmse(void) {
    size_t len, tlen;
    float *x = read_file(test_path("%s/quant/quant_input.f32", test_data_dir()), &len);
    char *txt = read_file(test_path("%s/quant/quant_rmse.txt", test_data_dir()), &tlen);
    CHECK(x && len == sizeof(float) * ROWS * COLS && txt);
    if (!x || !txt) return;
    txt = realloc(txt, tlen + 1);
    txt[tlen] = 0;

    float *imp = calloc(COLS, sizeof(float));
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < COLS; c++) imp[c] += x[r * COLS + c] * x[r * COLS + c];
    for (int c = 0; c < COLS; c++) imp[c] /= ROWS;

    int lines = 0;
    for (char *line = strtok(txt, "\n"); line; line = strtok(NULL, "\n")) {
        char tname[32], mode[32];
        double g_rmse, g_wrmse;
        if (sscanf(line, "%31s %31s rmse=%lf wrmse=%lf", tname, mode, &g_rmse, &g_wrmse) != 4) continue;
        const uint32_t type = type_by_name(tname);
        CHECKF(type != UINT32_MAX, "unknown type %s", tname);
        if (type == UINT32_MAX) continue;
        const bool use_imp = strcmp(mode, "imatrix") == 0;
        const size_t rb = ds4_quant_row_bytes(type, COLS);
        uint8_t *q = malloc(rb);
        float *y = malloc(sizeof(float) * COLS);
        double se = 0, wse = 0, wsum = 0;
        for (int r = 0; r < ROWS; r++) {
            ds4_quantize_row(type, x + r * COLS, q, COLS, use_imp ? imp : NULL);
            ds4_dequantize_row(type, q, y, COLS);
            for (int c = 0; c < COLS; c++) {
                const double d = (double)x[r * COLS + c] - y[c];
                se += d * d;
                wse += imp[c] * d * d;
                wsum += imp[c];
            }
        }
        const double rmse = sqrt(se / ((double)ROWS * COLS)), wrmse = sqrt(wse / wsum);
        fprintf(stderr, "%-8s %-8s rmse ours %.6f ggml %.6f (%+.2f%%)   wrmse ours %.6f ggml %.6f (%+.2f%%)\n",
                tname, mode, rmse, g_rmse, 100 * (rmse / g_rmse - 1), wrmse, g_wrmse, 100 * (wrmse / g_wrmse - 1));
        CHECKF(rmse <= 1.05 * g_rmse, "%s %s: rmse %.6f vs ggml %.6f", tname, mode, rmse, g_rmse);
        CHECKF(wrmse <= 1.05 * g_wrmse, "%s %s: wrmse %.6f vs ggml %.6f", tname, mode, wrmse, g_wrmse);
        free(q);
        free(y);
        lines++;
    }
    CHECK(lines == 7);
    free(imp);
    free(x);
    free(txt);
}

int main(void) {
    check_tables();
    check_dequant("dequant_q8_0.bin", GGML_TYPE_Q8_0);
    check_dequant("dequant_q2_k.bin", GGML_TYPE_Q2_K);
    check_dequant("dequant_q4_k.bin", GGML_TYPE_Q4_K);
    check_dequant("dequant_iq2_xxs.bin", GGML_TYPE_IQ2_XXS);
    check_dequant("dequant_mxfp4.bin", GGML_TYPE_MXFP4);
    check_rmse();
    return test_finish();
}
