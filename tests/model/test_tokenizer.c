/* Tokenizer against the HF reference (tests/data/fixtures/tokenizer):
 * every case of cases.jsonl must encode to exactly its ids and decode to its
 * text, token by token decoding must only ever emit whole UTF-8 characters,
 * added tokens must be recognised only when asked, the in-memory (GGUF)
 * path must agree with the JSON path, and malformed files must give errors
 * that name the file. Also prints the encode speed. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../harness.h"
#include "ds4_tokenizer.h"
#include "util/utf8.h"

typedef struct tcase {
    char *text, *decoded;
    size_t text_len, decoded_len;
    int32_t *ids;
    size_t n_ids;
} tcase;

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = 0;
    if (len) *len = (size_t)n;
    return buf;
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
}

static size_t load_cases(const char *path, tcase **out) {
    char *buf = slurp(path, NULL);
    if (!buf) return 0;
    size_t n = 0, cap = 0;
    tcase *cs = NULL;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        CHECKF(j != NULL, "cases.jsonl line %zu is not JSON", n + 1);
        if (!j) continue;
        const cJSON *t = cJSON_GetObjectItem(j, "text"), *d = cJSON_GetObjectItem(j, "decoded"),
                    *ids = cJSON_GetObjectItem(j, "ids");
        if (n == cap) cs = realloc(cs, (cap = cap ? 2 * cap : 64) * sizeof *cs);
        tcase *c = &cs[n++];
        /* cJSON strings are nul-terminated; the cases have no NUL inside. */
        c->text = strdup(t->valuestring);
        c->text_len = strlen(c->text);
        c->decoded = strdup(d->valuestring);
        c->decoded_len = strlen(c->decoded);
        c->n_ids = (size_t)cJSON_GetArraySize(ids);
        c->ids = malloc((c->n_ids + 1) * sizeof *c->ids);
        size_t k = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, ids) c->ids[k++] = (int32_t)it->valueint;
        cJSON_Delete(j);
    }
    free(buf);
    *out = cs;
    return n;
}

static void print_ids(const char *label, const int32_t *ids, size_t n) {
    fprintf(stderr, "    %s [", label);
    for (size_t i = 0; i < n; i++) fprintf(stderr, "%s%d", i ? ", " : "", ids[i]);
    fprintf(stderr, "]\n");
}

/* Whether s[0..n) is complete, valid UTF-8. */
static int valid_utf8(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int l = ds4_utf8_decode((const uint8_t *)s + i, n - i, &cp);
        if (!l) return 0;
        i += (size_t)l;
    }
    return 1;
}

