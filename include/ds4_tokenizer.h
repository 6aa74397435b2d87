/* Byte-level BPE tokenizer (GPT-2 style) that reproduces Hugging Face
 * `tokenizers` exactly on DeepSeek's tokenizer.
 *
 * Encoding, in HF's order:
 *   1. added tokens are cut out of the text literally (leftmost-longest;
 *      tokens marked normalized=false first, then the others), but only when
 *      parse_special is true;
 *   2. each remaining span is split into words by the pre-tokenizer regexes;
 *   3. each word's bytes are mapped to GPT-2's printable byte alphabet and
 *      merged by BPE, lowest merge rank first, leftmost on ties.
 * Decoding maps a token back to bytes (added tokens decode to their content).
 *
 * A ds4_tokenizer is immutable once built, so one may be shared by threads.
 * Token ids are int32_t throughout; -1 means "none". */
#ifndef DS4_MODEL_TOKENIZER_H
#define DS4_MODEL_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ds4_error.h"

typedef struct ds4_tokenizer ds4_tokenizer;

/* Token types, numbered as GGUF's tokenizer.ggml.token_type (llama.cpp). */
enum ds4_token_type {
    DS4_TOKEN_NORMAL = 1,       /* produced by BPE */
    DS4_TOKEN_UNKNOWN = 2,
    DS4_TOKEN_CONTROL = 3,      /* added token marked special (BOS, <think>, ...) */
    DS4_TOKEN_USER_DEFINED = 4, /* added token not marked special */
    DS4_TOKEN_UNUSED = 5,       /* padding slot: never produced, decodes to "" */
    DS4_TOKEN_BYTE = 6,
};

/* ---- construction ---------------------------------------------------- */

/* Loads an HF tokenizer.json and, when config_path is not NULL, its
 * tokenizer_config.json (bos_token / eos_token / pad_token). Supports the
 * BPE model with byte-level pre-tokenization, Split(Regex|String,
 * Isolated) stages and an empty normalizer; anything else is refused with
 * an error naming the file and the field. */
ds4_tokenizer *ds4_tokenizer_from_json(const char *path, const char *config_path, ds4_error *err);

/* The in-memory description the GGUF loader fills (strings need not be
 * nul-terminated when their lengths are given). */
typedef struct ds4_tokenizer_arrays {
    uint32_t n_tokens;
    const char *const *tokens; /* token id -> text (byte-level form for BPE tokens) */
    const size_t *token_lens;  /* NULL: tokens are nul-terminated */
    const int32_t *token_types; /* NULL: all DS4_TOKEN_NORMAL */
    uint32_t n_merges;
    const char *const *merges; /* "left right"; the rank is the index */
    const size_t *merge_lens;  /* NULL: nul-terminated */
    int32_t bos_id, eos_id, pad_id; /* -1 when absent */
    const char *pre; /* pre-tokenizer name: "joyai-llm" / "deepseek-v3" (the
                        default when NULL) or "gpt2" */
} ds4_tokenizer_arrays;

/* Builds a tokenizer from arrays; `source` names the origin in errors.
 * CONTROL and USER_DEFINED tokens become added tokens (matched literally,
 * CONTROL ones counting as special); NORMAL, UNKNOWN and BYTE tokens form
 * the BPE vocabulary. */
ds4_tokenizer *ds4_tokenizer_from_arrays(const ds4_tokenizer_arrays *a, const char *source, ds4_error *err);

void ds4_tokenizer_free(ds4_tokenizer *tok);

/* ---- encoding -------------------------------------------------------- */

typedef struct ds4_tokens {
    int32_t *ids;
    size_t n, cap;
} ds4_tokens; /* zero-initialise; ds4_tokenize appends */

void ds4_tokens_free(ds4_tokens *t);
/* Appends one id; -1 when out of memory. */
int ds4_tokens_push(ds4_tokens *t, int32_t id);

/* Appends the ids of text[0..len) to out. With parse_special, added tokens
 * written in the text become their ids (HF's encode with or without
 * add_special_tokens; no BOS/EOS is ever added here). Without it, no added
 * token is recognised at all and their text is tokenized like any other:
 * use this for untrusted content (note that DeepSeek's tokenizer.json marks
 * chat markers such as <｜User｜> special=false, so "control tokens only"
 * would not be enough). Any bytes are accepted, invalid UTF-8 included. */
int ds4_tokenize(const ds4_tokenizer *tok, const char *text, size_t len, bool parse_special, ds4_tokens *out,
                 ds4_error *err);

/* ---- decoding -------------------------------------------------------- */

/* Raw bytes of one token (may be part of a UTF-8 sequence; not
 * nul-terminated). NULL when id is out of range. */
const char *ds4_tokenizer_token_bytes(const ds4_tokenizer *tok, int32_t id, size_t *len);

/* Decodes ids into a malloc'd nul-terminated UTF-8 string (*len excludes
 * the nul); invalid byte sequences become U+FFFD as in HF's decode. Fails
 * on an id outside the vocabulary. */
char *ds4_detokenize(const ds4_tokenizer *tok, const int32_t *ids, size_t n, size_t *len, ds4_error *err);

/* Streaming detokenizer: text is handed out as soon as it is complete
 * UTF-8, never half a code point. The concatenation of every push plus the
 * final flush equals ds4_detokenize of the same ids. */
typedef struct ds4_detok_stream ds4_detok_stream;

ds4_detok_stream *ds4_detok_stream_new(const ds4_tokenizer *tok, ds4_error *err);
void ds4_detok_stream_free(ds4_detok_stream *s);
/* Adds one id; *text / *len receive the newly completed text (possibly
 * empty), valid until the next call on s. */
int ds4_detok_stream_push(ds4_detok_stream *s, int32_t id, const char **text, size_t *len, ds4_error *err);
/* Ends the stream: an unfinished sequence becomes U+FFFD. s is then reset. */
void ds4_detok_stream_flush(ds4_detok_stream *s, const char **text, size_t *len);

/* ---- vocabulary queries (CLI helpers) --------------------------------- */

uint32_t ds4_tokenizer_n_vocab(const ds4_tokenizer *tok);
int32_t ds4_tokenizer_bos(const ds4_tokenizer *tok);
int32_t ds4_tokenizer_eos(const ds4_tokenizer *tok);
int32_t ds4_tokenizer_pad(const ds4_tokenizer *tok);
/* The vocabulary string of id, nul-terminated (byte-level form, e.g.
 * "Ġhello"; an added token's content), or NULL when out of range. */
const char *ds4_tokenizer_token_text(const ds4_tokenizer *tok, int32_t id);
/* DS4_TOKEN_* of id, 0 when out of range. */
int ds4_tokenizer_token_type(const ds4_tokenizer *tok, int32_t id);
/* Id of the token whose vocabulary string is exactly `text`, or -1. Added
 * tokens take precedence over BPE tokens of the same text. */
int32_t ds4_tokenizer_find(const ds4_tokenizer *tok, const char *text);

/* Number of merges (rank order) and merge i as its two token ids. */
uint32_t ds4_tokenizer_n_merges(const ds4_tokenizer *tok);
int ds4_tokenizer_merge(const ds4_tokenizer *tok, uint32_t i, int32_t *left, int32_t *right);

#endif
