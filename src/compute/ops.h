/* Small fp32 vector operations of the forward pass (spec/MODEL.md §2). */
#ifndef DS4_COMPUTE_OPS_H
#define DS4_COMPUTE_OPS_H

#include <math.h>
#include <stdint.h>

/* y = x / rms(x) * w (w may be NULL for the unweighted norm). In place is fine. */
void ds4_rmsnorm(float *y, const float *x, const float *w, uint32_t n, float eps);
float ds4_dot_f32(const float *a, const float *b, uint32_t n);
/* y += a * x */
void ds4_axpy(float *y, float a, const float *x, uint32_t n);

float ds4_softplus(float x);

/* silu(min(g, limit)) * clamp(u, -limit, limit), elementwise into g. */
void ds4_swiglu_clamped(float *g, const float *u, uint32_t n, float limit);

/* RoPE frequencies of one rotary space of n_rot dims (n_rot/2 pairs).
 * YaRN is applied when factor > 1 (the compressed layers' rope). */
typedef struct ds4_rope {
    uint32_t n_pairs;
    float inv_freq[128];
} ds4_rope;
void ds4_rope_init(ds4_rope *r, uint32_t n_rot, float base, float factor, uint64_t orig_ctx, float beta_fast,
                   float beta_slow);
/* Rounds the frequencies to bfloat16, as transformers' rotary buffers are
 * when a model is instantiated in bf16 (see docs/NUMERICS.md). */
void ds4_rope_round_bf16(ds4_rope *r);
/* cos/sin of each pair at position pos (n_pairs entries each). */
void ds4_rope_angles(const ds4_rope *r, uint64_t pos, float *cos_out, float *sin_out);
/* Rotates the last 2*n_pairs entries of x (length n) as interleaved pairs;
 * inverse uses the conjugate rotation. */
void ds4_rope_apply(float *x, uint32_t n, uint32_t n_pairs, const float *cs, const float *sn, int inverse);

/* Official quantisation-aware-training simulations (spec/MODEL.md §2, §6). */
float ds4_e4m3_round(float x);  /* nearest e4m3fn value (ties to even), clamped to +-448 */
float ds4_e2m1_round(float x);  /* nearest e2m1 value (ties to even code), clamped to +-6 */
void ds4_fp8_sim(float *v, uint32_t n, uint32_t block);
void ds4_fp4_sim(float *v, uint32_t n, uint32_t block);
void ds4_hadamard(float *v, uint32_t n); /* orthonormal Sylvester transform; n a power of two */

static inline float ds4_sigmoid(float x) {
    return 1.0f / (1.0f + expf(-x));
}

#endif
