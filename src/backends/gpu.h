/* The GPU backend as the engine sees it. The CUDA implementation lives in
 * src/backends/cuda/ (*.cu, built only by `make cuda`, which also defines
 * DS4_WITH_CUDA); a plain build links gpu_stub.c instead, whose functions
 * fail with a message saying that the build has no CUDA.
 *
 * A gpu model holds device copies of the weights a ds4_net points to; a gpu
 * session holds one sequence's decode state on the device and runs
 * ds4_forward's exact algorithm there (src/compute/ is the reference). */
#ifndef DS4_BACKENDS_GPU_H
#define DS4_BACKENDS_GPU_H

#include <stdbool.h>
#include <stdint.h>

#include "compute/net.h"
#include "util/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds4_gpu_model ds4_gpu_model;
typedef struct ds4_gpu_session ds4_gpu_session;

/* True when the build has CUDA and a device answers; otherwise false with
 * the reason in why (when non-NULL). */
bool ds4_gpu_probe(ds4_error *why);
/* The architecture (as __CUDA_ARCH__ counts: 900, 800, 750) of the device
 * code the driver loaded for this GPU; 0 without CUDA. */
int ds4_gpu_code_arch(void);
/* Best read bandwidth and device-to-device copy bandwidth (bytes read plus
 * bytes written, a second) of a few passes over large buffers. */
int ds4_gpu_bandwidth(double *read_bytes_per_s, double *copy_bytes_per_s, ds4_error *err);

/* Whether a model of weight_bytes, with ds4_model_opts.gpu_expert_cache =
 * expert_cache, would keep its routed experts in host memory behind a VRAM
 * slot bank (it does not fit the free VRAM, or a bank was asked for). */
bool ds4_gpu_needs_bank(uint64_t weight_bytes, uint64_t expert_cache);

/* Whether the GPU's free memory takes dense weights of dense_bytes beside
 * a session's reserve: where it does not, an automatic backend choice
 * ends on the CPU. */
bool ds4_gpu_fits_dense(uint64_t dense_bytes);

typedef struct ds4_gpu_model_opts {
    bool verbose;
    uint64_t expert_cache; /* see ds4_model_opts.gpu_expert_cache */
} ds4_gpu_model_opts;

/* Uploads every tensor the forward pass reads. `net` must outlive the
 * model. */
ds4_gpu_model *ds4_gpu_model_new(const ds4_net *net, const ds4_gpu_model_opts *opts, ds4_error *err);
void ds4_gpu_model_free(ds4_gpu_model *g);
/* Slot bank counters (all zero without a bank). */
void ds4_gpu_expert_stats(const ds4_gpu_model *g, uint32_t *slots, uint64_t *slot_bytes, uint64_t *hits,
                          uint64_t *misses, uint64_t *bytes_copied);

/* chunk: the most tokens the caller passes per forward call (0: whole
 * prompts); the session processes them in internal chunks of up to that
 * many tokens (at least the backend's default, at most 2048; 2048 for 0),
 * which gives each routed expert more tokens per launch, for scratch
 * memory that grows with it (halved where the card has no room). */
ds4_gpu_session *ds4_gpu_session_new(ds4_gpu_model *g, uint32_t max_ctx, uint32_t chunk, ds4_error *err);
void ds4_gpu_session_free(ds4_gpu_session *s);
void ds4_gpu_session_reset(ds4_gpu_session *s);
uint32_t ds4_gpu_session_pos(const ds4_gpu_session *s);
uint64_t ds4_gpu_session_state_bytes(const ds4_gpu_session *s);
int ds4_gpu_session_copy(ds4_gpu_session *dst, const ds4_gpu_session *src, ds4_error *err);

/* ds4_forward on the device: tokens[0..n) at the session's position;
 * logits (host memory) receive n x n_vocab floats when all_logits, else
 * the last token's n_vocab. */
int ds4_gpu_forward(ds4_gpu_session *s, bool official, const int32_t *tokens, uint32_t n, float *logits, bool all_logits,
                    ds4_error *err);
/* ds4_gpu_forward whose result is the greedy pick only: next = ds4_argmax
 * of the last token's first n_cand logits (0: all), found on the device,
 * so a decode step copies one index to the host instead of n_vocab floats.
 * The logits stay on the device for ds4_gpu_last_logits. */
int ds4_gpu_forward_pick(ds4_gpu_session *s, bool official, const int32_t *tokens, uint32_t n, uint32_t n_cand,
                         int32_t *next, ds4_error *err);
/* ds4_gpu_forward whose result is the band of candidates of a banded draw
 * (ds4_sample_banded with temperature T and floor min_p) from the last
 * token's first n_cand logits: *count of them, the first BAND_CAP (4096)
 * as *ids (ascending) and *vals, in page-locked memory valid until the
 * next call. Returns 1 when the band holds more than that (the logits stay
 * on the device for ds4_gpu_last_logits). */
int ds4_gpu_forward_band(ds4_gpu_session *s, bool official, const int32_t *tokens, uint32_t n, uint32_t n_cand, float T,
                         float min_p, uint32_t *count, const int32_t **ids, const float **vals, ds4_error *err);
/* The last token's logits of the latest forward call (n_vocab floats). */
int ds4_gpu_last_logits(ds4_gpu_session *s, float *out, ds4_error *err);

#ifdef __cplusplus
}
#endif
#endif
