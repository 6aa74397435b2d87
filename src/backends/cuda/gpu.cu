/* The CUDA backend: the device (probe, bandwidth, code and launch
 * features) and models (the weights' device copies, the expert slot bank's
 * setup). Sessions: gpu_session.cu; the forward pass: gpu_forward.cu. */
#include "backends/cuda/gpu_impl.cuh"

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

