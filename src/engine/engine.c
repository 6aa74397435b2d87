/* The public engine API (include/ds4.h): model loading and sessions. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/gpu.h"
#include "compute/forward.h"
#include "compute/linear.h"
#include "ds4.h"
#include "ds4_sampler.h"
#include "engine/model.h"
#include "engine/sidecar_mode.h"
#include "formats/ggml_types.h"
#include "formats/gguf.h"
#include "formats/sidecar.h"
#include "model/tokenizer_gguf.h"
#include "util/meminfo.h"
#include "util/progress.h"
#include "util/warm.h"

struct ds4_session {
    ds4_model *m;
    ds4_session_opts opts; /* opts.backend resolved to CPU or CUDA */
    ds4_state state;       /* CPU sessions */
    ds4_workspace *ws;     /* CPU sessions */
    ds4_gpu_session *gpu;  /* CUDA sessions */
    float *logits; /* n_vocab: last position */
    /* CUDA sessions after ds4_session_eval_pick: the last logits are still
     * on the device; ds4_session_logits fetches them on first use */
    bool logits_on_device;
    void *sample_scratch; /* n_vocab x 8 bytes for ds4_sample's sorted paths, made on first use */
    /* CUDA steps left that fetch the logits instead of trying the band of
     * candidates, after a band too wide to send (flat logits stay flat
     * for a while; the token is the same either way) */
    uint32_t band_off;
};

const char *ds4_backend_name(ds4_backend b) {
    switch (b) {
    case DS4_BACKEND_CPU: return "cpu";
    case DS4_BACKEND_CUDA: return "cuda";
    default: return "auto";
    }
}

int ds4_backend_parse(const char *name, ds4_backend *out, ds4_error *err) {
    if (!strcmp(name, "cpu")) *out = DS4_BACKEND_CPU;
    else if (!strcmp(name, "cuda")) *out = DS4_BACKEND_CUDA;
    else if (!strcmp(name, "auto")) *out = DS4_BACKEND_AUTO;
    else return ds4_fail(err, "backend '%s': this engine has cuda and cpu (or auto)", name);
    return 0;
}

bool ds4_cuda_available(ds4_error *why) { return ds4_gpu_probe(why); }
int ds4_cuda_bandwidth(double *read_bytes_per_s, double *copy_bytes_per_s, ds4_error *err) {
    return ds4_gpu_bandwidth(read_bytes_per_s, copy_bytes_per_s, err);
}

ds4_backend ds4_model_backend(const ds4_model *m) { return m->backend; }

void ds4_model_expert_cache_stats(const ds4_model *m, ds4_expert_cache_stats *out) {
    memset(out, 0, sizeof *out);
    if (m->gpu) ds4_gpu_expert_stats(m->gpu, &out->slots, &out->slot_bytes, &out->hits, &out->misses, &out->bytes_copied);
}
ds4_backend ds4_session_backend(const ds4_session *s) { return s->opts.backend; }

/* Uploads the weights for CUDA sessions. AUTO falls back to the CPU (with a
 * note) when there is no usable GPU or the weights do not fit; an explicit
 * CUDA request fails instead. */
static int pick_backend(ds4_model *m, const ds4_model_opts *o, ds4_error *err) {
    m->backend = DS4_BACKEND_CPU;
    if (o->backend == DS4_BACKEND_CPU) return 0;
    ds4_error why = {{0}};
    if (!ds4_gpu_probe(&why)) {
        if (o->backend == DS4_BACKEND_CUDA) return ds4_fail(err, "CUDA backend: %s", why.msg);
        if (o->verbose) fprintf(stderr, "ds4: using the CPU: %s\n", why.msg);
        return 0;
    }
    ds4_gpu_model_opts go = {.verbose = o->verbose, .expert_cache = o->gpu_expert_cache};
    m->gpu = ds4_gpu_model_new(&m->net, &go, &why);
    if (!m->gpu) {
        if (o->backend == DS4_BACKEND_CUDA) return ds4_fail(err, "%s", why.msg);
        fprintf(stderr, "ds4: CUDA unavailable for this model, using the CPU: %s\n", why.msg);
        return 0;
    }
    m->backend = DS4_BACKEND_CUDA;
    return 0;
}

