/* ds4: run DeepSeek V4 on the CPU.
 * This is the scripting contract of the engine (stable flags):
 *   ds4 -m MODEL.gguf --tokens 1,2,3|@ids.txt [--numerics official|hf]
 *       [--prefill-chunk N] [-t THREADS] [--ctx N] [--dump-logits OUT.f32]
 *       [-n N --temp 0]
 *       sidecar packages (-m DIR): [--resident] [--moe-slot-bank N]
 *       [--ssd-cache auto|SIZE] [--ssd-io auto|direct|buffered]
 *       [--no-moe-prefetch] [--moe-stats]
 * --dump-logits writes little-endian float32 [prompt_len x vocab];
 * -n N greedily generates N tokens and prints their ids comma-separated. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ds4.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ds4 -m MODEL.gguf --tokens IDS|@FILE [options]\n"
            "  -m, --model FILE        GGUF model (default ./ds4flash.gguf)\n"
            "  --tokens IDS|@FILE      prompt token ids, comma separated (or from FILE)\n"
            "  -n, --n-predict N       generate N tokens after the prompt (greedy)\n"
            "  --temp T                sampling temperature (only 0 = greedy so far)\n"
            "  --numerics MODE         official (default: DeepSeek's FP8/FP4 simulations)\n"
            "                          or hf (plain fp32, matches transformers)\n"
            "  --prefill-chunk N       tokens per prefill pass (default: whole prompt)\n"
            "  -c, --ctx N             context size of the session (default 32768)\n"
            "  -t, --threads N         worker threads (default: all cores)\n"
            "  --dump-logits FILE      write float32 [prompt_len x vocab] logits\n"
            "  -v, --verbose           print a model summary and timings\n"
            "sidecar packages (-m DIR holding manifest.json and dense/model-dense.gguf):\n"
            "  --resident              read every expert into RAM at load\n"
            "  --moe-slot-bank N       stream experts through N slots per layer\n"
            "                          (experts per token .. experts per layer)\n"
            "  --ssd-cache auto|SIZE   size the slot banks by a byte budget (e.g. 8G, 512M);\n"
            "                          auto (default): 20%% of MemAvailable after dense + KV\n"
            "  --ssd-io MODE           expert reads: auto (default), direct (O_DIRECT) or buffered\n"
            "  --no-moe-prefetch       do not start next-layer expert reads early\n"
            "  --moe-stats             print slot-bank hits, misses, bytes read, MB/s at exit\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Parses "1,2,3" (whitespace and newlines allowed as separators too). */
static int parse_ids(const char *s, int32_t **out, uint32_t *n_out) {
    size_t cap = 64, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return -1;
    while (*s) {
        while (*s == ',' || *s == ' ' || *s == '\n' || *s == '\r' || *s == '\t') s++;
        if (!*s) break;
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > INT32_MAX) {
            free(ids);
            return -1;
        }
        if (n == cap) {
            int32_t *grown = realloc(ids, (cap *= 2) * sizeof *ids);
            if (!grown) {
                free(ids);
                return -1;
            }
            ids = grown;
        }
        ids[n++] = (int32_t)v;
        s = end;
    }
    *out = ids;
    *n_out = (uint32_t)n;
    return 0;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0;) {
        n += got;
        if (n + 1 == cap) {
            char *g = realloc(buf, cap *= 2);
            if (!g) free(buf);
            buf = g;
        }
    }
    fclose(f);
    if (buf) buf[n] = 0;
    return buf;
}

static int need_arg(int i, int argc, const char *flag) {
    if (i + 1 >= argc) {
        fprintf(stderr, "ds4: %s needs a value\n", flag);
        return 0;
    }
    return 1;
}

