/* The CUDA forward pass: models (device copies of the weights), sessions
 * (decode state on the device) and ds4_forward's algorithm as a sequence of
 * kernel launches on one stream. Between a chunk's token upload and its
 * logits download nothing crosses to the host: every decision that depends
 * on data (MoE routing, the indexer's top-k) is taken on the device, and
 * everything else depends only on positions, which the host knows. */
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

static void *take(bump *b, uint64_t bytes) {
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
    uint64_t score_stride;
    /* DS4_CUDA_STEPTIME=1: host seconds of the decode steps' capture,
     * graph update and launch-to-result, printed when the session ends */
    bool steptime;
    double t_capture, t_update, t_run, t_launch, t_between, t_last_end;
    uint64_t n_steps;
};

static void prof_free(ds4_gpu_session *s);
static int spec_drop(ds4_gpu_session *s, ds4_error *err);

#ifdef DS4_CUDA_TRACE
#define TRACE_TUS(X) X(k_attn) X(k_linear) X(k_mhc) X(k_mmq) X(k_moe) X(k_quant) X(k_rows)
#define TRACE_DECL(n) extern "C" cudaError_t k_trace_bind_##n(void *b); extern "C" unsigned k_trace_count_##n(void);
TRACE_TUS(TRACE_DECL)
static void *trace_mem[7];
/* DS4_TRACE_OUT=file: binds a record buffer per translation unit */
static void trace_start(void) {
    if (!getenv("DS4_TRACE_OUT") || trace_mem[0]) return;
    int i = 0;
#define TRACE_BIND(n) cudaMalloc(&trace_mem[i], TRACE_CAP * sizeof(trace_rec)); k_trace_bind_##n(trace_mem[i]); i++;
    TRACE_TUS(TRACE_BIND)
}
/* writes, per unit: its name (16 bytes), its count, its records */
static void trace_dump(void) {
    const char *path = getenv("DS4_TRACE_OUT");
    if (!path || !trace_mem[0]) return;
    cudaDeviceSynchronize();
    FILE *fp = fopen(path, "wb");
    if (!fp) return;
    int i = 0;
    trace_rec *h = (trace_rec *)malloc(TRACE_CAP * sizeof(trace_rec));
#define TRACE_DUMP(n)                                                              \
    {                                                                              \
        char name[16] = {0};                                                       \
        strncpy(name, #n, 15);                                                     \
        unsigned c = k_trace_count_##n();                                          \
        if (c > TRACE_CAP) c = TRACE_CAP;                                          \
        cudaMemcpy(h, trace_mem[i], c * sizeof(trace_rec), cudaMemcpyDeviceToHost); \
        fwrite(name, 1, 16, fp);                                                   \
        fwrite(&c, 4, 1, fp);                                                      \
        fwrite(h, sizeof(trace_rec), c, fp);                                       \
        i++;                                                                       \
    }
    TRACE_TUS(TRACE_DUMP)
    free(h);
    fclose(fp);
}
#else
static void trace_start(void) {}
static void trace_dump(void) {}
#endif

static void prof_init(ds4_gpu_session *s);

/* ---- device and weights -------------------------------------------------------- */

/* The GPU's free and total memory; false (the error cleared: the
 * backend's own calls report the device's state) when it cannot say. */
static bool gpu_memory(size_t *free_b, size_t *total_b) {
    if (cudaMemGetInfo(free_b, total_b) == cudaSuccess) return true;
    (void)cudaGetLastError();
    return false;
}

/* DS4_CUDA_MEM=SIZE: run as if the GPU had SIZE bytes of memory (a 24 or
 * 32 GB card on an 80 GB one). The first probe takes the rest with one
 * allocation, held for the process's life, so that every later decision
 * (weights resident or a slot bank, the bank's size, the sessions) and
 * every allocation meet the smaller card's limit for real. */
static void hold_pretend_size(void) {
    static bool done = false;
    if (done) return;
    done = true;
    const char *e = getenv("DS4_CUDA_MEM");
    if (!e || !*e) return;
    uint64_t want;
    size_t free_b = 0, total_b = 0;
    if (ds4_parse_size(e, &want)) {
        fprintf(stderr, "ds4: DS4_CUDA_MEM='%s' is not a size such as 24G; using the whole GPU\n", e);
        return;
    }
    if (!gpu_memory(&free_b, &total_b) || want >= total_b) return;
    uint64_t take = total_b - want, room = 64ull << 20; /* the context's own growth */
    if (take + room > free_b) {
        fprintf(stderr, "ds4: DS4_CUDA_MEM=%s: only %.1f GB of the GPU's %.1f GB are free; holding what can be\n", e,
                free_b / 1e9, total_b / 1e9);
        take = free_b > room ? free_b - room : 0;
    }
    void *p = NULL;
    if (!take || cudaMalloc(&p, take) != cudaSuccess) {
        (void)cudaGetLastError();
        fprintf(stderr, "ds4: DS4_CUDA_MEM=%s: could not hold %.1f GB of the GPU; using the whole GPU\n", e, take / 1e9);
        return;
    }
    fprintf(stderr, "ds4: DS4_CUDA_MEM=%s: %.1f GB of the GPU's %.1f GB held back, as on a smaller card\n", e,
            take / 1e9, total_b / 1e9);
}

extern "C" bool ds4_gpu_probe(ds4_error *why) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        ds4_fail(why, "no usable CUDA device: %s", cudaGetErrorString(e));
        return false;
    }
    if (n == 0) {
        ds4_fail(why, "no CUDA device found");
        return false;
    }
    hold_pretend_size();
    return true;
}

/* Compiled like every kernel of this build: its attributes tell which of
 * the build's architectures the driver loaded for this GPU. */
__global__ void code_arch_probe_kernel() {}

int k_code_arch(void) {
    static int arch = -1;
    if (arch < 0) {
        cudaFuncAttributes fa;
        arch = cudaFuncGetAttributes(&fa, code_arch_probe_kernel) == cudaSuccess ? fa.ptxVersion * 10 : 0;
    }
    return arch;
}

extern "C" int ds4_gpu_code_arch(void) { return k_code_arch(); }

size_t k_smem_optin(void) {
    static long long lim = -1;
    if (lim < 0) {
        int dev = 0, v = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
            v = 48 * 1024;
        lim = v;
        const char *e = getenv("DS4_CUDA_SMEM_LIMIT");
        long long want = e ? atoll(e) : 0;
        if (want > 0 && want < lim) lim = want;
    }
    return (size_t)lim;
}

/* Programmatic dependent launches (common.cuh): where the kernels carry
 * their waits (code built for sm_90 or newer) unless DS4_CUDA_NO_PDL is
 * set; decided once per process. */
bool k_pdl_on(void) {
    static int on = -1;
    if (on < 0) on = !getenv("DS4_CUDA_NO_PDL") && k_code_arch() >= 900;
    return on;
}

/* Reads the buffer with 16-byte loads; the xor keeps the loads alive. */
__global__ void read_kernel(const uint4 *p, uint64_t n, uint32_t *sink) {
    uint32_t acc = 0;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        uint4 v = p[i];
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) *sink = acc; /* practically never: no store traffic */
}