static int optional_id(const gguf_file *f, const char *key) {
    uint32_t v;
    if (!gguf_find_kv(f, key) || gguf_get_u32(f, key, &v, NULL)) return -1;
    return (int)v;
}

/* Bytes of a GGUF's routed expert tensors, and of all its tensors. */
static uint64_t routed_bytes(const gguf_file *f, uint64_t *all) {
    uint64_t routed = 0;
    *all = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        *all += f->tensors[i].nbytes;
        if (ds4_is_routed_tensor(f->tensors[i].name)) routed += f->tensors[i].nbytes;
    }
    return routed;
}

/* Whether a GGUF's routed experts (routed of its all bytes) stream from
 * the file although no streaming option asked. On the GPU, a GGUF that
 * does not fit VRAM keeps its experts in page-locked host memory behind
 * the VRAM slot bank; where RAM cannot hold them either, pinning them
 * would fail (or push the system into swap). On the CPU, a mapped GGUF larger than RAM is read back by
 * page faults, a few pages at a time, as the page cache drops what the
 * next token needs (bench/SIDECAR.md: a 29 GB model with 23 GB of RAM
 * decoded 3.9 t/s mapped, 6.3 t/s streamed). Either way the experts stream
 * through a slot bank instead, as --ssd-streaming asks. */
static bool gguf_streams_by_itself(const gguf_file *f, uint64_t routed, uint64_t all, const ds4_model_opts *o,
                                   bool for_gpu) {
    uint64_t avail = ds4_mem_available();
    if (!routed || !avail) return false;
    if (for_gpu) {
        if (!ds4_gpu_needs_bank(all, o->gpu_expert_cache) || ds4_experts_fit_host(routed, avail)) return false;
        fprintf(stderr, "ds4: %s: the routed experts (%.1f GB) fit neither the GPU nor host memory (%.1f GB available)",
                f->path, routed / 1e9, avail / 1e9);
    } else {
        if (all <= avail) return false;
        fprintf(stderr, "ds4: %s: the model (%.2f GB) is larger than the host memory available (%.2f GB)", f->path,
                all / 1e9, avail / 1e9);
    }
    fprintf(stderr, ": streaming the routed experts from the file through a slot bank (--ssd-streaming)\n");
    return true;
}

static int cmp_span(const void *a, const void *b) {
    size_t x = ((const ds4_span *)a)->off, y = ((const ds4_span *)b)->off;
    return x < y ? -1 : x > y;
}

/* --warm-weights: the mapped file read into the page cache, except a
 * GGUF's routed experts when they stream from it (the slot bank reads
 * those). Progress on a terminal from a few GB up; then, or with -v, how
 * long it took. */
static int warm_weights(const ds4_model *m, const char *what, bool verbose, ds4_error *err) {
    const gguf_file *f = m->file;
    ds4_span *skip = malloc((f->n_tensors + 1) * sizeof *skip), *keep = malloc((f->n_tensors + 1) * sizeof *keep);
    size_t n_skip = 0, n_keep = 0;
    if (!skip || !keep) {
        free(skip);
        free(keep);
        return ds4_fail(err, "out of memory");
    }
    if (m->sidecar && m->sidecar->in_model_file)
        for (uint64_t i = 0; i < f->n_tensors; i++)
            if (ds4_is_routed_tensor(f->tensors[i].name))
                skip[n_skip++] = (ds4_span){f->data_offset + f->tensors[i].offset, f->tensors[i].nbytes};
    qsort(skip, n_skip, sizeof *skip, cmp_span);
    size_t at = 0, bytes = 0;
    for (size_t i = 0; i <= n_skip; i++) { /* the gaps between the skipped spans */
        size_t end = i < n_skip ? skip[i].off : f->map_size;
        if (end > at) keep[n_keep++] = (ds4_span){at, end - at}, bytes += end - at;
        if (i < n_skip && skip[i].off + skip[i].len > at) at = skip[i].off + skip[i].len;
    }
    bool show = ds4_show_progress(bytes);
    double t = ds4_warm_spans(f->map, f->map_size, keep, n_keep, what, show);
    if (show || verbose) fprintf(stderr, "ds4: read %s into the page cache: %.2f GB in %.2f s\n", what, bytes / 1e9, t);
    free(skip);
    free(keep);
    return 0;
}

