/* The CUDA forward pass: ds4_forward's algorithm as kernel launches (the
 * layers, the slot bank's fetches for a layer's experts, the head and the
 * pick), decode steps captured into graphs and launched ahead. */
#include "backends/cuda/gpu_impl.cuh"

/* Slot s becomes the most recently used of the host-driven bank's list. */
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
        for (uint32_t t0 = 0; t0 < n; t0 += IDX_ROWS) {
            uint32_t m = n - t0 < IDX_ROWS ? n - t0 : IDX_ROWS;
            prof_mark(f->s, "indexer_scores");
            CU(k_idx_scores(xf.st, s->iq + (uint64_t)t0 * IH * d, s->iw + (uint64_t)t0 * IH, m, IH, d, ls->idx.rows,
                            f->pos0 + t0, hp->idx_topk, s->scores, s->score_stride));
            prof_mark(f->s, "indexer_topk");
            CU(k_idx_topk(xf.st, s->scores, s->score_stride, m, f->pos0 + t0, hp->idx_topk,
                          s->sel + (uint64_t)t0 * hp->idx_topk, s->topk_work));
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
int spec_drop(ds4_gpu_session *s, ds4_error *err) {
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

