/* Tokenizer <-> GGUF metadata (tokenizer.ggml.* keys, llama.cpp's layout). */
#ifndef DS4_MODEL_TOKENIZER_GGUF_H
#define DS4_MODEL_TOKENIZER_GGUF_H

#include <stdint.h>

#include "formats/gguf.h"
#include "ds4_tokenizer.h"

/* Reads tokenizer.ggml.{model,pre,tokens,token_type,merges,bos_token_id,
 * eos_token_id,padding_token_id}. model must be "gpt2"; token_type, pre and
 * the ids are optional. Errors name the file and the key. */
ds4_tokenizer *ds4_tokenizer_from_gguf(const gguf_file *f, ds4_error *err);

/* Writes the same keys for tok, padding the token list to vocab_size with
 * "[PAD<id>]" entries of type UNUSED (the model's embedding has more rows
 * than the tokenizer has tokens), plus add_bos_token = add_eos_token =
 * false (ds4 adds BOS itself when rendering a chat). */
int ds4_tokenizer_write_gguf(gguf_writer *w, const ds4_tokenizer *tok, uint32_t vocab_size, ds4_error *err);

#endif