/* Sidecar mode: the dense GGUF holds no routed experts. Their tensor
 * entries describe the package's (type and shape, no data) so code that
 * inspects the weights sees the model it is running. */
static int bind_sidecar_experts(ds4_model *m, ds4_error *err) {
    const ds4_sidecar *sc = m->sidecar;
    uint64_t ok_types = ds4_linear_types();
    for (uint32_t il = 0; il < m->hp.n_layer; il++) {
        ds4_layer_weights *lw = &m->w.layers[il];
        ds4_tensor *t[DS4_FAM_COUNT] = {&lw->gate_exps, &lw->up_exps, &lw->down_exps};
        for (int f = 0; f < DS4_FAM_COUNT; f++) {
            const ds4_sidecar_family *fam = &sc->layers[il].fam[f];
            if (fam->type >= 64 || !(ok_types & (1ull << fam->type)))
                return ds4_fail(err, "%s: layer %u %s has type %s, which this build cannot multiply yet", sc->manifest, il,
                                ds4_sidecar_family_name[f], ggml_type_name(fam->type));
            *t[f] = (ds4_tensor){.name = ds4_sidecar_family_name[f], .type = fam->type,
                                 .ne = {fam->shape[0], fam->shape[1], fam->shape[2], 1}, .data = NULL,
                                 .row_bytes = fam->row_bytes};
        }
    }
    return 0;
}

/* A GGUF without routed experts named like a package's dense file was
 * probably passed instead of the package: say so. */
static void hint_dense_gguf(const char *path, const gguf_file *f, ds4_error *err) {
    size_t n = strlen(path), k = strlen("model-dense.gguf");
    if (n >= k && !strcmp(path + n - k, "model-dense.gguf") && !gguf_find_tensor(f, "blk.0.ffn_gate_exps.weight"))
        ds4_fail_prefix(err, "%s is the dense part of a sidecar package (pass the package directory)", path);
}