extern "C" int ds4_gpu_bandwidth(double *read_bytes_per_s, double *copy_bytes_per_s, ds4_error *err) {
    *read_bytes_per_s = *copy_bytes_per_s = 0;
    /* two halves: the read passes go over both, the copies from one into the other */
    size_t free_b = 0, total_b = 0, bytes = (size_t)2 << 30;
    CU(cudaMemGetInfo(&free_b, &total_b));
    if (bytes > free_b / 2) bytes = free_b / 2 / 32 * 32;
    uint8_t *buf = NULL;
    uint32_t *sink = NULL;
    cudaEvent_t a = NULL, b = NULL;
    cudaDeviceProp prop;
    int rc = 0;
    float best_read = 0, best_copy = 0;
#define TRY(call)                                                                  \
    do {                                                                           \
        cudaError_t e_ = (call);                                                   \
        if (e_ != cudaSuccess) {                                                   \
            rc = ds4_fail(err, "CUDA: %s (%s)", cudaGetErrorString(e_), #call);     \
            goto done;                                                             \
        }                                                                          \
    } while (0)
    TRY(cudaGetDeviceProperties(&prop, 0));
    TRY(cudaMalloc((void **)&buf, bytes));
    TRY(cudaMalloc((void **)&sink, 4));
    TRY(cudaMemset(buf, 1, bytes));
    TRY(cudaEventCreate(&a));
    TRY(cudaEventCreate(&b));
    for (int i = 0; i < 12; i++) { /* 6 read passes, then 6 copies; the first of each warms up */
        float ms;
        bool copy = i >= 6;
        TRY(cudaEventRecord(a));
        if (copy) TRY(cudaMemcpyAsync(buf + bytes / 2, buf, bytes / 2, cudaMemcpyDeviceToDevice, 0));
        else read_kernel<<<prop.multiProcessorCount * 8, 512>>>((const uint4 *)buf, bytes / 16, sink);
        TRY(cudaGetLastError());
        TRY(cudaEventRecord(b));
        TRY(cudaEventSynchronize(b));
        TRY(cudaEventElapsedTime(&ms, a, b));
        float *best = copy ? &best_copy : &best_read;
        if (i % 6 != 0 && (*best == 0 || ms < *best)) *best = ms;
    }
    *read_bytes_per_s = bytes / (best_read * 1e-3);
    *copy_bytes_per_s = bytes / (best_copy * 1e-3); /* bytes / 2 read, bytes / 2 written */
#undef TRY
done:
    if (a) cudaEventDestroy(a);
    if (b) cudaEventDestroy(b);
    cudaFree(buf);
    cudaFree(sink);
    return rc;
}

/* Every tensor of a layer, bound or not (unbound ones have data NULL). */
#define LAYER_TENSORS(l)                                                                                          \
    &(l)->hc_attn.fn, &(l)->hc_attn.base, &(l)->hc_attn.scale, &(l)->hc_ffn.fn, &(l)->hc_ffn.base, &(l)->hc_ffn.scale, \
        &(l)->attn_norm, &(l)->ffn_norm, &(l)->q_a, &(l)->q_a_norm, &(l)->q_b, &(l)->kv, &(l)->kv_norm, &(l)->sinks,    \
        &(l)->out_a, &(l)->out_b, &(l)->comp.ape, &(l)->comp.kv, &(l)->comp.gate, &(l)->comp.norm,                      \
        &(l)->idx_comp.ape, &(l)->idx_comp.kv, &(l)->idx_comp.gate, &(l)->idx_comp.norm, &(l)->idx_q_b,                 \
        &(l)->idx_proj, &(l)->gate_inp, &(l)->probs_bias, &(l)->tid2eid, &(l)->gate_exps, &(l)->up_exps,               \
        &(l)->down_exps, &(l)->gate_shexp, &(l)->up_shexp, &(l)->down_shexp

static uint64_t tensor_bytes(const ds4_tensor *t) { return t->row_bytes * t->ne[1] * t->ne[2] * t->ne[3]; }

/* Walks every tensor of w: with dev == NULL only sums the sizes; otherwise
 * copies each into dev and points the tensor there. */
static bool is_routed(const ds4_weights *w, const ds4_tensor *t, uint32_t n_layer) {
    for (uint32_t il = 0; il < n_layer; il++) {
        const ds4_layer_weights *l = &w->layers[il];
        if (t == &l->gate_exps || t == &l->up_exps || t == &l->down_exps) return true;
    }
    return false;
}

/* skip_routed: the routed experts stay on the host (slot bank); their
 * tensors keep shapes and types with data NULL. */
static int place_tensors(ds4_weights *w, uint32_t n_layer, uint8_t *dev, bool skip_routed, uint64_t *total,
                         ds4_error *err) {
    uint64_t off = 0;
    ds4_tensor *top[] = {&w->tok_embd, &w->output, &w->output_norm, &w->hc_head.fn, &w->hc_head.base, &w->hc_head.scale};
    for (uint32_t il = 0; il <= n_layer; il++) {
        ds4_tensor *lt[] = {LAYER_TENSORS(&w->layers[il < n_layer ? il : 0])};
        ds4_tensor **list = il < n_layer ? lt : top;
        size_t count = il < n_layer ? sizeof lt / sizeof *lt : sizeof top / sizeof *top;
        for (size_t i = 0; i < count; i++) {
            ds4_tensor *t = list[i];
            if (!t->data) continue;
            if (skip_routed && il < n_layer && is_routed(w, t, n_layer)) {
                if (dev) t->data = NULL;
                continue;
            }
            uint64_t nb = tensor_bytes(t);
            if (dev) {
                CU(cudaMemcpy(dev + off, t->data, nb, cudaMemcpyHostToDevice));
                t->data = dev + off;
            }
            off += align256(nb);
        }
    }
    *total = off;
    return 0;
}

static void bank_free(bank *b) {
    if (!b) return;
    for (uint32_t i = 0; i < b->n_pinned; i++) cudaHostUnregister(b->pinned[i]);
    cudaFree(b->dv_mem);
    free(b->pinned);
    if (b->copy) cudaStreamDestroy(b->copy);
    if (b->back_st) cudaStreamDestroy(b->back_st);
    for (uint32_t i = 0; b->out_ev && i < b->n_expert; i++)
        if (b->out_ev[i]) cudaEventDestroy(b->out_ev[i]);
    free(b->out_ev), free(b->out_k);
    if (b->copied) cudaEventDestroy(b->copied);
    if (b->consumed) cudaEventDestroy(b->consumed);
    cudaFree(b->dev);
    if (b->host_registered) cudaHostUnregister(b->host);
    ds4_bank_free(b->host, b->host_bytes);
    free(b->layer_off), free(b->stride), free(b->rec_bytes), free(b->off_up), free(b->off_down);
    free(b->slot_of), free(b->key), free(b->stamp), free(b->prev), free(b->next);
    free(b->pend_slot), free(b->pend_id), free(b->pend_old), free(b->back), free(b->views);
    free(b);
}

/* Bytes of one expert record (gate | up | down, each 256-aligned) of layer il. */
static uint64_t expert_record(const ds4_layer_weights *l, uint64_t *off_up, uint64_t *off_down) {
    uint64_t g = l->gate_exps.row_bytes * l->gate_exps.ne[1], u = l->up_exps.row_bytes * l->up_exps.ne[1];
    uint64_t d = l->down_exps.row_bytes * l->down_exps.ne[1];
    *off_up = align256(g);
    *off_down = *off_up + align256(u);
    return *off_down + d;
}

/* Pins the expert source's host regions for DMA. Copies from pageable
 * memory are staged through a driver buffer, synchronously and at a
 * fraction of the bus's rate (bench/cuda-h100-decode.md); from pinned
 * memory each expert's copy is queued at once and runs while the next
 * record is still being read. A refusal (a locked-memory limit, say) is
 * not an error: the copies then stay pageable, and -v says why. */
static int bank_pin_source(bank *b, ds4_error *err) {
    uint32_t n = 0;
    uint64_t bytes;
    while (ds4_experts_region(b->src, n, &bytes)) n++;
    b->n_regions = n;
    if (n == 0) {
        snprintf(b->pin_note, sizeof b->pin_note, "the source names no host regions");
        return 0;
    }
    if (!(b->pinned = (void **)calloc(n, sizeof(void *)))) return ds4_fail(err, "out of memory (expert bank)");
    for (uint32_t i = 0; i < n; i++) {
        void *p = (void *)ds4_experts_region(b->src, i, &bytes);
        if (!bytes) continue;
        cudaError_t e = cudaHostRegister(p, bytes, cudaHostRegisterDefault);
        if (e != cudaSuccess) {
            (void)cudaGetLastError(); /* not sticky: clear it */
            snprintf(b->pin_note, sizeof b->pin_note, "region %u of %.2f GB not pinned (%s)", i, bytes / 1e9,
                     cudaGetErrorString(e));
            break;
        }
        b->pinned[b->n_pinned++] = p;
        b->pinned_bytes += bytes;
    }
    return 0;
}

/* The device half of a host-memory bank (k_bank.cu): its tables in one
 * allocation, empty, the stamps making slot n_slots - 1 the first victim
 * as the host's recency list does. */
static int bank_on_device(bank *b, uint32_t L, uint32_t X, ds4_error *err) {
    const uint8_t *host_dev = NULL;
    CU(cudaHostGetDevicePointer((void **)&host_dev, b->host, 0));
    uint64_t n = b->n_slots;
    bank_dev *d = &b->dv;
    uint64_t *lay = NULL;
    auto layout = [&](bump *m) {
        d->st = (bank_dev_state *)take(m, sizeof(bank_dev_state));
        d->slot_of = TAKE_I(m, (uint64_t)L * X);
        d->key = (uint64_t *)take(m, n * 8);
        d->stamp = (uint64_t *)take(m, n * 8);
        lay = (uint64_t *)take(m, 5 * (uint64_t)L * 8);
        d->miss_slot = (uint32_t *)TAKE_I(m, X);
        d->miss_src = (const uint8_t **)take(m, (uint64_t)X * sizeof(void *));
    };
    bump m = {NULL, 0};
    layout(&m);
    CU(cudaMalloc(&b->dv_mem, m.off));
    m = {(uint8_t *)b->dv_mem, 0};
    layout(&m);
    d->layer_off = lay, d->stride = lay + L, d->rec_bytes = lay + 2 * L, d->off_up = lay + 3 * L, d->off_down = lay + 4 * L;
    d->n_slots = b->n_slots, d->n_expert = X, d->dev = b->dev, d->slot_bytes = b->slot_bytes, d->host = host_dev;
    CU(cudaMemset(d->slot_of, 0xff, (uint64_t)L * X * 4)); /* -1 */
    CU(cudaMemset(d->key, 0xff, n * 8));                   /* UINT64_MAX */
    uint64_t *stamp = (uint64_t *)malloc(n * 8);
    if (!stamp) return ds4_fail(err, "out of memory (expert bank)");
    for (uint64_t i = 0; i < n; i++) stamp[i] = n - 1 - i;
    cudaError_t e = cudaMemcpy(d->stamp, stamp, n * 8, cudaMemcpyHostToDevice);
    free(stamp);
    CU(e);
    const uint64_t *src[5] = {b->layer_off, b->stride, b->rec_bytes, b->off_up, b->off_down};
    for (int i = 0; i < 5; i++) CU(cudaMemcpy(lay + (uint64_t)i * L, src[i], (uint64_t)L * 8, cudaMemcpyHostToDevice));
    bank_dev_state st0;
    memset(&st0, 0, sizeof st0);
    st0.clock = n;
    CU(cudaMemcpy(d->st, &st0, sizeof st0, cudaMemcpyHostToDevice));
    b->on_dev = true;
    return 0;
}

/* One thread's share of a layer's experts for the page-locked copy. */
typedef struct fill_part {
    const bank *b;
    const ds4_layer_weights *l;
    uint32_t il, e0, e1;
    bool no_memory;
} fill_part;

static void *fill_experts(void *v) {
    fill_part *p = (fill_part *)v;
    const bank *b = p->b;
    const ds4_layer_weights *l = p->l;
    uint64_t gb = l->gate_exps.row_bytes * l->gate_exps.ne[1], ub = l->up_exps.row_bytes * l->up_exps.ne[1];
    uint64_t db = l->down_exps.row_bytes * l->down_exps.ne[1];
    uint8_t *first = b->host + b->layer_off[p->il] + p->e0 * b->stride[p->il];
    if (p->e1 > p->e0 && ds4_bank_populate(first, (uint64_t)(p->e1 - p->e0) * b->stride[p->il])) {
        p->no_memory = true;
        return NULL;
    }
    for (uint32_t e = p->e0; e < p->e1; e++) {
        uint8_t *rec = b->host + b->layer_off[p->il] + e * b->stride[p->il];
        memcpy(rec, l->gate_exps.data + e * gb, gb);
        memcpy(rec + b->off_up[p->il], l->up_exps.data + e * ub, ub);
        memcpy(rec + b->off_down[p->il], l->down_exps.data + e * db, db);
    }
    return NULL;
}

/* The routed experts copied out of the mapped model file into host memory
 * that is then page-locked. Both halves are the load's slowest steps for
 * tens of GB, so: the buffer is plain anonymous memory faulted in and
 * filled a layer at a time by several threads (one thread takes the page
 * faults of the buffer and of the file one after another), and only then
 * registered with the driver, which for present pages is quick, where
 * cudaMallocHost allocated and cleared them itself, single-threaded (20 GB
 * on the H100's host: 9-15 s against 1-2 s; bench/pinload). A progress
 * line on a terminal. -1: out of memory. */
#define FILL_THREADS_MAX 16
static int bank_fill_host(bank *b, const ds4_weights *hw, uint32_t L, uint32_t X) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    uint32_t T = ncpu < 1 ? 1 : ncpu > FILL_THREADS_MAX ? FILL_THREADS_MAX : (uint32_t)ncpu;
    if (T > X) T = X;
    bool show = ds4_show_progress(b->host_bytes);
    double t0 = ds4_now_s();
    for (uint32_t il = 0; il < L; il++) {
        pthread_t th[FILL_THREADS_MAX];
        fill_part part[FILL_THREADS_MAX];
        bool threaded[FILL_THREADS_MAX];
        for (uint32_t t = 0; t < T; t++) {
            part[t] = (fill_part){b, &hw->layers[il], il, (uint32_t)((uint64_t)X * t / T),
                                  (uint32_t)((uint64_t)X * (t + 1) / T), false};
            /* the last share, and any a thread could not be started for, here */
            threaded[t] = t + 1 < T && pthread_create(&th[t], NULL, fill_experts, &part[t]) == 0;
            if (!threaded[t]) fill_experts(&part[t]);
        }
        bool no_memory = false;
        for (uint32_t t = 0; t < T; t++) {
            if (threaded[t]) pthread_join(th[t], NULL);
            no_memory |= part[t].no_memory;
        }
        if (no_memory) {
            if (show) fprintf(stderr, "\n");
            return -1;
        }
        if (show)
            fprintf(stderr, "\rds4: routed experts into page-locked memory: layer %u/%u (%.1f of %.1f GB)%s", il + 1, L,
                    (b->layer_off[il] + b->stride[il] * X) / 1e9, b->host_bytes / 1e9, il + 1 == L ? "\n" : "");
    }
    b->fill_s = ds4_now_s() - t0;
    b->fill_threads = T;
    return 0;
}

static int bank_new(ds4_gpu_model *g, uint64_t cache_bytes, ds4_error *err) {
    const ds4_hparams *hp = g->hp;
    const ds4_weights *hw = g->net->w; /* host (mapped) tensors */
    uint32_t L = hp->n_layer, X = hp->n_expert;
    bank *b = (bank *)calloc(1, sizeof *b);
    if (!b) return ds4_fail(err, "out of memory");
    g->bank = b;
    b->layer_off = (uint64_t *)calloc(L, 8), b->stride = (uint64_t *)calloc(L, 8), b->rec_bytes = (uint64_t *)calloc(L, 8);
    b->off_up = (uint64_t *)calloc(L, 8), b->off_down = (uint64_t *)calloc(L, 8);
    if (!b->layer_off || !b->stride || !b->rec_bytes || !b->off_up || !b->off_down) return ds4_fail(err, "out of memory");
    for (uint32_t il = 0; il < L; il++) {
        b->rec_bytes[il] = expert_record(&hw->layers[il], &b->off_up[il], &b->off_down[il]);
        b->stride[il] = align256(b->rec_bytes[il]);
        b->layer_off[il] = b->host_bytes;
        b->host_bytes += b->stride[il] * X;
        if (b->stride[il] > b->slot_bytes) b->slot_bytes = b->stride[il];
    }
    uint64_t n = cache_bytes / b->slot_bytes;
    if (n > (uint64_t)L * X) n = (uint64_t)L * X;
    if (n < hp->n_expert_used)
        return ds4_fail(err, "CUDA expert cache of %.2f GB holds %llu experts of %.1f MB; a token needs %u", cache_bytes / 1e9,
                        (unsigned long long)n, b->slot_bytes / 1e6, hp->n_expert_used);
    b->n_slots = (uint32_t)n;
    if (!hw->layers[0].gate_exps.data) {
        /* a sidecar package: experts come from the model's expert source */
        b->src = g->net->experts;
        b->pend_slot = (int32_t *)malloc(X * sizeof(int32_t));
        b->pend_id = (uint32_t *)malloc(X * sizeof(uint32_t));
        b->pend_old = (uint64_t *)malloc(X * sizeof(uint64_t));
        b->back = (uint64_t *)malloc(X * sizeof(uint64_t));
        b->n_expert = X;
        b->out_ev = (cudaEvent_t *)calloc(X, sizeof(cudaEvent_t));
        b->out_k = (uint8_t *)calloc(X, 1);
        b->views = (ds4_expert_view *)malloc(X * sizeof(ds4_expert_view));
        if (!b->src || !b->pend_slot || !b->pend_id || !b->pend_old || !b->back || !b->views || !b->out_ev || !b->out_k)
            return ds4_fail(err, "out of memory (expert bank)");
        CU(cudaStreamCreateWithFlags(&b->back_st, cudaStreamNonBlocking));
        for (uint32_t i = 0; i < X; i++) CU(cudaEventCreateWithFlags(&b->out_ev[i], cudaEventDisableTiming));
        b->host_bytes = 0;
        if (bank_pin_source(b, err)) return -1;
    } else {
        if (!(b->host = (uint8_t *)ds4_bank_reserve(b->host_bytes)) || bank_fill_host(b, hw, L, X))
            return ds4_fail(err, "not enough host memory to hold the %.2f GB of routed experts (--ssd-streaming reads "
                                 "them from the model file instead)", b->host_bytes / 1e9);
        double t0 = ds4_now_s();
        CU(cudaHostRegister(b->host, b->host_bytes, cudaHostRegisterMapped)); /* the device-side bank copies from it */
        b->host_registered = true;
        b->pin_s = ds4_now_s() - t0;
    }
    CU(cudaMalloc((void **)&b->dev, (uint64_t)b->n_slots * b->slot_bytes));
    CU(cudaStreamCreateWithFlags(&b->copy, cudaStreamNonBlocking));
    CU(cudaEventCreateWithFlags(&b->copied, cudaEventDisableTiming));
    CU(cudaEventCreateWithFlags(&b->consumed, cudaEventDisableTiming));
    b->slot_of = (int32_t *)malloc((size_t)L * X * sizeof(int32_t));
    b->key = (uint64_t *)malloc(b->n_slots * sizeof(uint64_t));
    b->stamp = (uint64_t *)calloc(b->n_slots, sizeof(uint64_t));
    b->prev = (int32_t *)malloc(b->n_slots * sizeof(int32_t));
    b->next = (int32_t *)malloc(b->n_slots * sizeof(int32_t));
    if (!b->slot_of || !b->key || !b->stamp || !b->prev || !b->next) return ds4_fail(err, "out of memory");
    for (uint64_t i = 0; i < (uint64_t)L * X; i++) b->slot_of[i] = -1;
    for (uint32_t i = 0; i < b->n_slots; i++) {
        b->key[i] = UINT64_MAX;
        b->prev[i] = (int32_t)i - 1;
        b->next[i] = i + 1 < b->n_slots ? (int32_t)i + 1 : -1;
    }
    b->head = 0;
    b->tail = (int32_t)b->n_slots - 1;
    const char *he = getenv("DS4_CUDA_BANK_HOST");
    if (b->host && !(he && *he == '1')) return bank_on_device(b, L, X, err);
    return 0;
}

static void bank_touch(bank *b, int32_t s) {
    if (b->head == s) return;
    /* unlink */
    b->next[b->prev[s]] = b->next[s];
    if (b->next[s] >= 0) b->prev[b->next[s]] = b->prev[s];
    else b->tail = b->prev[s];
    /* push front */
    b->prev[s] = -1;
    b->next[s] = b->head;
    b->prev[b->head] = s;
    b->head = s;
}