/* Encodes and decodes every case; returns how many matched fully. */
static size_t run_cases(const ds4_tokenizer *tok, const char *label, const tcase *cs, size_t n) {
    size_t pass = 0;
    ds4_error err;
    for (size_t i = 0; i < n; i++) {
        const tcase *c = &cs[i];
        int ok = 1;
        for (int special = 0; special < 2; special++) {
            ds4_tokens t = {0};
            int rc = ds4_tokenize(tok, c->text, c->text_len, special, &t, &err);
            CHECKF(rc == 0, "%s", err.msg);
            if (rc != 0 || t.n != c->n_ids || memcmp(t.ids, c->ids, t.n * sizeof *t.ids)) {
                fprintf(stderr, "%s: case %zu (parse_special=%d) mismatch for \"%s\"\n", label, i + 1, special,
                        c->text);
                print_ids("expected", c->ids, c->n_ids);
                print_ids("got     ", t.ids, t.n);
                ok = 0;
            }
            ds4_tokens_free(&t);
        }
        size_t len;
        char *dec = ds4_detokenize(tok, c->ids, c->n_ids, &len, &err);
        if (!dec || len != c->decoded_len || memcmp(dec, c->decoded, len)) {
            fprintf(stderr, "%s: case %zu decodes to \"%s\", expected \"%s\"\n", label, i + 1, dec ? dec : err.msg,
                    c->decoded);
            ok = 0;
        }
        /* Streaming: one id at a time, every piece whole UTF-8, and the
         * concatenation equal to the one-shot decode. */
        ds4_detok_stream *s = ds4_detok_stream_new(tok, &err);
        char *cat = malloc(DS4_UTF8_FEED_MAX(len + 64) + 64);
        size_t w = 0;
        for (size_t k = 0; k < c->n_ids; k++) {
            const char *piece;
            size_t pl;
            CHECK(ds4_detok_stream_push(s, c->ids[k], &piece, &pl, &err) == 0);
            if (!valid_utf8(piece, pl)) {
                fprintf(stderr, "%s: case %zu: stream piece %zu is not whole UTF-8\n", label, i + 1, k);
                ok = 0;
            }
            memcpy(cat + w, piece, pl);
            w += pl;
        }
        const char *piece;
        size_t pl;
        ds4_detok_stream_flush(s, &piece, &pl);
        memcpy(cat + w, piece, pl);
        w += pl;
        if (!dec || w != len || memcmp(cat, dec, len)) {
            fprintf(stderr, "%s: case %zu: streamed text differs from ds4_detokenize\n", label, i + 1);
            ok = 0;
        }
        free(cat);
        free(dec);
        ds4_detok_stream_free(s);
        pass += (size_t)ok;
    }
    fprintf(stderr, "%s: %zu/%zu cases match\n", label, pass, n);
    CHECKF(pass == n, "%s: %zu of %zu cases failed", label, n - pass, n);
    return pass;
}

static int has_added(const ds4_tokenizer *tok, const ds4_tokens *t) {
    for (size_t i = 0; i < t->n; i++) {
        int ty = ds4_tokenizer_token_type(tok, t->ids[i]);
        if (ty == DS4_TOKEN_CONTROL || ty == DS4_TOKEN_USER_DEFINED) return 1;
    }
    return 0;
}

static void check_ids(const ds4_tokenizer *tok, const char *text, bool special, const int32_t *want, size_t n) {
    ds4_tokens t = {0};
    ds4_error err;
    CHECKF(ds4_tokenize(tok, text, strlen(text), special, &t, &err) == 0, "%s", err.msg);
    int same = t.n == n && !memcmp(t.ids, want, n * sizeof *want);
    CHECKF(same, "\"%s\" (parse_special=%d)", text, special);
    if (!same) {
        print_ids("expected", want, n);
        print_ids("got     ", t.ids, t.n);
    }
    ds4_tokens_free(&t);
}

