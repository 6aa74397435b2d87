/* Pre-tokenizer: splits text into the "words" that BPE sees.
 *
 * It is a sequence of regex stages with HF `tokenizers` "Isolated" behaviour:
 * each stage runs over every piece the previous stage produced, and every
 * match and every gap between matches becomes a piece of its own. Regexes
 * are written in the Oniguruma dialect that tokenizer.json uses and are
 * translated to PCRE2 (UTF + UCP, JIT when available) where the two differ.
 * Pieces are reported in text order through a callback, so no piece list is
 * ever materialised. Invalid UTF-8 never matches a regex: such bytes end up
 * in gap pieces and are still tokenized byte by byte. */
#ifndef DS4_MODEL_PRETOK_H
#define DS4_MODEL_PRETOK_H

#include <stddef.h>

#include "util/error.h"

typedef struct ds4_pretok ds4_pretok;

/* The three "Isolated" regexes of DeepSeek V3/V4 ("deepseek-v3",
 * "joyai-llm" in llama.cpp's naming). */
extern const char *const DS4_PRETOK_DEEPSEEK[3];
/* The GPT-2 regex that a ByteLevel pre-tokenizer with use_regex applies. */
extern const char DS4_PRETOK_GPT2[];

ds4_pretok *ds4_pretok_new(ds4_error *err);
void ds4_pretok_free(ds4_pretok *p);

/* Appends an Isolated split stage. `literal` makes the pattern a plain
 * string (HF's Split with {"String": ...}). */
int ds4_pretok_add(ds4_pretok *p, const char *pattern, size_t len, int literal, ds4_error *err);

/* Called for every non-empty final piece; a non-zero return stops the run
 * and is returned from ds4_pretok_run (the callback fills err itself). */
typedef int (*ds4_pretok_fn)(void *ctx, const char *piece, size_t len, ds4_error *err);

/* Splits text[0..len) and reports the pieces in order. With no stages the
 * whole text is one piece. Returns 0, the callback's value, or -1 on a
 * regex engine error. Safe to call from several threads at once. */
int ds4_pretok_run(const ds4_pretok *p, const char *text, size_t len, ds4_pretok_fn fn, void *ctx,
                   ds4_error *err);

#endif