extern "C" void ds4_gpu_expert_stats(const ds4_gpu_model *g, uint32_t *slots, uint64_t *slot_bytes, uint64_t *hits,
                                     uint64_t *misses, uint64_t *bytes_copied) {
    const bank *b = g->bank;
    *slots = b ? b->n_slots : 0;
    *slot_bytes = b ? b->slot_bytes : 0;
    *hits = b ? b->hits : 0;
    *misses = b ? b->misses : 0;
    *bytes_copied = b ? b->bytes : 0;
    bank_dev_state st;
    if (b && b->on_dev && cudaDeviceSynchronize() == cudaSuccess &&
        cudaMemcpy(&st, b->dv.st, sizeof st, cudaMemcpyDeviceToHost) == cudaSuccess)
        *hits = st.hits, *misses = st.misses, *bytes_copied = st.bytes;
}

static bool float_type(uint32_t type) {
    return type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16;
}
static bool matrix_type_ok(uint32_t type) { return float_type(type) || k_quant_type(type); }

/* The limits the kernels are written for, and the matrix types they read. */
/* Room left for sessions (decode state, scratch) besides the weights. */
static uint64_t session_reserve(uint64_t free_b) { return (2ull << 30) > free_b / 10 ? (2ull << 30) : free_b / 10; }

extern "C" bool ds4_gpu_needs_bank(uint64_t weight_bytes, uint64_t expert_cache) {
    size_t free_b = 0, total_b = 0;
    if (expert_cache) return true;
    if (!gpu_memory(&free_b, &total_b)) return false; /* the model's load will say what is wrong */
    return weight_bytes + session_reserve(free_b) > free_b;
}

extern "C" bool ds4_gpu_fits_dense(uint64_t dense_bytes) {
    size_t free_b = 0, total_b = 0;
    return gpu_memory(&free_b, &total_b) && dense_bytes + session_reserve(free_b) < free_b;
}

static int check_model(const ds4_hparams *hp, const ds4_weights *w, ds4_error *err) {
    if (hp->hc > K_MAX_HC || hp->n_expert > K_MAX_EXPERTS || hp->n_expert_used > K_MAX_USED ||
        hp->head_dim > K_MAX_HEAD_DIM || hp->head_dim % 2 || hp->q_lora > 12 * 1024 || hp->idx_head_dim > 4096)
        return ds4_fail(err, "CUDA backend: model dimensions beyond the kernels' limits (hc %u, experts %u/%u, head %u)",
                        hp->hc, hp->n_expert_used, hp->n_expert, hp->head_dim);
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        ds4_layer_weights *l = &w->layers[il];
        /* Sidecar packages keep every routed expert outside the GGUF (the
         * slot bank then fetches them from the package's expert source). */
        bool in_file = l->gate_exps.data && l->up_exps.data && l->down_exps.data;
        bool outside = !l->gate_exps.data && !l->up_exps.data && !l->down_exps.data;
        if (!(il == 0 ? in_file || outside : in_file == (w->layers[0].gate_exps.data != NULL) && (in_file || outside)))
            return ds4_fail(err, "CUDA backend: layer %u has only some of its routed expert matrices in the model file", il);
        const ds4_tensor *mats[] = {&l->q_a, &l->q_b, &l->kv, &l->out_a, &l->out_b, &l->comp.kv, &l->comp.gate,
                                    &l->idx_comp.kv, &l->idx_comp.gate, &l->idx_q_b, &l->idx_proj, &l->gate_inp,
                                    &l->gate_exps, &l->up_exps, &l->down_exps, &l->gate_shexp, &l->up_shexp,
                                    &l->down_shexp};
        for (size_t i = 0; i < sizeof mats / sizeof *mats; i++)
            if ((mats[i]->data || mats[i]->ne[0]) && !matrix_type_ok(mats[i]->type))
                return ds4_fail(err, "CUDA backend: tensor '%s' has type %s, which the CUDA kernels cannot multiply yet",
                                mats[i]->name, ggml_type_name(mats[i]->type));
        /* read elementwise or with an activation scale: float types only */
        const ds4_tensor *flt[] = {&l->hc_attn.fn, &l->hc_ffn.fn, &l->comp.ape, &l->idx_comp.ape};
        for (size_t i = 0; i < sizeof flt / sizeof *flt; i++)
            if (flt[i]->data && !float_type(flt[i]->type))
                return ds4_fail(err, "CUDA backend: tensor '%s' has type %s; the CUDA kernels read it as F32, F16 or BF16",
                                flt[i]->name, ggml_type_name(flt[i]->type));
    }
    if (!matrix_type_ok(w->output.type))
        return ds4_fail(err, "CUDA backend: tensor '%s' has type %s, which the CUDA kernels cannot multiply yet",
                        w->output.name, ggml_type_name(w->output.type));
    const ds4_tensor *top[] = {&w->tok_embd, &w->hc_head.fn};
    for (size_t i = 0; i < 2; i++)
        if (!float_type(top[i]->type))
            return ds4_fail(err, "CUDA backend: tensor '%s' has type %s; the CUDA kernels read it as F32, F16 or BF16",
                            top[i]->name, ggml_type_name(top[i]->type));
    return 0;
}

extern "C" ds4_gpu_model *ds4_gpu_model_new(const ds4_net *net, const ds4_gpu_model_opts *opts, ds4_error *err) {
    const ds4_hparams *hp = net->hp;
    if (check_model(hp, net->w, err)) return NULL;
    ds4_gpu_model *g = (ds4_gpu_model *)calloc(1, sizeof *g);
    if (!g) {
        ds4_fail(err, "out of memory");
        return NULL;
    }
    g->net = net;
    g->hp = hp;
    g->chunk = GPU_CHUNK; /* the least a session takes (ds4_gpu_session_new) */
    if (g->chunk * hp->n_expert_used > K_MAX_GROUP_ENTRIES) g->chunk = K_MAX_GROUP_ENTRIES / hp->n_expert_used;
    g->w = *net->w;
    g->w.layers = (ds4_layer_weights *)malloc(hp->n_layer * sizeof *g->w.layers);
    if (!g->w.layers) {
        free(g);
        ds4_fail(err, "out of memory");
        return NULL;
    }
    memcpy(g->w.layers, net->w->layers, hp->n_layer * sizeof *g->w.layers);
    uint64_t total = 0, dense = 0, cache = opts ? opts->expert_cache : 0;
    size_t free_b = 0, total_b = 0;
    cudaError_t e;
    bool use_bank = false;
    place_tensors(&g->w, hp->n_layer, NULL, false, &total, err);
    place_tensors(&g->w, hp->n_layer, NULL, true, &dense, err);
    if ((e = k_quant_init()) != cudaSuccess || (e = k_idx_prepare(hp->idx_n_head, hp->idx_head_dim)) != cudaSuccess ||
        (e = k_attn_prepare(hp->head_dim)) != cudaSuccess) {
        ds4_fail(err, "CUDA: %s", cudaGetErrorString(e));
        goto fail;
    }
    if ((e = cudaMemGetInfo(&free_b, &total_b)) != cudaSuccess) {
        ds4_fail(err, "CUDA: %s", cudaGetErrorString(e));
        goto fail;
    }
    {
        uint64_t reserve = session_reserve(free_b);
        /* experts outside the model file (a sidecar package) always go
         * through the bank */
        bool from_source = hp->n_layer && !g->w.layers[0].gate_exps.data;
        if (cache == 0 && (from_source || total + reserve > free_b) && dense + reserve < free_b)
            cache = free_b - dense - reserve;
        use_bank = cache != 0;
        if (from_source && !use_bank) {
            ds4_fail(err, "CUDA backend: no room for an expert slot bank next to %.2f GB of dense weights (%.2f GB free)",
                     dense / 1e9, free_b / 1e9);
            goto fail;
        }
        if (!use_bank && total + reserve > free_b) {
            ds4_fail(err, "CUDA backend: the weights need %.2f GB on the GPU, %.2f GB of %.2f GB are free", total / 1e9,
                     free_b / 1e9, total_b / 1e9);
            goto fail;
        }
        if (use_bank && dense + cache + (512ull << 20) > free_b) {
            ds4_fail(err, "CUDA backend: %.2f GB of dense weights and a %.2f GB expert cache do not fit the %.2f GB free",
                     dense / 1e9, cache / 1e9, free_b / 1e9);
            goto fail;
        }
    }
    if (use_bank) {
        if (bank_new(g, cache, err)) goto fail;
        total = dense;
    }
    g->dev_bytes = total;
    if ((e = cudaMalloc((void **)&g->dev, total)) != cudaSuccess) {
        ds4_fail(err, "CUDA: allocating %.2f GB for the weights: %s", total / 1e9, cudaGetErrorString(e));
        goto fail;
    }
    if (place_tensors(&g->w, hp->n_layer, g->dev, use_bank, &total, err)) goto fail;
    if ((e = cudaMalloc((void **)&g->rope, 4 * 128 * sizeof(float))) != cudaSuccess) {
        ds4_fail(err, "CUDA: %s", cudaGetErrorString(e));
        goto fail;
    }
    for (int num = 0; num < 2; num++)
        for (int kind = 0; kind < 2; kind++)
            if ((e = cudaMemcpy(g->rope + (num * 2 + kind) * 128, net->rope[num][kind].inv_freq, 128 * sizeof(float),
                                cudaMemcpyHostToDevice)) != cudaSuccess) {
                ds4_fail(err, "CUDA: %s", cudaGetErrorString(e));
                goto fail;
            }
    if (opts && opts->verbose) {
        cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
            fprintf(stderr,
                    "ds4: CUDA device %s (compute capability %d.%d, %d SMs, %.1f GB; device code built for sm_%d), "
                    "%.2f GB of weights uploaded\n",
                    prop.name, prop.major, prop.minor, prop.multiProcessorCount, prop.totalGlobalMem / 1e9,
                    k_code_arch() / 10, g->dev_bytes / 1e9);
        if (g->bank && g->bank->host)
            fprintf(stderr,
                    "ds4: expert slot bank: %u slots of %.1f MB (%.2f GB) for %.2f GB of routed experts in host memory "
                    "(copied from the model file in %.1f s by %u threads, page-locked in %.1f s)\n",
                    g->bank->n_slots, g->bank->slot_bytes / 1e6, g->bank->n_slots * (double)g->bank->slot_bytes / 1e9,
                    g->bank->host_bytes / 1e9, g->bank->fill_s, g->bank->fill_threads, g->bank->pin_s);
        else if (g->bank)
            fprintf(stderr,
                    "ds4: expert slot bank: %u slots of %.1f MB (%.2f GB), filled from the model's expert source (streamed); "
                    "its host buffers: %u of %u regions (%.3f GB) pinned for DMA%s%s\n",
                    g->bank->n_slots, g->bank->slot_bytes / 1e6, g->bank->n_slots * (double)g->bank->slot_bytes / 1e9,
                    g->bank->n_pinned, g->bank->n_regions, g->bank->pinned_bytes / 1e9, g->bank->pin_note[0] ? ", " : "",
                    g->bank->pin_note);
    }
    return g;
fail:
    ds4_gpu_model_free(g);
    return NULL;
}

extern "C" void ds4_gpu_model_free(ds4_gpu_model *g) {
    if (!g) return;
    bank_free(g->bank);
    cudaFree(g->dev);
    cudaFree(g->rope);
    free(g->w.layers);
    free(g);
}

/* ---- sessions ------------------------------------------------------------------- */


static void layout_state(ds4_gpu_session *s, bump *b) {
    const ds4_hparams *hp = s->g->hp;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        gpu_layer *l = &s->layers[il];
        uint32_t r = hp->compress_ratio[il];
        l->ring = TAKE_F(b, (uint64_t)hp->window * hp->head_dim);
        if (r) {
            uint32_t halves = r == 4 ? 2 : 1, slots = r == 4 ? 2 * r : r;
            uint64_t cap = s->max_ctx / r + 1;
            l->comp.rows = TAKE_F(b, cap * hp->head_dim);
            for (int i = 0; i < 2; i++) {
                l->comp.fk[i] = TAKE_F(b, (uint64_t)slots * halves * hp->head_dim);
                l->comp.fz[i] = TAKE_F(b, (uint64_t)slots * halves * hp->head_dim);
            }
        }
        if (r == 4) {
            uint64_t cap = s->max_ctx / 4 + 1;
            l->idx.rows = TAKE_F(b, cap * hp->idx_head_dim);
            for (int i = 0; i < 2; i++) {
                l->idx.fk[i] = TAKE_F(b, 8ull * 2 * hp->idx_head_dim);
                l->idx.fz[i] = TAKE_F(b, 8ull * 2 * hp->idx_head_dim);
            }
        }
    }
}

/* Decode attention partials: (token, segment) slots, enough for every
 * row a decode token of the session can have: the window plus the most
 * compressed rows of any layer (an HCA layer's max_ctx / 128 at long
 * contexts: 8192 rows at 1M tokens, 130 segments), and at least 32 so that
 * chunks of a few tokens split as well. Rows beyond the slots would go to
 * one block per 16 heads and token (same bits, a fraction of the GPU). */
static uint32_t att_part_slots(const ds4_gpu_session *s) {
    const ds4_hparams *hp = s->g->hp;
    uint64_t most = 0;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        uint32_t r = hp->compress_ratio[il];
        if (!r) continue;
        uint64_t c = s->max_ctx / r;
        if (r == 4 && c > hp->idx_topk) c = hp->idx_topk;
        if (c > most) most = c;
    }
    uint32_t segs = k_attn_segments(hp->window + most);
    return segs > 32 ? segs : 32;
}

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

