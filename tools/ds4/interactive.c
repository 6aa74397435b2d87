/* Interactive multi-turn chat: line editing and history (libedit), slash
 * commands, Ctrl+C to stop a generation. The transcript is kept as tokens;
 * the session holds a prefix of it and only the new suffix is prefilled. */
#include <editline/readline.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "util/textfile.h"

typedef struct chat {
    ds4_model *m;
    const ds4_tokenizer *tok;
    cli_opts *o;
    ds4_session *s;
    ds4_tokens transcript; /* BOS [+max prefix] + system, then the turns */
    size_t in_session;     /* transcript tokens the session holds (a prefix) */
    ds4_think_mode mode;
    ds4_rng rng;
} chat;

static void help(void) {
    printf("Commands: /help, /think, /nothink, /think-max, /ctx N, /read FILE, /quit\n"
           "Ctrl+C stops a generation; Ctrl+D or /quit leaves.\n");
}

static int push_special(chat *c, const char *name, ds4_error *err) {
    int32_t id = ds4_tokenizer_find(c->tok, name);
    if (id >= 0) return ds4_tokens_push(&c->transcript, id) ? ds4_fail(err, "out of memory") : 0;
    return ds4_tokenize(c->tok, name, strlen(name), false, &c->transcript, err);
}

/* Rebuilds the head (BOS [+ max prefix] + system) and forgets the session. */
static int start_transcript(chat *c, ds4_error *err) {
    c->transcript.n = 0;
    c->in_session = 0;
    if (c->s) ds4_session_reset(c->s);
    ds4_segments segs = {0};
    int rc = ds4_chat_render_prompt(c->o->system, "", c->mode, &segs);
    /* keep only BOS [+ prefix] + system: drop the User/Assistant/opener tail */
    while (rc == 0 && segs.n && (segs.v[segs.n - 1].special && strcmp(segs.v[segs.n - 1].text, DS4_TOK_BOS))) {
        free(segs.v[segs.n - 1].text);
        segs.n--;
    }
    if (rc == 0) rc = ds4_chat_tokenize(c->tok, &segs, &c->transcript, NULL, err);
    ds4_segments_free(&segs);
    return rc;
}

static int new_session(chat *c, ds4_error *err) {
    ds4_session_free(c->s);
    ds4_session_opts so = {.numerics = c->o->numerics, .max_ctx = (uint32_t)c->o->ctx, .prefill_chunk = (uint32_t)c->o->chunk};
    c->s = ds4_session_new(c->m, &so, err);
    c->in_session = 0;
    return c->s ? 0 : -1;
}

static int turn(chat *c, const char *text, ds4_error *err) {
    size_t mark = c->transcript.n;
    if (push_special(c, DS4_TOK_USER, err) || ds4_tokenize(c->tok, text, strlen(text), false, &c->transcript, err) ||
        push_special(c, DS4_TOK_ASSISTANT, err) ||
        push_special(c, c->mode == DS4_THINK_NONE ? DS4_TOK_THINK_END : DS4_TOK_THINK, err))
        return -1;
    if (c->transcript.n >= (size_t)c->o->ctx) {
        c->transcript.n = mark;
        fprintf(stderr, "ds4: the conversation no longer fits the context (%ld); use /ctx N\n", c->o->ctx);
        return 0;
    }
    cli_stats st = {.prompt_tokens = (uint32_t)(c->transcript.n - c->in_session)};
    double t0 = ds4_now_s();
    int r = cli_prefill(c->s, c->transcript.ids + c->in_session, (uint32_t)(c->transcript.n - c->in_session),
                        (uint32_t)c->o->chunk, err);
    st.prefill_s = ds4_now_s() - t0;
    if (r < 0) return -1;
    if (r == 1) {
        /* stopped during prefill: drop the turn; the session is re-filled next time */
        cli_interrupted = 0;
        c->transcript.n = mark;
        c->in_session = 0;
        ds4_session_reset(c->s);
        printf("\n[interrupted]\n");
        return 0;
    }
    c->in_session = c->transcript.n;
    ds4_tokens gen = {0};
    long room = c->o->ctx - (long)c->transcript.n - 1;
    long max_new = c->o->n_predict < 0 || c->o->n_predict > room ? room : c->o->n_predict;
    r = cli_generate(c->s, c->tok, c->o, c->mode != DS4_THINK_NONE, max_new, &c->rng, &gen, &st, err);
    if (r < 0) {
        ds4_tokens_free(&gen);
        return -1;
    }
    if (r == 1) {
        cli_interrupted = 0;
        printf("[interrupted]\n");
    }
    if (r == 1 && gen.n == 0) {
        /* nothing generated: roll the turn back */
        c->transcript.n = mark;
        c->in_session = 0;
        ds4_session_reset(c->s);
    } else {
        /* generated tokens are in the session; the closing EOS is not (it
         * is fed with the next turn) */
        for (size_t i = 0; i < gen.n; i++) ds4_tokens_push(&c->transcript, gen.ids[i]);
        c->in_session = c->transcript.n;
        if (ds4_tokens_push(&c->transcript, ds4_tokenizer_eos(c->tok))) r = -1;
    }
    ds4_tokens_free(&gen);
    cli_print_stats(&st);
    return r < 0 ? -1 : 0;
}

