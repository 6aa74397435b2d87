/* ds4: run DeepSeek V4 from the command line.
 *
 *   ds4 -p TEXT | --prompt-file FILE    one-shot chat (streamed text)
 *   ds4                                 interactive chat
 *   ds4 --tokens IDS|@FILE              raw token ids; with -n prints generated ids
 *   ds4 --tokenize -p TEXT              prompt ids without loading weights
 *   ds4 --detokenize IDS                the text of ids
 *
 * The --tokens contract is stable for scripts: --dump-logits writes
 * little-endian float32 [prompt_len x vocab]; -n N prints N generated ids
 * comma-separated (--temp 0 for greedy). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "util/textfile.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ds4 [-m MODEL] [-p TEXT | --prompt-file FILE | --tokens IDS|@FILE] [options]\n"
            "Without a prompt, ds4 starts an interactive chat.\n"
            "  -m, --model FILE        GGUF model (default ./ds4flash.gguf)\n"
            "  -p, --prompt TEXT       one-shot prompt, rendered with the chat template\n"
            "  --prompt-file FILE      the prompt from a file\n"
            "  -sys, --system TEXT     system prompt (default \"" DS4_DEFAULT_SYSTEM "\"; empty disables)\n"
            "  --raw                   prompt = BOS + text, no chat template (base models)\n"
            "  --think | --think-max | --nothink   reasoning mode (default --think;\n"
            "                          --think-max needs --ctx >= 393216)\n"
            "  -n, --n-predict N       tokens to generate (default: until EOS or a full context)\n"
            "  -c, --ctx N             context size (default 32768)\n"
            "  --temp T                temperature (default 1; 0 = greedy)\n"
            "  --top-k K               keep the K best tokens (default 0 = off, max 1024)\n"
            "  --top-p P               nucleus mass (default 1 = off)\n"
            "  --min-p P               drop tokens below P x the best's probability (default 0.05)\n"
            "  --seed N                sampling seed (default: time based)\n"
            "  -t, --threads N         worker threads (default: all cores)\n"
            "  --numerics MODE         official (default) or hf (fp32, matches transformers)\n"
            "  --cuda | --cpu          run on the GPU or the CPU (default: the GPU when this build\n"
            "                          has CUDA (make cuda) and one is usable)\n"
            "  --backend NAME          the same as a name: cuda, cpu or auto\n"
            "  --gpu-expert-cache SIZE|auto  VRAM for routed experts, e.g. 40G (a slot bank fed from\n"
            "                          host memory); auto: all on the GPU if they fit (default)\n"
            "  --prefill-chunk N       tokens per prefill pass (default 512 on the CPU, 2048 on\n"
            "                          the GPU; 0 = whole prompt)\n"
            "  --tokens IDS|@FILE      prompt as token ids (comma separated); prints generated ids\n"
            "  --dump-logits FILE      with --tokens: float32 [prompt_len x vocab] logits\n"
            "  --dump-tokens           print the prompt's token ids and pieces, then exit\n"
            "  --dump-logprobs FILE    greedy continuation with top log-probabilities as JSON\n"
            "  --logprobs-top-k K      entries per step in --dump-logprobs (default 20, max 128)\n"
            "  --tokenize              print the ids of the raw prompt text (no template, no BOS)\n"
            "  --tokenizer FILE        tokenizer for --tokenize/--detokenize (GGUF or tokenizer.json)\n"
            "  --detokenize IDS        print the text of comma-separated ids\n"
            "  --perplexity-file FILE  perplexity of a text (tokenized as it is, no template, no BOS):\n"
            "                          the first 32 tokens are context, the rest are scored (-n N:\n"
            "                          at most N); prints tokens= scored= nll= avg_nll= ppl=\n"
            "  --perplexity            the same for the ids of --tokens\n"
            "  --warm-weights          read the whole weights file into the page cache at load,\n"
            "                          so that the first prompt does not wait on the disk\n"
            "  --inspect               load and validate the model, print a summary, exit\n"
            "  -v, --verbose           model summary and timings\n"
            "streamed experts: a sidecar package (-m DIR holding manifest.json and\n"
            "dense/model-dense.gguf) always streams; a GGUF streams its experts out of the file\n"
            "with any of these, and by itself when it is larger than RAM (on a GPU: when its\n"
            "experts fit neither VRAM nor RAM):\n"
            "  --ssd-streaming         stream the routed experts (bank sized as --ssd-cache auto)\n"
            "  --resident              read every expert into RAM at load\n"
            "  --moe-slot-bank N       stream experts through N slots per layer\n"
            "                          (experts per token .. experts per layer)\n"
            "  --ssd-cache auto|SIZE   size the slot banks by a byte budget (e.g. 8G, 512M);\n"
            "                          auto (default): 20%% of MemAvailable after dense + KV\n"
            "                          (40%% where the page cache cannot keep the experts)\n"
            "  --ssd-io MODE           expert reads: auto (default), direct (O_DIRECT) or buffered\n"
            "  --no-moe-prefetch       no overlap of expert reads with compute (for comparison)\n"
            "  --no-moe-guess          do not read experts guessed for the next layer early\n"
            "  --moe-stats             print slot-bank hits, misses, bytes read, MB/s at exit\n");
}

static void missing_model(const char *path) {
    fprintf(stderr,
            "ds4: model '%s' not found.\n"
            "  Download a published DeepSeek V4 Flash GGUF with ./download_model.sh q2 (about 81 GB)\n"
            "  or ./download_model.sh q4 (about 153 GB), or convert a checkpoint with\n"
            "  ds4-convert CHECKPOINT_DIR model.gguf, then run ds4 -m model.gguf.\n",
            path);
}

static int parse_ids(const char *s, ds4_tokens *out) {
    while (*s) {
        while (*s == ',' || *s == ' ' || *s == '\n' || *s == '\r' || *s == '\t' || *s == '[' || *s == ']') s++;
        if (!*s) break;
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > INT32_MAX) return -1;
        if (ds4_tokens_push(out, (int32_t)v)) return -1;
        s = end;
    }
    return out->n ? 0 : -1;
}

static int parse_long(const char *flag, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "ds4: %s expects an integer in %ld..%ld, got '%s'\n", flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_float(const char *flag, const char *s, double lo, double hi, float *out) {
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "ds4: %s expects a number in %g..%g, got '%s'\n", flag, lo, hi, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

/* "auto" -> 0, else a byte count with an optional K/M/G/T suffix (powers of 1024). */
static int parse_args(int argc, char **argv, cli_opts *o) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED()                                                      \
    do {                                                            \
        if (!v) {                                                   \
            fprintf(stderr, "ds4: %s needs a value\n", a);          \
            return -1;                                              \
        }                                                           \
        i++;                                                        \
    } while (0)
        long l;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) o->verbose = true;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { NEED(); o->model = v; }
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { NEED(); o->prompt = v; }
        else if (!strcmp(a, "--prompt-file")) { NEED(); o->prompt_file = v; }
        else if (!strcmp(a, "-sys") || !strcmp(a, "--system")) { NEED(); o->system = v; }
        else if (!strcmp(a, "--tokens")) { NEED(); o->tokens_arg = v; }
        else if (!strcmp(a, "--dump-logits")) { NEED(); o->dump_logits = v; }
        else if (!strcmp(a, "--dump-logprobs")) { NEED(); o->dump_logprobs = v; }
        else if (!strcmp(a, "--tokenizer")) { NEED(); o->tokenizer_path = v; }
        else if (!strcmp(a, "--detokenize")) { NEED(); o->detokenize = v; }
        else if (!strcmp(a, "--dump-tokens")) o->dump_tokens = true;
        else if (!strcmp(a, "--perplexity-file")) { NEED(); o->perplexity_file = v; }
        else if (!strcmp(a, "--perplexity")) o->perplexity = true;
        else if (!strcmp(a, "--inspect")) o->inspect = true;
        else if (!strcmp(a, "--resident")) o->mo.resident = true;
        else if (!strcmp(a, "--ssd-streaming")) o->mo.ssd_streaming = true;
        else if (!strcmp(a, "--warm-weights")) o->mo.warm_weights = true;
        else if (!strcmp(a, "--moe-stats")) o->moe_stats = true;
        else if (!strcmp(a, "--no-moe-prefetch")) o->mo.no_moe_prefetch = true;
        else if (!strcmp(a, "--no-moe-guess")) o->mo.no_moe_guess = true;
        else if (!strcmp(a, "--moe-slot-bank")) { NEED(); if (parse_long(a, v, 1, 1L << 20, &l)) return -1; o->mo.moe_slot_bank = (uint32_t)l; }
        else if (!strcmp(a, "--ssd-cache")) {
            NEED();
            o->mo.ssd_streaming = true; /* "auto" too */
            if (!strcmp(v, "auto")) o->mo.ssd_cache_bytes = 0;
            else if (cli_parse_size(a, v, &o->mo.ssd_cache_bytes)) return -1;
        } else if (!strcmp(a, "--ssd-io")) {
            NEED();
            o->mo.ssd_streaming = true;
            if (!strcmp(v, "auto")) o->mo.ssd_io = DS4_SSD_IO_AUTO;
            else if (!strcmp(v, "direct")) o->mo.ssd_io = DS4_SSD_IO_DIRECT;
            else if (!strcmp(v, "buffered")) o->mo.ssd_io = DS4_SSD_IO_BUFFERED;
            else {
                fprintf(stderr, "ds4: --ssd-io must be 'auto', 'direct' or 'buffered', got '%s'\n", v);
                return -1;
            }
        }
        else if (!strcmp(a, "--tokenize")) o->tokenize = true;
        else if (!strcmp(a, "--raw")) o->raw = true;
        else if (!strcmp(a, "--cuda")) o->backend = DS4_BACKEND_CUDA;
        else if (!strcmp(a, "--cpu")) o->backend = DS4_BACKEND_CPU;
        else if (!strcmp(a, "--backend")) {
            NEED();
            ds4_error e;
            if (ds4_backend_parse(v, &o->backend, &e)) {
                fprintf(stderr, "ds4: --backend: %s\n", e.msg);
                return -1;
            }
        } else if (!strcmp(a, "--server")) {
            fprintf(stderr, "ds4: --server: the HTTP server is a program of its own, ds4-server, which this build "
                            "does not include yet\n");
            return -1;
        }
        else if (!strcmp(a, "--gpu-expert-cache")) {
            NEED();
            if (!strcmp(v, "auto")) o->gpu_expert_cache = 0;
            else if (cli_parse_size(a, v, &o->gpu_expert_cache)) return -1;
        }
        else if (!strcmp(a, "--think")) o->mode = DS4_THINK_HIGH;
        else if (!strcmp(a, "--think-max")) o->mode = DS4_THINK_MAX;
        else if (!strcmp(a, "--nothink")) o->mode = DS4_THINK_NONE;
        else if (!strcmp(a, "--numerics")) {
            NEED();
            if (!strcmp(v, "official")) o->numerics = DS4_NUMERICS_OFFICIAL;
            else if (!strcmp(v, "hf")) o->numerics = DS4_NUMERICS_HF;
            else {
                fprintf(stderr, "ds4: --numerics must be 'official' or 'hf', got '%s'\n", v);
                return -1;
            }
        } else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) { NEED(); if (parse_long(a, v, 0, 1L << 31, &o->n_predict)) return -1; }
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) { NEED(); if (parse_long(a, v, 1, 1L << 31, &o->ctx)) return -1; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { NEED(); if (parse_long(a, v, 1, 4096, &o->threads)) return -1; }
        else if (!strcmp(a, "--prefill-chunk")) { NEED(); if (parse_long(a, v, 0, 1L << 20, &o->chunk)) return -1; /* 0: the whole prompt in one pass */ }
        else if (!strcmp(a, "--logprobs-top-k")) { NEED(); if (parse_long(a, v, 1, 128, &o->logprobs_top_k)) return -1; }
        else if (!strcmp(a, "--top-k")) { NEED(); if (parse_long(a, v, 0, 1024, &l)) return -1; o->sampling.top_k = (int)l; }
        else if (!strcmp(a, "--seed")) { NEED(); if (parse_long(a, v, 1, LONG_MAX, &l)) return -1; o->seed = (uint64_t)l; }
        else if (!strcmp(a, "--temp")) { NEED(); if (parse_float(a, v, 0, 100, &o->sampling.temperature)) return -1; }
        else if (!strcmp(a, "--top-p")) { NEED(); if (parse_float(a, v, 0, 1, &o->sampling.top_p)) return -1; }
        else if (!strcmp(a, "--min-p")) { NEED(); if (parse_float(a, v, 0, 1, &o->sampling.min_p)) return -1; }
        else {
            fprintf(stderr, "ds4: unknown option '%s' (see ds4 --help)\n", a);
            return -1;
        }
#undef NEED
    }
    int sources = !!o->prompt + !!o->prompt_file + !!o->tokens_arg + !!o->perplexity_file;
    if (sources > 1) {
        fprintf(stderr, "ds4: give only one of -p, --prompt-file, --tokens and --perplexity-file\n");
        return -1;
    }
    if (o->perplexity && !o->tokens_arg) {
        fprintf(stderr, "ds4: --perplexity scores the ids of --tokens (for a text: --perplexity-file FILE)\n");
        return -1;
    }
    if (o->dump_logits && !o->tokens_arg) {
        fprintf(stderr, "ds4: --dump-logits needs --tokens\n");
        return -1;
    }
    if ((o->tokenize || o->dump_tokens) && !o->prompt && !o->prompt_file) {
        fprintf(stderr, "ds4: %s needs -p or --prompt-file\n", o->tokenize ? "--tokenize" : "--dump-tokens");
        return -1;
    }
    return 0;
}

