/* Chat rendering for DeepSeek V4 (spec/INTERFACES.md §1): a conversation
 * becomes a list of segments, each either a special token (looked up by its
 * string) or ordinary text (BPE'd without special-token recognition, so user
 * content can never forge control tokens). Tool definitions and DSML calls
 * slot into the same segment list (server issue). */
#ifndef DS4_MODEL_CHAT_H
#define DS4_MODEL_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ds4_error.h"

/* The special-token strings of the V4 chat format. */
#define DS4_TOK_BOS "<｜begin▁of▁sentence｜>"
#define DS4_TOK_EOS "<｜end▁of▁sentence｜>"
#define DS4_TOK_USER "<｜User｜>"
#define DS4_TOK_ASSISTANT "<｜Assistant｜>"
#define DS4_TOK_THINK "<think>"
#define DS4_TOK_THINK_END "</think>"
#define DS4_TOK_DSML "｜DSML｜"

/* Default system prompt of the CLI (no trailing period, as ds4). */
#define DS4_DEFAULT_SYSTEM "You are a helpful assistant"
/* Think Max is only honoured with at least this much context. */
#define DS4_THINK_MAX_MIN_CTX 393216u

typedef enum ds4_think_mode {
    DS4_THINK_NONE = 0,
    DS4_THINK_HIGH = 1,
    DS4_THINK_MAX = 2,
} ds4_think_mode;

/* Max falls back to high below DS4_THINK_MAX_MIN_CTX. */
ds4_think_mode ds4_think_mode_for_ctx(ds4_think_mode m, uint64_t ctx);
extern const char ds4_think_max_prefix[];

typedef struct ds4_chat_msg {
    const char *role;      /* system, developer, user, assistant, tool, function */
    const char *content;   /* may be NULL */
    const char *reasoning; /* assistant only; may be NULL */
} ds4_chat_msg;

typedef struct ds4_segment {
    char *text;   /* owned */
    bool special; /* text is one special token's string */
} ds4_segment;

typedef struct ds4_segments {
    ds4_segment *v;
    size_t n, cap;
} ds4_segments;

void ds4_segments_free(ds4_segments *s);
int ds4_segments_add(ds4_segments *s, const char *text, size_t len, bool special);
/* Concatenates all segment texts (for display and tests). Caller frees. */
char *ds4_segments_join(const ds4_segments *s);

/* The canonical renderer (§1.3, without tools): BOS [+ max prefix] + system
 * region, then the turns; a trailing user/tool turn gets the assistant
 * opener for a new generation. Returns 0, or -1 when out of memory. */
int ds4_chat_render(const ds4_chat_msg *msgs, size_t n, ds4_think_mode mode, ds4_segments *out);

/* CLI one-shot prompt: BOS [+ max prefix] + system (omitted when empty) +
 * User + prompt + Assistant + opener. */
int ds4_chat_render_prompt(const char *system, const char *prompt, ds4_think_mode mode, ds4_segments *out);

/* Turns rendered segments into token ids: special segments become their
 * token (looked up by string); text segments are BPE'd with no special-
 * token recognition. A special string the vocabulary lacks (e.g. <think>
 * in DeepSeek-V3's tokenizer) is tokenized as plain text, and *missing (if
 * not NULL) counts such segments so callers can warn. */
struct ds4_tokenizer;
struct ds4_tokens;
int ds4_chat_tokenize(const struct ds4_tokenizer *tok, const ds4_segments *segs, struct ds4_tokens *out, int *missing,
                      ds4_error *err);

#endif