static void layout_scratch(ds4_gpu_session *s, bump *b) {
    const ds4_hparams *hp = s->g->hp;
    uint64_t n = s->chunk, E = hp->n_embd, hc = hp->hc, qdim = (uint64_t)hp->n_head * hp->head_dim;
    uint64_t n_mix = (2 + hc) * hc, K = hp->n_expert_used, X = hp->n_expert;
    s->X = TAKE_F(b, n * hc * E);
    s->y = TAKE_F(b, n * E);
    s->o = TAKE_F(b, n * E);
    s->pre = TAKE_F(b, n * hc);
    s->post = TAKE_F(b, n * hc);
    s->comb = TAKE_F(b, n * hc * hc);
    s->mix = TAKE_F(b, n * n_mix);
    s->rinv = TAKE_F(b, n);
    s->qa = TAKE_F(b, n * hp->q_lora);
    s->q = TAKE_F(b, n * qdim);
    s->kv = TAKE_F(b, n * hp->head_dim);
    s->att = TAKE_F(b, n * qdim);
    s->part_slots = att_part_slots(s);
    s->apart = TAKE_F(b, (uint64_t)s->part_slots * hp->n_head * (hp->head_dim + 2));
    s->low = TAKE_F(b, n * hp->o_groups * hp->o_lora);
    s->ck = TAKE_F(b, n * 2 * hp->head_dim);
    s->cz = TAKE_F(b, n * 2 * hp->head_dim);
    s->ik = TAKE_F(b, n * 2 * hp->idx_head_dim);
    s->iz = TAKE_F(b, n * 2 * hp->idx_head_dim);
    s->iq = TAKE_F(b, n * hp->idx_n_head * hp->idx_head_dim);
    s->iw = TAKE_F(b, n * hp->idx_n_head);
    s->score_stride = s->max_ctx / 4 + 1;
    s->scores = TAKE_F(b, (n < IDX_ROWS ? n : IDX_ROWS) * s->score_stride);
    s->sel = TAKE_I(b, n * (hp->idx_topk ? hp->idx_topk : 1));
    s->lg = TAKE_F(b, n * X);
    s->ids = TAKE_I(b, n * K);
    s->wts = TAKE_F(b, n * K);
    s->gids = TAKE_I(b, n * K);
    s->gwts = TAKE_F(b, n * K);
    s->grp = TAKE_I(b, k_group_ints((uint32_t)X, (uint32_t)(n * K)));
    s->h = TAKE_F(b, n * K * hp->n_ff_exp);
    s->hs = TAKE_F(b, n * hp->n_ff_exp);
    s->dx = TAKE_F(b, n * K * E);
    s->sh = TAKE_F(b, n * E);
    /* a single-token step's row by its position's parity: the logits of a
     * taken step stay readable while the step ahead runs */
    s->logits = TAKE_F(b, (n < 2 ? 2 : n < HEAD_ROWS ? n : HEAD_ROWS) * hp->n_vocab);
    s->tok = TAKE_I(b, n);
    s->pick = TAKE_I(b, 1);
    s->pick_part = take(b, k_pick_scratch_bytes());
    s->band_out = TAKE_I(b, 1 + BAND_CAP);
    s->band_vals = TAKE_F(b, BAND_CAP);
    s->wtab = (const uint8_t **)take(b, 3 * (uint64_t)X * sizeof(void *));
    /* Quantized activations: at most 292/256 bytes per value, for the widest
     * input of any product (routed down projections have n*K rows). */
    uint64_t wide = E * hc;
    uint64_t ins[] = {hp->q_lora, qdim, (uint64_t)hp->o_groups * hp->o_lora, hp->n_ff_exp};
    for (size_t i = 0; i < sizeof ins / sizeof *ins; i++)
        if (ins[i] > wide) wide = ins[i];
    uint64_t act_values = n * wide > n * K * hp->n_ff_exp ? n * wide : n * K * hp->n_ff_exp;
    s->act = take(b, act_values / 256 * 292 + 4096);
    /* the side lanes quantize x, q_a's rows or a shared expert's hidden rows */
    uint64_t side = E > hp->q_lora ? E : hp->q_lora;
    if (hp->n_ff_exp > side) side = hp->n_ff_exp;
    for (int i = 0; i < 2; i++) s->lane_act[i] = take(b, n * side / 256 * 292 + 4096);
}

/* Tokens per internal chunk of a session: the caller's chunk within
 * [g->chunk, GPU_CHUNK_MAX] (GPU_CHUNK_MAX when the caller passes whole
 * prompts: want 0), or DS4_CUDA_CHUNK (for measurements); bounded
 * by what one MoE grouping takes. Larger chunks give each routed expert
 * more tokens per launch (about chunk * 6 / 256), so its weights are
 * decoded for more tokens at a time: prefill of 2048-token chunks ran
 * 1.5x faster than of 256-token ones (bench/cuda-h100-decode.md). */
static uint32_t session_chunk(const ds4_gpu_model *g, uint32_t want) {
    uint32_t c = g->chunk;
    if (want == 0 || want > GPU_CHUNK_MAX) c = GPU_CHUNK_MAX;
    else if (want > c) c = want;
    const char *ce = getenv("DS4_CUDA_CHUNK");
    long e = ce ? atol(ce) : 0;
    if (e >= 1 && e <= 4096) c = (uint32_t)e;
    uint32_t k = g->hp->n_expert_used ? g->hp->n_expert_used : 1;
    if (c * k > K_MAX_GROUP_ENTRIES) c = K_MAX_GROUP_ENTRIES / k;
    return c;
}

extern "C" ds4_gpu_session *ds4_gpu_session_new(ds4_gpu_model *g, uint32_t max_ctx, uint32_t chunk, ds4_error *err) {
    ds4_gpu_session *s = (ds4_gpu_session *)calloc(1, sizeof *s);
    if (!s) {
        ds4_fail(err, "out of memory");
        return NULL;
    }
    s->g = g;
    s->max_ctx = max_ctx;
    s->chunk = session_chunk(g, chunk);
    s->layers = (gpu_layer *)calloc(g->hp->n_layer, sizeof *s->layers);
    cudaError_t e = cudaSuccess;
    bump sb = {NULL, 0}, xb = {NULL, 0};
    if (!s->layers) {
        ds4_fail(err, "out of memory");
        goto fail;
    }
    layout_state(s, &sb);
    layout_scratch(s, &xb);
    s->state_size = sb.off;
    trace_start();
    if ((e = cudaStreamCreateWithFlags(&s->st, cudaStreamNonBlocking)) == cudaSuccess &&
        (e = cudaMalloc((void **)&s->state, sb.off)) == cudaSuccess) {
        /* The scratch grows with the chunk; where the card has no room for
         * the asked one, smaller chunks (down to g->chunk) give the same
         * results, only more slowly. */
        while ((e = cudaMalloc((void **)&s->scratch, xb.off)) == cudaErrorMemoryAllocation && s->chunk > g->chunk) {
            (void)cudaGetLastError(); /* clear the failed allocation's error */
            s->chunk = s->chunk / 2 > g->chunk ? s->chunk / 2 : g->chunk;
            xb.off = 0;
            layout_scratch(s, &xb);
        }
    }
    if (e != cudaSuccess) {
        ds4_fail(err, "CUDA: allocating %.2f GB of decode state and %.2f GB of scratch for a %u-token session: %s",
                 sb.off / 1e9, xb.off / 1e9, max_ctx, cudaGetErrorString(e));
        goto fail;
    }
    sb.base = s->state, sb.off = 0;
    xb.base = s->scratch, xb.off = 0;
    layout_state(s, &sb);
    layout_scratch(s, &xb);
    prof_init(s);
    {
        const char *le = getenv("DS4_CUDA_LANES"), *ae = getenv("DS4_CUDA_L2AHEAD");
        s->lanes = !s->prof && !(le && *le == '0');
        s->ahead = !(ae && *ae == '0');
        for (int i = 0; i < 4 && s->lanes && e == cudaSuccess; i++)
            if ((e = cudaStreamCreateWithFlags(&s->lane[i], cudaStreamNonBlocking)) == cudaSuccess &&
                (e = cudaEventCreateWithFlags(&s->ev_fork[i], cudaEventDisableTiming)) == cudaSuccess)
                e = cudaEventCreateWithFlags(&s->ev_join[i], cudaEventDisableTiming);
        if (s->lanes && e == cudaSuccess) e = cudaEventCreateWithFlags(&s->ev_qa, cudaEventDisableTiming);
        if (e != cudaSuccess) {
            ds4_fail(err, "CUDA: streams for the side lanes: %s", cudaGetErrorString(e));
            goto fail;
        }
    }
    {
        const char *ge = getenv("DS4_CUDA_GRAPH");
        /* a host-driven slot bank decides on the host between layers: no capture */
        s->graphs = !s->prof && (!g->bank || g->bank->on_dev) && !(ge && *ge == '0');
        s->ready.slot = s->spec.slot = -1;
        const char *se = getenv("DS4_CUDA_SPECULATE");
        s->speculate = !(se && *se == '0');
        const char *te = getenv("DS4_CUDA_STEPTIME");
        s->steptime = te && *te == '1';
    }
    if (g->bank && ((e = cudaMallocHost((void **)&s->grp_pinned, (1 + (size_t)g->hp->n_expert) * sizeof(int32_t))) !=
                        cudaSuccess ||
                    (e = cudaMallocHost((void **)&s->wtab_pinned, 3 * (size_t)g->hp->n_expert * sizeof(void *))) !=
                        cudaSuccess ||
                    (e = cudaMallocHost((void **)&s->gids_pinned,
                                        (size_t)s->chunk * g->hp->n_expert_used * sizeof(int32_t))) != cudaSuccess)) {
        ds4_fail(err, "CUDA: page-locked buffers: %s", cudaGetErrorString(e));
        goto fail;
    }
    if ((e = cudaMallocHost((void **)&s->tok_pinned, 2 * sizeof(int32_t))) != cudaSuccess ||
        (e = cudaMallocHost((void **)&s->pick_pinned, 2 * sizeof(int32_t))) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&s->ev_done[0], cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&s->ev_done[1], cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaMallocHost((void **)&s->band_out_pinned, (1 + BAND_CAP) * sizeof(int32_t))) != cudaSuccess ||
        (e = cudaMallocHost((void **)&s->band_vals_pinned, BAND_CAP * sizeof(float))) != cudaSuccess ||
        (e = cudaMallocHost((void **)&s->logits_pinned, (size_t)g->hp->n_vocab * sizeof(float))) != cudaSuccess) {
        ds4_fail(err, "CUDA: page-locked buffers: %s", cudaGetErrorString(e));
        goto fail;
    }
    return s;
fail:
    ds4_gpu_session_free(s);
    return NULL;
}

extern "C" void ds4_gpu_session_free(ds4_gpu_session *s) {
    if (!s) return;
    if (s->steptime && s->n_steps)
        fprintf(stderr,
                "ds4 CUDA decode steps: %llu, per step: capture %.1f us, graph update %.1f us, launch call %.1f us, "
                "host between steps %.1f us, run %.1f us\n",
                (unsigned long long)s->n_steps, 1e6 * s->t_capture / s->n_steps, 1e6 * s->t_update / s->n_steps,
                1e6 * s->t_launch / s->n_steps, 1e6 * s->t_between / s->n_steps, 1e6 * s->t_run / s->n_steps);
    prof_free(s);
    trace_dump();
    for (int i = 0; i < s->n_gcache; i++) cudaGraphExecDestroy(s->gcache[i].exec);
    if (s->st) cudaStreamSynchronize(s->st); /* a step ahead may still run */
    for (int i = 0; i < 2; i++)
        if (s->ev_done[i]) cudaEventDestroy(s->ev_done[i]);
    cudaFreeHost(s->tok_pinned);
    cudaFreeHost(s->logits_pinned);
    cudaFreeHost(s->pick_pinned);
    cudaFreeHost(s->band_out_pinned);
    cudaFreeHost(s->band_vals_pinned);
    cudaFreeHost(s->grp_pinned);
    cudaFreeHost(s->wtab_pinned);
    cudaFreeHost(s->gids_pinned);
    if (s->st) cudaStreamDestroy(s->st);
    for (int i = 0; i < 4; i++) {
        if (s->lane[i]) cudaStreamDestroy(s->lane[i]);
        if (s->ev_fork[i]) cudaEventDestroy(s->ev_fork[i]);
        if (s->ev_join[i]) cudaEventDestroy(s->ev_join[i]);
    }
    if (s->ev_qa) cudaEventDestroy(s->ev_qa);
    cudaFree(s->state);
    cudaFree(s->scratch);
    free(s->layers);
    free(s);
}

/* Nothing to clear: no kernel reads state of positions that were not
 * written since the last reset (the frontier of position < 0 is synthesised
 * as empty, raw rows are read only for positions < pos). */
extern "C" void ds4_gpu_session_reset(ds4_gpu_session *s) {
    ds4_error err = {{0}};
    spec_drop(s, &err); /* its writes would land after the reset's */
    s->pos = 0;
    s->fr = 0;
    s->last_row = NULL;
}

extern "C" uint32_t ds4_gpu_session_pos(const ds4_gpu_session *s) { return s->pos; }

extern "C" uint64_t ds4_gpu_session_state_bytes(const ds4_gpu_session *s) {
    const ds4_hparams *hp = s->g->hp;
    uint64_t b = 0;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        uint32_t r = hp->compress_ratio[il];
        b += (uint64_t)hp->window * hp->head_dim * 4;
        if (r) b += (uint64_t)(s->pos / r) * hp->head_dim * 4;
        if (r == 4) b += (uint64_t)(s->pos / 4) * hp->idx_head_dim * 4;
    }
    return b;
}

extern "C" int ds4_gpu_session_copy(ds4_gpu_session *dst, const ds4_gpu_session *src, ds4_error *err) {
    if (dst->g != src->g) return ds4_fail(err, "state copy between sessions of different models");
    if (src->pos > dst->max_ctx)
        return ds4_fail(err, "state of %u tokens does not fit a session of %u", src->pos, dst->max_ctx);
    const ds4_hparams *hp = src->g->hp;
    cudaStream_t st = dst->st;
    if (spec_drop(dst, err)) return -1; /* a step ahead of dst's old state must not be taken */
    CU(cudaStreamSynchronize(src->st));
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const gpu_layer *a = &src->layers[il];
        gpu_layer *b = &dst->layers[il];
        uint32_t r = hp->compress_ratio[il];
        CU(cudaMemcpyAsync(b->ring, a->ring, (size_t)hp->window * hp->head_dim * 4, cudaMemcpyDeviceToDevice, st));
        for (int c = 0; c < 2 && r; c++) {
            const gpu_comp *ca = c ? &a->idx : &a->comp;
            gpu_comp *cb = c ? &b->idx : &b->comp;
            if (c && r != 4) break;
            uint32_t width = c ? hp->idx_head_dim : hp->head_dim, halves = c || r == 4 ? 2 : 1;
            uint32_t slots = halves == 2 ? 2 * r : r;
            size_t fb = (size_t)slots * halves * width * 4;
            CU(cudaMemcpyAsync(cb->rows, ca->rows, (size_t)(src->pos / r) * width * 4, cudaMemcpyDeviceToDevice, st));
            CU(cudaMemcpyAsync(cb->fk[0], ca->fk[src->fr], fb, cudaMemcpyDeviceToDevice, st));
            CU(cudaMemcpyAsync(cb->fz[0], ca->fz[src->fr], fb, cudaMemcpyDeviceToDevice, st));
        }
    }
    CU(cudaStreamSynchronize(st));
    dst->pos = src->pos;
    dst->fr = 0;
    return 0;
}

