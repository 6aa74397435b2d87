/* Internal: the one constructor behind every ds4_tokenizer loader
 * (tokenizer.json, in-memory arrays, GGUF). Not part of the public API. */
#ifndef DS4_MODEL_TOKENIZER_BUILD_H
#define DS4_MODEL_TOKENIZER_BUILD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/pretok.h"
#include "ds4_tokenizer.h"

typedef struct tok_build {
    const char *source; /* names the origin in error messages */
    uint32_t n_tokens;
    const char *const *text; /* per id; NULL marks an id with no token */
    const size_t *text_len;
    const int32_t *type;       /* DS4_TOKEN_* per id */
    const uint8_t *normalized; /* per id, added tokens only: HF's
                                  "normalized" flag; NULL: CONTROL tokens
                                  count as not normalized, others as
                                  normalized (what DeepSeek's file does) */
    uint32_t n_merges; /* merge i = (left[i], right[i]), rank i */
    const char *const *left, *const *right;
    const size_t *left_len, *right_len;
    const char *merge_field; /* e.g. "model.merges": names merges in errors */
    int32_t bos, eos, pad, unk;
    bool fuse_unk, ignore_merges;
    ds4_pretok *pretok;   /* ownership passes to the tokenizer, even on failure */
    const char *pre_name; /* "joyai-llm", "gpt2" or NULL for a custom set */
} tok_build;

ds4_tokenizer *tok_build_run(const tok_build *b, ds4_error *err);

/* Sets BOS / EOS / padding ids after the build (each -1 or a valid id). */
void tok_set_special_ids(ds4_tokenizer *tok, int32_t bos, int32_t eos, int32_t pad);

/* The name the pre-tokenizer is known by in GGUF (NULL: custom regexes). */
const char *ds4_tokenizer_pre_name(const ds4_tokenizer *tok);

#endif
