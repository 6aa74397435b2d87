/* Manifold-constrained hyper-connections (spec/MODEL.md §3.2-3.3, §3.7). */
#ifndef DS4_COMPUTE_MHC_H
#define DS4_COMPUTE_MHC_H

#include "compute/net.h"

/* For n_tok tokens with streams X (n_tok x hc x E): computes the sub-layer
 * input y (n_tok x E), the expansion weights post (n_tok x hc) and the
 * Sinkhorn-normalised mixing matrix comb (n_tok x hc x hc, comb[i][j]).
 * `scratch` needs n_tok * (hc*E + n_mix) floats. */
void ds4_mhc_pre(const ds4_net *net, const ds4_hc_weights *w, const float *X, uint32_t n_tok, float *y, float *post,
                 float *comb, float *scratch);
/* X'_j = post_j * o + sum_i comb[i][j] * X_i, in place on X. */
void ds4_mhc_post(const ds4_net *net, float *X, const float *o, const float *post, const float *comb, uint32_t n_tok);
/* Final collapse of the streams into one vector per token (y: n_tok x E). */
void ds4_mhc_head(const ds4_net *net, const ds4_hc_weights *w, const float *X, uint32_t n_tok, float *y, float *scratch);

#endif
