/* ds4-convert: DeepSeek V4 checkpoint (config.json + safetensors) -> GGUF
 * in the ds4 layout (spec/MODEL.md §8), in any quantization mix, written
 * atomically with progress. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "convert.h"
#include "ds4_tokenizer.h"
#include "formats/ggml_types.h"
#include "formats/quant.h"
#include "model/quant_mix.h"
#include "model/tokenizer_gguf.h"
#include "util/fileio.h"

#define MAX_OVERRIDES 64

static void usage(FILE *f) {
    fprintf(f,
            "usage: ds4-convert CHECKPOINT_DIR OUT.gguf [--type TYPE] [--override PATTERN=TYPE]...\n"
            "                   [--imatrix FILE] [-t THREADS]\n"
            "  Reads a DeepSeek V4 checkpoint (config.json + safetensors, official or\n"
            "  transformers naming; FP8 weights with 128x128 block scales and FP4 experts\n"
            "  with per-32 scales are dequantised) and writes a GGUF in the ds4 layout,\n"
            "  to a temporary file renamed at the end.\n"
            "  --type TYPE     the mix (default bf16):\n"
            "                    q2     experts IQ2_XXS gate/up + Q2_K down, attention, shared\n"
            "                           expert and output Q8_0, embedding, mHC, compressor,\n"
            "                           indexer and router F16 (the published q2 file)\n"
            "                    q4     the same with Q4_K experts (the published q4 file)\n"
            "                    mxfp4  the same with MXFP4 experts; FP4 experts of an\n"
            "                           official checkpoint are copied losslessly\n"
            "                    q8_0   every matrix Q8_0 (mHC fn and ape F16)\n"
            "                    f32, f16, bf16   every matrix in that type\n"
            "                  vectors are always F32 and tid2eid I32.\n"
            "  --override PATTERN=TYPE   tensors whose GGUF name matches the glob get TYPE\n"
            "                  (f32 f16 bf16 q8_0 q4_k q2_k iq2_xxs mxfp4); repeatable, the\n"
            "                  last match wins. Example: 'blk.4[0-2].ffn_*_exps.weight=q4_k'\n"
            "  --imatrix FILE  importance matrix (llama.cpp legacy .dat or GGUF imatrix, as\n"
            "                  written by llama-imatrix or ds4 --imatrix-out); without it\n"
            "                  the quantizers weight by the row's own magnitudes\n"
            "  -t THREADS      quantization threads (default: all cores)\n"
            "  Rows whose length does not fit a type's block size fall back to Q8_0, then\n"
            "  F16, with a note.\n");
}

/* Type histogram of the plan, for the opening summary. */
static void print_plan(const ds4_layout *l, const uint32_t *types, const char *mix, uint64_t total) {
    uint64_t bytes[GGML_TYPE_COUNT_MAX] = {0};
    size_t count[GGML_TYPE_COUNT_MAX] = {0};
    for (size_t i = 0; i < l->n; i++) {
        uint64_t nb = 0;
        ggml_nbytes(types[i], l->t[i].ne[0] * l->t[i].ne[1] * l->t[i].ne[2], &nb);
        bytes[types[i]] += nb;
        count[types[i]]++;
    }
    fprintf(stderr, "ds4-convert: %s: %zu tensors, %.2f GB:", mix, l->n, total / 1e9);
    for (uint32_t t = 0; t < GGML_TYPE_COUNT_MAX; t++)
        if (count[t]) fprintf(stderr, " %s %zu (%.2f GB)", ggml_type_name(t), count[t], bytes[t] / 1e9);
    fputc('\n', stderr);
}

static int write_imatrix_keys(gguf_writer *w, const ds4_imatrix *im) {
    int rc = 0;
    rc |= gguf_writer_set_str(w, "quantize.imatrix.file", ds4_imatrix_path(im));
    rc |= gguf_writer_set_str(w, "quantize.imatrix.dataset", ds4_imatrix_dataset(im));
    rc |= gguf_writer_set_i32(w, "quantize.imatrix.entries_count", (int32_t)ds4_imatrix_entries(im));
    if (ds4_imatrix_chunks(im) >= 0) rc |= gguf_writer_set_i32(w, "quantize.imatrix.chunks_count", ds4_imatrix_chunks(im));
    return rc;
}

