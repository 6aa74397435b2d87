/* ds4-bench: prefill and decode speed at growing context frontiers.
 * For each frontier the session is extended by the new interval (timed
 * prefill), snapshotted, a greedy generation of fixed length is timed, and the
 * snapshot is restored. One CSV row per frontier. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ds4.h"
#include "roofline.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: ds4-bench -m MODEL.gguf [options]\n"
            "  --tokens-file FILE   prompt token ids (comma/space separated); default: synthetic ids\n"
            "  --ctx-start N        first frontier (default 2048)\n"
            "  --ctx-max N          last frontier (default 32768)\n"
            "  --ctx-alloc N        session size (default ctx-max + gen-tokens + 1)\n"
            "  --step-incr N        frontier increment (default 2048, used when --step-mul is 1)\n"
            "  --step-mul F         frontier multiplier (>= 1, default 1)\n"
            "  --gen-tokens N       greedy tokens generated at each frontier (default 128)\n"
            "  --prefill-chunk N    tokens per prefill pass (default 512 on the CPU, 2048 on the GPU)\n"
            "  --numerics MODE      official (default) or hf\n"
            "  -t, --threads N      worker threads (default all cores)\n"
            "  --cuda | --cpu       run on the GPU or the CPU (default: the GPU when built with CUDA)\n"
            "  --gpu-expert-cache BYTES  VRAM slot bank for routed experts (0 = auto: all resident if they fit)\n"
            "  --csv FILE           write the CSV there instead of stdout\n"
            "  --roofline           measure this machine's read bandwidth and peak fp32 rate and\n"
            "                       report decode and prefill speed as fractions of them\n");
}

static int num_arg(int argc, char **argv, int *i, double *out) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "ds4-bench: %s needs a value\n", argv[*i]);
        return -1;
    }
    char *end;
    errno = 0;
    *out = strtod(argv[++*i], &end);
    if (*end || errno || !(*out >= 0)) {
        fprintf(stderr, "ds4-bench: %s expects a non-negative number, got '%s'\n", argv[*i - 1], argv[*i]);
        return -1;
    }
    return 0;
}

static int32_t *read_ids(const char *path, uint32_t *n) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    size_t cap = 1024, k = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    long v;
    int c;
    while (ids && (c = fscanf(f, " %ld", &v)) != EOF) {
        if (c != 1) {
            if (fgetc(f) == EOF) break; /* skip a separator */
            continue;
        }
        if (k == cap) ids = realloc(ids, (cap *= 2) * sizeof *ids);
        if (ids) ids[k++] = (int32_t)v;
    }
    fclose(f);
    *n = (uint32_t)k;
    return ids;
}

/* Decode and prefill speed next to the machine's ceilings: decode reads
 * token_bytes of weights per token (memory bound at batch 1); prefill does
 * 2 x token_params flops per token (compute bound once a chunk shares each
 * pass over the weights). */
