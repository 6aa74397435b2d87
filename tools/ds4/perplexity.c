/* --perplexity-file / --perplexity: how well the model predicts a token
 * sequence. The first CLI_PPL_CONTEXT tokens are context only; each later
 * token t is scored by the negative log-probability the logits after token
 * t - 1 give it. The sequence is fed in prefill chunks whose logits come
 * back whole, so memory stays at one chunk of logits however long the text
 * is. */
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#include "cli.h"

#define CLI_PPL_MAX_CHUNK 512

int cli_perplexity(ds4_model *m, const cli_opts *o, const int32_t *ids, size_t n, ds4_error *err) {
    ds4_model_info info;
    ds4_model_get_info(m, &info);
    if (n <= CLI_PPL_CONTEXT)
        return ds4_fail(err, "perplexity: %zu tokens; at least %d are needed (%d of context, then the scored ones)", n,
                        CLI_PPL_CONTEXT + 1, CLI_PPL_CONTEXT);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= info.n_vocab)
            return ds4_fail(err, "perplexity: token %zu is id %d, outside the model's vocabulary of %u", i, ids[i],
                            info.n_vocab);
    size_t scored = n - CLI_PPL_CONTEXT;
    if (o->n_predict >= 0 && (size_t)o->n_predict < scored) scored = (size_t)o->n_predict;
    if (scored == 0) return ds4_fail(err, "perplexity: -n 0 scores no token");
    /* the last scored token is predicted, never fed */
    size_t fed = CLI_PPL_CONTEXT + scored - 1;
    /* a chunk's logits come to the host whole: at most 512 rows (265 MB
     * at the real vocabulary) whatever the prefill chunk */
    uint32_t chunk = o->chunk > 0 && o->chunk < CLI_PPL_MAX_CHUNK ? (uint32_t)o->chunk : CLI_PPL_MAX_CHUNK;
    if (chunk > fed) chunk = (uint32_t)fed;
    ds4_session_opts so = {.numerics = o->numerics, .max_ctx = (uint32_t)fed + 1, .prefill_chunk = chunk};
    ds4_session *s = ds4_session_new(m, &so, err);
    float *lg = malloc((size_t)chunk * info.n_vocab * sizeof(float));
    int rc = -1;
    double nll = 0, t0 = ds4_now_s();
    bool tty = isatty(STDERR_FILENO);
    if (!s) goto out;
    if (!lg) {
        ds4_fail(err, "out of memory for %u x %u logits", chunk, info.n_vocab);
        goto out;
    }
    for (size_t p0 = 0; p0 < fed; p0 += chunk) {
        uint32_t c = fed - p0 < chunk ? (uint32_t)(fed - p0) : chunk;
        if (ds4_session_eval(s, ids + p0, c, lg, err)) goto out;
        /* the logits after token p predict token p + 1 */
        for (uint32_t j = 0; j < c; j++)
            if (p0 + j + 1 >= CLI_PPL_CONTEXT) {
                const float *row = lg + (size_t)j * info.n_vocab;
                nll += cli_logsumexp(row, info.n_vocab) - row[ids[p0 + j + 1]]; /* -log softmax */
            }
        if (tty && fed > chunk)
            fprintf(stderr, "\rds4: perplexity: %zu/%zu tokens fed", p0 + c, fed);
        if (cli_interrupted) {
            ds4_fail(err, "perplexity: interrupted");
            goto out;
        }
    }
    if (tty && fed > chunk) fprintf(stderr, "\n");
    printf("tokens=%zu scored=%zu nll=%.9f avg_nll=%.9f ppl=%.9f\n", n, scored, nll, nll / scored, exp(nll / scored));
    if (o->verbose) fprintf(stderr, "ds4: perplexity: %.2f tokens/s\n", fed / (ds4_now_s() - t0));
    rc = 0;
out:
    free(lg);
    ds4_session_free(s);
    return rc;
}
