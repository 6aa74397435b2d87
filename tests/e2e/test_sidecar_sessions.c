/* Two sessions of one streaming sidecar model, evaluated from two threads
 * at once, give exactly the logits each gives alone: the shared slot bank
 * (whose views live until the next acquire) is never used by both at the
 * same time. Builds its package with the tools (DS4_BIN). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ds4.h"
#include "harness.h"

#define N_TOK 40

typedef struct job {
    ds4_session *s;
    int32_t tokens[N_TOK];
    float *logits; /* N_TOK x vocab: after each token */
    uint32_t vocab;
    int rc;
    ds4_error err;
} job;

static void *run(void *arg) {
    job *j = arg;
    for (int t = 0; t < N_TOK && j->rc == 0; t++) {
        j->rc = ds4_session_eval(j->s, &j->tokens[t], 1, NULL, &j->err);
        if (!j->rc) memcpy(j->logits + (size_t)t * j->vocab, ds4_session_logits(j->s), j->vocab * sizeof(float));
    }
    return NULL;
}

int main(void) {
    const char *bin = getenv("DS4_BIN");
    if (!bin || !*bin) {
        fprintf(stderr, "DS4_BIN not set (run through make test)\n");
        return 77;
    }
    const char *tmp = test_tmp_dir();
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s/ds4-convert' '%s/fixtures/tiny-a' '%s/m.gguf' --type f32 2>/dev/null && "
             "'%s/ds4-sidecar' export '%s/m.gguf' '%s/pkg' 2>/dev/null", bin, test_data_dir(), tmp, bin, tmp, tmp);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not build the package: %s\n", cmd);
        return 1;
    }
    ds4_error err = {{0}};
    ds4_model_opts mo = {.moe_slot_bank = 2, .ssd_io = DS4_SSD_IO_DIRECT};
    ds4_model *m = ds4_model_load(test_path("%s/pkg", tmp), &mo, &err);
    CHECKF(m != NULL, "%s", err.msg);
    if (!m) return test_finish();
    ds4_model_info info;
    ds4_model_get_info(m, &info);
    ds4_session_opts so = {.numerics = DS4_NUMERICS_HF, .max_ctx = 64};
    job jobs[2], alone[2];
    for (int k = 0; k < 2; k++) {
        for (int t = 0; t < N_TOK; t++) jobs[k].tokens[t] = (int32_t)((t * 37 + k * 511 + 3) % info.n_vocab);
        jobs[k].vocab = info.n_vocab;
        jobs[k].rc = 0;
        jobs[k].logits = malloc((size_t)N_TOK * info.n_vocab * sizeof(float));
        jobs[k].s = ds4_session_new(m, &so, &err);
        CHECKF(jobs[k].s != NULL, "%s", err.msg);
        alone[k] = jobs[k];
        alone[k].logits = malloc((size_t)N_TOK * info.n_vocab * sizeof(float));
    }
    if (!jobs[0].s || !jobs[1].s) return test_finish();
    /* Each alone first, then both at once from fresh state. */
    for (int k = 0; k < 2; k++) {
        run(&alone[k]);
        CHECKF(alone[k].rc == 0, "%s", alone[k].err.msg);
        ds4_session_reset(jobs[k].s);
    }
    pthread_t th[2];
    for (int k = 0; k < 2; k++) pthread_create(&th[k], NULL, run, &jobs[k]);
    for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
    for (int k = 0; k < 2; k++) {
        CHECKF(jobs[k].rc == 0, "%s", jobs[k].err.msg);
        CHECKF(!memcmp(jobs[k].logits, alone[k].logits, (size_t)N_TOK * info.n_vocab * sizeof(float)),
               "session %d: concurrent logits differ from the session alone", k);
    }
    ds4_moe_stats st;
    ds4_model_moe_stats(m, &st);
    CHECK(st.streaming && st.slots == 2 && st.reads > 0);
    for (int k = 0; k < 2; k++) {
        ds4_session_free(jobs[k].s);
        free(jobs[k].logits);
        free(alone[k].logits);
    }
    ds4_model_free(m);
    return test_finish();
}