static void test_special(const ds4_tokenizer *tok) {
    int32_t user = ds4_tokenizer_find(tok, "<｜User｜>");
    CHECK(user == 128803);
    CHECK(ds4_tokenizer_find(tok, "<｜Assistant｜>") == 128804);
    CHECK(ds4_tokenizer_find(tok, "no such token") == -1);
    CHECK(ds4_tokenizer_bos(tok) == 0 && ds4_tokenizer_eos(tok) == 1);
    CHECK(ds4_tokenizer_pad(tok) == 1); /* tokenizer_config.json pads with EOS */
    CHECK(ds4_tokenizer_n_vocab(tok) == 128815);
    CHECK(!strcmp(ds4_tokenizer_token_text(tok, 0), "<｜begin▁of▁sentence｜>"));
    CHECK(ds4_tokenizer_token_type(tok, 0) == DS4_TOKEN_CONTROL);
    CHECK(ds4_tokenizer_token_type(tok, user) == DS4_TOKEN_USER_DEFINED); /* special:false in the file */
    CHECK(ds4_tokenizer_token_type(tok, 100) == DS4_TOKEN_NORMAL);
    CHECK(ds4_tokenizer_token_text(tok, -1) == NULL && ds4_tokenizer_token_text(tok, 128815) == NULL);
    CHECK(ds4_tokenizer_token_type(tok, 1 << 30) == 0);

    /* Expected ids from HF tokenizers.js (@huggingface/tokenizers 0.2.0) on
     * this tokenizer.json, encode(text, add_special_tokens=false). */
    static const int32_t a[] = {128803, 6366};
    check_ids(tok, "<｜User｜>hi", true, a, 2);
    /* (<think> is no added token in this V3 file: it goes through BPE.) */
    static const int32_t b[] = {0, 128803, 19923, 128804, 30, 37947, 1018, 19, 1718, 37947, 32, 1};
    check_ids(tok, "<｜begin▁of▁sentence｜><｜User｜>Hello<｜Assistant｜><think>\n1</think><｜end▁of▁sentence｜>",
              true, b, 12);
    static const int32_t c[] = {30, 128803, 32, 128803, 128804};
    check_ids(tok, "<<｜User｜>><｜User｜><｜Assistant｜>", true, c, 5);

    /* Without special parsing nothing added may appear, whatever the text. */
    const char *texts[] = {"<｜User｜>hi", "<｜begin▁of▁sentence｜>x<｜end▁of▁sentence｜>", "<think>a</think>",
                           "<｜place▁holder▁no▁7｜><｜tool▁sep｜>"};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        ds4_tokens t = {0};
        ds4_error err;
        CHECK(ds4_tokenize(tok, texts[i], strlen(texts[i]), false, &t, &err) == 0);
        CHECKF(!has_added(tok, &t), "\"%s\" produced an added token with parse_special=false", texts[i]);
        CHECK(t.n > 1);
        size_t len;
        char *d = ds4_detokenize(tok, t.ids, t.n, &len, &err);
        CHECKF(d && !strcmp(d, texts[i]), "plain round trip of \"%s\"", texts[i]);
        free(d);
        ds4_tokens_free(&t);
    }
}

/* Rebuilds the tokenizer from its own tables through the in-memory (GGUF)
 * constructor: the result must tokenize identically. */
static ds4_tokenizer *rebuild(const ds4_tokenizer *tok) {
    uint32_t n = ds4_tokenizer_n_vocab(tok), nm = ds4_tokenizer_n_merges(tok);
    const char **tokens = malloc(n * sizeof *tokens);
    int32_t *types = malloc(n * sizeof *types);
    char **merges = malloc(nm * sizeof *merges);
    for (uint32_t i = 0; i < n; i++) {
        tokens[i] = ds4_tokenizer_token_text(tok, (int32_t)i);
        types[i] = ds4_tokenizer_token_type(tok, (int32_t)i);
    }
    for (uint32_t i = 0; i < nm; i++) {
        int32_t l, r;
        ds4_tokenizer_merge(tok, i, &l, &r);
        size_t len = strlen(ds4_tokenizer_token_text(tok, l)) + strlen(ds4_tokenizer_token_text(tok, r)) + 2;
        merges[i] = malloc(len);
        snprintf(merges[i], len, "%s %s", ds4_tokenizer_token_text(tok, l), ds4_tokenizer_token_text(tok, r));
    }
    ds4_tokenizer_arrays a = {
        .n_tokens = n,
        .tokens = tokens,
        .token_types = types,
        .n_merges = nm,
        .merges = (const char *const *)merges,
        .bos_id = ds4_tokenizer_bos(tok),
        .eos_id = ds4_tokenizer_eos(tok),
        .pad_id = ds4_tokenizer_pad(tok),
        .pre = "joyai-llm",
    };
    ds4_error err;
    ds4_tokenizer *t2 = ds4_tokenizer_from_arrays(&a, "rebuilt", &err);
    CHECKF(t2 != NULL, "%s", err.msg);
    for (uint32_t i = 0; i < nm; i++) free(merges[i]);
    free(merges);
    free(tokens);
    free(types);
    return t2;
}

static void expect_json_error(const char *name, const char *json, const char *want) {
    const char *path = test_path("%s/%s", test_tmp_dir(), name);
    write_file(path, json);
    ds4_error err = {{0}};
    ds4_tokenizer *t = ds4_tokenizer_from_json(path, NULL, &err);
    CHECKF(t == NULL, "%s was accepted", name);
    ds4_tokenizer_free(t);
    CHECKF(strstr(err.msg, path) != NULL, "error does not name the file: %s", err.msg);
    CHECKF(strstr(err.msg, want) != NULL, "error for %s lacks \"%s\": %s", name, want, err.msg);
}