/* --tokenize / --detokenize / --dump-tokens: the vocabulary alone. */
static int vocab_only(cli_opts *o, const char *text) {
    const char *path = o->tokenizer_path ? o->tokenizer_path : o->model;
    if (access(path, R_OK) != 0) {
        missing_model(path);
        return 1;
    }
    ds4_error err = {{0}};
    ds4_tokenizer *tok = ds4_tokenizer_load(path, &err);
    if (!tok) {
        fprintf(stderr, "ds4: %s\n", err.msg);
        return 1;
    }
    ds4_tokens ids = {0};
    int rc = 1;
    if (o->detokenize) {
        if (parse_ids(o->detokenize, &ids)) {
            fprintf(stderr, "ds4: --detokenize expects comma-separated ids\n");
            goto out;
        }
        size_t len;
        char *s = ds4_detokenize(tok, ids.ids, ids.n, &len, &err);
        if (!s) goto fail;
        fwrite(s, 1, len, stdout);
        putchar('\n');
        free(s);
    } else if (o->tokenize) {
        /* raw text, added tokens recognised as in `tokenizers`, no BOS */
        if (ds4_tokenize(tok, text, strlen(text), true, &ids, &err)) goto fail;
        for (size_t i = 0; i < ids.n; i++) printf("%s%d", i ? "," : "", ids.ids[i]);
        putchar('\n');
    } else {
        ds4_segments segs = {0};
        if (ds4_chat_render_prompt(o->system, text, ds4_think_mode_for_ctx(o->mode, (uint64_t)o->ctx), &segs) ||
            ds4_chat_tokenize(tok, &segs, &ids, NULL, &err)) {
            ds4_segments_free(&segs);
            goto fail;
        }
        ds4_segments_free(&segs);
        printf("[");
        for (size_t i = 0; i < ids.n; i++) printf("%s%d", i ? ", " : "", ids.ids[i]);
        printf("]\n");
        for (size_t i = 0; i < ids.n; i++) printf("%6d  %s\n", ids.ids[i], ds4_tokenizer_token_text(tok, ids.ids[i]));
    }
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "ds4: %s\n", err.msg);
out:
    ds4_tokens_free(&ids);
    ds4_tokenizer_free(tok);
    return rc;
}