ds4_model *ds4_model_load(const char *path, const ds4_model_opts *opts, ds4_error *err) {
    ds4_model_opts o = {0};
    if (opts) o = *opts;
    char *manifest = NULL, *dense = NULL;
    ds4_model *m = calloc(1, sizeof *m);
    if (!m) {
        ds4_fail(err, "out of memory loading %s", path);
        return NULL;
    }
    int pkg = ds4_sidecar_locate(path, &manifest, &dense, err);
    if (pkg < 0) goto fail;
    /* a plain GGUF streams its experts when any streaming option asks */
    bool stream = pkg || o.ssd_streaming || o.resident || o.moe_slot_bank || o.ssd_cache_bytes || o.ssd_io;
    m->file = gguf_open(pkg ? dense : path, err);
    if (!m->file) goto fail;
    if (ds4_hparams_load(&m->hp, m->file, err)) goto fail;
    /* whether the weights will go to a GPU: one is usable and takes the
     * dense weights (else pick_backend ends on the CPU, or fails for
     * --cuda), which decides how streamed experts are cached in RAM */
    uint64_t all_bytes, routed = routed_bytes(m->file, &all_bytes);
    bool for_gpu = o.backend != DS4_BACKEND_CPU && ds4_gpu_probe(NULL) && ds4_gpu_fits_dense(all_bytes - routed);
    if (!stream && gguf_streams_by_itself(m->file, routed, all_bytes, &o, for_gpu)) {
        stream = true;
        o.ssd_streaming = true;
    }
    if (stream) {
        ds4_sidecar_geom g = {m->hp.n_layer, m->hp.n_expert, m->hp.n_embd, m->hp.n_ff_exp};
        m->sidecar = pkg ? ds4_sidecar_open(manifest, &g, err) : ds4_sidecar_from_gguf(m->file, &g, err);
        if (!m->sidecar) {
            if (!pkg) hint_dense_gguf(path, m->file, err);
            goto fail;
        }
        if (ds4_weights_bind_ex(&m->w, &m->hp, m->file, ds4_linear_types(), DS4_BIND_NO_ROUTED_EXPERTS, err)) goto fail;
        if (bind_sidecar_experts(m, err)) goto fail;
    } else if (ds4_weights_bind(&m->w, &m->hp, m->file, ds4_linear_types(), err)) {
        hint_dense_gguf(path, m->file, err);
        goto fail;
    }
    m->pool = ds4_pool_create(o.n_threads);
    if (!m->pool) {
        ds4_fail(err, "cannot start worker threads");
        goto fail;
    }
    m->net.hp = &m->hp;
    m->net.w = &m->w;
    m->net.pool = m->pool;
    /* the dense bytes the mapping serves (a plain GGUF's mapping also spans
     * the experts that stream from it) */
    uint64_t dense_bytes = m->sidecar ? m->file->map_size - (m->sidecar->in_model_file ? m->sidecar->expert_bytes : 0) : 0;
    if (m->sidecar) {
        if (pthread_mutex_init(&m->eval_lock, NULL) != 0) {
            ds4_fail(err, "cannot create a lock for %s", path);
            goto fail;
        }
        m->eval_lock_init = true;
        if (ds4_sidecar_mode_open(m->sidecar, &m->hp, dense_bytes, for_gpu, &o, &m->net.experts, &m->slots, err)) goto fail;
        m->resident = o.resident;
        m->net.no_guess = o.no_moe_guess;
    } else if (!(m->net.experts = ds4_experts_from_weights(&m->w, m->hp.n_layer, m->hp.n_expert))) {
        ds4_fail(err, "out of memory creating the expert source");
        goto fail;
    }
    ds4_net_init_rope(&m->net);
    if (o.warm_weights && warm_weights(m, pkg ? dense : path, o.verbose, err)) goto fail;
    if (pick_backend(m, &o, err)) goto fail;
    if (for_gpu && m->backend == DS4_BACKEND_CPU && m->sidecar) {
        /* --backend auto, and the GPU did not take the model after all: the
         * experts' host cache was sized beside dense weights and a context
         * in VRAM, which the CPU keeps in host memory instead */
        fprintf(stderr, "ds4: sizing the routed experts' host cache again, for the CPU\n");
        ds4_experts_free(m->net.experts);
        m->net.experts = NULL;
        if (ds4_sidecar_mode_open(m->sidecar, &m->hp, dense_bytes, false, &o, &m->net.experts, &m->slots, err)) goto fail;
    }
    if (gguf_find_kv(m->file, "tokenizer.ggml.tokens") && !(m->tok = ds4_tokenizer_from_gguf(m->file, err))) goto fail;
    m->bos_id = optional_id(m->file, "tokenizer.ggml.bos_token_id");
    m->eos_id = optional_id(m->file, "tokenizer.ggml.eos_token_id");
    if (o.verbose) {
        ds4_model_info info;
        ds4_model_get_info(m, &info);
        fprintf(stderr,
                "ds4: %s: %u layers, %u wide, %u heads x %u, %u experts (%u used), vocab %u, %.2f GB of weights, backend %s\n",
                path, info.n_layer, info.n_embd, info.n_head, info.head_dim, info.n_expert, info.n_expert_used, info.n_vocab,
                info.weight_bytes / 1e9, ds4_backend_name(m->backend));
    }
    free(manifest);
    free(dense);
    return m;
fail:
    free(manifest);
    free(dense);
    ds4_model_free(m);
    return NULL;
}