/* ---- profiling -------------------------------------------------------------------
 * With DS4_CUDA_PROFILE=1 an event is recorded on the stream before every
 * operation; after each chunk's synchronisation the gaps between events are
 * added to per-operation totals, printed when the session is freed
 * (DS4_CUDA_PROFILE=2 counts single-token chunks, i.e. decode, only). The
 * events cost a few microseconds per operation, so only for diagnosis. */
#define PROF_EVENTS 1024
#define PROF_OPS 48
typedef struct prof {
    cudaEvent_t ev[PROF_EVENTS];
    const char *name[PROF_EVENTS];
    int n;
    struct {
        const char *name;
        double ms;
        long calls;
    } tot[PROF_OPS];
    int n_ops;
    long tokens;
    int decode_only; /* DS4_CUDA_PROFILE=2: single-token chunks only */
} prof;

static void prof_mark(ds4_gpu_session *s, const char *name) {
    prof *p = s->prof;
    if (!p || p->n >= PROF_EVENTS) return;
    if (cudaEventRecord(p->ev[p->n], s->st) != cudaSuccess) return;
    p->name[p->n++] = name;
}

static void prof_collect(ds4_gpu_session *s, uint32_t n_tok) {
    prof *p = s->prof;
    if (!p || p->n < 2) return;
    cudaEventSynchronize(p->ev[p->n - 1]);
    if (p->decode_only && n_tok != 1) {
        p->n = 0;
        return;
    }
    for (int i = 0; i + 1 < p->n; i++) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, p->ev[i], p->ev[i + 1]) != cudaSuccess) continue;
        int k = 0;
        while (k < p->n_ops && strcmp(p->tot[k].name, p->name[i])) k++;
        if (k == p->n_ops) {
            if (k == PROF_OPS) continue;
            p->tot[p->n_ops++].name = p->name[i];
        }
        p->tot[k].ms += ms;
        p->tot[k].calls++;
    }
    p->tokens += n_tok;
    p->n = 0;
}

static void prof_print(ds4_gpu_session *s) {
    prof *p = s->prof;
    double all = 0;
    for (int k = 0; k < p->n_ops; k++) all += p->tot[k].ms;
    fprintf(stderr, "ds4 CUDA profile: %ld tokens, %.3f ms of GPU time\n%-16s %10s %8s %12s\n", p->tokens, all, "operation",
            "ms", "share", "calls");
    for (int k = 0; k < p->n_ops; k++)
        fprintf(stderr, "%-16s %10.3f %7.1f%% %12ld\n", p->tot[k].name, p->tot[k].ms, all > 0 ? 100 * p->tot[k].ms / all : 0,
                p->tot[k].calls);
}

static void prof_init(ds4_gpu_session *s) {
    const char *e = getenv("DS4_CUDA_PROFILE");
    if (!e || (*e != '1' && *e != '2')) return;
    prof *p = (prof *)calloc(1, sizeof *p);
    if (!p) return;
    p->decode_only = *e == '2';
    for (int i = 0; i < PROF_EVENTS; i++)
        if (cudaEventCreate(&p->ev[i]) != cudaSuccess) {
            for (int j = 0; j < i; j++) cudaEventDestroy(p->ev[j]);
            free(p);
            return;
        }
    s->prof = p;
}

static void prof_free(ds4_gpu_session *s) {
    if (!s->prof) return;
    prof_print(s);
    for (int i = 0; i < PROF_EVENTS; i++) cudaEventDestroy(s->prof->ev[i]);
    free(s->prof);
    s->prof = NULL;
}

/* ---- the forward pass ----------------------------------------------------------- */

typedef struct fwd {
    ds4_gpu_session *s;
    const ds4_hparams *hp;
    const ds4_weights *w;
    bool official;
    uint32_t n;
    uint64_t pos0;
    ds4_error *err;
    cudaStream_t st; /* where this part of the pass goes: the session's stream or a side lane */
    void *act;       /* and its activation scratch */
    bool y_q8;       /* act holds s->y as Q8_0 rows (made by the mHC finish step), for q_a */
    bool y_q8k;      /* act holds s->y as Q8_K rows (the same), for the routed experts' gate and up */
} fwd;

/* Lane i waits for everything queued on stream from so far. */
static int lane_after(ds4_gpu_session *s, int i, cudaStream_t from, ds4_error *err) {
    CU(cudaEventRecord(s->ev_fork[i], from));
    CU(cudaStreamWaitEvent(s->lane[i], s->ev_fork[i], 0));
    return 0;
}

/* Stream to waits for everything queued on lane i so far. */
static int lane_join(ds4_gpu_session *s, int i, cudaStream_t to, ds4_error *err) {
    CU(cudaEventRecord(s->ev_join[i], s->lane[i]));
    CU(cudaStreamWaitEvent(to, s->ev_join[i], 0));
    return 0;
}

/* f's work continued on side lane i, after everything queued on f so far
 * (on f's own stream when the session runs without lanes). The side work
 * has its own activation scratch either way: f's may hold rows made ahead
 * for f's next product (y_q8, y_q8k), which the side work must not
 * overwrite when it shares f's stream. */
static int fork_lane(const fwd *f, int i, fwd *side) {
    ds4_gpu_session *s = f->s;
    ds4_error *err = f->err;
    *side = *f;
    side->act = s->lane_act[i];
    if (!s->lanes) return 0;
    side->st = s->lane[i];
    return lane_after(s, i, f->st, err);
}

/* f waits for everything queued on side lane i. */
static int join_lane(const fwd *f, const fwd *side, int i) {
    return side->st == f->st ? 0 : lane_join(f->s, i, f->st, f->err);
}

/* The mHC post step's coefficients, made on lane 3 by a one-launch pre
 * step (mhc_pre), are waited for here. */
static int coef_join(const fwd *f) {
    if (!f->s->coef_forked) return 0;
    f->s->coef_forked = false;
    return lane_join(f->s, 3, f->st, f->err);
}

/* One token: lane 2 asks the weights of up to four tensors into L2 from
 * the point reached in f's stream, while the chain of small kernels ahead
 * of their products runs (H100, synth6: decode run per step 10-30 us
 * shorter; see bench/cuda-h100-decode.md). The tensors must fit in L2
 * together with what the chain reads meanwhile. */
static int ahead(const fwd *f, const ds4_tensor *const *t, int n_t) {
    ds4_gpu_session *s = f->s;
    ds4_error *err = f->err;
    if (!s->ahead || !s->lanes || f->n != 1) return 0;
    l2_spans sp;
    memset(&sp, 0, sizeof sp);
    for (int i = 0; i < n_t && sp.n < 4; i++)
        if (t[i]->data) sp.p[sp.n] = t[i]->data, sp.bytes[sp.n++] = tensor_bytes(t[i]);
    if (lane_after(s, 2, f->st, err)) return -1;
    CU(k_l2_ahead(s->lane[2], &sp));
    s->ahead_forked = true;
    return 0;
}

static const float *rope_table(const fwd *f, bool compressed) {
    return f->s->g->rope + ((f->official ? 0 : 1) * 2 + (compressed ? 1 : 0)) * 128;
}

static const float *vec(const ds4_tensor *t) { return (const float *)t->data; }

/* k_linear or, for quantized weights, k_qlinear with the session's
 * activation scratch. */
static cudaError_t lin(const fwd *f, const ds4_tensor *w, uint64_t r0, uint64_t n_rows, uint32_t groups, uint64_t x_group,
                       const float *x, uint64_t x_stride, const float *xscale, uint32_t n_tok, float *y, uint64_t y_stride) {
    if (k_quant_type(w->type))
        return k_qlinear(f->st, w, r0, n_rows, groups, x_group, x, x_stride, xscale, n_tok, y, y_stride, f->act);
    return k_linear(f->st, w, r0, n_rows, groups, x_group, x, x_stride, xscale, n_tok, y, y_stride);
}

static cudaError_t ffn_up(const fwd *f, const ds4_tensor *gate, const ds4_tensor *up, const int32_t *grp, uint32_t k,
                          uint32_t n, uint32_t j0, uint32_t slots, const uint8_t *const *wtab, const float *x, float limit,
                          float *h) {
    if (k_quant_type(gate->type))
        return k_qffn_up(f->st, gate, up, grp, k, n, j0, slots, wtab, x, limit, h, f->act);
    return k_ffn_up(f->st, gate, up, grp, k, n, j0, slots, wtab, x, limit, h);
}

static cudaError_t ffn_down(const fwd *f, const ds4_tensor *down, const int32_t *grp, uint32_t k, uint32_t n,
                            uint32_t j0, uint32_t slots, const uint8_t *const *wtab, const float *h, float *out) {
    if (k_quant_type(down->type)) return k_qffn_down(f->st, down, grp, k, n, j0, slots, wtab, h, out, f->act);
    return k_ffn_down(f->st, down, grp, n, j0, slots, wtab, h, out);
}

/* The experts whose slots the batch's misses take go back to the source
 * first, where it has let its copy go while the GPU held them (the source
 * gives up those first: held_elsewhere), so that the two banks hold
 * different experts and an expert evicted here is not read from the disk
 * again while the host bank could keep it. A slot's copy in waits for its
 * copy out (out_ev). */
static int bank_give_back(bank *b, uint32_t p0, uint32_t pn, uint32_t *n_back, ds4_error *err) {
    for (uint32_t k = 0; k < pn; k++) {
        uint64_t old = b->pend_old[p0 + k];
        ds4_expert_view v;
        b->out_k[k] = 0;
        if (old == UINT64_MAX) continue;
        uint32_t oil = (uint32_t)(old / b->n_expert), oe = (uint32_t)(old % b->n_expert);
        if (ds4_experts_adopt_start(b->src, oil, oe, &v) != 1) continue;
        /* the kernels that read the slot last are done (the copy stream
         * waits for them too) */
        if (*n_back == 0) CU(cudaStreamWaitEvent(b->back_st, b->consumed, 0));
        b->back[(*n_back)++] = old;
        const uint8_t *from = b->dev + (uint64_t)b->pend_slot[p0 + k] * b->slot_bytes;
        const ds4_tensor *m[3] = {&v.gate, &v.up, &v.down};
        const uint64_t off[3] = {0, b->off_up[oil], b->off_down[oil]};
        for (int i = 0; i < 3; i++)
            CU(cudaMemcpyAsync((void *)m[i]->data, from + off[i], m[i]->row_bytes * m[i]->ne[1], cudaMemcpyDeviceToHost,
                               b->back_st));
        CU(cudaEventRecord(b->out_ev[k], b->back_st));
        b->out_k[k] = 1;
    }
    return 0;
}

/* Copies the pending misses of layer il from the model's expert source into
 * their slots: the source makes a batch readable (from RAM, or reading the
 * package's layer files), the three matrices of each expert go to the
 * device, and the batch's copies finish before the next acquire, which may
 * reuse the host memory behind the views. (The views point into the
 * source's regions, pinned by bank_pin_source where the system allows:
 * an expert's copies then run while the next expert's read completes.) */
static int bank_fetch_batch(bank *b, uint32_t il, uint32_t p0, uint32_t pn, uint32_t *n_back, ds4_error *err) {
    /* the reads start together; each expert's copy starts as soon as
     * its own record is in, while the others still arrive */
    if (ds4_experts_acquire_start(b->src, il, b->pend_id + p0, pn, b->views, err))
        return ds4_fail_prefix(err, "layer %u experts for the GPU", il);
    if (bank_give_back(b, p0, pn, n_back, err)) return -1;
    for (uint32_t k = 0; k < pn; k++) {
        if (ds4_experts_wait(b->src, k, err)) return ds4_fail_prefix(err, "layer %u experts for the GPU", il);
        uint8_t *dst = b->dev + (uint64_t)b->pend_slot[p0 + k] * b->slot_bytes;
        const ds4_tensor *m[3] = {&b->views[k].gate, &b->views[k].up, &b->views[k].down};
        const uint64_t off[3] = {0, b->off_up[il], b->off_down[il]};
        if (b->out_k[k]) CU(cudaStreamWaitEvent(b->copy, b->out_ev[k], 0));
        for (int i = 0; i < 3; i++)
            CU(cudaMemcpyAsync(dst + off[i], m[i]->data, m[i]->row_bytes * m[i]->ne[1], cudaMemcpyHostToDevice,
                               b->copy));
    }
    CU(cudaStreamSynchronize(b->copy));
    CU(cudaStreamSynchronize(b->back_st));
    return 0;
}

static int bank_fetch(bank *b, uint32_t il, uint32_t n_pend, ds4_error *err) {
    uint32_t cap = ds4_experts_capacity(b->src);
    if (cap == 0) return ds4_fail(err, "CUDA expert bank: the expert source takes no experts at a time");
    for (uint32_t p0 = 0; p0 < n_pend; p0 += cap) {
        uint32_t pn = n_pend - p0 < cap ? n_pend - p0 : cap, n_back = 0;
        int rc = bank_fetch_batch(b, il, p0, pn, &n_back, err);
        if (rc && n_back) (void)cudaStreamSynchronize(b->back_st); /* no copy into a slot given up below */
        /* experts handed back are the source's once their copies are done
         * (after the batch's synchronisation), and nothing on failure */
        for (uint32_t i = 0; i < n_back; i++)
            ds4_experts_adopt_done(b->src, (uint32_t)(b->back[i] / b->n_expert), (uint32_t)(b->back[i] % b->n_expert),
                                   rc == 0);
        if (rc) return -1;
    }
    return 0;
}

