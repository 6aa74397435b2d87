/* The CUDA backend's host side, shared by its three parts: gpu.cu (the
 * device, models: device copies of the weights and the expert slot bank),
 * gpu_session.cu (sessions: decode state on the device; profiling) and
 * gpu_forward.cu (ds4_forward's algorithm as a sequence of kernel launches
 * on one stream). Between a chunk's token upload and its logits download
 * nothing crosses to the host: every decision that depends on data (MoE
 * routing, the indexer's top-k) is taken on the device, and everything
 * else depends only on positions, which the host knows. */
#ifndef DS4_BACKENDS_CUDA_GPU_IMPL_CUH
#define DS4_BACKENDS_CUDA_GPU_IMPL_CUH
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "backends/gpu.h"
#include "compute/layers.h"
#include "compute/net.h"
#include "experts/experts.h"
#include "util/bankmem.h"
#include "util/units.h"
}
#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"
#include "util/clock.h"
#include "util/progress.h"

/* Tokens per internal chunk: bounds the scratch buffers. A session takes
 * at least GPU_CHUNK and up to its caller's prefill chunk (session_chunk).
 * Results do not depend on it (every kernel computes a token the same way
 * in any chunk). */
#define GPU_CHUNK 256
#define GPU_CHUNK_MAX 2048

/* Bump allocation inside one device block; sizes are counted first with
 * base == NULL. */
typedef struct bump {
    uint8_t *base;
    uint64_t off;
} bump;

static inline void *take(bump *b, uint64_t bytes) {
    void *p = b->base ? b->base + b->off : NULL;
    b->off += align256(bytes);
    return p;
}
#define TAKE_F(b, n) ((float *)take(b, (uint64_t)(n) * sizeof(float)))
#define TAKE_I(b, n) ((int32_t *)take(b, (uint64_t)(n) * sizeof(int32_t)))

/* The expert slot bank: routed experts live in page-locked host memory
 * (one contiguous gate|up|down record per expert) and are copied on demand
 * into n_slots device slots replaced in least-recently-used order; the
 * table is kept on the device (k_bank.cu) unless DS4_CUDA_BANK_HOST=1,
 * which keeps it here and copies on a stream of its own. For a sidecar package (no experts in the
 * GGUF) there is no host copy: missing experts come from the model's
 * expert source (its RAM-resident records or its SSD slot bank, read with
 * io_uring), a batch at a time. Sessions of one model must not run
 * concurrently while it is in use (they share the slots). */
typedef struct bank {
    uint32_t n_slots;
    uint64_t slot_bytes;
    uint8_t *dev;
    uint8_t *host;
    uint64_t host_bytes;
    uint64_t *layer_off, *stride, *rec_bytes, *off_up, *off_down; /* per layer */
    int32_t *slot_of;  /* (layer * n_expert + expert) -> slot or -1 */
    uint64_t *key;     /* slot -> layer * n_expert + expert, or UINT64_MAX */
    uint64_t *stamp;   /* slot -> group counter of its last use */
    int32_t *prev, *next, head, tail; /* recency list, head = most recent */
    uint64_t tick;
    cudaStream_t copy;
    cudaEvent_t copied, consumed;
    uint64_t hits, misses, bytes;
    /* source-fed bank (host == NULL): the misses of a group, then views */
    ds4_expert_source *src;
    int32_t *pend_slot;
    uint32_t *pend_id;
    uint64_t *pend_old; /* the key each pending slot held before, or UINT64_MAX */
    uint64_t *back;     /* keys being copied back to the source (adopt) */
    /* the copies back run on a stream of their own, beside the copies in
     * (the bus carries both directions at once); a pending slot's copy in
     * waits for its event when it had one out */
    cudaStream_t back_st;
    cudaEvent_t *out_ev;
    uint8_t *out_k;
    uint32_t n_expert;
    ds4_expert_view *views;
    /* the source's host regions pinned for DMA (cudaHostRegister), and
     * why not where that was refused */
    void **pinned;
    uint32_t n_pinned, n_regions;
    uint64_t pinned_bytes;
    char pin_note[160];
    /* the page-locked copy of a GGUF's experts: seconds to fill and to
     * pin, the threads that filled it, whether it is registered */
    double fill_s, pin_s;
    uint32_t fill_threads;
    bool host_registered;
    /* host-memory bank kept on the device (k_bank.cu): no host round trip
     * a layer, so decode steps run as graphs; DS4_CUDA_BANK_HOST=1 keeps
     * the host-driven bank above */
    bool on_dev;
    bank_dev dv;
    void *dv_mem;
} bank;

