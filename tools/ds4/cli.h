/* ds4 command-line tool: shared state of its parts. */
#ifndef DS4_CLI_H
#define DS4_CLI_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "ds4.h"
#include "util/clock.h"

typedef struct cli_opts {
    const char *model, *prompt, *prompt_file, *system, *tokens_arg;
    const char *dump_logits, *dump_logprobs, *tokenizer_path, *detokenize, *perplexity_file;
    long n_predict; /* -1: until EOS or the context is full */
    long ctx, threads, chunk, logprobs_top_k;
    uint64_t seed; /* 0: time-based */
    ds4_sampling sampling;
    ds4_think_mode mode;
    ds4_numerics numerics;
    bool raw, dump_tokens, tokenize, verbose, inspect, perplexity;
    /* sidecar packages: expert residency and streaming */
    ds4_model_opts mo;
    bool moe_stats;
    ds4_backend backend; /* --cuda / --cpu; AUTO by default */
    uint64_t gpu_expert_cache; /* --gpu-expert-cache: bytes, 0 = auto */
} cli_opts;

/* Set by SIGINT; generation and prefill poll it between tokens/chunks. */
extern volatile sig_atomic_t cli_interrupted;
void cli_install_sigint(void);

typedef struct cli_stats {
    uint32_t prompt_tokens, generated;
    double prefill_s, gen_s;
} cli_stats;

/* Feeds tokens to the session in chunks, with a progress line on stderr
 * for long prompts. Returns 1 when interrupted, -1 on error. */
int cli_prefill(ds4_session *s, const int32_t *ids, uint32_t n, uint32_t chunk, ds4_error *err);

/* Samples up to max_new tokens after what the session holds, streaming text
 * to stdout (reasoning in grey on a terminal until </think> when
 * `thinking`). Generated ids (EOS excluded) are appended to out. Returns 1
 * when interrupted, -1 on error. */
int cli_generate(ds4_session *s, const ds4_tokenizer *tok, const cli_opts *o, bool thinking, long max_new, ds4_rng *rng,
                 ds4_tokens *out, cli_stats *st, ds4_error *err);

void cli_print_stats(const cli_stats *st);
int cli_interactive(ds4_model *m, cli_opts *o);
/* log sum exp of n logits, in double: log-probabilities are logit - it */
double cli_logsumexp(const float *logits, uint32_t n);
int cli_dump_logprobs(ds4_session *s, const ds4_tokenizer *tok, const cli_opts *o, uint32_t prompt_len, ds4_error *err);

/* perplexity.c: the first CLI_PPL_CONTEXT of n tokens as context, then the
 * negative log-likelihood of the rest (at most o->n_predict of them when
 * that is >= 0), printed as one line on stdout:
 * tokens=N scored=S nll=X avg_nll=X/S ppl=exp(X/S). */
#define CLI_PPL_CONTEXT 32
int cli_perplexity(ds4_model *m, const cli_opts *o, const int32_t *ids, size_t n, ds4_error *err);

/* moe_stats.c: "8G", "512M", ... and the slot-bank statistics lines. */
int cli_parse_size(const char *flag, const char *s, uint64_t *out);
void cli_print_decode_moe_stats(const ds4_model *model, const ds4_moe_stats *at_prefill, long tokens, double seconds);
void cli_print_moe_stats(const ds4_model *model);

#endif