/* Next-layer hints for a package's expert source: DS4_CUDA_GUESS=1. Off
 * by default: on the synthetic models (random routers, whose adjacent
 * layers route unalike) more hints were wasted than used and decode lost
 * 30-50% with a small CPU bank (bench/cuda-h100-decode.md); a trained
 * router is what they are made for. */
static bool guess_on(void) {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("DS4_CUDA_GUESS");
        on = e && *e == '1';
    }
    return on;
}

/* The routed experts through the bank kept on the device (k_bank.cu): a
 * decode step's one group without leaving the device; a chunk reads the
 * number of experts used back, then takes them in groups that fit the
 * bank. */
static int bank_experts_dev(fwd *f, uint32_t il, float limit) {
    ds4_gpu_session *s = f->s;
    bank *b = s->g->bank;
    const ds4_layer_weights *lw = &f->w->layers[il];
    ds4_error *err = f->err;
    cudaStream_t st = s->st;
    uint32_t X = f->hp->n_expert, K = f->hp->n_expert_used, n = f->n;
    uint32_t n_used = n * K < X ? n * K : X, cap = b->n_slots < X ? b->n_slots : X;
    bool one = n == 1 && n_used <= cap;
    if (!one) {
        CU(cudaMemcpyAsync(s->grp_pinned, s->grp, sizeof(int32_t), cudaMemcpyDeviceToHost, st));
        CU(cudaStreamSynchronize(st));
        n_used = (uint32_t)s->grp_pinned[0];
    }
    for (uint32_t g0 = 0; g0 < n_used; g0 += cap) {
        uint32_t gn = n_used - g0 < cap ? n_used - g0 : cap;
        CU(k_bank_lookup(st, &b->dv, s->grp, il, g0, one ? UINT32_MAX : gn, s->wtab));
        CU(k_bank_copy(st, &b->dv));
        const uint8_t *const *wt = (const uint8_t *const *)(s->wtab + 3 * g0);
        CU(ffn_up(f, &lw->gate_exps, &lw->up_exps, s->grp, K, n, g0, gn, wt, s->y, limit, s->h));
        CU(ffn_down(f, &lw->down_exps, s->grp, K, n, g0, gn, wt, s->h, s->dx));
    }
    return 0;
}

/* The routed experts through the slot bank: the only host round trip of a
 * chunk besides tokens and logits. The used experts (already grouped on
 * the device) are read back; in groups that fit the bank, missing experts
 * are copied into least-recently-used slots on the copy stream (after the
 * previous group's kernels are done with those slots), the slot addresses
 * go to the device, and the expert kernels wait for the copies. */
static int bank_experts(fwd *f, uint32_t il, float limit) {
    ds4_gpu_session *s = f->s;
    bank *b = s->g->bank;
    const ds4_hparams *hp = f->hp;
    const ds4_layer_weights *lw = &f->w->layers[il];
    ds4_error *err = f->err;
    cudaStream_t st = s->st;
    uint32_t X = hp->n_expert, K = hp->n_expert_used, n = f->n;
    if (b->on_dev) return bank_experts_dev(f, il, limit);
    CU(cudaMemcpyAsync(s->grp_pinned, s->grp, (1 + (size_t)X) * sizeof(int32_t), cudaMemcpyDeviceToHost, st));
    if (s->guessed)
        CU(cudaMemcpyAsync(s->gids_pinned, s->gids, (size_t)n * K * sizeof(int32_t), cudaMemcpyDeviceToHost, st));
    CU(cudaStreamSynchronize(st));
    uint32_t n_used = (uint32_t)s->grp_pinned[0], cap = b->n_slots < X ? b->n_slots : X;
    const int32_t *used = s->grp_pinned + 1;
    for (uint32_t g0 = 0; g0 < n_used; g0 += cap) {
        uint32_t gn = n_used - g0 < cap ? n_used - g0 : cap;
        bool copies = false;
        b->tick++;
        /* hits first, so that no expert of this group is chosen as a victim */
        for (uint32_t j = g0; j < g0 + gn; j++) {
            int32_t slot = b->slot_of[(uint64_t)il * X + used[j]];
            if (slot < 0) continue;
            b->stamp[slot] = b->tick;
            bank_touch(b, slot);
            b->hits++;
        }
        uint32_t n_pend = 0;
        for (uint32_t j = g0; j < g0 + gn; j++) {
            uint64_t key = (uint64_t)il * X + used[j];
            if (b->slot_of[key] >= 0) continue;
            int32_t slot = b->tail; /* never stamped this group: gn <= n_slots */
            uint64_t old = b->key[slot];
            if (old != UINT64_MAX) {
                b->slot_of[old] = -1;
                if (b->src) ds4_experts_held_elsewhere(b->src, (uint32_t)(old / X), (uint32_t)(old % X), false);
            }
            b->key[slot] = key;
            b->slot_of[key] = slot;
            b->stamp[slot] = b->tick;
            bank_touch(b, slot);
            if (!copies) CU(cudaStreamWaitEvent(b->copy, b->consumed, 0));
            copies = true;
            if (b->host) {
                CU(cudaMemcpyAsync(b->dev + (uint64_t)slot * b->slot_bytes,
                                   b->host + b->layer_off[il] + used[j] * b->stride[il], b->rec_bytes[il],
                                   cudaMemcpyHostToDevice, b->copy));
            } else {
                b->pend_slot[n_pend] = slot;
                b->pend_old[n_pend] = old;
                b->pend_id[n_pend++] = (uint32_t)used[j];
            }
            b->misses++;
            b->bytes += b->rec_bytes[il];
        }
        if (n_pend && bank_fetch(b, il, n_pend, err)) {
            /* the pending slots hold nothing valid: forget them, so a
             * failed read can never be computed with as if it had landed */
            for (uint32_t p = 0; p < n_pend; p++) {
                int32_t slot = b->pend_slot[p];
                if (b->key[slot] != UINT64_MAX) b->slot_of[b->key[slot]] = -1;
                b->key[slot] = UINT64_MAX;
            }
            return -1;
        }
        /* the host bank gives these up first now (exclusive caches hold
         * more experts between them than two that keep the same ones) */
        for (uint32_t p = 0; p < n_pend; p++) ds4_experts_held_elsewhere(b->src, il, b->pend_id[p], true);
        if (s->guessed) { /* this layer's reads are in: the disk can start on the next one's */
            ds4_moe_prefetch_picks(s->g->net, il + 1, s->gids_pinned, n * K);
            s->guessed = false;
        }
        for (uint32_t j = g0; j < g0 + gn; j++) {
            const uint8_t *base = b->dev + (uint64_t)b->slot_of[(uint64_t)il * X + used[j]] * b->slot_bytes;
            s->wtab_pinned[3 * j] = base;
            s->wtab_pinned[3 * j + 1] = base + b->off_up[il];
            s->wtab_pinned[3 * j + 2] = base + b->off_down[il];
        }
        CU(cudaMemcpyAsync(s->wtab + 3 * g0, s->wtab_pinned + 3 * g0, 3 * (size_t)gn * sizeof(uint8_t *),
                           cudaMemcpyHostToDevice, st));
        if (copies) {
            CU(cudaEventRecord(b->copied, b->copy));
            CU(cudaStreamWaitEvent(st, b->copied, 0));
        }
        const uint8_t *const *wt = (const uint8_t *const *)(s->wtab + 3 * g0);
        CU(ffn_up(f, &lw->gate_exps, &lw->up_exps, s->grp, K, n, g0, gn, wt, s->y, limit, s->h));
        CU(ffn_down(f, &lw->down_exps, s->grp, K, n, g0, gn, wt, s->h, s->dx));
        CU(cudaEventRecord(b->consumed, st));
    }
    return 0;
}

/* y = collapse of the streams with the mixing weights of w (ds4_mhc_pre or,
 * for head, ds4_mhc_head) over n token rows of X, then RMSNorm with norm_w:
 * two launches for float mixing weights (the published files' F16). */
static int mhc_pre(fwd *f, const ds4_hc_weights *w, const float *X, uint32_t n, int head, const float *norm_w,
                   uint8_t *q8, uint8_t *q8k) {
    ds4_gpu_session *s = f->s;
    const ds4_hparams *hp = f->hp;
    ds4_error *err = f->err;
    uint32_t hc = hp->hc, E = hp->n_embd, n_mix = head ? hc : (2 + hc) * hc;
    prof_mark(f->s, head ? "head_mhc" : "mhc_pre");
    if (n == 1) {
        cudaError_t e = k_mhc_one(s->st, &w->fn, X, hc, E, hp->rms_eps, vec(&w->base), vec(&w->scale), hp->hc_eps, head,
                                  s->mix, s->pre, norm_w, hp->rms_eps, s->y, q8, q8k);
        if (e != cudaErrorNotSupported) {
            CU(e);
            if (head) return 0;
            /* post and comb on lane 3, joined by the mHC post (coef_join) */
            cudaStream_t cs = s->st;
            if (s->lanes) {
                if (lane_after(s, 3, s->st, err)) return -1;
                cs = s->lane[3];
                s->coef_forked = true;
            }
            CU(k_mhc_coeffs(cs, s->mix, 1, hc, vec(&w->base), vec(&w->scale), hp->hc_eps, hp->sinkhorn_iters, 0, NULL,
                            s->post, s->comb));
            return 0;
        }
    }
    if (k_quant_type(w->fn.type)) {
        CU(k_rms_inv(s->st, X, n, hc * E, hp->rms_eps, s->rinv));
        CU(lin(f, &w->fn, 0, n_mix, 1, 0, X, (uint64_t)hc * E, s->rinv, n, s->mix, n_mix));
    } else {
        CU(k_linear_rms(s->st, &w->fn, X, (uint64_t)hc * E, n, hp->rms_eps, s->mix, n_mix));
    }
    CU(k_mhc_finish(s->st, s->mix, X, n, hc, E, vec(&w->base), vec(&w->scale), hp->hc_eps, hp->sinkhorn_iters, head,
                    s->pre, s->post, s->comb, norm_w, hp->rms_eps, s->y, q8, q8k));
    return 0;
}

static row_op row_of(const fwd *f, float *x, uint32_t n_rows, uint32_t n, uint32_t rows_per_tok, int norm, const float *w,
                     const float *rope, int qat) {
    row_op op = {x, n_rows, n, n, rows_per_tok, norm, w, f->hp->rms_eps, rope, rope ? f->hp->n_rot / 2 : 0, f->pos0, 0,
                 qat, f->hp->n_rot, NULL, NULL};
    if (op.n_pairs > 128) op.n_pairs = 128;
    return op;
}

static int rows(fwd *f, float *x, uint32_t n_rows, uint32_t n, uint32_t rows_per_tok, int norm, const float *w,
                const float *rope, int qat) {
    ds4_error *err = f->err;
    row_op op = row_of(f, x, n_rows, n, rows_per_tok, norm, w, rope, qat);
    CU(k_rows(f->st, &op));
    return 0;
}

static int compressor(fwd *f, const ds4_compressor_weights *cw, gpu_comp *c, uint32_t ratio, uint32_t width,
                      const float *ck, const float *cz, bool indexer) {
    ds4_gpu_session *s = f->s;
    ds4_error *err = f->err;
    comp_op op;
    memset(&op, 0, sizeof op);
    op.ratio = ratio;
    op.width = width;
    op.halves = ratio == 4 ? 2 : 1;
    op.ck = ck;
    op.cz = cz;
    op.ape = cw->ape.data;
    op.ape_type = cw->ape.type;
    op.ape_row_bytes = cw->ape.row_bytes;
    op.fk_old = c->fk[s->fr];
    op.fz_old = c->fz[s->fr];
    op.fk_new = c->fk[s->fr ^ 1];
    op.fz_new = c->fz[s->fr ^ 1];
    op.pos0 = f->pos0;
    op.n = f->n;
    op.norm_w = vec(&cw->norm);
    op.eps = f->hp->rms_eps;
    op.inv_freq = rope_table(f, true);
    op.n_pairs = f->hp->n_rot / 2 > 128 ? 128 : f->hp->n_rot / 2;
    op.qat = f->official ? (indexer ? 2 : 1) : 0;
    op.n_rot = f->hp->n_rot;
    op.rows = c->rows;
    CU(k_comp_emit(f->st, &op));
    CU(k_comp_frontier(f->st, &op));
    return 0;
}

