/* ds4-synth: a random-weight GGUF with DeepSeek V4 Flash's real shapes and
 * the published files' tensor types, for speed measurements without the
 * 81 GB download (fewer layers fit any disk and GPU). Weights are random
 * bytes with sane scales: the numbers mean nothing, the bytes moved and the
 * kernels run are the real ones. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/ggml_types.h"
#include "formats/gguf.h"
#include "model/hparams.h"
#include "util/half.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ds4-synth OUT.gguf [--layers N] [--experts N] [--quant q2|q4] [--seed S]\n"
            "  Random weights in the real model's shapes (4096 wide, 64 heads x 512, 129280 vocab,\n"
            "  experts of 2048, 6 used) and the published q2/q4 tensor types. Defaults: 4 layers,\n"
            "  256 experts, q2. Layer schedule as the real model: 0-1 sliding, then CSA (ratio 4)\n"
            "  on even and HCA (ratio 128) on odd layers; the first 3 layers hash-routed.\n");
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static inline uint64_t next(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}

/* Roughly N(0, sigma^2) from the sum of four uniforms. */
static float gauss(float sigma) {
    float s = 0;
    for (int i = 0; i < 4; i++) s += (float)(next() >> 40) * 0x1p-24f;
    return (s - 2.0f) * 1.732f * sigma;
}

/* n bytes of one tensor: random payload, then the scale fields of each
 * quant block set so that values are about 1/sqrt(fan_in). */
static void fill(uint32_t type, uint8_t *buf, uint64_t n, uint64_t fan_in) {
    float sigma = 1.0f / sqrtf((float)fan_in);
    if (type == GGML_TYPE_F32) {
        for (uint64_t i = 0; i < n / 4; i++) ((float *)buf)[i] = gauss(sigma);
        return;
    }
    if (type == GGML_TYPE_F16) {
        for (uint64_t i = 0; i < n / 2; i++) ((uint16_t *)buf)[i] = ds4_f32_to_f16(gauss(sigma));
        return;
    }
    for (uint64_t i = 0; i + 8 <= n; i += 8) {
        uint64_t r = next();
        memcpy(buf + i, &r, 8);
    }
    for (uint64_t i = n / 8 * 8; i < n; i++) buf[i] = (uint8_t)next();
    const ggml_type_info *ti = ggml_type_get(type);
    uint64_t nb = n / ti->block_bytes;
    for (uint64_t b = 0; b < nb; b++) {
        uint8_t *blk = buf + b * ti->block_bytes;
        uint16_t d;
        switch (type) {
        case GGML_TYPE_Q8_0: /* d * q, |q| ~ 64 */
            d = ds4_f32_to_f16(sigma / 64.0f);
            memcpy(blk, &d, 2);
            break;
        case GGML_TYPE_Q4_K: /* d*sc*q - dmin*m, sc ~ 32, q ~ 8 */
            d = ds4_f32_to_f16(sigma / 256.0f);
            memcpy(blk, &d, 2);
            memcpy(blk + 2, &d, 2);
            break;
        case GGML_TYPE_Q2_K: /* d, dmin at the end; sc ~ 8, q ~ 2 */
            d = ds4_f32_to_f16(sigma / 16.0f);
            memcpy(blk + 80, &d, 2);
            memcpy(blk + 82, &d, 2);
            break;
        case GGML_TYPE_IQ2_XXS: /* d*(0.5+s)/4*grid: about d * 50 */
            d = ds4_f32_to_f16(sigma / 50.0f);
            memcpy(blk, &d, 2);
            break;
        default:
            break;
        }
    }
}

typedef struct tensor {
    char name[96];
    uint32_t type, n_dims;
    uint64_t ne[3];
    int kind; /* 0 random matrix, 1 ones (norms), 2 zeros, 3 tid2eid, 4 small (mHC scale/base) */
} tensor;

static tensor *tensors;
static size_t n_tensors;

static void add(int kind, uint32_t type, uint64_t ne0, uint64_t ne1, uint64_t ne2, const char *fmt, uint32_t il) {
    tensor *t = &tensors[n_tensors++];
    snprintf(t->name, sizeof t->name, fmt, il);
    t->type = type;
    t->ne[0] = ne0, t->ne[1] = ne1, t->ne[2] = ne2;
    t->n_dims = ne2 > 1 ? 3 : (ne1 > 1 ? 2 : 1);
    t->kind = kind;
}