static int run_roofline(ds4_model *m, const ds4_model_info *info, ds4_numerics numerics, int threads, uint32_t chunk,
                        uint32_t gen) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = threads > 0 ? threads : (int)(cores > 0 ? cores : 1);
    double secs, bw, peak = 0, peak8 = 0;
    ds4_error err = {{0}};
    bool gpu = ds4_model_backend(m) == DS4_BACKEND_CUDA;
    if (gpu) {
        /* Decode on the GPU reads the weights from device memory. */
        if (ds4_cuda_read_bandwidth(&bw, &err)) {
            fprintf(stderr, "ds4-bench: %s\n", err.msg);
            return 1;
        }
    } else {
        bw = roofline_read_bandwidth(nt, &secs);
        peak = roofline_peak_flops(nt);
        peak8 = roofline_peak_int8(nt);
    }
    ds4_session_opts so = {.numerics = numerics, .max_ctx = chunk + gen + 8, .prefill_chunk = chunk};
    ds4_session *s = ds4_session_new(m, &so, &err);
    if (!s) {
        fprintf(stderr, "ds4-bench: %s\n", err.msg);
        return 1;
    }
    int32_t *toks = malloc(chunk * sizeof *toks);
    for (uint32_t i = 0; i < chunk; i++) toks[i] = (int32_t)((i * 2654435761u) % info->n_vocab);
    /* greedy decoding as a user's would run: each step's pick is the next
     * step's token, and only the pick comes back from the backend */
    int32_t next = 0;
    double t0 = now_s();
    int rc = ds4_session_eval_pick(s, toks, chunk, 0, &next, &err);
    double t1 = now_s();
    for (uint32_t g = 0; rc == 0 && g < gen; g++) rc = ds4_session_eval_pick(s, &next, 1, 0, &next, &err);
    double t2 = now_s();
    free(toks);
    ds4_session_free(s);
    if (rc) {
        fprintf(stderr, "ds4-bench: %s\n", err.msg);
        return 1;
    }
    double prefill_tps = chunk / (t1 - t0), decode_tps = gen / (t2 - t1);
    double decode_ceiling = bw / (double)info->token_bytes;
    /* A prefill computes the LM head (n_vocab x n_embd) for its last token
     * only, so its work per token is the decoded token's less all but
     * 1/chunk of the head. */
    double head = (double)info->n_vocab * info->n_embd;
    double prefill_flops = prefill_tps * 2.0 * ((double)info->token_params - head + head / chunk);
    if (gpu) {
        printf("backend                 cuda\n");
        printf("GPU read bandwidth      %.2f GB/s (best of 5 passes over a large buffer)\n", bw / 1e9);
    } else {
        printf("threads                 %d\n", nt);
        printf("memory read bandwidth   %.2f GB/s (best of 5 passes over a large buffer)\n", bw / 1e9);
        printf("peak fp32 FMA rate      %.1f GFLOP/s\n", peak / 1e9);
        if (peak8 > 0) printf("peak int8 dot rate      %.1f GOP/s (AVX-512 VNNI)\n", peak8 / 1e9);
    }
    printf("bytes per decoded token %.3f MB (dense + %u/%u routed experts)\n", info->token_bytes / 1e6,
           info->n_expert_used, info->n_expert);
    printf("flops per token         %.3f MFLOP decoded, %.3f MFLOP in a prefill of %u (LM head on its last token only)\n",
           2.0 * info->token_params / 1e6, 2.0 * ((double)info->token_params - head + head / chunk) / 1e6, chunk);
    printf("decode                  %.2f t/s; bandwidth ceiling %.2f t/s; ratio %.1f%%\n", decode_tps, decode_ceiling,
           100.0 * decode_tps / decode_ceiling);
    printf("prefill (chunk %u)     %.2f t/s = %.2f GFLOP/s = %.1f%% of fp32 peak", chunk, prefill_tps, prefill_flops / 1e9,
           peak > 0 ? 100.0 * prefill_flops / peak : 0.0);
    /* quantized weights multiply on the int8 units: their ceiling */
    if (peak8 > 0) printf(", %.1f%% of int8 peak", 100.0 * prefill_flops / peak8);
    printf("; %.1fx decode\n", prefill_tps / decode_tps);
    ds4_expert_cache_stats cs;
    ds4_model_expert_cache_stats(m, &cs);
    if (cs.slots)
        printf("expert cache            %u slots of %.1f MB; %llu hits, %llu misses (%.1f%% hits); %.2f GB copied\n",
               cs.slots, cs.slot_bytes / 1e6, (unsigned long long)cs.hits, (unsigned long long)cs.misses,
               cs.hits + cs.misses ? 100.0 * cs.hits / (cs.hits + cs.misses) : 0.0, cs.bytes_copied / 1e9);
    return 0;
}