/* ds4_attention: x = s->y (n x E) -> s->o, then the mHC post step of the layer's streams s->X. */
static int attention(fwd *f, uint32_t il) {
    ds4_gpu_session *s = f->s;
    const ds4_hparams *hp = f->hp;
    const ds4_layer_weights *lw = &f->w->layers[il];
    gpu_layer *ls = &s->layers[il];
    ds4_error *err = f->err;
    cudaStream_t st = s->st;
    uint32_t n = f->n, E = hp->n_embd, H = hp->n_head, hd = hp->head_dim, ratio = hp->compress_ratio[il];
    uint64_t qdim = (uint64_t)H * hd;
    const float *x = s->y, *lrope = rope_table(f, ratio != 0);

    /* the compressor and the indexer's own projections need only x: they
     * run on the side lanes while q and kv are made here */
    fwd cf, xf;
    if (ratio) {
        if (fork_lane(f, 0, &cf)) return -1;
        uint32_t cw = (ratio == 4 ? 2 : 1) * hd;
        prof_mark(f->s, "compressor");
        CU(lin(&cf, &lw->comp.kv, 0, cw, 1, 0, x, E, NULL, n, s->ck, cw));
        CU(lin(&cf, &lw->comp.gate, 0, cw, 1, 0, x, E, NULL, n, s->cz, cw));
        if (compressor(&cf, &lw->comp, &ls->comp, ratio, hd, s->ck, s->cz, false)) return -1;
    }
    uint32_t d = hp->idx_head_dim, IH = hp->idx_n_head, iwd = 2 * d;
    /* The indexer's selection is used once a token sees more than topk
     * compressed rows (more than 4 * topk positions); before that only its
     * compressor runs, which keeps the keys the later selections score. At
     * short contexts this saves the query projection's weights (16 MB at
     * the published sizes) a layer and token. */
    bool idx_select = ratio == 4 && (f->pos0 + n) / 4 > hp->idx_topk;
    if (ratio == 4) {
        if (fork_lane(f, 1, &xf)) return -1;
        prof_mark(f->s, "indexer_proj");
        CU(lin(&xf, &lw->idx_comp.kv, 0, iwd, 1, 0, x, E, NULL, n, s->ik, iwd));
        CU(lin(&xf, &lw->idx_comp.gate, 0, iwd, 1, 0, x, E, NULL, n, s->iz, iwd));
        if (idx_select) CU(lin(&xf, &lw->idx_proj, 0, IH, 1, 0, x, E, NULL, n, s->iw, IH));
        prof_mark(s, "indexer_comp");
        if (compressor(&xf, &lw->idx_comp, &ls->idx, 4, d, s->ik, s->iz, true)) return -1;
    }

    prof_mark(f->s, "q_proj");
    /* kv right after q_a: when both are quantized alike, kv reuses q_a's
     * quantized x (before q_b's activations take the scratch), and one
     * token takes both in one launch */
    bool same_act = k_quant_type(lw->q_a.type) && lw->kv.type == lw->q_a.type;
    if (n == 1 && same_act) {
        CU(k_qlinear_pair(f->st, &lw->q_a, s->qa, &lw->kv, s->kv, f->y_q8 ? NULL : x, f->act));
    } else {
        CU(lin(f, &lw->q_a, 0, hp->q_lora, 1, 0, f->y_q8 ? NULL : x, E, NULL, n, s->qa, hp->q_lora));
        prof_mark(f->s, "kv_proj");
        CU(lin(f, &lw->kv, 0, hd, 1, 0, same_act ? NULL : x, E, NULL, n, s->kv, hd));
    }
    f->y_q8 = false;
    /* kv's row transform and q_a's norm in one launch (a decode step's
     * chain is made of launches of a few microseconds each) */
    row_op kv_rows = row_of(f, s->kv, n, hd, 1, 1, vec(&lw->kv_norm), lrope, f->official ? 1 : 0);
    /* One token: its row goes into the window's ring here, which saves the
     * ring write's launch; the slot it takes held position pos0 - window,
     * which this token's attention no longer sees. (A chunk's tokens
     * still need the rows their later tokens overwrite: k_ring_write
     * after the attention.) */
    if (n == 1 && hp->window) kv_rows.copy = ls->ring + (f->pos0 % hp->window) * hd;
    row_op qa_rows = row_of(f, s->qa, n, hp->q_lora, 1, 1, vec(&lw->q_a_norm), NULL, 0);
    /* one token: q_a's normalised row also as q_b's Q8_0 activations (kv
     * has used q_a's by now), the launch of q_b's quantizer saved */
    bool qa_q8 = n == 1 && lw->q_b.type == GGML_TYPE_Q8_0 && hp->q_lora % 32 == 0; /* whole Q8_0 blocks */
    if (qa_q8) qa_rows.q8 = (uint8_t *)f->act;
    CU(k_rows2(f->st, &kv_rows, &qa_rows));
    if (idx_select) {
        /* the indexer's queries come from q_a's normalised rows */
        if (xf.st != f->st) {
            CU(cudaEventRecord(s->ev_qa, f->st));
            CU(cudaStreamWaitEvent(xf.st, s->ev_qa, 0));
        }
        prof_mark(f->s, "indexer_proj");
        CU(lin(&xf, &lw->idx_q_b, 0, (uint64_t)IH * d, 1, 0, s->qa, hp->q_lora, NULL, n, s->iq, (uint64_t)IH * d));
        if (rows(&xf, s->iq, n * IH, d, IH, 0, NULL, rope_table(f, true), f->official ? 2 : 0)) return -1;
        prof_mark(f->s, "indexer_topk");
        for (uint32_t t0 = 0; t0 < n; t0 += IDX_ROWS) {
            uint32_t m = n - t0 < IDX_ROWS ? n - t0 : IDX_ROWS;
            CU(k_idx_scores(xf.st, s->iq + (uint64_t)t0 * IH * d, s->iw + (uint64_t)t0 * IH, m, IH, d, ls->idx.rows,
                            f->pos0 + t0, hp->idx_topk, s->scores, s->score_stride));
            CU(k_idx_topk(xf.st, s->scores, s->score_stride, m, f->pos0 + t0, hp->idx_topk,
                          s->sel + (uint64_t)t0 * hp->idx_topk));
        }
    }
    prof_mark(f->s, "q_proj");
    CU(lin(f, &lw->q_b, 0, qdim, 1, 0, qa_q8 ? NULL : s->qa, hp->q_lora, NULL, n, s->q, qdim));

    attn_op op;
    memset(&op, 0, sizeof op);
    op.q = s->q;
    op.kv = s->kv;
    op.ring = ls->ring;
    op.comp = ratio ? ls->comp.rows : NULL;
    op.sel = s->sel;
    op.sinks = vec(&lw->sinks);
    op.n = n;
    op.H = H;
    op.hd = hd;
    op.W = hp->window;
    op.ratio = ratio;
    op.topk = hp->idx_topk;
    op.pos0 = f->pos0;
    op.inv_freq = lrope;
    op.n_pairs = hp->n_rot / 2 > 128 ? 128 : hp->n_rot / 2;
    op.out = s->att;
    op.part = s->apart;
    op.part_slots = s->part_slots;
    /* q's per-head RMSNorm and RoPE: in the attention kernel where it can
     * (a launch saved), else its own row transform */
    if (k_attention_norms_q(&op)) op.q_eps = hp->rms_eps;
    else if (rows(f, s->q, n * H, hd, H, 1, NULL, lrope, 0)) return -1;
    {
        /* out_a's weights while the attention runs */
        const ds4_tensor *next[1] = {&lw->out_a};
        if (ahead(f, next, 1)) return -1;
    }
    if (ratio && join_lane(f, &cf, 0)) return -1;
    if (ratio == 4 && join_lane(f, &xf, 1)) return -1;
    prof_mark(f->s, "attention");
    CU(k_attention(st, &op));
    if (n > 1) {
        prof_mark(s, "ring_write");
        CU(k_ring_write(st, s->kv, n, f->pos0, hp->window, hd, ls->ring));
    }

    /* grouped output projection: group g's heads through its o_lora rows of out_a */
    uint64_t gin = qdim / hp->o_groups, glow = (uint64_t)hp->o_groups * hp->o_lora;
    prof_mark(f->s, "out_proj");
    CU(lin(f, &lw->out_a, 0, hp->o_lora, hp->o_groups, gin, s->att, qdim, NULL, n, s->low, glow));
    if (coef_join(f)) return -1;
    if (n == 1 && k_quant_type(lw->out_b.type)) {
        /* one token: out_b's rows go straight into the mHC post step */
        CU(k_qlinear_post(f->st, &lw->out_b, s->low, f->act, s->o, s->X, s->post, s->comb, hp->hc));
    } else {
        CU(lin(f, &lw->out_b, 0, E, 1, 0, s->low, glow, NULL, n, s->o, E));
        prof_mark(s, "mhc_post");
        CU(k_mhc_post(st, s->X, s->o, s->post, s->comb, n, hp->hc, E));
    }
    return 0;
}

/* ds4_moe, then the mHC post step: x = s->y, the layer's streams s->X
 * updated. */
static int moe(fwd *f, uint32_t il) {
    ds4_gpu_session *s = f->s;
    const ds4_hparams *hp = f->hp;
    const ds4_layer_weights *lw = &f->w->layers[il];
    ds4_error *err = f->err;
    cudaStream_t st = s->st;
    uint32_t n = f->n, E = hp->n_embd, X = hp->n_expert, K = hp->n_expert_used;
    float limit = hp->swiglu_clamp[il];
    uint32_t slots = n * K < X ? n * K : X;
    /* the shared expert on a side lane, beside the routing and the routed experts */
    fwd sf;
    if (fork_lane(f, 0, &sf)) return -1;
    prof_mark(f->s, "shared_expert");
    CU(ffn_up(&sf, &lw->gate_shexp, &lw->up_shexp, NULL, K, n, 0, 1, NULL, s->y, limit, s->hs));
    CU(ffn_down(&sf, &lw->down_shexp, NULL, K, n, 0, 1, NULL, s->hs, s->sh));
    prof_mark(f->s, "router");
    CU(lin(f, &lw->gate_inp, 0, X, 1, 0, s->y, E, NULL, n, s->lg, X));
    bool hash = ds4_layer_is_hash(hp, il);
    CU(k_route(st, s->lg, n, X, K, s->tok, hash ? (const int32_t *)lw->tid2eid.data : NULL,
               hash ? NULL : vec(&lw->probs_bias), hp->expert_scale, s->ids, s->wts, n == 1 ? s->grp : NULL));
    s->guessed = false;
    const ds4_expert_source *src = s->g->bank ? s->g->bank->src : NULL;
    if (src && ds4_experts_can_prefetch(src) && il + 1 < hp->n_layer && guess_on()) {
        /* the next layer's router on this layer's MoE input (adjacent
         * layers' inputs differ little; hash layers are exact), its
         * routing into gids: read back with this layer's, as hints */
        const ds4_layer_weights *nw = &f->w->layers[il + 1];
        bool nhash = ds4_layer_is_hash(hp, il + 1);
        if (nhash || !s->g->net->no_guess) {
            CU(lin(f, &nw->gate_inp, 0, X, 1, 0, s->y, E, NULL, n, s->lg, X));
            CU(k_route(st, s->lg, n, X, K, s->tok, nhash ? (const int32_t *)nw->tid2eid.data : NULL,
                       nhash ? NULL : vec(&nw->probs_bias), hp->expert_scale, s->gids, s->gwts, NULL));
            s->guessed = true;
        }
    }
    prof_mark(f->s, "experts");
    if (n > 1) CU(k_moe_group(st, s->ids, n * K, X, s->grp)); /* a single token's came with its routing */
    if (s->g->bank) {
        if (bank_experts(f, il, limit)) return -1;
    } else {
        CU(ffn_up(f, &lw->gate_exps, &lw->up_exps, s->grp, K, n, 0, slots, NULL, f->y_q8k ? NULL : s->y, limit, s->h));
        f->y_q8k = false;
        CU(ffn_down(f, &lw->down_exps, s->grp, K, n, 0, slots, NULL, s->h, s->dx));
    }
    /* the weighted sum of the experts goes straight into the mHC post step */
    if (join_lane(f, &sf, 0) || coef_join(f)) return -1;
    prof_mark(f->s, "moe_combine");
    CU(k_mhc_post_moe(st, s->X, s->sh, s->dx, s->ids, s->wts, s->grp, X, K, s->post, s->comb, n, hp->hc, E));
    return 0;
}

/* What a chunk returns to the host besides its state: the logits, or made
 * on the device from the last row's first s->pick_n logits, the greedy
 * pick (s->pick_pinned) or a band of candidates (s->band_*_pinned). */
enum step_want { STEP_NOTHING, STEP_LOGITS, STEP_PICK, STEP_BAND };

/* Enqueues one internal chunk on the session's stream and advances the
 * host-side position; logits of rows [first, n) go to out (host); tail
 * (STEP_PICK, STEP_BAND) what the last row's logits give, if first < n. */
static int enqueue(ds4_gpu_session *s, bool official, const int32_t *tokens, uint32_t n, uint32_t first, float *out,
                   int tail, ds4_error *err) {
    const ds4_hparams *hp = s->g->hp;
    const ds4_weights *w = &s->g->w;
    fwd f = {s, hp, w, official, n, s->pos, err, s->st, s->act, false, false};
    cudaStream_t st = s->st;
    s->coef_forked = false; /* a chunk that failed half way left nothing to join */
    uint32_t E = hp->n_embd, hc = hp->hc;
    prof_mark(s, "embed");
    if (tokens == s->tok_pinned) {
        /* a captured step: the embedding reads its token word itself (or
         * the device's last pick) and keeps a copy for the routing */
        CU(k_embed(st, &w->tok_embd, s->tok_pinned + (f.pos0 & 1), n, hc, s->X, s->tok, s->pick));
    } else {
        CU(cudaMemcpyAsync(s->tok, tokens, n * sizeof(int32_t), cudaMemcpyHostToDevice, st));
        CU(k_embed(st, &w->tok_embd, s->tok, n, hc, s->X, NULL, NULL));
    }
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const ds4_layer_weights *lw = &w->layers[il];
        /* one token: the finish step also writes y's Q8_0 row for q_a,
         * the launch of q_a's own quantizer saved */
        f.y_q8 = n == 1 && lw->q_a.type == GGML_TYPE_Q8_0 && E % 32 == 0; /* whole Q8_0 blocks */
        {
            /* the attention's first products while the mHC steps run */
            const ds4_tensor *next[3] = {&lw->q_a, &lw->kv, &lw->q_b};
            if (ahead(&f, next, 3)) return -1;
        }
        if (mhc_pre(&f, &lw->hc_attn, s->X, n, 0, vec(&lw->attn_norm), f.y_q8 ? (uint8_t *)f.act : NULL, NULL)) return -1;
        if (attention(&f, il)) return ds4_fail_prefix(err, "layer %u attention", il);
        /* one token, experts resident: the finish step also writes y's Q8_K
         * row for the routed experts' gate and up (their quantizer's launch
         * saved); nothing between uses the activation scratch when the
         * router's weights are float */
        f.y_q8k = n == 1 && !s->g->bank && k_act_is_q8k(lw->gate_exps.type) && !k_quant_type(lw->gate_inp.type) &&
                  E % 256 == 0; /* whole Q8_K blocks */
        if (mhc_pre(&f, &lw->hc_ffn, s->X, n, 0, vec(&lw->ffn_norm), NULL, f.y_q8k ? (uint8_t *)f.act : NULL)) return -1;
        if (moe(&f, il)) return ds4_fail_prefix(err, "layer %u MoE", il);
    }
    s->pos += n;
    s->fr ^= 1;
    for (uint32_t r0 = first; (out || tail != STEP_NOTHING) && r0 < n; r0 += HEAD_ROWS) {
        uint32_t m = n - r0 < HEAD_ROWS ? n - r0 : HEAD_ROWS;
        if (mhc_pre(&f, &w->hc_head, s->X + (uint64_t)r0 * hc * E, m, 1, vec(&w->output_norm), NULL, NULL)) return -1;
        prof_mark(s, "output");
        float *lg = n == 1 ? s->logits + (uint64_t)(f.pos0 & 1) * hp->n_vocab : s->logits;
        CU(lin(&f, &w->output, 0, hp->n_vocab, 1, 0, s->y, E, NULL, m, lg, hp->n_vocab));
        s->last_row = lg + (uint64_t)(m - 1) * hp->n_vocab;
        if (!out) continue;
        prof_mark(s, "logits_d2h");
        /* in stream order: this group's logits are out before the next group's head writes them */
        CU(cudaMemcpyAsync(out + (uint64_t)(r0 - first) * hp->n_vocab, lg, (size_t)m * hp->n_vocab * sizeof(float),
                           cudaMemcpyDeviceToHost, st));
    }
    if (tail == STEP_PICK && first < n) {
        prof_mark(s, "pick");
        /* on the device for the step ahead, and straight into the host's
         * word (a copy node at the end of a step costs a few microseconds) */
        CU(k_argmax(st, s->last_row, s->pick_n, s->pick_part, s->pick, s->pick_pinned + ((s->pos - 1) & 1)));
    }
    if (tail == STEP_BAND && first < n) {
        prof_mark(s, "band");
        CU(k_band(st, s->last_row, s->pick_n, s->band_T, s->band_minp, BAND_CAP, s->pick_part, s->band_out, s->band_vals));
        CU(cudaMemcpyAsync(s->band_out_pinned, s->band_out, (1 + BAND_CAP) * sizeof(int32_t), cudaMemcpyDeviceToHost, st));
        CU(cudaMemcpyAsync(s->band_vals_pinned, s->band_vals, BAND_CAP * sizeof(float), cudaMemcpyDeviceToHost, st));
    }
    if (s->ahead_forked) {
        s->ahead_forked = false;
        if (lane_join(s, 2, st, err)) return -1;
    }
    prof_mark(s, "end");
    return 0;
}