/* --tokens: ids in, logits or ids out. */
static int run_ids(ds4_model *m, const cli_opts *o) {
    ds4_tokens prompt = {0};
    char *text = NULL;
    const char *src = o->tokens_arg;
    if (src[0] == '@') {
        ds4_error e = {{0}};
        if (!(text = ds4_read_text_file(src + 1, DS4_TEXT_FILE_MAX, NULL, &e))) {
            fprintf(stderr, "ds4: --tokens: %s\n", e.msg);
            return 1;
        }
        src = text;
    }
    int bad = parse_ids(src, &prompt);
    free(text);
    if (bad) {
        fprintf(stderr, "ds4: --tokens: expected comma-separated non-negative ids\n");
        ds4_tokens_free(&prompt);
        return 2;
    }
    if (o->perplexity) {
        ds4_error e = {{0}};
        int r = cli_perplexity(m, o, prompt.ids, prompt.n, &e);
        if (r) fprintf(stderr, "ds4: %s\n", e.msg);
        ds4_tokens_free(&prompt);
        return r ? 1 : 0;
    }
    ds4_model_info info;
    ds4_model_get_info(m, &info);
    long n_predict = o->n_predict < 0 ? 0 : o->n_predict;
    long ctx = o->ctx;
    if (ctx < (long)prompt.n + n_predict) ctx = (long)prompt.n + n_predict;
    ds4_error err = {{0}};
    ds4_session_opts so = {.numerics = o->numerics, .max_ctx = (uint32_t)ctx, .prefill_chunk = (uint32_t)o->chunk};
    ds4_session *s = ds4_session_new(m, &so, &err);
    float *all = NULL;
    void *scratch = malloc((size_t)info.n_vocab * 8);
    ds4_rng rng;
    ds4_rng_seed(&rng, o->seed);
    int rc = 1;
    cli_stats st = {.prompt_tokens = (uint32_t)prompt.n};
    if (!s || !scratch) goto out;
    if (o->dump_logits && !(all = malloc(prompt.n * (size_t)info.n_vocab * sizeof(float)))) {
        snprintf(err.msg, sizeof err.msg, "out of memory for %zu x %u logits", prompt.n, info.n_vocab);
        goto out;
    }
    double t0 = ds4_now_s();
    if (ds4_session_eval(s, prompt.ids, (uint32_t)prompt.n, all, &err)) goto out;
    st.prefill_s = ds4_now_s() - t0;
    ds4_moe_stats at_prefill;
    ds4_model_moe_stats(m, &at_prefill);
    if (o->dump_logits) {
        FILE *f = fopen(o->dump_logits, "wb");
        size_t n = prompt.n * (size_t)info.n_vocab;
        if (!f || fwrite(all, sizeof(float), n, f) != n || fclose(f) != 0) {
            snprintf(err.msg, sizeof err.msg, "cannot write logits to '%s': %s", o->dump_logits, strerror(errno));
            goto out;
        }
    }
    t0 = ds4_now_s();
    /* after the first token the session draws each token as it feeds the
     * previous one (on CUDA a step then returns the token or a few
     * candidates instead of the logits) */
    int32_t picked = -1;
    for (long i = 0; i < n_predict; i++) {
        int32_t id = picked >= 0 ? picked : ds4_sample(ds4_session_logits(s), info.n_vocab, &o->sampling, &rng, scratch);
        printf("%s%d", i ? "," : "", id);
        fflush(stdout);
        st.generated++;
        if (i + 1 < n_predict && ds4_session_eval_sample(s, &id, 1, info.n_vocab, &o->sampling, &rng, &picked, &err)) goto out;
    }
    if (n_predict) printf("\n");
    st.gen_s = ds4_now_s() - t0;
    /* the first generated token comes from the prompt's logits; every later
     * one costs a forward pass */
    if (o->moe_stats && n_predict > 1) cli_print_decode_moe_stats(m, &at_prefill, n_predict - 1, st.gen_s);
    if (o->verbose) cli_print_stats(&st);
    rc = 0;
out:
    if (rc) fprintf(stderr, "ds4: %s\n", err.msg);
    free(all);
    free(scratch);
    ds4_tokens_free(&prompt);
    ds4_session_free(s);
    return rc;
}