int main(int argc, char **argv) {
    const char *model_path = "ds4flash.gguf", *tokens_file = NULL, *csv_path = NULL;
    double ctx_start = 2048, ctx_max = 32768, ctx_alloc = 0, step_incr = 2048, step_mul = 1, gen = 128, chunk = -1,
           threads = 0;
    ds4_numerics numerics = DS4_NUMERICS_OFFICIAL;
    int roofline = 0;
    ds4_backend backend = DS4_BACKEND_AUTO;
    double expert_cache = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int rc = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && i + 1 < argc) model_path = argv[++i];
        else if (!strcmp(a, "--tokens-file") && i + 1 < argc) tokens_file = argv[++i];
        else if (!strcmp(a, "--roofline")) roofline = 1;
        else if (!strcmp(a, "--cuda")) backend = DS4_BACKEND_CUDA;
        else if (!strcmp(a, "--cpu")) backend = DS4_BACKEND_CPU;
        else if (!strcmp(a, "--gpu-expert-cache")) rc = num_arg(argc, argv, &i, &expert_cache);
        else if (!strcmp(a, "--csv") && i + 1 < argc) csv_path = argv[++i];
        else if (!strcmp(a, "--numerics") && i + 1 < argc) {
            const char *v = argv[++i];
            if (!strcmp(v, "hf")) numerics = DS4_NUMERICS_HF;
            else if (strcmp(v, "official")) {
                fprintf(stderr, "ds4-bench: --numerics must be official or hf\n");
                return 2;
            }
        } else if (!strcmp(a, "--ctx-start")) rc = num_arg(argc, argv, &i, &ctx_start);
        else if (!strcmp(a, "--ctx-max")) rc = num_arg(argc, argv, &i, &ctx_max);
        else if (!strcmp(a, "--ctx-alloc")) rc = num_arg(argc, argv, &i, &ctx_alloc);
        else if (!strcmp(a, "--step-incr")) rc = num_arg(argc, argv, &i, &step_incr);
        else if (!strcmp(a, "--step-mul")) rc = num_arg(argc, argv, &i, &step_mul);
        else if (!strcmp(a, "--gen-tokens") || !strcmp(a, "-n") || !strcmp(a, "--tokens")) rc = num_arg(argc, argv, &i, &gen);
        else if (!strcmp(a, "--prefill-chunk")) rc = num_arg(argc, argv, &i, &chunk);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) rc = num_arg(argc, argv, &i, &threads);
        else if (!strcmp(a, "--prompt-file") || !strcmp(a, "--chat-prompt-file")) {
            fprintf(stderr, "ds4-bench: %s needs the tokenizer, which this build does not have yet; use --tokens-file\n", a);
            return 2;
        } else {
            fprintf(stderr, "ds4-bench: unknown option '%s' (see --help)\n", a);
            return 2;
        }
        if (rc) return 2;
    }
    if (step_mul < 1 || ctx_start < 1 || ctx_max < ctx_start || (step_mul == 1 && step_incr < 1)) {
        fprintf(stderr, "ds4-bench: need 1 <= ctx-start <= ctx-max, step-mul >= 1 and step-incr >= 1\n");
        return 2;
    }
    if (ctx_alloc == 0) ctx_alloc = ctx_max + gen + 1;
    if (ctx_alloc < ctx_max + gen + 1) {
        fprintf(stderr, "ds4-bench: --ctx-alloc must exceed ctx-max + gen-tokens\n");
        return 2;
    }

    ds4_error err = {{0}};
    ds4_model_opts mo = {.n_threads = (int)threads, .backend = backend, .gpu_expert_cache = (uint64_t)expert_cache};
    ds4_model *m = ds4_model_load(model_path, &mo, &err);
    if (!m) {
        fprintf(stderr, "ds4-bench: %s\n", err.msg);
        return 1;
    }
    ds4_model_info info;
    ds4_model_get_info(m, &info);
    if (chunk < 0) chunk = ds4_model_backend(m) == DS4_BACKEND_CUDA ? 2048 : 512; /* as ds4 does */
    uint32_t n_tok = 0;
    int32_t *toks = NULL;
    if (tokens_file) {
        toks = read_ids(tokens_file, &n_tok);
        if (!toks) {
            fprintf(stderr, "ds4-bench: cannot read '%s': %s\n", tokens_file, strerror(errno));
            return 1;
        }
        if (n_tok < ctx_max) {
            fprintf(stderr, "ds4-bench: %s holds %u tokens, fewer than --ctx-max %.0f\n", tokens_file, n_tok, ctx_max);
            return 1;
        }
    } else {
        /* Synthetic ids: a fixed pseudo-random walk over the vocabulary. */
        n_tok = (uint32_t)ctx_max;
        toks = malloc(n_tok * sizeof *toks);
        uint64_t x = 0x9e3779b97f4a7c15ull;
        for (uint32_t i = 0; i < n_tok; i++) {
            x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
            toks[i] = (int32_t)((x * 0x2545f4914f6cdd1dull >> 33) % info.n_vocab);
        }
    }
    if (roofline) {
        if (chunk < 1) {
            fprintf(stderr, "ds4-bench: --roofline prefills one chunk: it needs --prefill-chunk >= 1\n");
            ds4_model_free(m);
            free(toks);
            return 2;
        }
        int rc = run_roofline(m, &info, numerics, (int)threads, (uint32_t)chunk, (uint32_t)(gen > 0 ? gen : 32));
        ds4_model_free(m);
        free(toks);
        return rc;
    }
    ds4_session_opts so = {.numerics = numerics, .max_ctx = (uint32_t)ctx_alloc, .prefill_chunk = (uint32_t)chunk};
    ds4_session *s = ds4_session_new(m, &so, &err), *snap = ds4_session_new(m, &so, &err);
    FILE *out = csv_path ? fopen(csv_path, "w") : stdout;
    int rc = 1;
    if (!s || !snap) goto done;
    if (!out) {
        snprintf(err.msg, sizeof err.msg, "cannot write '%s': %s", csv_path, strerror(errno));
        goto done;
    }
    fprintf(out, "ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes\n");
    uint32_t cur = 0;
    for (double frontier = ctx_start;;) {
        uint32_t f = (uint32_t)frontier;
        int32_t next = 0;
        double t0 = now_s();
        if (ds4_session_eval_pick(s, toks + cur, f - cur, 0, &next, &err)) goto done;
        double t1 = now_s();
        if (ds4_session_copy_state(snap, s, &err)) goto done;
        uint64_t kv = ds4_session_state_bytes(s);
        double t2 = now_s();
        /* greedy, each pick fed back (an end-of-sequence pick does not stop the timing) */
        for (uint32_t g = 0; g < (uint32_t)gen; g++)
            if (ds4_session_eval_pick(s, &next, 1, 0, &next, &err)) goto done;
        double t3 = now_s();
        if (ds4_session_copy_state(s, snap, &err)) goto done;
        fprintf(out, "%u,%u,%.2f,%u,%.2f,%llu\n", f, f - cur, (f - cur) / (t1 - t0), (uint32_t)gen,
                gen > 0 ? gen / (t3 - t2) : 0.0, (unsigned long long)kv);
        fflush(out);
        cur = f;
        if (f >= (uint32_t)ctx_max) break;
        frontier = step_mul > 1 ? ceil(frontier * step_mul) : frontier + step_incr;
        if (frontier > ctx_max) frontier = ctx_max;
    }
    rc = 0;
done:
    if (rc) fprintf(stderr, "ds4-bench: %s\n", err.msg);
    if (out && out != stdout) fclose(out);
    ds4_session_free(s);
    ds4_session_free(snap);
    ds4_model_free(m);
    free(toks);
    return rc;
}
