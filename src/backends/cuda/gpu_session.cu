/* CUDA sessions: a session's decode state and scratch on the device,
 * their layout, copies and reset, and the per-operation profile. */
#include "backends/cuda/gpu_impl.cuh"

static void prof_init(ds4_gpu_session *s);
static void prof_free(ds4_gpu_session *s);

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
    s->topk_work = TAKE_I(b, k_idx_topk_work_bytes((uint32_t)(n < IDX_ROWS ? n : IDX_ROWS)) / 4);
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
#define PROF_EVENTS 4096
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

void prof_mark(ds4_gpu_session *s, const char *name) {
    prof *p = s->prof;
    if (!p || p->n >= PROF_EVENTS) return;
    if (cudaEventRecord(p->ev[p->n], s->st) != cudaSuccess) return;
    p->name[p->n++] = name;
}

void prof_collect(ds4_gpu_session *s, uint32_t n_tok) {
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