int main(int argc, char **argv) {
    const char *out = NULL, *quant = "q2";
    uint32_t L = 4, X = 256;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--layers") && i + 1 < argc) L = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--experts") && i + 1 < argc) X = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quant") && i + 1 < argc) quant = argv[++i];
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) rng ^= strtoull(argv[++i], NULL, 10) * 0x2545f4914f6cdd1dull;
        else if (!out && argv[i][0] != '-') out = argv[i];
        else {
            usage(stderr);
            return 2;
        }
    }
    if (!out || L < 1 || L > 64 || X < 8 || X > 1024 || (strcmp(quant, "q2") && strcmp(quant, "q4"))) {
        usage(stderr);
        return 2;
    }
    const uint32_t E = 4096, V = 129280, H = 64, HD = 512, QL = 1024, OL = 1024, OG = 8, F = 2048, K = 6, HC = 4;
    const uint32_t IH = 64, ID = 128, W = 128;
    uint32_t t_up = !strcmp(quant, "q2") ? GGML_TYPE_IQ2_XXS : GGML_TYPE_Q4_K;
    uint32_t t_down = !strcmp(quant, "q2") ? GGML_TYPE_Q2_K : GGML_TYPE_Q4_K;
    uint32_t hash = L < 3 ? L : 3, ratios[64];
    float clamps[64];
    for (uint32_t il = 0; il < L; il++) {
        ratios[il] = il < 2 ? 0 : (il % 2 == 0 ? 4 : 128);
        clamps[il] = 10.0f;
    }
    tensors = calloc(64 * 40 + 8, sizeof *tensors);
    add(0, GGML_TYPE_F16, E, V, 1, "token_embd.weight", 0);
    add(0, GGML_TYPE_Q8_0, E, V, 1, "output.weight", 0);
    add(1, GGML_TYPE_F32, E, 1, 1, "output_norm.weight", 0);
    add(0, GGML_TYPE_F16, HC * E, HC, 1, "output_hc_fn.weight", 0);
    add(4, GGML_TYPE_F32, HC, 1, 1, "output_hc_base.weight", 0);
    add(4, GGML_TYPE_F32, 1, 1, 1, "output_hc_scale.weight", 0);
    for (uint32_t il = 0; il < L; il++) {
        uint32_t nm = (2 + HC) * HC, r = ratios[il];
        add(0, GGML_TYPE_F16, HC * E, nm, 1, "blk.%u.hc_attn_fn.weight", il);
        add(4, GGML_TYPE_F32, nm, 1, 1, "blk.%u.hc_attn_base.weight", il);
        add(4, GGML_TYPE_F32, 3, 1, 1, "blk.%u.hc_attn_scale.weight", il);
        add(0, GGML_TYPE_F16, HC * E, nm, 1, "blk.%u.hc_ffn_fn.weight", il);
        add(4, GGML_TYPE_F32, nm, 1, 1, "blk.%u.hc_ffn_base.weight", il);
        add(4, GGML_TYPE_F32, 3, 1, 1, "blk.%u.hc_ffn_scale.weight", il);
        add(1, GGML_TYPE_F32, E, 1, 1, "blk.%u.attn_norm.weight", il);
        add(1, GGML_TYPE_F32, E, 1, 1, "blk.%u.ffn_norm.weight", il);
        add(0, GGML_TYPE_Q8_0, E, QL, 1, "blk.%u.attn_q_a.weight", il);
        add(1, GGML_TYPE_F32, QL, 1, 1, "blk.%u.attn_q_a_norm.weight", il);
        add(0, GGML_TYPE_Q8_0, QL, H * HD, 1, "blk.%u.attn_q_b.weight", il);
        add(0, GGML_TYPE_Q8_0, E, HD, 1, "blk.%u.attn_kv.weight", il);
        add(1, GGML_TYPE_F32, HD, 1, 1, "blk.%u.attn_kv_a_norm.weight", il);
        add(2, GGML_TYPE_F32, H, 1, 1, "blk.%u.attn_sinks.weight", il);
        add(0, GGML_TYPE_Q8_0, H * HD / OG, OG * OL, 1, "blk.%u.attn_output_a.weight", il);
        add(0, GGML_TYPE_Q8_0, OG * OL, E, 1, "blk.%u.attn_output_b.weight", il);
        if (r) {
            uint32_t cw = (r == 4 ? 2 : 1) * HD;
            add(0, GGML_TYPE_F16, cw, r, 1, "blk.%u.attn_compressor_ape.weight", il);
            add(0, GGML_TYPE_F16, E, cw, 1, "blk.%u.attn_compressor_kv.weight", il);
            add(0, GGML_TYPE_F16, E, cw, 1, "blk.%u.attn_compressor_gate.weight", il);
            add(1, GGML_TYPE_F32, HD, 1, 1, "blk.%u.attn_compressor_norm.weight", il);
        }
        if (r == 4) {
            add(0, GGML_TYPE_F16, QL, IH * ID, 1, "blk.%u.indexer.attn_q_b.weight", il);
            add(0, GGML_TYPE_F16, E, IH, 1, "blk.%u.indexer.proj.weight", il);
            add(0, GGML_TYPE_F16, 2 * ID, 4, 1, "blk.%u.indexer_compressor_ape.weight", il);
            add(0, GGML_TYPE_F16, E, 2 * ID, 1, "blk.%u.indexer_compressor_kv.weight", il);
            add(0, GGML_TYPE_F16, E, 2 * ID, 1, "blk.%u.indexer_compressor_gate.weight", il);
            add(1, GGML_TYPE_F32, ID, 1, 1, "blk.%u.indexer_compressor_norm.weight", il);
        }
        add(0, GGML_TYPE_F16, E, X, 1, "blk.%u.ffn_gate_inp.weight", il);
        if (il < hash) add(3, GGML_TYPE_I32, K, V, 1, "blk.%u.ffn_gate_tid2eid.weight", il);
        else add(2, GGML_TYPE_F32, X, 1, 1, "blk.%u.exp_probs_b.bias", il);
        add(0, t_up, E, F, X, "blk.%u.ffn_gate_exps.weight", il);
        add(0, t_up, E, F, X, "blk.%u.ffn_up_exps.weight", il);
        add(0, t_down, F, E, X, "blk.%u.ffn_down_exps.weight", il);
        add(0, GGML_TYPE_Q8_0, E, F, 1, "blk.%u.ffn_gate_shexp.weight", il);
        add(0, GGML_TYPE_Q8_0, E, F, 1, "blk.%u.ffn_up_shexp.weight", il);
        add(0, GGML_TYPE_Q8_0, F, E, 1, "blk.%u.ffn_down_shexp.weight", il);
    }

    ds4_error err = {{0}};
    gguf_writer *w = gguf_writer_create(out, GGUF_DEFAULT_ALIGNMENT, &err);
    if (!w) {
        fprintf(stderr, "ds4-synth: %s\n", err.msg);
        return 1;
    }
    int rc = 0;
    rc |= gguf_writer_set_str(w, "general.architecture", DS4_ARCH);
    rc |= gguf_writer_set_str(w, "general.name", "ds4-synth (random weights)");
    rc |= gguf_writer_set_u32(w, KEY_BLOCK_COUNT, L);
    rc |= gguf_writer_set_u32(w, KEY_EMBD, E);
    rc |= gguf_writer_set_u32(w, KEY_VOCAB, V);
    rc |= gguf_writer_set_u64(w, KEY_CTX, 1u << 20);
    rc |= gguf_writer_set_u32(w, KEY_HEADS, H);
    rc |= gguf_writer_set_u32(w, KEY_HEADS_KV, 1);
    rc |= gguf_writer_set_u32(w, KEY_KEY_LEN, HD);
    rc |= gguf_writer_set_u32(w, KEY_VAL_LEN, HD);
    rc |= gguf_writer_set_u32(w, KEY_ROPE_DIMS, 64);
    rc |= gguf_writer_set_u32(w, KEY_Q_LORA, QL);
    rc |= gguf_writer_set_u32(w, KEY_O_LORA, OL);
    rc |= gguf_writer_set_u32(w, KEY_O_GROUPS, OG);
    rc |= gguf_writer_set_u32(w, KEY_N_EXPERT, X);
    rc |= gguf_writer_set_u32(w, KEY_N_EXPERT_USED, K);
    rc |= gguf_writer_set_u32(w, KEY_FF_EXP, F);
    rc |= gguf_writer_set_u32(w, KEY_N_SHARED, 1);
    rc |= gguf_writer_set_u32(w, KEY_HASH_LAYERS, hash);
    rc |= gguf_writer_set_u32(w, KEY_WINDOW, W);
    rc |= gguf_writer_set_u32(w, KEY_IDX_HEADS, IH);
    rc |= gguf_writer_set_u32(w, KEY_IDX_KEY_LEN, ID);
    rc |= gguf_writer_set_u32(w, KEY_IDX_TOPK, 512);
    rc |= gguf_writer_set_u32(w, KEY_HC, HC);
    rc |= gguf_writer_set_u32(w, KEY_SINKHORN, 20);
    rc |= gguf_writer_set_f32(w, KEY_HC_EPS, 1e-6f);
    rc |= gguf_writer_set_f32(w, KEY_RMS_EPS, 1e-6f);
    rc |= gguf_writer_set_u64(w, KEY_ROPE_ORIG_CTX, 65536);
    rc |= gguf_writer_set_f32(w, KEY_ROPE_BASE, 10000.0f);
    rc |= gguf_writer_set_f32(w, KEY_ROPE_FACTOR, 16.0f);
    rc |= gguf_writer_set_f32(w, KEY_YARN_FAST, 32.0f);
    rc |= gguf_writer_set_f32(w, KEY_YARN_SLOW, 1.0f);
    rc |= gguf_writer_set_str(w, KEY_ROPE_TYPE, "yarn");
    rc |= gguf_writer_set_f32(w, KEY_COMPRESS_ROPE_BASE, 160000.0f);
    rc |= gguf_writer_set_f32(w, KEY_EXPERT_SCALE, 1.5f);
    rc |= gguf_writer_set_bool(w, KEY_EXPERT_NORM, true);
    rc |= gguf_writer_set_u32(w, KEY_GATING_FUNC, 4);
    rc |= gguf_writer_set_arr(w, KEY_COMPRESS_RATIOS, GGUF_VT_U32, ratios, L);
    rc |= gguf_writer_set_arr(w, KEY_SWIGLU_CLAMP, GGUF_VT_F32, clamps, L);
    for (size_t i = 0; i < n_tensors; i++) rc |= gguf_writer_add_tensor(w, tensors[i].name, tensors[i].type, tensors[i].n_dims, tensors[i].ne);
    if (rc || gguf_writer_begin_data(w, &err)) {
        fprintf(stderr, "ds4-synth: %s\n", rc ? "cannot declare the metadata" : err.msg);
        gguf_writer_free(w);
        return 1;
    }
    size_t cap = 64u << 20;
    uint8_t *buf = malloc(cap);
    uint64_t total = 0;
    for (size_t i = 0; i < n_tensors && rc == 0; i++) {
        tensor *t = &tensors[i];
        uint64_t row;
        ggml_nbytes(t->type, t->ne[0], &row);
        uint64_t rows = t->ne[1] * t->ne[2], per = cap / row;
        for (uint64_t r0 = 0; r0 < rows && rc == 0; r0 += per) {
            uint64_t nr = rows - r0 < per ? rows - r0 : per, nb = nr * row;
            if (t->kind == 0) {
                fill(t->type, buf, nb, t->ne[0]);
            } else if (t->kind == 3) {
                for (uint64_t v = 0; v < nr; v++) /* K distinct experts per token */
                    for (uint32_t k = 0; k < K; k++) ((int32_t *)buf)[v * K + k] = (int32_t)((next() % (X / K)) * K + k);
            } else {
                for (uint64_t j = 0; j < nb / 4; j++)
                    ((float *)buf)[j] = t->kind == 1 ? 1.0f : (t->kind == 2 ? 0.0f : 0.5f + 0.1f * gauss(1.0f));
            }
            rc = gguf_writer_write(w, buf, nb, &err);
        }
        total += rows * row;
    }
    if (rc == 0) rc = gguf_writer_finish(w, &err);
    gguf_writer_free(w);
    free(buf);
    free(tensors);
    if (rc) {
        fprintf(stderr, "ds4-synth: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "ds4-synth: %s: %u layers, %u experts (%s), %.2f GB\n", out, L, X, quant, total / 1e9);
    return 0;
}