/* --perplexity-file: the text's ids (plain BPE: no template, no BOS,
 * special strings stay text), through the model's tokenizer or
 * --tokenizer FILE, then scored. */
static int run_perplexity_file(ds4_model *m, const cli_opts *o) {
    ds4_error err = {{0}};
    ds4_tokens ids = {0};
    ds4_tokenizer *own = NULL;
    const ds4_tokenizer *tok = ds4_model_tokenizer(m);
    int rc = 1;
    size_t len;
    char *text = ds4_read_text_file(o->perplexity_file, DS4_TEXT_FILE_MAX, &len, &err);
    if (!text) goto out;
    if (o->tokenizer_path && !(tok = own = ds4_tokenizer_load(o->tokenizer_path, &err))) goto out;
    if (!tok) {
        ds4_fail(&err, "%s has no tokenizer; give --tokenizer FILE, or ids with --tokens and --perplexity", o->model);
        goto out;
    }
    if (ds4_tokenize(tok, text, len, false, &ids, &err) || cli_perplexity(m, o, ids.ids, ids.n, &err)) {
        ds4_fail_prefix(&err, "%s", o->perplexity_file);
        goto out;
    }
    rc = 0;
out:
    if (rc) fprintf(stderr, "ds4: %s\n", err.msg);
    free(text);
    ds4_tokens_free(&ids);
    ds4_tokenizer_free(own);
    return rc;
}