static int parse_uint(const char *flag, const char *s, long max, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end || errno || v < 0 || v > max) {
        fprintf(stderr, "ds4: %s expects a number in 0..%ld, got '%s'\n", flag, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* "12G", "512M", "1.5GB", "4096" (bytes); binary units. */
static int parse_size(const char *flag, const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    double mul = 1;
    if (end != s) {
        switch (*end) {
        case 'k': case 'K': mul = 1024.0; end++; break;
        case 'm': case 'M': mul = 1024.0 * 1024; end++; break;
        case 'g': case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
        case 't': case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
        default: break;
        }
        if (mul > 1 && (*end == 'b' || *end == 'B' )) end++;
        if (mul > 1 && *end == 'i' && (end[1] == 'B' || end[1] == 'b')) end += 2;
    }
    if (end == s || *end || errno || !(v > 0) || v * mul >= 1.8e19) {
        fprintf(stderr, "ds4: %s expects 'auto' or a size such as 8G or 512M, got '%s'\n", flag, s);
        return -1;
    }
    *out = (uint64_t)(v * mul);
    return 0;
}

/* The decode phase alone: counters since the prompt was evaluated, over
 * the decode wall time (what a streaming decode reads per token). */
static void print_decode_moe_stats(const ds4_model *model, const ds4_moe_stats *at_prefill, long tokens, double seconds) {
    ds4_moe_stats st;
    ds4_model_moe_stats(model, &st);
    if (!st.streaming || tokens <= 0 || seconds <= 0) return;
    uint64_t hits = st.hits - at_prefill->hits, pre = st.prefetch_used - at_prefill->prefetch_used,
             miss = st.misses - at_prefill->misses, refs = hits + pre + miss;
    double mb = (st.bytes_read - at_prefill->bytes_read) / 1e6;
    fprintf(stderr,
            "ds4: Flash-MoE decode: %ld tokens in %.2fs: hit %.1f%% prefetched %.1f%% miss %.1f%%, read %.1f MB "
            "(%.1f MB/token, %.1f MB/s), stall %.3fs\n",
            tokens, seconds, refs ? 100.0 * hits / refs : 0.0, refs ? 100.0 * pre / refs : 0.0,
            refs ? 100.0 * miss / refs : 0.0, mb, mb / tokens, mb / seconds, st.stall_s - at_prefill->stall_s);
}

static void print_moe_stats(const ds4_model *model) {
    ds4_moe_stats st;
    ds4_model_moe_stats(model, &st);
    if (!st.sidecar) {
        fprintf(stderr, "ds4: Flash-MoE stats: experts read in place from the GGUF (no sidecar)\n");
        return;
    }
    uint64_t refs = st.hits + st.misses + st.prefetch_used;
    fprintf(stderr,
            "ds4: Flash-MoE stats: %s slots=%u refs=%llu hits=%llu (hit %.1f%%) prefetched=%llu (late %llu) "
            "misses=%llu; prefetch issued=%llu wasted=%llu\n",
            st.streaming ? "slot-bank" : "resident", st.slots, (unsigned long long)refs, (unsigned long long)st.hits,
            refs ? 100.0 * st.hits / refs : 100.0, (unsigned long long)st.prefetch_used,
            (unsigned long long)st.prefetch_late, (unsigned long long)st.misses, (unsigned long long)st.prefetch_issued,
            (unsigned long long)st.prefetch_wasted);
    fprintf(stderr,
            "ds4: Flash-MoE I/O: reads=%llu (direct %llu, buffered %llu) bytes=%.1f MB retries=%llu stall=%.3fs "
            "io-busy=%.3fs read-rate=%.1f MB/s (bytes / io-busy)\n",
            (unsigned long long)st.reads, (unsigned long long)st.direct, (unsigned long long)st.buffered,
            st.bytes_read / 1e6, (unsigned long long)st.retries, st.stall_s, st.io_busy_s,
            st.io_busy_s > 0 ? st.bytes_read / 1e6 / st.io_busy_s : 0.0);
}

int main(int argc, char **argv) {
    const char *model_path = "./ds4flash.gguf", *tokens_arg = NULL, *dump = NULL;
    long n_predict = 0, chunk = 0, threads = 0, ctx = 32768;
    double temp = 0;
    int verbose = 0, moe_stats = 0;
    ds4_model_opts mo = {0};
    ds4_numerics numerics = DS4_NUMERICS_OFFICIAL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            verbose = 1;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!need_arg(i, argc, a)) return 2;
            model_path = argv[++i];
        } else if (!strcmp(a, "--tokens")) {
            if (!need_arg(i, argc, a)) return 2;
            tokens_arg = argv[++i];
        } else if (!strcmp(a, "--dump-logits")) {
            if (!need_arg(i, argc, a)) return 2;
            dump = argv[++i];
        } else if (!strcmp(a, "--numerics")) {
            if (!need_arg(i, argc, a)) return 2;
            const char *v = argv[++i];
            if (!strcmp(v, "official")) numerics = DS4_NUMERICS_OFFICIAL;
            else if (!strcmp(v, "hf")) numerics = DS4_NUMERICS_HF;
            else {
                fprintf(stderr, "ds4: --numerics must be 'official' or 'hf', got '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) {
            if (!need_arg(i, argc, a) || parse_uint(a, argv[++i], 1 << 30, &n_predict)) return 2;
        } else if (!strcmp(a, "--prefill-chunk")) {
            if (!need_arg(i, argc, a) || parse_uint(a, argv[++i], 1 << 30, &chunk)) return 2;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!need_arg(i, argc, a) || parse_uint(a, argv[++i], 4096, &threads)) return 2;
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) {
            if (!need_arg(i, argc, a) || parse_uint(a, argv[++i], 1L << 31, &ctx)) return 2;
        } else if (!strcmp(a, "--resident")) {
            mo.resident = true;
        } else if (!strcmp(a, "--moe-stats")) {
            moe_stats = 1;
        } else if (!strcmp(a, "--no-moe-prefetch")) {
            mo.no_moe_prefetch = true;
        } else if (!strcmp(a, "--moe-slot-bank")) {
            long v;
            if (!need_arg(i, argc, a) || parse_uint(a, argv[++i], 1 << 20, &v)) return 2;
            if (v == 0) {
                fprintf(stderr, "ds4: --moe-slot-bank expects at least 1 slot\n");
                return 2;
            }
            mo.moe_slot_bank = (uint32_t)v;
        } else if (!strcmp(a, "--ssd-cache")) {
            if (!need_arg(i, argc, a)) return 2;
            const char *v = argv[++i];
            if (strcmp(v, "auto") && parse_size(a, v, &mo.ssd_cache_bytes)) return 2;
            if (!strcmp(v, "auto")) mo.ssd_cache_bytes = 0;
        } else if (!strcmp(a, "--ssd-io")) {
            if (!need_arg(i, argc, a)) return 2;
            const char *v = argv[++i];
            if (!strcmp(v, "auto")) mo.ssd_io = DS4_SSD_IO_AUTO;
            else if (!strcmp(v, "direct")) mo.ssd_io = DS4_SSD_IO_DIRECT;
            else if (!strcmp(v, "buffered")) mo.ssd_io = DS4_SSD_IO_BUFFERED;
            else {
                fprintf(stderr, "ds4: --ssd-io must be 'auto', 'direct' or 'buffered', got '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--temp")) {
            if (!need_arg(i, argc, a)) return 2;
            char *end;
            temp = strtod(argv[++i], &end);
            if (*end || temp < 0) {
                fprintf(stderr, "ds4: --temp expects a non-negative number, got '%s'\n", argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "ds4: unknown option '%s' (see ds4 --help)\n", a);
            return 2;
        }
    }
    if (!tokens_arg) {
        fprintf(stderr, "ds4: no prompt: pass --tokens IDS (text prompts arrive with the tokenizer)\n");
        usage(stderr);
        return 2;
    }
    if (temp != 0) {
        fprintf(stderr, "ds4: --temp %g: sampling is not implemented yet; only greedy decoding (--temp 0) works\n", temp);
        return 2;
    }
    char *ids_text = NULL;
    if (tokens_arg[0] == '@') {
        ids_text = read_file(tokens_arg + 1);
        if (!ids_text) {
            fprintf(stderr, "ds4: cannot read token file '%s': %s\n", tokens_arg + 1, strerror(errno));
            return 1;
        }
    }
    int32_t *prompt = NULL;
    uint32_t n_prompt = 0;
    if (parse_ids(ids_text ? ids_text : tokens_arg, &prompt, &n_prompt) || n_prompt == 0) {
        fprintf(stderr, "ds4: --tokens: expected comma-separated non-negative ids in %s\n",
                ids_text ? tokens_arg + 1 : "the argument");
        free(ids_text);
        return 2;
    }
    free(ids_text);

    ds4_error err = {{0}};
    mo.n_threads = (int)threads;
    mo.verbose = verbose;
    if (ctx < (long)n_prompt + n_predict) ctx = (long)n_prompt + n_predict;
    mo.ctx_hint = (uint32_t)ctx;
    double t0 = now_s();
    ds4_model *model = ds4_model_load(model_path, &mo, &err);
    if (!model) {
        fprintf(stderr, "ds4: %s\n", err.msg);
        free(prompt);
        return 1;
    }
    ds4_model_info info;
    ds4_model_get_info(model, &info);
    if (ctx < (long)n_prompt + n_predict) ctx = (long)n_prompt + n_predict;
    ds4_session_opts so = {.numerics = numerics, .max_ctx = (uint32_t)ctx, .prefill_chunk = (uint32_t)chunk};
    ds4_session *s = ds4_session_new(model, &so, &err);
    float *all = NULL;
    int rc = 1;
    if (!s) goto out;
    if (dump && !(all = malloc((size_t)n_prompt * info.n_vocab * sizeof(float)))) {
        snprintf(err.msg, sizeof err.msg, "out of memory for %u x %u logits", n_prompt, info.n_vocab);
        goto out;
    }
    double t1 = now_s();
    if (ds4_session_eval(s, prompt, n_prompt, all, &err)) goto out;
    double t2 = now_s();
    ds4_moe_stats at_prefill;
    ds4_model_moe_stats(model, &at_prefill);
    if (dump) {
        FILE *f = fopen(dump, "wb");
        if (!f || fwrite(all, sizeof(float), (size_t)n_prompt * info.n_vocab, f) != (size_t)n_prompt * info.n_vocab ||
            fclose(f) != 0) {
            snprintf(err.msg, sizeof err.msg, "cannot write logits to '%s': %s", dump, strerror(errno));
            goto out;
        }
    }
    for (long i = 0; i < n_predict; i++) {
        const float *lg = ds4_session_logits(s);
        int32_t best = 0;
        for (uint32_t v = 1; v < info.n_vocab; v++)
            if (lg[v] > lg[best]) best = (int32_t)v;
        printf("%s%d", i ? "," : "", best);
        fflush(stdout);
        if (i + 1 < n_predict && ds4_session_eval(s, &best, 1, NULL, &err)) goto out;
    }
    if (n_predict) printf("\n");
    double t3 = now_s();
    /* Same span as the "generated ... t/s" figure: the first token comes
     * from the prompt's logits, every later one costs a forward pass. */
    if (moe_stats && n_predict > 1) print_decode_moe_stats(model, &at_prefill, n_predict - 1, t3 - t2);
    if (verbose)
        fprintf(stderr, "ds4: load %.2fs, prefill %u tokens %.1f t/s, generated %ld tokens %.1f t/s\n", t1 - t0, n_prompt,
                n_prompt / (t2 - t1), n_predict, n_predict > 1 ? (n_predict - 1) / (t3 - t2) : 0.0);
    rc = 0;
out:
    if (rc) fprintf(stderr, "ds4: %s\n", err.msg);
    if (moe_stats && model) print_moe_stats(model);
    free(all);
    free(prompt);
    ds4_session_free(s);
    ds4_model_free(model);
    return rc;
}