void ds4_model_free(ds4_model *m) {
    if (!m) return;
    ds4_gpu_model_free(m->gpu);
    ds4_tokenizer_free(m->tok);
    if (m->net.experts) ds4_experts_free(m->net.experts);
    ds4_pool_free(m->pool);
    ds4_weights_free(&m->w);
    gguf_close(m->file);
    ds4_sidecar_free(m->sidecar);
    if (m->eval_lock_init) pthread_mutex_destroy(&m->eval_lock);
    free(m);
}

void ds4_model_get_info(const ds4_model *m, ds4_model_info *out) {
    const ds4_hparams *hp = &m->hp;
    memset(out, 0, sizeof *out);
    out->n_layer = hp->n_layer;
    out->n_embd = hp->n_embd;
    out->n_vocab = hp->n_vocab;
    out->n_head = hp->n_head;
    out->head_dim = hp->head_dim;
    out->n_expert = hp->n_expert;
    out->n_expert_used = hp->n_expert_used;
    out->context_length = hp->n_ctx_train;
    out->bos_id = m->bos_id;
    out->eos_id = m->eos_id;
    uint64_t routed_params = 0;
    for (uint64_t i = 0; i < m->file->n_tensors; i++) {
        const gguf_tensor *t = &m->file->tensors[i];
        out->n_params += t->n_elems;
        out->weight_bytes += t->nbytes;
        if (ds4_is_routed_tensor(t->name)) {
            out->routed_bytes += t->nbytes;
            routed_params += t->n_elems;
        }
    }
    if (m->sidecar && !m->sidecar->in_model_file) /* the routed experts live in the package's layer files */
        for (uint32_t il = 0; il < hp->n_layer; il++)
            for (int f = 0; f < DS4_FAM_COUNT; f++) {
                const ds4_sidecar_family *fam = &m->sidecar->layers[il].fam[f];
                out->n_params += fam->shape[0] * fam->shape[1] * fam->shape[2];
                out->weight_bytes += fam->bytes * fam->shape[2];
                out->routed_bytes += fam->bytes * fam->shape[2];
                routed_params += fam->shape[0] * fam->shape[1] * fam->shape[2];
            }
    const ds4_tensor *emb = &m->w.tok_embd;
    uint64_t emb_bytes = emb->row_bytes * emb->ne[1], emb_params = emb->ne[0] * emb->ne[1];
    double used = (double)hp->n_expert_used / hp->n_expert;
    out->token_bytes = out->weight_bytes - out->routed_bytes - emb_bytes + emb->row_bytes +
                       (uint64_t)(out->routed_bytes * used);
    out->token_params = out->n_params - routed_params - emb_params + (uint64_t)(routed_params * used);
}

void ds4_model_moe_stats(const ds4_model *m, ds4_moe_stats *out) {
    memset(out, 0, sizeof *out);
    ds4_expert_stats st;
    ds4_experts_get_stats(m->net.experts, &st);
    out->sidecar = m->sidecar != NULL;
    out->streaming = m->sidecar && !m->resident;
    out->slots = m->slots;
    out->acquires = st.acquires;
    out->hits = st.hits;
    out->misses = st.misses;
    out->prefetch_issued = st.prefetch_issued;
    out->prefetch_used = st.prefetch_used;
    out->prefetch_late = st.prefetch_late;
    out->prefetch_wasted = st.prefetch_wasted;
    out->reads = st.reads;
    out->bytes_read = st.bytes_read;
    out->retries = st.retries;
    out->direct = st.direct;
    out->buffered = st.buffered;
    out->returned = st.returned;
    out->stall_s = st.stall_s;
    out->io_busy_s = st.io_busy_s;
}

