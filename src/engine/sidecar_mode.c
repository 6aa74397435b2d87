#include "engine/sidecar_mode.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "experts/expert_io.h"
#include "util/meminfo.h"

#define GIB (1024.0 * 1024.0 * 1024.0)
#define DEFAULT_AUTO_PCT 20
#define UNCACHED_AUTO_PCT 40
#define DEFAULT_CTX 32768
/* Headroom kept beside experts held in host memory for a GPU (pinned, or
 * a GPU's slot bank): dense weights being mapped for their upload, the
 * sessions' buffers, everything else on the machine. */
#define HOST_HEADROOM (8ull << 30)

/* Upper estimate of one session's KV state at `ctx` positions (raw window
 * rings, compressed rows, indexer rows), in bytes. */
static uint64_t kv_estimate(const ds4_hparams *hp, uint64_t ctx) {
    uint64_t floats = 0;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        floats += (uint64_t)hp->window * hp->head_dim;
        uint32_t r = hp->compress_ratio[il];
        if (r) floats += ctx / r * hp->head_dim + 2ull * r * 2 * hp->head_dim;
        if (r == 4) floats += ctx / r * hp->idx_head_dim + 2ull * r * 2 * hp->idx_head_dim;
    }
    return floats * sizeof(float);
}

static uint64_t sub0(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

/* "1.50 GiB", "96.0 MiB", "4.0 KiB": tiny test packages and real ones in
 * the same messages. */
typedef struct size_str {
    char s[32];
} size_str;
static size_str human(uint64_t bytes) {
    size_str r;
    if (bytes >= (1ull << 30)) snprintf(r.s, sizeof r.s, "%.2f GiB", bytes / GIB);
    else if (bytes >= (1ull << 20)) snprintf(r.s, sizeof r.s, "%.1f MiB", bytes / (1024.0 * 1024.0));
    else snprintf(r.s, sizeof r.s, "%.1f KiB", bytes / 1024.0);
    return r;
}

int ds4_sidecar_mode_open(const ds4_sidecar *sc, const ds4_hparams *hp, uint64_t dense_bytes, bool for_gpu,
                          const ds4_model_opts *o, ds4_expert_source **out, uint32_t *slots_out, ds4_error *err) {
    uint32_t K = hp->n_expert_used, X = hp->n_expert;
    uint64_t column = 0; /* bytes of one slot in every layer */
    for (uint32_t il = 0; il < sc->geom.n_layer; il++)
        column += (sc->layers[il].record_bytes + DS4_IO_ALIGN - 1) / DS4_IO_ALIGN * DS4_IO_ALIGN;
    uint64_t avail = ds4_mem_available();
    const char *where = sc->in_model_file ? sc->manifest : sc->dir; /* the GGUF, or the package */
    uint64_t kv = kv_estimate(hp, o->ctx_hint ? o->ctx_hint : DEFAULT_CTX);
    uint32_t slots;
    bool direct;
    fprintf(stderr, "ds4: %s: %s (%u layers x %u experts, expert-record %s, %s of experts)\n",
            sc->in_model_file ? "routed experts streamed from the GGUF" : "Flash-MoE sidecar", where, sc->geom.n_layer, X,
            human(sc->max_record).s, human(sc->expert_bytes).s);
    if (o->resident) {
        if (o->moe_slot_bank && o->moe_slot_bank != X)
            return ds4_fail(err, "--resident holds all %u experts of every layer; --moe-slot-bank %u conflicts with it", X,
                            o->moe_slot_bank);
        if (o->ssd_cache_bytes)
            return ds4_fail(err, "--resident holds all experts in RAM; --ssd-cache applies to streaming only");
        if (avail && sc->expert_bytes > avail)
            return ds4_fail(err, "%s: --resident needs %s of RAM for the experts, MemAvailable is %s; "
                            "leave out --resident to stream them", where, human(sc->expert_bytes).s, human(avail).s);
        slots = X;
        direct = o->ssd_io == DS4_SSD_IO_DIRECT ||
                 (o->ssd_io == DS4_SSD_IO_AUTO && avail && 2 * sc->expert_bytes > avail); /* no room for a 2nd copy */
    } else {
        if (o->moe_slot_bank) {
            if (o->moe_slot_bank < K || o->moe_slot_bank > X)
                return ds4_fail(err, "--moe-slot-bank %u: must be within [%u, %u] (experts per token .. experts per layer)",
                                o->moe_slot_bank, K, X);
            slots = o->moe_slot_bank;
        } else if (o->ssd_cache_bytes) {
            uint64_t n = o->ssd_cache_bytes / column;
            if (n < K)
                return ds4_fail(err, "--ssd-cache %s holds %" PRIu64 " slots per layer; at least %u (experts per token) "
                                "are needed, i.e. %s", human(o->ssd_cache_bytes).s, n, K, human((uint64_t)K * column).s);
            slots = n > X ? X : (uint32_t)n;
            fprintf(stderr, "ds4: --ssd-cache %s resolved Flash-MoE slot bank: slots=%u bank=%s\n",
                    human(o->ssd_cache_bytes).s, slots, human((uint64_t)slots * column).s);
        } else {
            /* For a GPU the dense weights and the context live in VRAM
             * (the mapping's pages are only read once, for the upload), so
             * the host bank is the experts' only cache in RAM: it takes
             * all of MemAvailable but the headroom the page-locked copy of
             * a GGUF's experts also leaves (ds4_experts_fit_host), which
             * makes the two choices meet where the experts stop fitting. */
            uint64_t remaining = for_gpu ? sub0(avail, HOST_HEADROOM) : sub0(sub0(avail, dense_bytes), kv);
            /* Where reads bypass the page cache (it could not keep the
             * experts beside the bank anyway), the bank is the only cache
             * and takes a larger share: with O_DIRECT reads, 40% decoded a
             * GGUF larger than RAM 30% faster than 20% (bench/SIDECAR.md). */
            bool uncached = o->ssd_io == DS4_SSD_IO_DIRECT ||
                            (o->ssd_io == DS4_SSD_IO_AUTO && sc->expert_bytes > remaining - remaining / 100 * DEFAULT_AUTO_PCT);
            unsigned pct = for_gpu ? 100 : uncached ? UNCACHED_AUTO_PCT : DEFAULT_AUTO_PCT;
            const char *e = getenv("DS4_SSD_CACHE_AUTO_PCT");
            if (e && *e) {
                char *end;
                unsigned long v = strtoul(e, &end, 10);
                if (*end || v < 1 || v > 100)
                    return ds4_fail(err, "DS4_SSD_CACHE_AUTO_PCT='%s': expected a percentage 1..100", e);
                pct = (unsigned)v;
            }
            uint64_t budget = remaining / 100 * pct;
            uint64_t n = budget / column;
            slots = n < K ? K : n > X ? X : (uint32_t)n;
            if (for_gpu)
                fprintf(stderr,
                        "ds4: --ssd-cache auto: available=%s, the GPU holds the dense weights and context, headroom=%s "
                        "budget=%s (%u%%, DS4_SSD_CACHE_AUTO_PCT to override) -> slots=%u\n",
                        human(avail).s, human(HOST_HEADROOM).s, human(budget).s, pct, slots);
            else
                fprintf(stderr,
                        "ds4: --ssd-cache auto: available=%s dense=%s context=%s remaining=%s budget=%s "
                        "(%u%%, DS4_SSD_CACHE_AUTO_PCT to override) -> slots=%u\n",
                        human(avail).s, human(dense_bytes).s, human(kv).s, human(remaining).s, human(budget).s, pct,
                        slots);
        }
        uint64_t bank = (uint64_t)slots * column;
        /* what else stays in RAM: nothing for a GPU (the dense weights are
         * read once for the upload, through the page cache) */
        uint64_t host_dense = for_gpu ? 0 : dense_bytes, host_kv = for_gpu ? 0 : kv;
        if (avail && bank > sub0(avail, host_dense))
            return ds4_fail(err, "a slot bank of %u slots per layer needs %s, but MemAvailable is %s with %s of dense "
                            "weights to map; choose fewer slots (--moe-slot-bank) or a smaller --ssd-cache", slots,
                            human(bank).s, human(avail).s, human(host_dense).s);
        /* Buffered reads pay off when the page cache can keep the experts
         * the bank does not: then most misses are served from RAM. */
        direct = o->ssd_io == DS4_SSD_IO_DIRECT ||
                 (o->ssd_io == DS4_SSD_IO_AUTO && sc->expert_bytes > sub0(sub0(sub0(avail, host_dense), host_kv), bank));
    }
    ds4_sidecar_source_opts so = {.slots = slots, .direct = direct, .prefetch = !o->no_moe_prefetch};
    ds4_expert_source *src = o->resident ? ds4_experts_resident_new(sc, &so, err) : ds4_experts_slotbank_new(sc, &so, err);
    if (!src) return -1;
    uint64_t bank = o->resident ? sc->expert_bytes : (uint64_t)slots * column;
    fprintf(stderr, "ds4: Flash-MoE sidecar loaded: %s (%s=%u, expert-record %s)\n", where,
            o->resident ? "resident" : "slot-bank", slots, human(sc->max_record).s);
    fprintf(stderr, "ds4: Flash-MoE experts: %s\n", ds4_experts_describe(src));
    fprintf(stderr, "ds4: Flash-MoE slot banks allocated: layers=%u slots=%u bank=%s Dense: %s Context: %s Total <<<< %s >>>>\n",
            sc->geom.n_layer, slots, human(bank).s, human(dense_bytes).s, human(kv).s, human(bank + dense_bytes + kv).s);
    *out = src;
    *slots_out = slots;
    return 0;
}

bool ds4_experts_fit_host(uint64_t routed, uint64_t avail) {
    return avail == 0 /* unknown: as before, try */ || routed + HOST_HEADROOM <= avail;
}
