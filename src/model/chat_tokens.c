/* Rendered chat segments -> token ids. */
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

#include "ds4_chat.h"
#include "ds4_tokenizer.h"

int ds4_chat_tokenize(const ds4_tokenizer *tok, const ds4_segments *segs, ds4_tokens *out, int *missing, ds4_error *err) {
    if (missing) *missing = 0;
    for (size_t i = 0; i < segs->n; i++) {
        const ds4_segment *s = &segs->v[i];
        if (s->special) {
            int32_t id = ds4_tokenizer_find(tok, s->text);
            if (id >= 0) {
                if (ds4_tokens_push(out, id)) return ds4_fail(err, "out of memory tokenizing a chat");
                continue;
            }
            if (missing) (*missing)++;
        }
        if (ds4_tokenize(tok, s->text, strlen(s->text), false, out, err)) return -1;
    }
    return 0;
}
