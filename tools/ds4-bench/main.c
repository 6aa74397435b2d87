/* ds4-bench: prefill and decode speed at growing context frontiers.
 * For each frontier the session is extended by the new interval (timed
 * prefill), snapshotted, a greedy generation of fixed length is timed, and the
 * snapshot is restored. One CSV row per frontier. The token sequence comes
 * from a text file (plain BPE), a chat prompt file (one non-thinking user
 * turn), a file of ids, or, for models without a tokenizer, a fixed
 * pseudo-random walk over the vocabulary. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ds4.h"
#include "ds4_chat.h"
#include "ds4_tokenizer.h"
#include "roofline.h"
#include "util/textfile.h"
#include "util/units.h"
#include "util/clock.h"

/* The system prompt of --chat-prompt-file (with its period, unlike the
 * CLI's; spec/INTERFACES.md 1.4). */
#define BENCH_DEFAULT_SYSTEM "You are a helpful assistant."

static void usage(FILE *f) {
    fprintf(f,
            "usage: ds4-bench -m MODEL.gguf [--prompt-file FILE | --chat-prompt-file FILE] [options]\n"
            "  --prompt-file FILE   the benchmark text, tokenized as it is (no template, no BOS)\n"
            "  --chat-prompt-file FILE  the text as one user message of a chat (no thinking)\n"
            "  -sys, --system TEXT  system prompt of --chat-prompt-file (default \"" BENCH_DEFAULT_SYSTEM "\")\n"
            "  --tokenizer FILE     tokenizer for the prompt files (GGUF or tokenizer.json);\n"
            "                       default: the one embedded in the model\n"
            "  --tokens-file FILE   token ids instead (comma/space separated)\n"
            "                       with none of these: synthetic ids (a fixed walk over the vocabulary)\n"
            "  --ctx-start N        first frontier (default 2048)\n"
            "  --ctx-max N          last frontier (default 32768)\n"
            "  --ctx-alloc N        session size (default ctx-max + gen-tokens + 1)\n"
            "  --step-incr N        frontier increment (default 2048, used when --step-mul is 1)\n"
            "  --step-mul F         frontier multiplier (>= 1, default 1)\n"
            "  --gen-tokens N       greedy tokens generated at each frontier, the end-of-sequence\n"
            "                       token excluded so that every row times N tokens (default 128)\n"
            "  --prefill-chunk N    tokens per prefill pass (default 512 on the CPU, 2048 on the GPU)\n"
            "  --numerics MODE      official (default) or hf\n"
            "  -t, --threads N      worker threads (default all cores)\n"
            "  --cuda | --cpu       run on the GPU or the CPU (default: the GPU when built with CUDA)\n"
            "  --backend NAME       the same as a name: cuda, cpu or auto\n"
            "  --gpu-expert-cache SIZE|auto  VRAM slot bank for routed experts, e.g. 16G\n"
            "                       (auto, the default: all resident if they fit)\n"
            "  --ssd-streaming      stream a GGUF's routed experts out of the file through a slot\n"
            "                       bank (a sidecar package always streams)\n"
            "  --ssd-cache SIZE|auto  RAM for the streamed experts' slot banks (implies\n"
            "                       --ssd-streaming; auto: a share of MemAvailable)\n"
            "  --warm-weights       read the weights file into the page cache before the first\n"
            "                       frontier (else its prefill also times the disk)\n"
            "  --csv FILE           write the CSV there instead of stdout\n"
            "  --roofline           measure this machine's read bandwidth and peak fp32 rate and\n"
            "                       report decode and prefill speed as fractions of them\n");
}

/* The value after option argv[*i] (a path or a name). */
static int str_arg(int argc, char **argv, int *i, const char **out) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "ds4-bench: %s needs a value\n", argv[*i]);
        return -1;
    }
    *out = argv[++*i];
    return 0;
}

/* The value after option argv[*i]: "auto" (0; "0" too where zero_auto),
 * or a size such as `example`. */