ds4_session *ds4_session_new(ds4_model *m, const ds4_session_opts *opts, ds4_error *err) {
    ds4_session *s = calloc(1, sizeof *s);
    if (!s) {
        ds4_fail(err, "out of memory creating a session");
        return NULL;
    }
    s->m = m;
    if (opts) s->opts = *opts;
    if (s->opts.backend == DS4_BACKEND_AUTO) s->opts.backend = m->backend;
    uint64_t max_ctx = s->opts.max_ctx ? s->opts.max_ctx : m->hp.n_ctx_train;
    if (max_ctx > UINT32_MAX) max_ctx = UINT32_MAX;
    s->logits = malloc((size_t)m->hp.n_vocab * sizeof(float));
    if (!s->logits) {
        ds4_fail(err, "out of memory creating a session");
        goto fail;
    }
    if (s->opts.backend == DS4_BACKEND_CUDA) {
        if (!m->gpu) {
            ds4_error why = {{0}};
            if (!ds4_gpu_probe(&why)) ds4_fail(err, "CUDA session: %s", why.msg);
            else ds4_fail(err, "CUDA session: the model was loaded for the CPU (load it with the CUDA backend)");
            goto fail;
        }
        if (!(s->gpu = ds4_gpu_session_new(m->gpu, (uint32_t)max_ctx, s->opts.prefill_chunk, err))) goto fail;
        return s;
    }
    s->ws = ds4_workspace_new();
    if (!s->ws) {
        ds4_fail(err, "out of memory creating a session");
        goto fail;
    }
    if (ds4_state_init(&s->state, &m->hp, (uint32_t)max_ctx, err)) goto fail;
    return s;
fail:
    ds4_session_free(s);
    return NULL;
}

void ds4_session_free(ds4_session *s) {
    if (!s) return;
    ds4_gpu_session_free(s->gpu);
    ds4_state_free(&s->state);
    ds4_workspace_free(s->ws);
    free(s->logits);
    free(s->sample_scratch);
    free(s);
}

uint32_t ds4_session_pos(const ds4_session *s) { return s->gpu ? ds4_gpu_session_pos(s->gpu) : s->state.pos; }
void ds4_session_reset(ds4_session *s) {
    s->logits_on_device = false;
    if (s->gpu) ds4_gpu_session_reset(s->gpu);
    else ds4_state_reset(&s->state);
}
const float *ds4_session_logits(const ds4_session *s) {
    if (s->logits_on_device) {
        /* a cache of the session's own state: filling it changes nothing the caller can see */
        ds4_session *ms = (ds4_session *)s;
        ds4_error err = {{0}};
        ms->logits_on_device = false;
        if (ds4_gpu_last_logits(s->gpu, ms->logits, &err)) {
            fprintf(stderr, "ds4: the last logits: %s\n", err.msg);
            for (uint32_t v = 0; v < s->m->hp.n_vocab; v++) ms->logits[v] = NAN; /* not silently stale */
        }
    }
    return s->logits;
}

/* What a call returns besides the state: logits (host), or a token. */
typedef struct eval_want {
    float *all_logits;      /* every position's logits */
    int32_t *next;          /* the last position's token: */
    uint32_t n_cand;        /* among the first n_cand logits */
    const ds4_sampling *sp; /* drawn so (NULL or no temperature: the greedy pick) */
    ds4_rng *rng;
} eval_want;

/* The token of a CUDA session's last chunk, made on the device (greedy) or
 * from the band of candidates it sends back (banded draws); false: the
 * logits must come to the host. */