static void test_malformed(void) {
    const char *bl = "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}";
    char buf[1024];
    expect_json_error("notjson.json", "this is not { json", "not valid JSON");
    expect_json_error("novocab.json", "{\"model\":{\"type\":\"BPE\",\"merges\":[]}}", "model.vocab");
    snprintf(buf, sizeof buf, "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a c\"]},%s}",
             bl);
    expect_json_error("badmerge.json", buf, "\"c\"");
    snprintf(buf, sizeof buf, "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[[\"a\",\"b\"]]},%s}",
             bl);
    expect_json_error("badresult.json", buf, "\"ab\"");
    snprintf(buf, sizeof buf, "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-4},\"merges\":[]},%s}", bl);
    expect_json_error("badid.json", buf, "model.vocab");
    expect_json_error("nobytelevel.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}",
                      "ByteLevel");
    snprintf(buf, sizeof buf, "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}},%s}", bl);
    expect_json_error("wordpiece.json", buf, "WordPiece");
    snprintf(buf, sizeof buf,
             "{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Split\","
             "\"pattern\":{\"Regex\":\"(\"},\"behavior\":\"Isolated\"}}");
    expect_json_error("badregex.json", buf, "pre_tokenizer");
    ds4_error err;
    CHECK(ds4_tokenizer_from_json(test_path("%s/missing.json", test_tmp_dir()), NULL, &err) == NULL);
    CHECK(strstr(err.msg, "missing.json") != NULL);

    /* A tiny valid file, to check the pieces work on their own: "ab" merges
     * and unknown bytes are dropped as HF does without unk_token. */
    snprintf(buf, sizeof buf,
             "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"Ġ\":3},\"merges\":[\"a b\"]},%s}", bl);
    const char *path = test_path("%s/tiny.json", test_tmp_dir());
    write_file(path, buf);
    ds4_tokenizer *t = ds4_tokenizer_from_json(path, NULL, &err);
    CHECKF(t != NULL, "%s", err.msg);
    if (t) {
        static const int32_t want[] = {2, 3, 0, 2, 1};
        check_ids(t, "ab a?abb", true, want, 5);
        CHECK(ds4_tokenizer_bos(t) == -1);
        ds4_tokenizer_free(t);
    }
}

/* Arbitrary bytes (invalid UTF-8 included) must encode, and byte-level BPE
 * must give them back exactly. */
static void test_bytes(const ds4_tokenizer *tok) {
    unsigned seed = 12345;
    ds4_error err;
    for (int round = 0; round < 200; round++) {
        char text[300];
        size_t n = (size_t)(round % 50) * 6 + 1;
        for (size_t i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            unsigned r = seed >> 16;
            /* Mix ASCII, UTF-8 lead/continuation bytes and specials. */
            text[i] = (char)(r % 3 == 0 ? " a1\n\t<|.\xE4\xBD\xA0"[r % 12] /* the NUL too */ : (int)(r & 0xFF));
        }
        for (int special = 0; special < 2; special++) {
            ds4_tokens t = {0};
            CHECKF(ds4_tokenize(tok, text, n, special, &t, &err) == 0, "%s", err.msg);
            char back[600];
            size_t w = 0;
            int ok = 1;
            for (size_t k = 0; k < t.n && ok; k++) {
                size_t l;
                const char *b = ds4_tokenizer_token_bytes(tok, t.ids[k], &l);
                ok = b && w + l <= sizeof back;
                if (ok) memcpy(back + w, b, l), w += l;
            }
            CHECKF(ok && w == n && !memcmp(back, text, n), "random bytes round %d do not round-trip", round);
            ds4_tokens_free(&t);
        }
    }
    /* Decoding invalid UTF-8 replaces, as HF does with from_utf8_lossy. */
    ds4_tokens t = {0};
    CHECK(ds4_tokenize(tok, "a\xFF\xE4\xBD", 4, false, &t, &err) == 0);
    size_t len;
    char *d = ds4_detokenize(tok, t.ids, t.n, &len, &err);
    CHECKF(d && !strcmp(d, "a\xEF\xBF\xBD\xEF\xBF\xBD"), "lossy decode gave \"%s\"", d ? d : err.msg);
    free(d);
    ds4_tokens_free(&t);
    int32_t bad = 1 << 30;
    CHECK(ds4_detokenize(tok, &bad, 1, &len, &err) == NULL);
    CHECK(strstr(err.msg, "outside the vocabulary") != NULL);
}