/* -p / --prompt-file: one chat turn, streamed. */
static int run_text(ds4_model *m, const cli_opts *o, const char *text) {
    const ds4_tokenizer *tok = ds4_model_tokenizer(m);
    ds4_error err = {{0}};
    ds4_tokens prompt = {0}, gen = {0};
    ds4_segments segs = {0};
    ds4_think_mode mode = ds4_think_mode_for_ctx(o->mode, (uint64_t)o->ctx);
    if (o->mode == DS4_THINK_MAX && mode != DS4_THINK_MAX)
        fprintf(stderr, "ds4: --think-max needs --ctx >= %u; ctx=%ld uses normal thinking instead\n", DS4_THINK_MAX_MIN_CTX,
                o->ctx);
    int missing = 0, rc = 1;
    ds4_session *s = NULL;
    if (o->raw || !strncmp(text, DS4_TOK_BOS, strlen(DS4_TOK_BOS))) {
        /* A pre-rendered prompt (or --raw text after BOS) is used verbatim. */
        if (o->raw && ds4_tokens_push(&prompt, ds4_tokenizer_bos(tok))) goto oom;
        if (ds4_tokenize(tok, text, strlen(text), !o->raw, &prompt, &err)) goto out;
        mode = DS4_THINK_NONE;
    } else {
        if (ds4_chat_render_prompt(o->system, text, mode, &segs)) goto oom;
        if (ds4_chat_tokenize(tok, &segs, &prompt, &missing, &err)) goto out;
        if (missing)
            fprintf(stderr, "ds4: warning: %d chat marker(s) are not single tokens in this vocabulary; rendered as text\n",
                    missing);
    }
    if (prompt.n >= (size_t)o->ctx) {
        snprintf(err.msg, sizeof err.msg, "the prompt has %zu tokens, the context only %ld (raise --ctx)", prompt.n, o->ctx);
        goto out;
    }
    ds4_session_opts so = {.numerics = o->numerics, .max_ctx = (uint32_t)o->ctx, .prefill_chunk = (uint32_t)o->chunk};
    if (!(s = ds4_session_new(m, &so, &err))) goto out;
    cli_stats st = {.prompt_tokens = (uint32_t)prompt.n};
    double t0 = ds4_now_s();
    int r = cli_prefill(s, prompt.ids, (uint32_t)prompt.n, (uint32_t)o->chunk, &err);
    st.prefill_s = ds4_now_s() - t0;
    if (r < 0) goto out;
    if (o->dump_logprobs) {
        if (cli_dump_logprobs(s, tok, o, (uint32_t)prompt.n, &err)) goto out;
        rc = 0;
        goto out;
    }
    long room = o->ctx - (long)prompt.n;
    long max_new = o->n_predict < 0 || o->n_predict > room ? room : o->n_predict;
    ds4_rng rng;
    ds4_rng_seed(&rng, o->seed);
    if (r == 0 && cli_generate(s, tok, o, mode != DS4_THINK_NONE, max_new, &rng, &gen, &st, &err) < 0) goto out;
    cli_print_stats(&st);
    rc = 0;
    goto out;
oom:
    snprintf(err.msg, sizeof err.msg, "out of memory");
out:
    if (rc) fprintf(stderr, "ds4: %s\n", err.msg);
    ds4_segments_free(&segs);
    ds4_tokens_free(&prompt);
    ds4_tokens_free(&gen);
    ds4_session_free(s);
    return rc;
}