static int gpu_last_chunk(ds4_session *s, bool official, const int32_t *tokens, uint32_t len, const eval_want *w, bool *done,
                          ds4_error *err) {
    *done = false;
    if (!w->next || w->all_logits) return 0;
    if (!w->sp || !(w->sp->temperature > 0)) {
        *done = true;
        s->logits_on_device = true;
        return ds4_gpu_forward_pick(s->gpu, official, tokens, len, w->n_cand, w->next, err);
    }
    if (!ds4_sample_banded(w->sp)) return 0;
    if (s->band_off) {
        s->band_off--;
        return 0;
    }
    uint32_t count;
    const int32_t *ids;
    const float *vals;
    int rc = ds4_gpu_forward_band(s->gpu, official, tokens, len, w->n_cand, w->sp->temperature, w->sp->min_p, &count, &ids,
                                  &vals, err);
    if (rc < 0) return -1;
    *done = true;
    s->logits_on_device = true;
    /* a band wider than the device sends: the whole row from the device,
     * and the next steps fetch it straight away */
    if (rc == 1) s->band_off = 32;
    *w->next = rc == 0 ? ds4_sample_candidates(vals, ids, count, w->sp, w->rng)
                       : ds4_sample(ds4_session_logits(s), w->n_cand, w->sp, w->rng, NULL);
    return 0;
}

/* The token w asks for, from the last logits on the host. */
static int host_next(ds4_session *s, const eval_want *w, uint32_t n_cand, ds4_error *err) {
    const float *lg = ds4_session_logits(s);
    if (!w->sp || !(w->sp->temperature > 0)) {
        *w->next = ds4_argmax(lg, n_cand);
        return 0;
    }
    if (!s->sample_scratch && !(s->sample_scratch = malloc((size_t)s->m->hp.n_vocab * 8))) return ds4_fail(err, "out of memory");
    *w->next = ds4_sample(lg, n_cand, w->sp, w->rng, s->sample_scratch);
    return 0;
}

/* Feeds tokens in chunks of the session's prefill size, for what w asks.
 * A CUDA chunk before the last makes no logits at all. */
static int eval_chunks(ds4_session *s, const int32_t *tokens, uint32_t n, const eval_want *w, ds4_error *err) {
    uint32_t V = s->m->hp.n_vocab;
    uint32_t n_cand = w->n_cand == 0 || w->n_cand > V ? V : w->n_cand;
    if (n == 0) /* nothing fed: the last logits stay where they are */
        return w->next ? host_next(s, w, n_cand, err) : 0;
    eval_want wc = *w;
    wc.n_cand = n_cand;
    const ds4_net *net = &s->m->net;
    bool official = s->opts.numerics == DS4_NUMERICS_OFFICIAL, made = false;
    uint32_t chunk = s->opts.prefill_chunk ? s->opts.prefill_chunk : n;
    float *all_logits = w->all_logits;
    s->logits_on_device = false;
    if (s->m->eval_lock_init) pthread_mutex_lock(&s->m->eval_lock);
    int rc = 0;
    for (uint32_t done = 0; done < n && rc == 0;) {
        uint32_t len = n - done < chunk ? n - done : chunk;
        bool last = done + len == n;
        float *dst = all_logits ? all_logits + (size_t)done * V : s->logits;
        /* errors leave through the unlock below: a sidecar model's lock
         * must not stay held for the next evaluation */
        if (s->gpu && last && gpu_last_chunk(s, official, tokens + done, len, &wc, &made, err)) {
            rc = -1;
        } else if (s->gpu && !made) {
            if (ds4_gpu_forward(s->gpu, official, tokens + done, len, all_logits || last ? dst : NULL, all_logits != NULL,
                                err))
                rc = -1;
        } else if (!s->gpu && ds4_forward(net, &s->state, s->ws, official, tokens + done, len, dst, all_logits != NULL, err)) {
            rc = -1;
        }
        done += len;
    }
    if (s->m->eval_lock_init) pthread_mutex_unlock(&s->m->eval_lock);
    if (rc) {
        s->logits_on_device = false;
        return -1;
    }
    if (all_logits) memcpy(s->logits, all_logits + (size_t)(n - 1) * V, V * sizeof(float));
    return w->next && !made ? host_next(s, w, n_cand, err) : 0;
}

int ds4_session_eval(ds4_session *s, const int32_t *tokens, uint32_t n, float *all_logits, ds4_error *err) {
    eval_want w = {all_logits, NULL, 0, NULL, NULL};
    return eval_chunks(s, tokens, n, &w, err);
}

