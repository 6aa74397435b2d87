/* Single CUDA kernels on host arrays, for tests/cuda/test_cuda_kernels.c
 * (only in `make cuda` builds). Each call copies its inputs to the device,
 * runs the kernel(s) of one forward-pass operation, copies the outputs
 * back and returns 0, or -1 with err set. Weights are F32 unless a type is
 * given; "type" rows are ggml F32/F16/BF16 rows. */
#ifndef DS4_BACKENDS_GPU_TESTOPS_H
#define DS4_BACKENDS_GPU_TESTOPS_H

#include <stdint.h>

#include "util/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* y[t][g*rows + r] = W[g*rows + r] . (x[t] + g*x_group) (* xscale[t]);
 * W has groups*rows rows of K values of `type`. */
int ds4_gpu_test_linear(uint32_t type, const void *w, uint32_t K, uint32_t rows, uint32_t groups, uint64_t x_group,
                        const float *x, uint64_t x_stride, const float *xscale, uint32_t n_tok, float *y, uint64_t y_stride,
                        ds4_error *err);

/* F16 / BF16 products: 1 runs them on the plain fp32 kernels (the
 * reference for the tensor-core ones), 0 on the tensor cores where usable,
 * -1 restores the default (DS4_CUDA_NO_FLMMA). */
void ds4_gpu_test_set_plain_linear(int plain);

/* y[t] = W . (x[t] / rms(x[t])) (k_linear_rms, eps added to the mean
 * square); W has rows rows of K values of `type`. */
int ds4_gpu_test_linear_rms(uint32_t type, const void *w, uint32_t K, uint32_t rows, const float *x, uint64_t x_stride,
                            uint32_t n_tok, float eps, float *y, uint64_t y_stride, ds4_error *err);

/* k_rows on n_rows rows of n floats (rows_per_tok rows per position);
 * split > 0: rows [0, split) and the rest as the two ops of one k_rows2. */
int ds4_gpu_test_rows(float *x, uint32_t n_rows, uint32_t n, uint32_t rows_per_tok, int norm, const float *norm_w, float eps,
                      const float *inv_freq, uint32_t n_pairs, uint64_t pos0, int inverse, int qat, uint32_t n_rot,
                      uint32_t split, ds4_error *err);

/* mHC: pre (head = 0: y, post, comb) or head (head = 1: y only), and post.
 * fused: the two-launch form (k_linear_rms + k_mhc_finish), which with
 * norm_w also applies the weighted RMSNorm to y; else the four kernels. */
int ds4_gpu_test_mhc_pre(uint32_t hc, uint32_t E, uint32_t n_tok, float rms_eps, float hc_eps, uint32_t iters, int head,
                         const float *fn, const float *base, const float *scale, const float *X, int fused,
                         const float *norm_w, float *y, float *post, float *comb, ds4_error *err);
int ds4_gpu_test_mhc_post(uint32_t hc, uint32_t E, uint32_t n_tok, float *X, const float *o, const float *post,
                          const float *comb, ds4_error *err);

/* A compressor over T tokens fed in chunks of the given sizes; rows gets
 * the T / ratio emitted rows (width floats each). ape: ratio x halves*width. */
int ds4_gpu_test_compressor(uint32_t ratio, uint32_t width, uint32_t n_rot, const float *ape, const float *norm_w,
                            float eps, const float *inv_freq, int qat, uint32_t T, const float *ck, const float *cz,
                            const uint32_t *chunks, uint32_t n_chunks, float *rows, ds4_error *err);

/* Indexer over n tokens at pos0 with (pos0 + n) / 4 keys: scores (n x
 * stride, rows of tokens with n_vis <= topk untouched) and sel (n x topk). */
int ds4_gpu_test_indexer(const float *iq, const float *iw, uint32_t n, uint32_t n_head, uint32_t d, const float *keys,
                         uint64_t pos0, uint32_t topk, float *scores, uint64_t stride, int32_t *sel, ds4_error *err);

/* The indexer's top-k alone over given scores (n x stride): sel (n x topk) */
int ds4_gpu_test_topk(const float *scores, uint32_t n, uint64_t stride, uint64_t pos0, uint32_t topk, int32_t *sel,
                      ds4_error *err);

/* Attention for n tokens at pos0 (see attn_op in cuda/kernels.cuh);
 * n_comp_rows rows in comp, sel n x topk (may be NULL when unused);
 * part_slots > 0 gives the kernel room for per-segment partials (decode
 * splits a token's rows over blocks then). q_eps > 0: q is raw and the
 * kernel normalizes and rotates it (attn_op.q_eps); an error where it
 * cannot. */
int ds4_gpu_test_attention(const float *q, const float *kv, const float *ring, const float *comp, uint64_t n_comp_rows,
                           const int32_t *sel, const float *sinks, uint32_t n, uint32_t H, uint32_t hd, uint32_t W,
                           uint32_t ratio, uint32_t topk, uint64_t pos0, const float *inv_freq, uint32_t n_pairs,
                           uint32_t part_slots, float q_eps, float *out, ds4_error *err);

/* Routing (tid2eid may be NULL: top-k with optional bias). */
/* k_argmax over n floats. */
int ds4_gpu_test_argmax(const float *x, uint32_t n, int32_t *out, ds4_error *err);
/* k_band over n floats: out[0] the count, out[1..cap] and vals the candidates. */
/* k_l2_ahead over a ragged span of a copy of data (off bytes in, tail
 * bytes short of the end) and the whole copy, then the copy back in out. */
int ds4_gpu_test_l2_ahead(const void *data, size_t bytes, size_t off, size_t tail, void *out, ds4_error *err);
int ds4_gpu_test_band(const float *x, uint32_t n, float T, float min_p, uint32_t cap, int32_t *out, float *vals,
                      ds4_error *err);
int ds4_gpu_test_route(const float *logits, uint32_t n, uint32_t n_expert, uint32_t k, const int32_t *tokens,
                       const int32_t *tid2eid, uint32_t n_vocab, const float *bias, float scale, int32_t *ids, float *wts,
                       ds4_error *err);

/* The grouping of n_entries expert ids (k_moe_group) into grp, whose
 * k_group_ints(n_expert, n_entries) ints are: the number of used experts,
 * then used ids, offsets and counts (n_expert each; the first `used`
 * meaningful), then the entries of each used expert in ascending entry
 * order, then each entry's place in that list. */
int ds4_gpu_test_group(const int32_t *ids, uint32_t n_entries, uint32_t n_expert, int32_t *grp, ds4_error *err);

/* Routed experts plus the shared one: out = shared(x) + sum_k wts * expert(x).
 * gate, up [X][F][E] and shared gate/up [F][E] of type_up; down [X][E][F]
 * and shared down [E][F] of type_down. */
int ds4_gpu_test_moe(uint32_t type_up, uint32_t type_down, uint32_t n, uint32_t E, uint32_t F, uint32_t X, uint32_t k, float limit,
                     const void *gate, const void *up, const void *down, const void *sgate, const void *sup,
                     const void *sdown, const float *x, const int32_t *ids, const float *wts, float *out, ds4_error *err);

#ifdef __cplusplus
}
#endif
#endif
