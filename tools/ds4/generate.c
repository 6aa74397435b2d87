/* Prefill with progress, and streaming generation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "util/clock.h"

volatile sig_atomic_t cli_interrupted = 0;

static void on_sigint(int sig) {
    (void)sig;
    cli_interrupted = 1;
}

void cli_install_sigint(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
}

int cli_prefill(ds4_session *s, const int32_t *ids, uint32_t n, uint32_t chunk, ds4_error *err) {
    if (chunk == 0) chunk = n ? n : 1; /* the whole prompt in one pass */
    bool show = n > chunk && isatty(2);
    for (uint32_t done = 0; done < n;) {
        if (cli_interrupted) return 1;
        uint32_t len = n - done < chunk ? n - done : chunk;
        if (ds4_session_eval(s, ids + done, len, NULL, err)) return -1;
        done += len;
        if (show) fprintf(stderr, "\rprocessing %u input tokens: %u/%u (%u%%)", n, done, n, (unsigned)(100ull * done / n));
    }
    if (show) fputc('\n', stderr);
    return 0;
}

/* Writes text, stripping nothing; grey while reasoning on a terminal. */
static void emit(const char *text, size_t len, bool reasoning, bool tty) {
    if (!len) return;
    if (reasoning && tty) fputs("\033[90m", stdout);
    fwrite(text, 1, len, stdout);
    if (reasoning && tty) fputs("\033[0m", stdout);
    fflush(stdout);
}

int cli_generate(ds4_session *s, const ds4_tokenizer *tok, const cli_opts *o, bool thinking, long max_new, ds4_rng *rng,
                 ds4_tokens *out, cli_stats *st, ds4_error *err) {
    int32_t eos = ds4_tokenizer_eos(tok), think_end = ds4_tokenizer_find(tok, DS4_TOK_THINK_END),
            think_open = ds4_tokenizer_find(tok, DS4_TOK_THINK);
    uint32_t n_vocab = ds4_tokenizer_n_vocab(tok);
    bool tty = isatty(1), reasoning = thinking;
    ds4_detok_stream *ds = ds4_detok_stream_new(tok, err);
    if (!ds) return -1;
    void *scratch = NULL;
    int rc = 0;
    double t0 = ds4_now_s();
    const float *lg = ds4_session_logits(s);
    uint32_t vocab = n_vocab; /* the model's logits may be wider (padding rows): only real tokens are sampled */
    scratch = malloc((size_t)vocab * 8);
    if (!scratch) {
        ds4_detok_stream_free(ds);
        return ds4_fail(err, "out of memory");
    }
    /* from the second token on, the session draws the token as it feeds
     * the previous one (on CUDA a step then returns the token or a few
     * candidates, not the logits) */
    int32_t picked = -1;
    for (long i = 0; max_new < 0 || i < max_new; i++) {
        if (cli_interrupted) {
            rc = 1;
            break;
        }
        int32_t id = picked >= 0 ? picked : ds4_sample(lg, vocab, &o->sampling, rng, scratch);
        if (id == eos) break;
        if (ds4_tokens_push(out, id)) {
            rc = ds4_fail(err, "out of memory");
            break;
        }
        st->generated++;
        if (id == think_end || id == think_open) {
            if (id == think_end && reasoning) {
                reasoning = false;
                fputc('\n', stdout);
            }
        } else {
            const char *text;
            size_t len;
            if (ds4_detok_stream_push(ds, id, &text, &len, err)) {
                rc = -1;
                break;
            }
            emit(text, len, reasoning, tty);
        }
        if (ds4_session_eval_sample(s, &id, 1, vocab, &o->sampling, rng, &picked, err)) {
            rc = -1;
            break;
        }
    }
    const char *text;
    size_t len;
    ds4_detok_stream_flush(ds, &text, &len);
    emit(text, len, reasoning, tty);
    fputc('\n', stdout);
    fflush(stdout);
    st->gen_s += ds4_now_s() - t0;
    ds4_detok_stream_free(ds);
    free(scratch);
    return rc;
}