static int size_arg(int argc, char **argv, int *i, bool zero_auto, const char *example, uint64_t *out) {
    const char *v;
    if (str_arg(argc, argv, i, &v)) return -1;
    if (!strcmp(v, "auto") || (zero_auto && !strcmp(v, "0"))) *out = 0;
    else if (ds4_parse_size(v, out)) {
        fprintf(stderr, "ds4-bench: %s expects 'auto' or a size such as %s, got '%s'\n", argv[*i - 1], example, v);
        return -1;
    }
    return 0;
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

/* Ids separated by commas and/or white space; anything else is an error
 * naming the file and the offending text. */
static int parse_ids_file(const char *path, ds4_tokens *out, ds4_error *err) {
    char *text = ds4_read_text_file(path, DS4_TEXT_FILE_MAX, NULL, err);
    if (!text) return -1;
    int rc = 0;
    for (char *p = text; *p && !rc;) {
        if (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') {
            p++;
            continue;
        }
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) rc = ds4_fail(err, "%s: not a token id at '%.20s'", path, p);
        else if (ds4_tokens_push(out, (int32_t)v)) rc = ds4_fail(err, "%s: out of memory", path);
        p = end;
    }
    free(text);
    return rc;
}

/* Where the benchmark's tokens come from (at most one path is set). */
typedef struct prompt_src {
    const char *text_path, *chat_path, *ids_path, *system, *tokenizer_path;
} prompt_src;

/* The text of a prompt file through the tokenizer: plain BPE of the text
 * as it is, or a chat rendering with the system prompt (no thinking). */
static int tokenize_prompt(const ds4_model *m, const char *model_path, const prompt_src *p, ds4_tokens *out,
                           ds4_error *err) {
    ds4_tokenizer *own = NULL;
    const ds4_tokenizer *tok = ds4_model_tokenizer(m);
    if (p->tokenizer_path) {
        if (!(own = ds4_tokenizer_load(p->tokenizer_path, err))) return -1;
        tok = own;
    } else if (!tok) {
        return ds4_fail(err, "%s has no tokenizer; give --tokenizer FILE (a GGUF or tokenizer.json) or --tokens-file",
                        model_path);
    }
    const char *path = p->text_path ? p->text_path : p->chat_path;
    size_t len;
    char *text = ds4_read_text_file(path, DS4_TEXT_FILE_MAX, &len, err);
    int rc = -1;
    if (!text) goto out;
    if (p->text_path) {
        rc = ds4_tokenize(tok, text, len, false, out, err);
    } else {
        ds4_segments segs = {0};
        int missing = 0;
        if (ds4_chat_render_prompt(p->system, text, DS4_THINK_NONE, &segs)) ds4_fail(err, "out of memory");
        else rc = ds4_chat_tokenize(tok, &segs, out, &missing, err);
        ds4_segments_free(&segs);
        if (missing)
            fprintf(stderr, "ds4-bench: warning: %d chat marker(s) are not single tokens in this vocabulary; rendered as text\n",
                    missing);
    }
    if (rc) ds4_fail_prefix(err, "%s", path);
out:
    free(text);
    ds4_tokenizer_free(own);
    return rc;
}

/* The benchmark's token sequence, at least need tokens long, every id in
 * the model's vocabulary. Without a source: a fixed pseudo-random walk. */
static int load_prompt(const ds4_model *m, const char *model_path, const prompt_src *p, uint32_t n_vocab,
                       uint32_t need, ds4_tokens *out, ds4_error *err) {
    const char *path = p->text_path ? p->text_path : p->chat_path ? p->chat_path : p->ids_path;
    if (!path) {
        uint64_t x = 0x9e3779b97f4a7c15ull;
        for (uint32_t i = 0; i < need; i++) {
            x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
            if (ds4_tokens_push(out, (int32_t)((x * 0x2545f4914f6cdd1dull >> 33) % n_vocab)))
                return ds4_fail(err, "out of memory");
        }
        return 0;
    }
    if (p->ids_path ? parse_ids_file(p->ids_path, out, err) : tokenize_prompt(m, model_path, p, out, err)) return -1;
    fprintf(stderr, "ds4-bench: %s: %zu tokens (%s)\n", path, out->n,
            p->ids_path ? "ids" : p->text_path ? "text, no template" : "one chat turn, no thinking");
    for (size_t i = 0; i < out->n; i++)
        if ((uint32_t)out->ids[i] >= n_vocab)
            return ds4_fail(err, "%s: token %zu is id %d, outside the model's vocabulary of %u", path, i, out->ids[i],
                            n_vocab);
    if (out->n < need)
        return ds4_fail(err, "%s gives %zu tokens, fewer than --ctx-max %u", path, out->n, need);
    return 0;
}