struct ds4_gpu_model {
    const ds4_net *net;
    const ds4_hparams *hp;
    bank *bank;           /* NULL: every expert resident */
    ds4_weights w;        /* same tensors, data in device memory */
    uint8_t *dev;         /* one allocation for all of them */
    uint64_t dev_bytes;
    float *rope;          /* [numerics][kind][128] inverse frequencies */
    uint32_t chunk;       /* tokens per internal chunk */
};

typedef struct gpu_comp {
    float *rows;
    float *fk[2], *fz[2]; /* frontier, double-buffered across chunks */
} gpu_comp;

typedef struct gpu_layer {
    float *ring;
    gpu_comp comp, idx;
} gpu_layer;

/* A single-token step captured ahead: its graph's cache slot (-1: none)
 * and the settings it was captured for. */
typedef struct prepared_step {
    int slot;
    uint32_t pos;
    int fr;
    bool official;
    int want; /* step_want */
    uint32_t pick_n;
    float band_T, band_minp;
} prepared_step;

struct ds4_gpu_session {
    ds4_gpu_model *g;
    uint32_t max_ctx, pos;
    uint32_t part_slots; /* decode attention partials (att_part_slots) */
    uint32_t chunk; /* tokens per internal chunk (sizes the scratch) */
    int fr; /* which frontier buffer holds the state at pos */
    cudaStream_t st;
    gpu_layer *layers;
    uint8_t *state;
    uint64_t state_size;
    /* scratch for one internal chunk */
    uint8_t *scratch;
    float *X, *y, *o, *pre, *post, *comb, *mix, *rinv;
    float *qa, *q, *kv, *att, *apart, *low, *ck, *cz, *ik, *iz, *iq, *iw, *scores;
    float *lg, *wts, *h, *hs, *dx, *sh, *logits;
    int32_t *tok, *sel, *ids, *grp;
    /* a package's bank: the next layer's likely experts (its router on this
     * layer's MoE input), read back with the routing as prefetch hints */
    float *gwts;
    int32_t *gids, *gids_pinned;
    bool guessed;
    void *act; /* quantized activations for quantized weights */
    /* Side lanes: streams for the parts of a layer that need only its
     * input, run beside the main chain (lane 0: compressor, then the
     * shared expert; lane 1: indexer; lane 2: weights asked into L2 ahead
     * of their products; lane 3: the mHC post coefficients), lanes 0 and 1 each with its own activation
     * scratch; they fork from and join back into st by events, so the
     * decode graph captures them as parallel branches. Off (everything
     * on st) while profiling or with DS4_CUDA_LANES=0. */
    bool lanes;
    cudaStream_t lane[4];
    void *lane_act[2];
    cudaEvent_t ev_fork[4], ev_join[4], ev_qa;
    bool coef_forked; /* lane 3 holds post and comb not yet joined */
    /* lane 2 at work in the chunk being queued (joined at its end); off
     * with DS4_CUDA_L2AHEAD=0 */
    bool ahead, ahead_forked;
    struct prof *prof; /* DS4_CUDA_PROFILE=1: time per operation */
    /* Decode steps (one token) are captured into a CUDA graph and replayed:
     * one launch instead of a few hundred, whose cost per launch otherwise
     * bounds decode. The kernels launched depend on the position only
     * through which windows complete and whether the indexer prunes, so a
     * few executable graphs (keyed by that) are kept and updated in place
     * with each step's parameters. Off with DS4_CUDA_GRAPH=0. */
    bool graphs;
    int32_t *grp_pinned;      /* slot bank: used experts read back (1 + n_expert) */
    const uint8_t **wtab_pinned; /* slot bank: 3 matrix addresses per used expert */
    const uint8_t **wtab;        /* the same on the device */
    /* page-locked host words, two of each, by the parity of the step's
     * position (two steps can be in flight, see spec): a captured step's
     * token, read by its embedding kernel (-1: the device's pick of the
     * step before), and a greedy step's pick */
    int32_t *tok_pinned;
    int32_t *pick_pinned;
    float *logits_pinned; /* n_vocab */
    /* Greedy decoding ahead (ds4_gpu_forward_pick): with a graph step's
     * pick, the next step is launched at once with that pick (read on the
     * device) as its token, so the GPU need not wait for the host between
     * steps. A following call that feeds that same token takes the step in
     * flight; any other call first lets it finish and does not count it:
     * a step only writes state that the step at its position rewrites
     * (its window ring slot, the compressors' new frontier and rows at or
     * past pos), so an unused step leaves nothing behind. Off with
     * DS4_CUDA_SPECULATE=0. */
    bool speculate;
    cudaEvent_t ev_done[2]; /* a graph step's end, by position parity */
    /* the greedy pick on the device (ds4_gpu_forward_pick): over the first
     * pick_n logits of the last head row, last_row, which stays readable
     * (ds4_gpu_last_logits) until the next head runs */
    int32_t *pick;
    void *pick_part; /* the arg-max's or the band's per-block partial results */
    uint32_t pick_n;
    const float *last_row;
    /* a sampled step's band of candidates (ds4_gpu_forward_band): count
     * and indices, values, on the device and page-locked */
    int32_t *band_out, *band_out_pinned;
    float *band_vals, *band_vals_pinned;
    float band_T, band_minp;
    struct {
        uint64_t key;
        cudaGraphExec_t exec;
    } gcache[16];
    int n_gcache;
    /* the next step's graph, captured ahead (step_graph), and the greedy
     * step launched ahead (see speculate); slot -1: none */
    prepared_step ready, spec;
    void *topk_work; /* k_idx_topk's scratch */
    uint64_t score_stride;
    /* DS4_CUDA_STEPTIME=1: host seconds of the decode steps' capture,
     * graph update and launch-to-result, printed when the session ends */
    bool steptime;
    double t_capture, t_update, t_run, t_launch, t_between, t_last_end;
    uint64_t n_steps;
};

