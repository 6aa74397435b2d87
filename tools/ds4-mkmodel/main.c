/* ds4-mkmodel: a synthetic DeepSeek V4 model in the exact ds4 GGUF layout
 * (spec/MODEL.md §8), by default at the real Flash geometry with every
 * published metadata value, with random weights in any quantization mix.
 * It is the subject for loader, performance and streaming work when no
 * real weights are at hand; --sparse leaves the tensor data as holes so a
 * full-size 81 GB file takes seconds and no disk space. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "compute/threadpool.h"
#include "ds4_tokenizer.h"
#include "formats/ggml_types.h"
#include "formats/gguf.h"
#include "formats/quant.h"
#include "model/hparams.h"
#include "model/layout.h"
#include "model/quant_mix.h"
#include "model/tokenizer_gguf.h"
#include "synth.h"
#include "util/fileio.h"
#include "util/clock.h"

#define MAX_OVERRIDES 64
#define CHUNK_BYTES (64u << 20)

/* Flash's layer schedule (§1.1): layers 0 and 1 sliding only, then CSA
 * (ratio 4) on even and HCA on odd layers. */
static void schedule(ds4_hparams *hp, uint32_t hca_ratio) {
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        hp->compress_ratio[il] = il < 2 ? 0 : il % 2 == 0 ? 4 : hca_ratio;
        hp->swiglu_clamp[il] = 10.0f;
    }
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: ds4-mkmodel OUT.gguf [options]\n"
            "  Writes a DeepSeek V4 model with random weights in the ds4 GGUF layout.\n"
            "  Default: the real Flash geometry and metadata, q2 mix (about 81 GB).\n"
            "  --type MIX              q2 (default), q4, mxfp4, q8_0, f16, bf16, f32\n"
            "  --override PATTERN=TYPE tensor-name glob -> type (repeatable, last wins)\n"
            "  --sparse                leave tensor data as holes (zeros): instant, no disk\n"
            "  --sparse-experts        holes for the routed experts only; every other tensor random\n"
            "                          (a full-size model for expert streaming runs on a small disk)\n"
            "                          space; for loader tests only (zero weights)\n"
            "  --tokenizer FILE        embed this tokenizer.json (tokenizer_config.json\n"
            "                          beside it supplies bos/eos)\n"
            "  --seed N                random seed (default 1)\n"
            "  -t, --threads N         generation threads (default: all cores)\n"
            "  geometry (defaults = Flash):\n"
            "  --layers N (43)  --embd N (4096)  --vocab N (129280)  --experts N (256)\n"
            "  --experts-used N (6, at most --experts)  --ff N (2048)  --heads N (64)\n"
            "  --head-dim N (512)  --rope-dims N (64)  --q-lora N (1024)  --o-lora N (1024)\n"
            "  --o-groups N (8)  --window N (128)  --idx-heads N (64)  --idx-head-dim N (128)\n"
            "  --idx-topk N (512)  --hash-layers N (3, at most --layers)  --hca-ratio N (128)\n");
}

typedef struct geo_opt {
    const char *flag;
    uint32_t *dst;
} geo_opt;

/* Checks what the layout and the engine need of a geometry, naming the
 * flag at fault. */
static int check_geometry(const ds4_hparams *hp, uint32_t hca_ratio, ds4_error *err) {
    if (!hp->n_layer || hp->n_layer > DS4_MAX_LAYERS)
        return ds4_fail(err, "--layers %u: expected 1..%d", hp->n_layer, DS4_MAX_LAYERS);
    if (hp->n_expert_used > hp->n_expert || hp->n_expert > 1024)
        return ds4_fail(err, "--experts-used %u must not exceed --experts %u (at most 1024)", hp->n_expert_used,
                        hp->n_expert);
    if (hp->n_hash_layers > hp->n_layer)
        return ds4_fail(err, "--hash-layers %u exceeds --layers %u", hp->n_hash_layers, hp->n_layer);
    if (hp->n_head % hp->o_groups) return ds4_fail(err, "--o-groups %u must divide --heads %u", hp->o_groups, hp->n_head);
    if (hp->n_rot % 2 || hp->n_rot > hp->head_dim || hp->n_rot > hp->idx_head_dim)
        return ds4_fail(err, "--rope-dims %u must be even and at most --head-dim %u and --idx-head-dim %u", hp->n_rot,
                        hp->head_dim, hp->idx_head_dim);
    if (hp->idx_head_dim & (hp->idx_head_dim - 1))
        return ds4_fail(err, "--idx-head-dim %u must be a power of two", hp->idx_head_dim);
    if (hca_ratio < 8 || (hca_ratio & (hca_ratio - 1)))
        return ds4_fail(err, "--hca-ratio %u must be a power of two >= 8", hca_ratio);
    return 0;
}