/* Which optional kernels a single-token step at position p launches (the
 * compressor emissions, one bit per layer ratio in use, and the indexer)
 * and what it returns. */
static uint64_t step_key(const ds4_gpu_session *s, uint64_t p, int want) {
    const ds4_hparams *hp = s->g->hp;
    uint64_t key = 0;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        uint32_t r = hp->compress_ratio[il];
        if (r && (p + 1) % r == 0) key |= 1ull << (__builtin_ctz(r) & 31);
    }
    if ((p + 1) / 4 > hp->idx_topk) key |= 1ull << 40;
    if (want == STEP_LOGITS) key |= 1ull << 41;
    if (want == STEP_PICK) key |= 1ull << 42;
    if (want == STEP_BAND) key |= 1ull << 43;
    return key;
}

/* Captures the single-token step at the session's position into a cached
 * executable graph; the host-side position stays (the caller advances it
 * when the step is launched). Returns the cache slot, -2 when capture is
 * not possible here (graphs now off) or -1 on error. The slot `busy` (a
 * graph that may be running) is neither updated nor destroyed. */
static int capture_step(ds4_gpu_session *s, bool official, int want, int busy, ds4_error *err) {
    cudaStream_t st = s->st;
    uint64_t key = step_key(s, s->pos, want);
    uint32_t pos0 = s->pos;
    int fr0 = s->fr;
    cudaGraph_t graph = NULL;
    double t0 = s->steptime ? ds4_now_s() : 0;
    if (cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        cudaGetLastError();
        s->graphs = false;
        return -2;
    }
    ds4_error cap_err = {{0}};
    const float *last_row = s->last_row; /* the row of the step taken last, not of this one */
    int rc = enqueue(s, official, s->tok_pinned, 1, 0, want == STEP_LOGITS ? s->logits_pinned : NULL,
                     want == STEP_LOGITS ? STEP_NOTHING : want, &cap_err);
    s->last_row = last_row;
    s->pos = pos0; /* enqueue's host-side step, undone: only captured */
    s->fr = fr0;
    cudaError_t e = cudaStreamEndCapture(st, &graph);
    if (rc || e != cudaSuccess || !graph) {
        /* Not capturable here: the caller launches directly. */
        cudaGetLastError();
        if (graph) cudaGraphDestroy(graph);
        s->graphs = false;
        return -2;
    }
    double t1 = s->steptime ? ds4_now_s() : 0;
    /* Never the graph of the step running now (busy): a launch of a graph
     * updated while it runs waits for that run, so consecutive steps of
     * one kind alternate between two graphs. */
    int slot = -1;
    for (int i = 0; i < s->n_gcache; i++)
        if (s->gcache[i].key == key && i != busy) slot = i;
    if (slot >= 0) {
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate(s->gcache[slot].exec, graph, &info) != cudaSuccess) {
            cudaGetLastError();
            cudaGraphExecDestroy(s->gcache[slot].exec);
            s->gcache[slot].exec = NULL;
        }
    }
    if (slot < 0) {
        if (s->n_gcache < 16) slot = s->n_gcache++;
        else slot = (int)(key % 16) == busy ? (busy + 1) % 16 : (int)(key % 16);
        if (s->gcache[slot].exec) cudaGraphExecDestroy(s->gcache[slot].exec);
        s->gcache[slot].exec = NULL;
        s->gcache[slot].key = key;
    }
    if (!s->gcache[slot].exec && (e = cudaGraphInstantiate(&s->gcache[slot].exec, graph, 0)) != cudaSuccess) {
        cudaGraphDestroy(graph);
        s->gcache[slot].exec = NULL;
        s->gcache[slot].key = UINT64_MAX;
        ds4_fail(err, "CUDA: instantiating the decode graph: %s", cudaGetErrorString(e));
        return -1;
    }
    cudaGraphDestroy(graph);
    if (s->steptime) {
        double t2 = ds4_now_s();
        s->t_capture += t1 - t0, s->t_update += t2 - t1;
    }
    return slot;
}

/* Lets a step launched ahead (spec) finish without taking it. */
static int spec_drop(ds4_gpu_session *s, ds4_error *err) {
    if (s->spec.slot < 0) return 0;
    s->spec.slot = -1;
    CU(cudaStreamSynchronize(s->st));
    return 0;
}

/* A single-token step through a captured graph. While the GPU runs it, the
 * graph of the following step (same settings, next position) is captured
 * and updated, so that the host work of a step overlaps the device work of
 * the previous one; a greedy step's follower is also launched at once, fed
 * the device's pick (see spec). Returns 1 (nothing done, graphs now off)
 * when capture is not possible, so the caller launches directly. */
/* Whether r (s->ready or s->spec) is the step the session takes next
 * with these settings. */
static bool prepared_for(const ds4_gpu_session *s, const prepared_step *r, bool official, int want) {
    return r->slot >= 0 && r->pos == s->pos && r->fr == s->fr && r->official == official && r->want == want &&
           r->pick_n == s->pick_n && r->band_T == s->band_T && r->band_minp == s->band_minp;
}

/* Launches graph slot for the step at position p, fed token (-1: the
 * device's pick of the step before). */
static int launch_step(ds4_gpu_session *s, int slot, uint32_t p, int32_t token, ds4_error *err) {
    double t = s->steptime ? ds4_now_s() : 0;
    s->tok_pinned[p & 1] = token;
    CU(cudaGraphLaunch(s->gcache[slot].exec, s->st));
    CU(cudaEventRecord(s->ev_done[p & 1], s->st));
    if (s->steptime) s->t_launch += ds4_now_s() - t;
    return 0;
}

static int step_graph(ds4_gpu_session *s, bool official, int32_t token, float *out, int tail, ds4_error *err) {
    int want = out ? STEP_LOGITS : tail;
    uint32_t p = s->pos;
    int busy; /* the graph of the step at p, running */
    double t2 = s->steptime ? ds4_now_s() : 0;
    if (s->steptime && s->t_last_end > 0) s->t_between += t2 - s->t_last_end; /* the caller's time between two steps */
    if (prepared_for(s, &s->spec, official, want) && token == s->pick_pinned[(p - 1) & 1]) {
        /* this step is the one in flight */
        busy = s->spec.slot;
        s->spec.slot = -1;
    } else {
        if (spec_drop(s, err)) return -1;
        if (prepared_for(s, &s->ready, official, want)) {
            busy = s->ready.slot;
        } else {
            busy = capture_step(s, official, want, -1, err);
            if (busy == -2) return 1;
            if (busy < 0) return -1;
        }
        s->ready.slot = -1;
        if (launch_step(s, busy, p, token, err)) return -1;
    }
    s->pos += 1; /* what enqueue does to the host-side state */
    s->fr ^= 1;
    if (s->pos < s->max_ctx) {
        ds4_error next_err = {{0}};
        int next = capture_step(s, official, want, busy, &next_err); /* taken by the next call */
        s->graphs = true; /* a failed capture here only means no prepared step */
        if (next >= 0) {
            prepared_step r = {next, s->pos, s->fr, official, want, s->pick_n, s->band_T, s->band_minp};
            if (want == STEP_PICK && s->speculate) {
                /* launched now, fed the pick that the step before leaves on the device */
                if (launch_step(s, next, s->pos, -1, err)) return -1;
                s->spec = r;
            } else {
                s->ready = r;
            }
        }
    }
    CU(cudaEventSynchronize(s->ev_done[p & 1]));
    s->last_row = s->logits + (uint64_t)(p & 1) * s->g->hp->n_vocab;
    if (s->steptime) {
        s->t_last_end = ds4_now_s();
        s->t_run += s->t_last_end - t2;
        s->n_steps++;
    }
    if (out) memcpy(out, s->logits_pinned, (size_t)s->g->hp->n_vocab * sizeof(float));
    return 0;
}

static int chunk(ds4_gpu_session *s, bool official, const int32_t *tokens, uint32_t n, uint32_t first, float *out, int tail,
                 ds4_error *err) {
    if (n == 1 && s->graphs) {
        int rc = step_graph(s, official, tokens[0], first < n ? out : NULL, first < n ? tail : STEP_NOTHING, err);
        if (rc <= 0) return rc;
    }
    if (spec_drop(s, err) || enqueue(s, official, tokens, n, first, out, tail, err)) return -1;
    CU(cudaStreamSynchronize(s->st));
    prof_collect(s, n);
    return 0;
}

/* ds4_gpu_forward, _pick and _band: logits to the host (all rows or the
 * last), or only what the last row's logits give (tail, see step_want). */
static int forward(ds4_gpu_session *s, bool official, const int32_t *tokens, uint32_t n, float *logits, bool all_logits,
                   int tail, ds4_error *err) {
    const ds4_hparams *hp = s->g->hp;
    if (n == 0) return 0;
    if ((uint64_t)s->pos + n > s->max_ctx)
        return ds4_fail(err, "context full: %u tokens held, %u more would exceed the session's %u", s->pos, n, s->max_ctx);
    for (uint32_t t = 0; t < n; t++)
        if (tokens[t] < 0 || (uint32_t)tokens[t] >= hp->n_vocab)
            return ds4_fail(err, "token id %d at input position %u is outside the vocabulary (0..%u)", tokens[t], t,
                            hp->n_vocab - 1);
    for (uint32_t done = 0; done < n;) {
        uint32_t len = n - done < s->chunk ? n - done : s->chunk;
        bool last = done + len == n;
        float *out = all_logits ? logits + (size_t)done * hp->n_vocab : (last ? logits : NULL);
        uint32_t first = all_logits ? 0 : len - 1;
        if (chunk(s, official, tokens + done, len, first, out, last ? tail : STEP_NOTHING, err)) {
            /* The device state is no longer consistent with pos: start over. */
            ds4_gpu_session_reset(s);
            return -1;
        }
        done += len;
    }
    return 0;
}

extern "C" int ds4_gpu_forward(ds4_gpu_session *s, bool official, const int32_t *tokens, uint32_t n, float *logits,
                               bool all_logits, ds4_error *err) {
    return forward(s, official, tokens, n, logits, all_logits, STEP_NOTHING, err);
}

/* The logits the device picks among: the first n_cand (0: all). */
static void set_pick_n(ds4_gpu_session *s, uint32_t n_cand) {
    uint32_t V = s->g->hp->n_vocab;
    s->pick_n = n_cand == 0 || n_cand > V ? V : n_cand;
}

extern "C" int ds4_gpu_forward_pick(ds4_gpu_session *s, bool official, const int32_t *tokens, uint32_t n, uint32_t n_cand,
                                    int32_t *next, ds4_error *err) {
    if (n == 0) return ds4_fail(err, "CUDA: a pick needs at least one token fed");
    set_pick_n(s, n_cand);
    if (forward(s, official, tokens, n, NULL, false, STEP_PICK, err)) return -1;
    *next = s->pick_pinned[(s->pos - 1) & 1];
    return 0;
}

extern "C" int ds4_gpu_forward_band(ds4_gpu_session *s, bool official, const int32_t *tokens, uint32_t n, uint32_t n_cand,
                                    float T, float min_p, uint32_t *count, const int32_t **ids, const float **vals,
                                    ds4_error *err) {
    if (n == 0) return ds4_fail(err, "CUDA: a band of candidates needs at least one token fed");
    if (!(T > 0) || !(min_p > 0)) return ds4_fail(err, "CUDA: a band of candidates needs a temperature and a min-p floor above 0");
    set_pick_n(s, n_cand);
    s->band_T = T, s->band_minp = min_p;
    if (forward(s, official, tokens, n, NULL, false, STEP_BAND, err)) return -1;
    *count = (uint32_t)s->band_out_pinned[0];
    *ids = s->band_out_pinned + 1;
    *vals = s->band_vals_pinned;
    return *count <= BAND_CAP ? 0 : 1;
}

extern "C" int ds4_gpu_last_logits(ds4_gpu_session *s, float *out, ds4_error *err) {
    if (!s->last_row) return ds4_fail(err, "CUDA: no logits made since the session started or was reset");
    CU(cudaMemcpy(out, s->last_row, (size_t)s->g->hp->n_vocab * sizeof(float), cudaMemcpyDeviceToHost));
    return 0;
}