int ds4_session_eval_pick(ds4_session *s, const int32_t *tokens, uint32_t n, uint32_t n_cand, int32_t *next,
                          ds4_error *err) {
    eval_want w = {NULL, next, n_cand, NULL, NULL};
    return eval_chunks(s, tokens, n, &w, err);
}

int ds4_session_eval_pick_except(ds4_session *s, const int32_t *tokens, uint32_t n, int32_t except, int32_t *next,
                                 ds4_error *err) {
    if (ds4_session_eval_pick(s, tokens, n, 0, next, err)) return -1;
    if (*next != except) return 0;
    /* rare (a greedy pick of the excluded token): the logits, read whole;
     * the first maximum of the ranges before and after it */
    const float *l = ds4_session_logits(s);
    uint32_t V = s->m->hp.n_vocab, e = (uint32_t)except;
    int32_t a = e > 0 ? ds4_argmax(l, e) : -1, b = e + 1 < V ? (int32_t)(e + 1) + ds4_argmax(l + e + 1, V - e - 1) : -1;
    bool fa = a >= 0 && isfinite(l[a]), fb = b >= 0 && isfinite(l[b]);
    if (!fa && !fb) return ds4_fail(err, "no finite logit besides token %d", except);
    *next = fa && (!fb || l[a] >= l[b]) ? a : b;
    return 0;
}

int ds4_session_eval_sample(ds4_session *s, const int32_t *tokens, uint32_t n, uint32_t n_cand, const ds4_sampling *sp,
                            ds4_rng *rng, int32_t *next, ds4_error *err) {
    eval_want w = {NULL, next, n_cand, sp, rng};
    return eval_chunks(s, tokens, n, &w, err);
}

int ds4_session_copy_state(ds4_session *dst, const ds4_session *src, ds4_error *err) {
    if (dst->m != src->m) return ds4_fail(err, "sessions belong to different models");
    if (!dst->gpu != !src->gpu)
        return ds4_fail(err, "state copy between a %s and a %s session", ds4_backend_name(src->opts.backend),
                        ds4_backend_name(dst->opts.backend));
    if (src->gpu) {
        if (ds4_gpu_session_copy(dst->gpu, src->gpu, err)) return -1;
    } else if (ds4_state_copy(&dst->state, &src->state, err)) {
        return -1;
    }
    memcpy(dst->logits, ds4_session_logits(src), (size_t)src->m->hp.n_vocab * sizeof(float));
    dst->logits_on_device = false;
    return 0;
}

uint64_t ds4_session_state_bytes(const ds4_session *s) {
    return s->gpu ? ds4_gpu_session_state_bytes(s->gpu) : ds4_state_bytes(&s->state);
}

const ds4_tokenizer *ds4_model_tokenizer(const ds4_model *m) { return m->tok; }

ds4_tokenizer *ds4_tokenizer_load(const char *path, ds4_error *err) {
    size_t n = strlen(path);
    if (n >= 5 && !strcmp(path + n - 5, ".json")) {
        /* tokenizer_config.json beside tokenizer.json supplies bos/eos */
        char cfg[4096];
        const char *slash = strrchr(path, '/');
        int dir = slash ? (int)(slash - path + 1) : 0;
        snprintf(cfg, sizeof cfg, "%.*stokenizer_config.json", dir, path);
        FILE *f = fopen(cfg, "r");
        if (f) fclose(f);
        return ds4_tokenizer_from_json(path, f ? cfg : NULL, err);
    }
    gguf_file *g = gguf_open(path, err);
    if (!g) return NULL;
    ds4_tokenizer *t = NULL;
    if (!gguf_find_kv(g, "tokenizer.ggml.tokens"))
        ds4_fail(err, "%s: the file carries no tokenizer (tokenizer.ggml.tokens)", path);
    else
        t = ds4_tokenizer_from_gguf(g, err);
    gguf_close(g);
    return t;
}