int main(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *type_name = "bf16", *imatrix_path = NULL;
    const char *overrides[MAX_OVERRIDES];
    int n_overrides = 0;
    long threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        int has_value = i + 1 < argc;
        if (!strcmp(a, "--type") && has_value) type_name = argv[++i];
        else if (!strcmp(a, "--imatrix") && has_value) imatrix_path = argv[++i];
        else if (!strcmp(a, "--override") && has_value) {
            if (n_overrides == MAX_OVERRIDES) {
                fprintf(stderr, "ds4-convert: at most %d --override options\n", MAX_OVERRIDES);
                return 2;
            }
            overrides[n_overrides++] = argv[++i];
        } else if ((!strcmp(a, "-t") || !strcmp(a, "--threads")) && has_value) {
            char *end;
            threads = strtol(argv[++i], &end, 10);
            if (*end || threads < 1 || threads > 4096) {
                fprintf(stderr, "ds4-convert: %s expects a thread count, got '%s'\n", a, argv[i]);
                return 2;
            }
        } else if (a[0] == '-') {
            fprintf(stderr, "ds4-convert: unknown option or missing value '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (!in) in = a;
        else if (!out) out = a;
        else {
            fprintf(stderr, "ds4-convert: unexpected argument '%s'\n", a);
            return 2;
        }
    }
    if (!in || !out) {
        usage(stderr);
        return 2;
    }

    ds4_error err = {{0}};
    convert_config cfg;
    ds4_quant_mix *mix = NULL;
    ds4_imatrix *im = NULL;
    st_checkpoint *ck = NULL;
    ckpt_index *ix = NULL;
    ds4_tokenizer *tok = NULL;
    gguf_writer *w = NULL;
    ds4_layout lay = {0};
    uint32_t *types = NULL;
    convert_emit em = {0};
    char tmp[4096] = "";
    int rc = 1;
    if (!(mix = ds4_quant_mix_new(type_name, &err))) {
        ds4_fail_prefix(&err, "--type");
        goto out;
    }
    for (int i = 0; i < n_overrides; i++)
        if (ds4_quant_mix_override(mix, overrides[i], &err)) goto out;
    if (convert_read_config(in, &cfg, &err)) goto out;
    if (ds4_layout_build(&lay, &cfg.hp, &err)) goto out;
    if (!(types = calloc(lay.n, sizeof *types))) {
        ds4_fail(&err, "out of memory");
        goto out;
    }
    if (ds4_quant_mix_resolve(mix, &lay, types, stderr, "ds4-convert", &err)) goto out;
    if (imatrix_path) {
        if (!(im = ds4_imatrix_load(imatrix_path, &err))) goto out;
        fprintf(stderr, "ds4-convert: importance matrix %s: %zu entries\n", imatrix_path, ds4_imatrix_entries(im));
    }
    if (!(ck = st_open(in, &err))) goto out;
    if (!(ix = ckpt_index_build(ck, &err))) goto out;
    /* The tokenizer is embedded when the checkpoint carries one. */
    char tj[4096], tc[4096];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", in);
    snprintf(tc, sizeof tc, "%s/tokenizer_config.json", in);
    if (access(tj, R_OK) == 0) {
        if (!(tok = ds4_tokenizer_from_json(tj, access(tc, R_OK) == 0 ? tc : NULL, &err))) goto out;
        if (ds4_tokenizer_n_vocab(tok) > cfg.hp.n_vocab) {
            ds4_fail(&err, "%s: %u tokens do not fit the model's vocab_size %u", tj, ds4_tokenizer_n_vocab(tok), cfg.hp.n_vocab);
            goto out;
        }
        fprintf(stderr, "ds4-convert: embedding the tokenizer from %s (%u tokens)\n", tj, ds4_tokenizer_n_vocab(tok));
    }

    uint64_t max_elems = convert_max_matrix_elems(&lay);
    for (size_t i = 0; i < lay.n; i++) {
        uint64_t nb;
        ggml_nbytes(types[i], lay.t[i].ne[0] * lay.t[i].ne[1] * lay.t[i].ne[2], &nb);
        em.total += nb;
    }
    print_plan(&lay, types, ds4_quant_mix_name(mix), em.total);
    em.buf = malloc(max_elems * sizeof(float));
    em.enc = malloc(max_elems * sizeof(float));
    em.pool = ds4_pool_create((int)threads);
    if (!em.buf || !em.enc || !em.pool) {
        ds4_fail(&err, "out of memory (%llu floats per matrix) or no threads", (unsigned long long)max_elems);
        goto out;
    }
    if (ds4_atomic_begin(out, tmp, sizeof tmp, &err)) goto out;
    if (!(w = gguf_writer_create(tmp, GGUF_DEFAULT_ALIGNMENT, &err))) goto out;
    const char *base = strrchr(in, '/');
    if (convert_write_metadata(w, &cfg, base && base[1] ? base + 1 : in, tok != NULL) || (im && write_imatrix_keys(w, im))) {
        ds4_fail(&err, "%s: cannot record metadata", tmp);
        goto out;
    }
    if (tok && ds4_tokenizer_write_gguf(w, tok, cfg.hp.n_vocab, &err)) goto out;
    for (size_t i = 0; i < lay.n; i++)
        if (gguf_writer_add_tensor(w, lay.t[i].name, types[i], lay.t[i].n_dims, lay.t[i].ne)) {
            ds4_fail(&err, "%s: cannot declare tensor %s", tmp, lay.t[i].name);
            goto out;
        }
    if (gguf_writer_begin_data(w, &err)) goto out;
    em.w = w;
    em.ix = ix;
    em.hp = &cfg.hp;
    em.im = im;
    em.n_total = lay.n;
    em.tty = isatty(2);
    for (size_t i = 0; i < lay.n; i++)
        if (convert_emit_tensor(&em, &lay.t[i], types[i], &err)) goto out;
    if (gguf_writer_finish(w, &err)) goto out;
    gguf_writer_free(w);
    w = NULL;
    if (ds4_atomic_commit(tmp, out, &err)) goto out;
    tmp[0] = 0;
    if (em.n_passthrough)
        fprintf(stderr, "ds4-convert: %llu FP4 expert matrices copied losslessly into MXFP4\n",
                (unsigned long long)em.n_passthrough);
    fprintf(stderr, "ds4-convert: wrote %s (%zu tensors, %.1f MB)\n", out, lay.n, em.total / 1e6);
    rc = 0;
out:
    if (rc) fprintf(stderr, "%sds4-convert: %s\n", em.tty && em.n_done ? "\n" : "", err.msg);
    gguf_writer_free(w);
    if (tmp[0]) ds4_atomic_abort(tmp);
    ds4_pool_free(em.pool);
    free(em.buf);
    free(em.enc);
    free(types);
    ds4_layout_free(&lay);
    ckpt_index_free(ix);
    ds4_tokenizer_free(tok);
    st_close(ck);
    ds4_imatrix_free(im);
    ds4_quant_mix_free(mix);
    return rc;
}