void cli_print_stats(const cli_stats *st) {
    fprintf(stderr, "ds4: prompt %u tokens, prefill %.2f t/s, generated %u tokens, generation %.2f t/s\n", st->prompt_tokens,
            st->prefill_s > 0 ? st->prompt_tokens / st->prefill_s : 0.0, st->generated,
            st->gen_s > 0 ? st->generated / st->gen_s : 0.0);
}

/* JSON string with bytes escaped so any token (even half a code point)
 * survives; `bytes` stays authoritative. */
static void json_token(FILE *f, const ds4_tokenizer *tok, int32_t id) {
    size_t len = 0;
    const char *b = ds4_tokenizer_token_bytes(tok, id, &len);
    fprintf(f, "{\"id\":%d,\"text\":\"", id);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)b[i];
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20 || c >= 0x80) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fprintf(f, "\",\"bytes\":[");
    for (size_t i = 0; i < len; i++) fprintf(f, "%s%u", i ? "," : "", (unsigned char)b[i]);
    fprintf(f, "]}");
}

double cli_logsumexp(const float *logits, uint32_t n) {
    double mx = -INFINITY, sum = 0;
    for (uint32_t v = 0; v < n; v++)
        if (logits[v] > mx) mx = logits[v];
    for (uint32_t v = 0; v < n; v++) sum += exp(logits[v] - mx);
    return mx + log(sum);
}

int cli_dump_logprobs(ds4_session *s, const ds4_tokenizer *tok, const cli_opts *o, uint32_t prompt_len, ds4_error *err) {
    FILE *f = fopen(o->dump_logprobs, "w");
    if (!f) return ds4_fail(err, "cannot write '%s'", o->dump_logprobs);
    uint32_t V = ds4_tokenizer_n_vocab(tok);
    long K = o->logprobs_top_k, steps = o->n_predict < 0 ? 64 : o->n_predict;
    int32_t eos = ds4_tokenizer_eos(tok);
    fprintf(f, "{\"source\":\"ds4\",\"prompt_tokens\":%u,\"ctx\":%ld,\"top_k\":%ld,\"steps\":[", prompt_len, o->ctx, K);
    int32_t *best = malloc((size_t)K * sizeof *best);
    int rc = best ? 0 : ds4_fail(err, "out of memory");
    for (long step = 0; rc == 0 && step < steps; step++) {
        const float *lg = ds4_session_logits(s);
        double lse = cli_logsumexp(lg, V);
        long k = 0;
        for (uint32_t v = 0; v < V; v++) { /* insertion into the K best, kept sorted */
            if (k == K && !(lg[v] > lg[best[K - 1]])) continue;
            long j = k < K ? k++ : K - 1;
            while (j > 0 && lg[best[j - 1]] < lg[v]) {
                best[j] = best[j - 1];
                j--;
            }
            best[j] = (int32_t)v;
        }
        fprintf(f, "%s{\"step\":%ld,\"selected\":", step ? "," : "", step);
        json_token(f, tok, best[0]);
        fprintf(f, ",\"top_logprobs\":[");
        for (long i = 0; i < k; i++) {
            fprintf(f, "%s{\"token\":", i ? "," : "");
            json_token(f, tok, best[i]);
            fprintf(f, ",\"logit\":%.6g,\"logprob\":%.6g}", lg[best[i]], lg[best[i]] - lse);
        }
        fprintf(f, "]}");
        if (best[0] == eos) break;
        int32_t id = best[0];
        if (step + 1 < steps) rc = ds4_session_eval(s, &id, 1, NULL, err);
    }
    fprintf(f, "]}\n");
    free(best);
    if (fclose(f) != 0 && rc == 0) rc = ds4_fail(err, "cannot write '%s'", o->dump_logprobs);
    return rc;
}
