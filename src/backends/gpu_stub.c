/* The GPU backend of a build without CUDA: every entry point says so.
 * `make cuda` compiles the sources with DS4_WITH_CUDA and links the real
 * implementation from src/backends/cuda/ instead. */
#include "backends/gpu.h"

#ifndef DS4_WITH_CUDA

#define NO_CUDA "this build has no CUDA support (build the CUDA binaries with `make cuda`)"

bool ds4_gpu_probe(ds4_error *why) {
    ds4_fail(why, NO_CUDA);
    return false;
}

int ds4_gpu_code_arch(void) { return 0; }

bool ds4_gpu_needs_bank(uint64_t weight_bytes, uint64_t expert_cache) {
    (void)weight_bytes, (void)expert_cache;
    return false;
}

bool ds4_gpu_fits_dense(uint64_t dense_bytes) {
    (void)dense_bytes;
    return false;
}

int ds4_gpu_bandwidth(double *read_bytes_per_s, double *copy_bytes_per_s, ds4_error *err) {
    *read_bytes_per_s = *copy_bytes_per_s = 0;
    return ds4_fail(err, NO_CUDA);
}

ds4_gpu_model *ds4_gpu_model_new(const ds4_net *net, const ds4_gpu_model_opts *opts, ds4_error *err) {
    (void)net, (void)opts;
    ds4_fail(err, NO_CUDA);
    return NULL;
}

void ds4_gpu_model_free(ds4_gpu_model *g) { (void)g; }

void ds4_gpu_expert_stats(const ds4_gpu_model *g, uint32_t *slots, uint64_t *slot_bytes, uint64_t *hits,
                          uint64_t *misses, uint64_t *bytes_copied) {
    (void)g;
    *slots = 0;
    *slot_bytes = *hits = *misses = *bytes_copied = 0;
}

ds4_gpu_session *ds4_gpu_session_new(ds4_gpu_model *g, uint32_t max_ctx, uint32_t chunk, ds4_error *err) {
    (void)g, (void)max_ctx, (void)chunk;
    ds4_fail(err, NO_CUDA);
    return NULL;
}

/* Nothing below can be reached without a session, which the stub never
 * creates. */
void ds4_gpu_session_free(ds4_gpu_session *s) { (void)s; }
void ds4_gpu_session_reset(ds4_gpu_session *s) { (void)s; }
uint32_t ds4_gpu_session_pos(const ds4_gpu_session *s) {
    (void)s;
    return 0;
}
uint64_t ds4_gpu_session_state_bytes(const ds4_gpu_session *s) {
    (void)s;
    return 0;
}
int ds4_gpu_session_copy(ds4_gpu_session *dst, const ds4_gpu_session *src, ds4_error *err) {
    (void)dst, (void)src;
    return ds4_fail(err, NO_CUDA);
}
int ds4_gpu_forward(ds4_gpu_session *s, bool official, const int32_t *tokens, uint32_t n, float *logits, bool all_logits,
                    ds4_error *err) {
    (void)s, (void)official, (void)tokens, (void)n, (void)logits, (void)all_logits;
    return ds4_fail(err, NO_CUDA);
}
int ds4_gpu_forward_pick(ds4_gpu_session *s, bool official, const int32_t *tokens, uint32_t n, uint32_t n_cand,
                         int32_t *next, ds4_error *err) {
    (void)s, (void)official, (void)tokens, (void)n, (void)n_cand, (void)next;
    return ds4_fail(err, NO_CUDA);
}
int ds4_gpu_forward_band(ds4_gpu_session *s, bool official, const int32_t *tokens, uint32_t n, uint32_t n_cand, float T,
                         float min_p, uint32_t *count, const int32_t **ids, const float **vals, ds4_error *err) {
    (void)s, (void)official, (void)tokens, (void)n, (void)n_cand, (void)T, (void)min_p, (void)count, (void)ids, (void)vals;
    return ds4_fail(err, NO_CUDA);
}
int ds4_gpu_last_logits(ds4_gpu_session *s, float *out, ds4_error *err) {
    (void)s, (void)out;
    return ds4_fail(err, NO_CUDA);
}

#else
/* The CUDA build links src/backends/cuda/ instead; keep the unit non-empty. */
typedef int ds4_gpu_stub_unused;
#endif