int main(int argc, char **argv) {
    ds4_hparams hp;
    ds4_hparams_flash(&hp);
    uint32_t hca_ratio = 128, experts_used = 0, hash_layers = 0;
    const char *out = NULL, *type_name = "q2", *tok_path = NULL;
    const char *overrides[MAX_OVERRIDES];
    int n_overrides = 0, sparse = 0, hash_given = 0;
    long threads = 0;
    unsigned long long seed = 1;
    geo_opt geo[] = {
        {"--layers", &hp.n_layer},     {"--embd", &hp.n_embd},           {"--vocab", &hp.n_vocab},
        {"--experts", &hp.n_expert},   {"--experts-used", &experts_used}, {"--ff", &hp.n_ff_exp},
        {"--heads", &hp.n_head},       {"--head-dim", &hp.head_dim},     {"--rope-dims", &hp.n_rot},
        {"--q-lora", &hp.q_lora},      {"--o-lora", &hp.o_lora},         {"--o-groups", &hp.o_groups},
        {"--window", &hp.window},      {"--idx-heads", &hp.idx_n_head},  {"--idx-head-dim", &hp.idx_head_dim},
        {"--idx-topk", &hp.idx_topk},  {"--hash-layers", &hash_layers},  {"--hca-ratio", &hca_ratio},
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--sparse")) {
            sparse = 1;
            continue;
        }
        if (!strcmp(a, "--sparse-experts")) {
            sparse = 2;
            continue;
        }
        if (a[0] != '-') {
            if (out) {
                fprintf(stderr, "ds4-mkmodel: unexpected argument '%s'\n", a);
                return 2;
            }
            out = a;
            continue;
        }
        if (!v) {
            fprintf(stderr, "ds4-mkmodel: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--type")) type_name = v;
        else if (!strcmp(a, "--tokenizer")) tok_path = v;
        else if (!strcmp(a, "--override")) {
            if (n_overrides == MAX_OVERRIDES) {
                fprintf(stderr, "ds4-mkmodel: at most %d --override options\n", MAX_OVERRIDES);
                return 2;
            }
            overrides[n_overrides++] = v;
        } else {
            char *end;
            unsigned long long n = strtoull(v, &end, 10);
            int ok = *v && !*end;
            if (!strcmp(a, "--seed") && ok) {
                seed = n;
                continue;
            }
            if ((!strcmp(a, "-t") || !strcmp(a, "--threads")) && ok && n >= 1 && n <= 4096) {
                threads = (long)n;
                continue;
            }
            size_t g = 0;
            while (g < sizeof geo / sizeof geo[0] && strcmp(a, geo[g].flag)) g++;
            if (g == sizeof geo / sizeof geo[0]) {
                fprintf(stderr, "ds4-mkmodel: unknown option '%s'\n", a);
                usage(stderr);
                return 2;
            }
            int is_hash = geo[g].dst == &hash_layers; /* the only count that may be 0 */
            if (!ok || n > 0xffffffffull || (n == 0 && !is_hash)) {
                fprintf(stderr, "ds4-mkmodel: %s expects a positive integer, got '%s'\n", a, v);
                return 2;
            }
            *geo[g].dst = (uint32_t)n;
            hash_given |= is_hash;
        }
    }
    if (!out) {
        usage(stderr);
        return 2;
    }
    /* Reduced variants keep Flash's proportions where they are coupled. */
    hp.n_expert_used = experts_used ? experts_used : (hp.n_expert < 6 ? hp.n_expert : 6);
    hp.n_hash_layers = hash_given ? hash_layers : (hp.n_layer < 3 ? hp.n_layer : 3);
    schedule(&hp, hca_ratio);

    ds4_error err = {{0}};
    ds4_quant_mix *mix = NULL;
    ds4_tokenizer *tok = NULL;
    ds4_layout lay = {0};
    uint32_t *types = NULL;
    ds4_pool *pool = NULL;
    synth *syn = NULL;
    gguf_writer *w = NULL;
    uint8_t *buf = NULL;
    char tmp[4096] = "";
    int rc = 1, tty = isatty(2);
    if (check_geometry(&hp, hca_ratio, &err)) goto out;
    if (!(mix = ds4_quant_mix_new(type_name, &err))) {
        ds4_fail_prefix(&err, "--type");
        goto out;
    }
    for (int i = 0; i < n_overrides; i++)
        if (ds4_quant_mix_override(mix, overrides[i], &err)) goto out;
    if (ds4_layout_build(&lay, &hp, &err)) goto out;
    if (!(types = calloc(lay.n, sizeof *types))) {
        ds4_fail(&err, "out of memory");
        goto out;
    }
    if (ds4_quant_mix_resolve(mix, &lay, types, stderr, "ds4-mkmodel", &err)) goto out;
    if (tok_path) {
        char cfg[4096];
        const char *slash = strrchr(tok_path, '/');
        snprintf(cfg, sizeof cfg, "%.*stokenizer_config.json", slash ? (int)(slash - tok_path + 1) : 0, tok_path);
        if (!(tok = ds4_tokenizer_from_json(tok_path, access(cfg, R_OK) == 0 ? cfg : NULL, &err))) goto out;
        if (ds4_tokenizer_n_vocab(tok) > hp.n_vocab) {
            ds4_fail(&err, "%s: %u tokens do not fit --vocab %u", tok_path, ds4_tokenizer_n_vocab(tok), hp.n_vocab);
            goto out;
        }
    }
    uint64_t total = 0, max_row = 0;
    for (size_t i = 0; i < lay.n; i++) {
        uint64_t nb, rb;
        ggml_nbytes(types[i], lay.t[i].ne[0] * lay.t[i].ne[1] * lay.t[i].ne[2], &nb);
        ggml_nbytes(types[i], lay.t[i].ne[0], &rb);
        total += nb;
        if (rb > max_row) max_row = rb;
    }
    fprintf(stderr, "ds4-mkmodel: %u layers, %u wide, %u experts (%u used), vocab %u, %s mix: %zu tensors, %.2f GB%s\n",
            hp.n_layer, hp.n_embd, hp.n_expert, hp.n_expert_used, hp.n_vocab, ds4_quant_mix_name(mix), lay.n, total / 1e9,
            sparse == 1 ? " (sparse)" : (sparse ? " (routed experts sparse)" : ""));
    size_t buf_bytes = CHUNK_BYTES > max_row ? CHUNK_BYTES : (size_t)max_row;
    if (sparse != 1) {
        if (!(pool = ds4_pool_create((int)threads)) || !(syn = synth_new(seed, pool, hp.n_expert, &err)) ||
            !(buf = malloc(buf_bytes))) {
            if (!err.msg[0]) ds4_fail(&err, "out of memory or no threads");
            goto out;
        }
    }
    if (ds4_atomic_begin(out, tmp, sizeof tmp, &err)) goto out;
    if (!(w = gguf_writer_create(tmp, GGUF_DEFAULT_ALIGNMENT, &err))) goto out;
    int meta = ds4_hparams_write(w, &hp, 1, "DeepSeek V4 Flash");
    char desc[160];
    snprintf(desc, sizeof desc, "synthetic random weights: ds4-mkmodel --seed %llu%s", seed,
             sparse == 1 ? " --sparse" : (sparse ? " --sparse-experts" : ""));
    meta |= gguf_writer_set_str(w, "general.description", desc);
    if (!tok) {
        meta |= gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 0);
        meta |= gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 1);
    }
    if (meta) {
        ds4_fail(&err, "%s: cannot record metadata", tmp);
        goto out;
    }
    if (tok && ds4_tokenizer_write_gguf(w, tok, hp.n_vocab, &err)) goto out;
    for (size_t i = 0; i < lay.n; i++)
        if (gguf_writer_add_tensor(w, lay.t[i].name, types[i], lay.t[i].n_dims, lay.t[i].ne)) {
            ds4_fail(&err, "%s: cannot declare tensor %s", tmp, lay.t[i].name);
            goto out;
        }
    if (gguf_writer_begin_data(w, &err)) goto out;
    uint64_t done = 0;
    double t0 = ds4_now_s(), last = 0;
    for (size_t i = 0; i < lay.n; i++) {
        const ds4_layout_tensor *t = &lay.t[i];
        uint64_t rows = ds4_layout_rows(t), row_bytes = types[i] == GGML_TYPE_I32 ? t->ne[0] * 4 : 0;
        if (!row_bytes) ggml_nbytes(types[i], t->ne[0], &row_bytes);
        if (sparse == 1 || (sparse == 2 && strstr(t->name, "_exps."))) {
            if (gguf_writer_skip(w, rows * row_bytes, &err)) goto out;
            done += rows * row_bytes;
            continue;
        }
        uint64_t per = buf_bytes / row_bytes;
        for (uint64_t r = 0; r < rows; r += per) {
            uint64_t n = rows - r < per ? rows - r : per;
            if (synth_rows(syn, t, (uint32_t)i, types[i], r, n, buf, &err)) goto out;
            if (gguf_writer_write(w, buf, n * row_bytes, &err)) goto out;
            done += n * row_bytes;
            double tn = ds4_now_s();
            if (tty ? tn - last >= 0.1 : tn - last >= 10) {
                last = tn;
                fprintf(stderr, "%s[%3d%%] %zu/%zu tensors, %.2f/%.2f GB, %.0f MB/s  %-36s%s", tty ? "\r" : "",
                        (int)(100 * done / total), i + 1, lay.n, done / 1e9, total / 1e9, done / 1e6 / (tn - t0 + 1e-9),
                        t->name, tty ? "" : "\n");
            }
        }
    }
    if (tty && sparse != 1) fputc('\n', stderr);
    if (gguf_writer_finish(w, &err)) goto out;
    gguf_writer_free(w);
    w = NULL;
    if (ds4_atomic_commit(tmp, out, &err)) goto out;
    tmp[0] = 0;
    fprintf(stderr, "ds4-mkmodel: wrote %s (%zu tensors, %.2f GB) in %.1f s\n", out, lay.n, total / 1e9, ds4_now_s() - t0);
    rc = 0;
out:
    if (rc) fprintf(stderr, "ds4-mkmodel: %s\n", err.msg);
    gguf_writer_free(w);
    if (tmp[0]) ds4_atomic_abort(tmp);
    free(buf);
    synth_free(syn);
    ds4_pool_free(pool);
    free(types);
    ds4_layout_free(&lay);
    ds4_tokenizer_free(tok);
    ds4_quant_mix_free(mix);
    return rc;
}