/* Decode and prefill speed next to the machine's ceilings: decode reads
 * token_bytes of weights per token (memory bound at batch 1); prefill does
 * 2 x token_params flops per token (compute bound once a chunk shares each
 * pass over the weights). */
static int run_roofline(ds4_model *m, const ds4_model_info *info, ds4_numerics numerics, int threads, uint32_t chunk,
                        uint32_t gen) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = threads > 0 ? threads : (int)(cores > 0 ? cores : 1);
    double secs, bw, copy_bw = 0, peak = 0, peak8 = 0;
    ds4_error err = {{0}};
    bool gpu = ds4_model_backend(m) == DS4_BACKEND_CUDA;
    if (gpu) {
        /* Decode on the GPU reads the weights from device memory. */
        if (ds4_cuda_bandwidth(&bw, &copy_bw, &err)) {
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
    ds4_moe_stats at_decode, at_end;
    double t0 = ds4_now_s();
    int rc = ds4_session_eval_pick_except(s, toks, chunk, info->eos_id, &next, &err);
    double t1 = ds4_now_s();
    ds4_model_moe_stats(m, &at_decode);
    for (uint32_t g = 0; rc == 0 && g < gen; g++) rc = ds4_session_eval_pick_except(s, &next, 1, info->eos_id, &next, &err);
    double t2 = ds4_now_s();
    ds4_model_moe_stats(m, &at_end);
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
        printf("GPU read bandwidth      %.2f GB/s (a kernel reading; best of 5 passes over a large buffer)\n", bw / 1e9);
        printf("GPU copy bandwidth      %.2f GB/s (device-to-device copies, bytes read + bytes written; best of 5)\n",
               copy_bw / 1e9);
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
    if (copy_bw > 0) { /* the ceiling a copy's bandwidth gives (the usual roofline measure) */
        double copy_ceiling = copy_bw / (double)info->token_bytes;
        printf("decode vs copy rate     ceiling %.2f t/s at the copy bandwidth; ratio %.1f%%\n", copy_ceiling,
               100.0 * decode_tps / copy_ceiling);
    }
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
    if (at_end.streaming) {
        /* the decode's share of the streamed experts' host bank */
        uint64_t hits = at_end.hits - at_decode.hits, pre = at_end.prefetch_used - at_decode.prefetch_used;
        uint64_t misses = at_end.misses - at_decode.misses, refs = hits + pre + misses;
        printf("host slot bank (decode) %u slots a layer; %llu hits, %llu prefetched, %llu misses (%.1f%% hits); "
               "%.1f MB read a token; %.3f s waiting for reads; %llu experts returned by the GPU\n",
               at_end.slots, (unsigned long long)hits, (unsigned long long)pre, (unsigned long long)misses,
               refs ? 100.0 * hits / refs : 0.0,
               gen ? (at_end.bytes_read - at_decode.bytes_read) / 1e6 / gen : 0.0, at_end.stall_s - at_decode.stall_s,
               (unsigned long long)(at_end.returned - at_decode.returned));
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *model_path = "ds4flash.gguf", *csv_path = NULL;
    prompt_src src = {.system = BENCH_DEFAULT_SYSTEM};
    double ctx_start = 2048, ctx_max = 32768, ctx_alloc = 0, step_incr = 2048, step_mul = 1, gen = 128, chunk = -1,
           threads = 0;
    ds4_numerics numerics = DS4_NUMERICS_OFFICIAL;
    int roofline = 0;
    bool warm = false, streaming = false;
    ds4_backend backend = DS4_BACKEND_AUTO;
    uint64_t expert_cache = 0, ssd_cache = 0; /* 0: automatic */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int rc = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) rc = str_arg(argc, argv, &i, &model_path);
        else if (!strcmp(a, "--tokens-file")) rc = str_arg(argc, argv, &i, &src.ids_path);
        else if (!strcmp(a, "--prompt-file")) rc = str_arg(argc, argv, &i, &src.text_path);
        else if (!strcmp(a, "--chat-prompt-file")) rc = str_arg(argc, argv, &i, &src.chat_path);
        else if (!strcmp(a, "-sys") || !strcmp(a, "--system")) rc = str_arg(argc, argv, &i, &src.system);
        else if (!strcmp(a, "--tokenizer")) rc = str_arg(argc, argv, &i, &src.tokenizer_path);
        else if (!strcmp(a, "--csv")) rc = str_arg(argc, argv, &i, &csv_path);
        else if (!strcmp(a, "--roofline")) roofline = 1;
        else if (!strcmp(a, "--warm-weights")) warm = true;
        else if (!strcmp(a, "--ssd-streaming")) streaming = true;
        else if (!strcmp(a, "--cuda")) backend = DS4_BACKEND_CUDA;
        else if (!strcmp(a, "--cpu")) backend = DS4_BACKEND_CPU;
        else if (!strcmp(a, "--backend")) {
            const char *v;
            ds4_error e;
            if (str_arg(argc, argv, &i, &v)) return 2;
            if (ds4_backend_parse(v, &backend, &e)) {
                fprintf(stderr, "ds4-bench: --backend: %s\n", e.msg);
                return 2;
            }
        } else if (!strcmp(a, "--gpu-expert-cache")) rc = size_arg(argc, argv, &i, true, "16G", &expert_cache);
        else if (!strcmp(a, "--ssd-cache")) {
            streaming = true;
            rc = size_arg(argc, argv, &i, false, "8G", &ssd_cache);
        } else if (!strcmp(a, "--numerics")) {
            const char *v;
            if (str_arg(argc, argv, &i, &v)) return 2;
            if (!strcmp(v, "hf")) numerics = DS4_NUMERICS_HF;
            else if (!strcmp(v, "official")) numerics = DS4_NUMERICS_OFFICIAL;
            else {
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
        else {
            fprintf(stderr, "ds4-bench: unknown option '%s' (see --help)\n", a);
            return 2;
        }
        if (rc) return 2;
    }
    if (!!src.text_path + !!src.chat_path + !!src.ids_path > 1) {
        fprintf(stderr, "ds4-bench: give at most one of --prompt-file, --chat-prompt-file and --tokens-file\n");
        return 2;
    }
    if (ctx_max > UINT32_MAX / 2 || gen > UINT32_MAX / 2) {
        fprintf(stderr, "ds4-bench: --ctx-max and --gen-tokens must be below 2^31\n");
        return 2;
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
    ds4_model_opts mo = {.n_threads = (int)threads, .backend = backend, .gpu_expert_cache = expert_cache,
                          .warm_weights = warm, .ssd_streaming = streaming, .ssd_cache_bytes = ssd_cache};
    ds4_model *m = ds4_model_load(model_path, &mo, &err);
    if (!m) {
        fprintf(stderr, "ds4-bench: %s\n", err.msg);
        return 1;
    }
    ds4_model_info info;
    ds4_model_get_info(m, &info);
    if (chunk < 0) chunk = ds4_model_backend(m) == DS4_BACKEND_CUDA ? 2048 : 512; /* as ds4 does */
    ds4_tokens prompt = {0};
    /* (the roofline run prefills synthetic ids of its own) */
    if (!roofline && load_prompt(m, model_path, &src, info.n_vocab, (uint32_t)ctx_max, &prompt, &err)) {
        fprintf(stderr, "ds4-bench: %s\n", err.msg);
        ds4_tokens_free(&prompt);
        ds4_model_free(m);
        return 1;
    }
    const int32_t *toks = prompt.ids;
    if (roofline) {
        if (chunk < 1) {
            fprintf(stderr, "ds4-bench: --roofline prefills one chunk: it needs --prefill-chunk >= 1\n");
            ds4_model_free(m);
            ds4_tokens_free(&prompt);
            return 2;
        }
        int rc = run_roofline(m, &info, numerics, (int)threads, (uint32_t)chunk, (uint32_t)(gen > 0 ? gen : 32));
        ds4_model_free(m);
        ds4_tokens_free(&prompt);
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
        double t0 = ds4_now_s();
        if (ds4_session_eval_pick_except(s, toks + cur, f - cur, info.eos_id, &next, &err)) goto done;
        double t1 = ds4_now_s();
        if (ds4_session_copy_state(snap, s, &err)) goto done;
        uint64_t kv = ds4_session_state_bytes(s);
        double t2 = ds4_now_s();
        /* greedy, each pick fed back, never the end-of-sequence token */
        for (uint32_t g = 0; g < (uint32_t)gen; g++)
            if (ds4_session_eval_pick_except(s, &next, 1, info.eos_id, &next, &err)) goto done;
        double t3 = ds4_now_s();
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
    ds4_tokens_free(&prompt);
    return rc;
}