static int set_mode(chat *c, ds4_think_mode want, ds4_error *err) {
    ds4_think_mode mode = ds4_think_mode_for_ctx(want, (uint64_t)c->o->ctx);
    if (want == DS4_THINK_MAX && mode != DS4_THINK_MAX)
        fprintf(stderr, "ds4: /think-max needs --ctx >= %u; using normal thinking\n", DS4_THINK_MAX_MIN_CTX);
    bool head_changes = (mode == DS4_THINK_MAX) != (c->mode == DS4_THINK_MAX);
    c->mode = mode;
    if (!head_changes) return 0;
    /* The Think Max prefix sits right after BOS: restart the conversation. */
    printf("(conversation restarted: the Think Max prefix changes the prompt head)\n");
    return start_transcript(c, err);
}

int cli_interactive(ds4_model *m, cli_opts *o) {
    chat c = {.m = m, .tok = ds4_model_tokenizer(m), .o = o, .mode = ds4_think_mode_for_ctx(o->mode, (uint64_t)o->ctx)};
    ds4_rng_seed(&c.rng, o->seed);
    ds4_error err = {{0}};
    char hist[4096] = "";
    const char *home = getenv("HOME");
    if (home) snprintf(hist, sizeof hist, "%s/.ds4_history", home);
    stifle_history(512);
    if (hist[0]) read_history(hist);
    int rc = 0;
    if (new_session(&c, &err) || start_transcript(&c, &err)) {
        fprintf(stderr, "ds4: %s\n", err.msg);
        return 1;
    }
    help();
    for (;;) {
        cli_interrupted = 0;
        char *line = readline("ds4> ");
        if (!line) {
            if (cli_interrupted) continue; /* Ctrl+C at the prompt: a fresh line */
            putchar('\n');
            break;
        }
        if (!*line) {
            free(line);
            continue;
        }
        add_history(line);
        char *text = NULL;
        if (line[0] == '/') {
            if (!strcmp(line, "/quit") || !strcmp(line, "/exit")) {
                free(line);
                break;
            } else if (!strcmp(line, "/help")) help();
            else if (!strcmp(line, "/think")) rc = set_mode(&c, DS4_THINK_HIGH, &err);
            else if (!strcmp(line, "/nothink")) rc = set_mode(&c, DS4_THINK_NONE, &err);
            else if (!strcmp(line, "/think-max")) rc = set_mode(&c, DS4_THINK_MAX, &err);
            else if (!strncmp(line, "/ctx ", 5)) {
                long n = strtol(line + 5, NULL, 10);
                if (n < 16) printf("ds4: /ctx expects a context size >= 16\n");
                else {
                    o->ctx = n;
                    rc = new_session(&c, &err); /* the transcript is re-prefilled next turn */
                    printf("context %ld\n", n);
                }
            } else if (!strncmp(line, "/read ", 6)) {
                ds4_error e = {{0}};
                if (!(text = ds4_read_text_file(line + 6, DS4_TEXT_FILE_MAX, NULL, &e))) printf("ds4: /read: %s\n", e.msg);
            } else {
                printf("ds4: unknown command\n");
            }
        } else {
            text = strdup(line);
        }
        free(line);
        if (rc == 0 && text) rc = turn(&c, text, &err);
        free(text);
        if (rc) {
            fprintf(stderr, "ds4: %s\n", err.msg);
            break;
        }
    }
    if (hist[0]) write_history(hist);
    ds4_tokens_free(&c.transcript);
    ds4_session_free(c.s);
    return rc ? 1 : 0;
}
