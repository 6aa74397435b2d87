/* ds4_session_eval_pick_except against the transformers reference logits
 * of fixture tiny-a (--numerics hf): after each prefix of the reference
 * tokens, the pick with the reference's own best token excluded must be the
 * reference's second best (where the second and third are not within
 * rounding of each other), and with a token excluded that is not the best,
 * the plain greedy pick. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../harness.h"
#include "ds4.h"
#include "util/textfile.h"

#define N_POS 300

int main(void) {
    const char *bin = getenv("DS4_BIN");
    if (!bin || !*bin) {
        fprintf(stderr, "DS4_BIN not set (run through make test)\n");
        return 77;
    }
    const char *tmp = test_tmp_dir(), *fx = test_path("%s/fixtures/tiny-a", test_data_dir());
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s/ds4-convert' '%s' '%s/m.gguf' --type f32 2>/dev/null", bin, fx, tmp);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not convert: %s\n", cmd);
        return 1;
    }
    ds4_error err = {{0}};
    /* the reference's tokens and logits */
    char *json = ds4_read_text_file(test_path("%s/reference.json", fx), 1 << 24, NULL, &err);
    size_t lbytes = 0;
    char *raw = ds4_read_text_file(test_path("%s/logits.f32", fx), 1 << 26, &lbytes, &err);
    CHECKF(json && raw, "%s", err.msg);
    if (!json || !raw) return test_finish();
    int32_t tok[N_POS];
    const char *p = strstr(json, "\"tokens\"");
    p = p ? strchr(p, '[') : NULL;
    for (int i = 0; p && i < N_POS; i++) {
        tok[i] = (int32_t)strtol(p + 1, (char **)&p, 10);
        CHECK(*p == ',' || *p == ']');
    }
    CHECK(p != NULL);

    ds4_model_opts mo = {.backend = DS4_BACKEND_CPU};
    ds4_model *m = ds4_model_load(test_path("%s/m.gguf", tmp), &mo, &err);
    CHECKF(m != NULL, "%s", err.msg);
    if (!m || !p) return test_finish();
    ds4_model_info info;
    ds4_model_get_info(m, &info);
    uint32_t V = info.n_vocab;
    CHECK(lbytes == (size_t)N_POS * V * sizeof(float));
    ds4_session_opts so = {.numerics = DS4_NUMERICS_HF, .max_ctx = N_POS + 1};
    ds4_session *sa = ds4_session_new(m, &so, &err), *sb = ds4_session_new(m, &so, &err);
    CHECKF(sa && sb, "%s", err.msg);
    int checked = 0;
    for (int t = 0; sa && sb && t < N_POS && lbytes == (size_t)N_POS * V * sizeof(float); t++) {
        const float *ref = (const float *)raw + (size_t)t * V;
        int32_t r1 = 0, r2 = -1, r3 = -1; /* the reference's three best */
        for (uint32_t i = 1; i < V; i++)
            if (ref[i] > ref[r1]) r1 = (int32_t)i;
        for (uint32_t i = 0; i < V; i++)
            if ((int32_t)i != r1 && (r2 < 0 || ref[i] > ref[r2])) r2 = (int32_t)i;
        for (uint32_t i = 0; i < V; i++)
            if ((int32_t)i != r1 && (int32_t)i != r2 && (r3 < 0 || ref[i] > ref[r3])) r3 = (int32_t)i;
        int32_t a = -1, b = -1;
        /* session a excludes the reference's best; session b a token that is not the best */
        CHECKF(!ds4_session_eval_pick_except(sa, &tok[t], 1, r1, &a, &err), "%s", err.msg);
        CHECKF(!ds4_session_eval_pick_except(sb, &tok[t], 1, r3, &b, &err), "%s", err.msg);
        bool clear = ref[r2] - ref[r3] > 1e-3f * (fabsf(ref[r2]) + 1.0f) && ref[r1] - ref[r2] > 1e-3f * (fabsf(ref[r1]) + 1.0f);
        if (!clear) continue;
        CHECKF(a == r2, "position %d: excluding %d picked %d, the reference's second best is %d", t, r1, a, r2);
        CHECKF(b == r1, "position %d: excluding %d picked %d, the reference's best is %d", t, r3, b, r1);
        checked++;
    }
    printf("%d of %d positions checked (the rest within rounding of a tie)\n", checked, N_POS);
    CHECK(checked > N_POS / 2);
    ds4_session_free(sa);
    ds4_session_free(sb);
    ds4_model_free(m);
    free(json);
    free(raw);
    return test_finish();
}