/* Very long runs of one character class must not exhaust the regex
 * engine's stack. */
static void test_long_runs(const ds4_tokenizer *tok) {
    size_t n = 1 << 20;
    char *text = malloc(n);
    const char fill[] = {' ', 'a', '7', '\n', '!'};
    ds4_error err;
    for (size_t f = 0; f < sizeof fill; f++) {
        memset(text, fill[f], n);
        ds4_tokens t = {0};
        int rc = ds4_tokenize(tok, text, n, true, &t, &err);
        CHECKF(rc == 0, "1 MiB of '%c': %s", fill[f], err.msg);
        CHECK(t.n > 0);
        ds4_tokens_free(&t);
    }
    free(text);
}

static void bench(const ds4_tokenizer *tok, const tcase *cs, size_t n) {
    size_t target = 1 << 20, len = 0;
    char *text = malloc(target + 4096);
    for (size_t i = 0; len < target; i = (i + 1) % n) {
        memcpy(text + len, cs[i].text, cs[i].text_len);
        len += cs[i].text_len;
        text[len++] = '\n';
    }
    ds4_tokens t = {0};
    ds4_error err;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECKF(ds4_tokenize(tok, text, len, false, &t, &err) == 0, "%s", err.msg);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    fprintf(stderr, "encode speed: %zu bytes -> %zu tokens in %.3f s = %.0f tokens/s (%.1f MB/s)\n", len, t.n, s,
            (double)t.n / s, (double)len / s / 1e6);
    size_t dl;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char *d = ds4_detokenize(tok, t.ids, t.n, &dl, &err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    CHECK(d && dl == len && !memcmp(d, text, len));
    fprintf(stderr, "decode speed: %.0f tokens/s\n", (double)t.n / s);
    free(d);
    ds4_tokens_free(&t);
    free(text);
}

int main(void) {
    const char *dir = test_path("%s/fixtures/tokenizer", test_data_dir());
    const char *json = test_path("%s/tokenizer.json", dir), *cfg = test_path("%s/tokenizer_config.json", dir);
    FILE *probe = fopen(json, "rb");
    if (!probe) {
        printf("no tokenizer fixture at %s\n", json);
        return 77;
    }
    fclose(probe);

    ds4_error err;
    ds4_tokenizer *tok = ds4_tokenizer_from_json(json, cfg, &err);
    CHECKF(tok != NULL, "%s", err.msg);
    if (!tok) return test_finish();

    tcase *cs = NULL;
    size_t n = load_cases(test_path("%s/cases.jsonl", dir), &cs);
    CHECKF(n > 0, "no cases in %s/cases.jsonl", dir);
    run_cases(tok, "tokenizer.json", cs, n);
    test_special(tok);
    test_bytes(tok);
    test_long_runs(tok);

    ds4_tokenizer *t2 = rebuild(tok);
    if (t2) {
        run_cases(t2, "from_arrays", cs, n);
        test_special(t2);
        ds4_tokenizer_free(t2);
    }
    test_malformed();
    bench(tok, cs, n);

    for (size_t i = 0; i < n; i++) {
        free(cs[i].text);
        free(cs[i].decoded);
        free(cs[i].ids);
    }
    free(cs);
    ds4_tokenizer_free(tok);
    return test_finish();
}