/* Candidates a sampled decode step brings back at most (ds4_gpu_forward_band). */
#define BAND_CAP 4096

/* Rows of logits made at a time: the head runs over the wanted rows in
 * groups of this many, each group's logits copied out before the next, so
 * the scratch is HEAD_ROWS x n_vocab floats (132 MB at the published 129280
 * tokens) rather than a chunk's worth (1 GB at 2048 tokens). Every kernel
 * gives a row the same bits whatever rows share its launch. */
#define HEAD_ROWS 256
/* Query tokens the indexer scores at a time, for the same reason: a
 * token's scores take a row of max_ctx / 4 floats (1 MB at a 1M-token
 * context, so 2 GB for a 2048-token chunk at once); each group's top-k is
 * taken before the next group's scores overwrite them. */
#define IDX_ROWS 256

static inline uint64_t tensor_bytes(const ds4_tensor *t) { return t->row_bytes * t->ne[1] * t->ne[2] * t->ne[3]; }

/* Across the parts: */
/* gpu_session.cu: per-operation GPU time (DS4_CUDA_PROFILE) */
void prof_mark(ds4_gpu_session *s, const char *name);
void prof_collect(ds4_gpu_session *s, uint32_t n_tok);
/* gpu_forward.cu: lets a greedy step launched ahead finish, unused */
int spec_drop(ds4_gpu_session *s, ds4_error *err);

#endif