int main(int argc, char **argv) {
    cli_opts o = {
        .model = "./ds4flash.gguf",
        .system = DS4_DEFAULT_SYSTEM,
        .n_predict = -1,
        .ctx = 32768,
        .chunk = -1, /* the backend's default, once the model is loaded */
        .logprobs_top_k = 20,
        .sampling = DS4_SAMPLING_DEFAULTS,
        .mode = DS4_THINK_HIGH,
        .numerics = DS4_NUMERICS_OFFICIAL,
    };
    if (parse_args(argc, argv, &o)) return 2;
    if (o.seed == 0) o.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)clock();
    char *file_text = NULL;
    const char *text = o.prompt;
    if (o.prompt_file) {
        ds4_error e = {{0}};
        if (!(file_text = ds4_read_text_file(o.prompt_file, DS4_TEXT_FILE_MAX, NULL, &e))) {
            fprintf(stderr, "ds4: --prompt-file: %s\n", e.msg);
            return 1;
        }
        text = file_text;
    }
    int rc;
    if (o.tokenize || o.detokenize || o.dump_tokens) {
        rc = vocab_only(&o, text);
        free(file_text);
        return rc;
    }
    if (access(o.model, R_OK) != 0) {
        missing_model(o.model);
        free(file_text);
        return 1;
    }
    ds4_error err = {{0}};
    ds4_model_opts mo = o.mo;
    mo.n_threads = (int)o.threads;
    mo.verbose = o.verbose;
    mo.ctx_hint = (uint32_t)o.ctx;
    mo.backend = o.backend;
    mo.gpu_expert_cache = o.gpu_expert_cache;
    ds4_model *m = ds4_model_load(o.model, &mo, &err);
    if (!m) {
        fprintf(stderr, "ds4: %s\n", err.msg);
        free(file_text);
        return 1;
    }
    /* Larger prefill passes give the GPU's expert products more tokens per
     * expert (bench/cuda-h100-decode.md); the CPU keeps its arena small. */
    if (o.chunk < 0) o.chunk = ds4_model_backend(m) == DS4_BACKEND_CUDA ? 2048 : 512;
    cli_install_sigint();
    if (o.inspect) {
        ds4_model_print_summary(m, stdout);
        rc = 0;
    } else if (o.tokens_arg) rc = run_ids(m, &o);
    else if (o.perplexity_file) rc = run_perplexity_file(m, &o);
    else if (!ds4_model_tokenizer(m)) {
        fprintf(stderr, "ds4: %s has no tokenizer; text prompts need one (use --tokens, or convert with tokenizer.json)\n",
                o.model);
        rc = 1;
    } else if (text) rc = run_text(m, &o, text);
    else rc = cli_interactive(m, &o);
    if (o.moe_stats) cli_print_moe_stats(m);
    if (o.verbose) {
        ds4_expert_cache_stats cs;
        ds4_model_expert_cache_stats(m, &cs);
        if (cs.slots)
            fprintf(stderr, "ds4: expert cache: %u slots, %llu hits, %llu misses (%.1f%% hits), %.2f GB copied\n", cs.slots,
                    (unsigned long long)cs.hits, (unsigned long long)cs.misses,
                    cs.hits + cs.misses ? 100.0 * cs.hits / (cs.hits + cs.misses) : 0.0, cs.bytes_copied / 1e9);
    }
    ds4_model_free(m);
    free(file_text);
    return rc;
}
