/* The DeepSeek V4 forward pass over a chunk of tokens (spec/MODEL.md §3).
 * A chunk of any length gives the same result as feeding its tokens one by
 * one: projections are batched over the chunk, while everything that reads
 * or writes the decode state runs token by token in order. */
#ifndef DS4_COMPUTE_FORWARD_H
#define DS4_COMPUTE_FORWARD_H

#include <stdbool.h>

#include "compute/net.h"
#include "compute/state.h"

typedef struct ds4_workspace ds4_workspace;

ds4_workspace *ds4_workspace_new(void);
void ds4_workspace_free(ds4_workspace *ws);

/* Runs tokens[0..n) at positions state->pos.. and advances the state.
 * logits: n x n_vocab when all_logits, else n_vocab for the last token. */
int ds4_forward(const ds4_net *net, ds4_state *st, ds4_workspace *ws, bool official, const int32_t *tokens, uint32_t n,
                float *logits, bool all_logits, ds4_error *err);

#endif
