#include "ds4_chat.h"

#include <stdlib.h>
#include <string.h>

const char ds4_think_max_prefix[] =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root cause, "
    "rigorously stress-testing your logic against all potential paths, edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n";

ds4_think_mode ds4_think_mode_for_ctx(ds4_think_mode m, uint64_t ctx) {
    return m == DS4_THINK_MAX && ctx < DS4_THINK_MAX_MIN_CTX ? DS4_THINK_HIGH : m;
}

void ds4_segments_free(ds4_segments *s) {
    for (size_t i = 0; i < s->n; i++) free(s->v[i].text);
    free(s->v);
    memset(s, 0, sizeof *s);
}

int ds4_segments_add(ds4_segments *s, const char *text, size_t len, bool special) {
    if (len == 0 && !special) return 0;
    /* Adjacent text segments merge: BPE sees one continuous span, as if the
     * rendered string were tokenized between special tokens. */
    if (!special && s->n && !s->v[s->n - 1].special) {
        ds4_segment *last = &s->v[s->n - 1];
        size_t old = strlen(last->text);
        char *t = realloc(last->text, old + len + 1);
        if (!t) return -1;
        memcpy(t + old, text, len);
        t[old + len] = 0;
        last->text = t;
        return 0;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        ds4_segment *v = realloc(s->v, cap * sizeof *v);
        if (!v) return -1;
        s->v = v;
        s->cap = cap;
    }
    char *t = malloc(len + 1);
    if (!t) return -1;
    memcpy(t, text, len);
    t[len] = 0;
    s->v[s->n].text = t;
    s->v[s->n].special = special;
    s->n++;
    return 0;
}

char *ds4_segments_join(const ds4_segments *s) {
    size_t len = 0;
    for (size_t i = 0; i < s->n; i++) len += strlen(s->v[i].text);
    char *out = malloc(len + 1);
    if (!out) return NULL;
    out[0] = 0;
    char *p = out;
    for (size_t i = 0; i < s->n; i++) p = stpcpy(p, s->v[i].text);
    return out;
}

static int text(ds4_segments *o, const char *t) { return t ? ds4_segments_add(o, t, strlen(t), false) : 0; }
static int special(ds4_segments *o, const char *t) { return ds4_segments_add(o, t, strlen(t), true); }

static int head(ds4_segments *o, ds4_think_mode mode, const char *system) {
    int rc = special(o, DS4_TOK_BOS);
    if (mode == DS4_THINK_MAX) rc |= text(o, ds4_think_max_prefix);
    rc |= text(o, system);
    return rc;
}

static int opener(ds4_segments *o, ds4_think_mode mode) {
    return special(o, DS4_TOK_ASSISTANT) | special(o, mode == DS4_THINK_NONE ? DS4_TOK_THINK_END : DS4_TOK_THINK);
}

static bool is_role(const ds4_chat_msg *m, const char *r) { return m->role && !strcmp(m->role, r); }
static bool is_tool(const ds4_chat_msg *m) { return is_role(m, "tool") || is_role(m, "function"); }

/* Inside tool results the only escape is the closing tag itself. */
static int tool_result(ds4_segments *o, const char *content) {
    static const char close[] = "</tool_result>";
    int rc = text(o, "<tool_result>");
    const char *p = content ? content : "";
    for (const char *hit; (hit = strstr(p, close)); p = hit + 2) {
        rc |= ds4_segments_add(o, p, (size_t)(hit - p), false);
        rc |= text(o, "&lt;/");
    }
    rc |= text(o, p);
    rc |= text(o, close);
    return rc;
}

int ds4_chat_render(const ds4_chat_msg *msgs, size_t n, ds4_think_mode mode, ds4_segments *out) {
    /* System region: every system/developer message, hoisted, joined by a
     * blank line. */
    size_t sys_len = 0;
    for (size_t i = 0; i < n; i++)
        if ((is_role(&msgs[i], "system") || is_role(&msgs[i], "developer")) && msgs[i].content)
            sys_len += strlen(msgs[i].content) + 2;
    char *sys = malloc(sys_len + 1);
    if (!sys) return -1;
    sys[0] = 0;
    for (size_t i = 0; i < n; i++)
        if ((is_role(&msgs[i], "system") || is_role(&msgs[i], "developer")) && msgs[i].content) {
            if (sys[0]) strcat(sys, "\n\n");
            strcat(sys, msgs[i].content);
        }
    int rc = head(out, mode, sys);
    free(sys);

    bool tool_context = false;
    size_t last_user = (size_t)-1;
    for (size_t i = 0; i < n; i++) {
        if (is_tool(&msgs[i])) tool_context = true;
        if (is_role(&msgs[i], "user") || is_tool(&msgs[i])) last_user = i;
    }
    bool pending = false, prev_tool = false;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const ds4_chat_msg *m = &msgs[i];
        if (is_role(m, "user")) {
            rc |= special(out, DS4_TOK_USER) | text(out, m->content);
            pending = true;
            prev_tool = false;
        } else if (is_tool(m)) {
            if (!prev_tool) rc |= special(out, DS4_TOK_USER);
            rc |= tool_result(out, m->content);
            pending = true;
            prev_tool = true;
        } else if (is_role(m, "assistant")) {
            if (pending) {
                rc |= special(out, DS4_TOK_ASSISTANT);
                bool keep = mode != DS4_THINK_NONE && (tool_context || last_user == (size_t)-1 || i > last_user);
                if (keep) rc |= special(out, DS4_TOK_THINK) | text(out, m->reasoning);
                rc |= special(out, DS4_TOK_THINK_END);
            }
            rc |= text(out, m->content) | special(out, DS4_TOK_EOS);
            pending = false;
            prev_tool = false;
        }
    }
    if (pending) rc |= opener(out, mode);
    return rc ? -1 : 0;
}

int ds4_chat_render_prompt(const char *system, const char *prompt, ds4_think_mode mode, ds4_segments *out) {
    int rc = head(out, mode, system);
    rc |= special(out, DS4_TOK_USER) | text(out, prompt) | opener(out, mode);
    return rc ? -1 : 0;
}
