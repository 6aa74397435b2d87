/* Slot-bank flags and statistics of sidecar packages (see cli.h). */
#include <errno.h>
#include <stdlib.h>

#include "cli.h"
#include "util/units.h"

int cli_parse_size(const char *flag, const char *s, uint64_t *out) {
    if (!ds4_parse_size(s, out)) return 0;
    fprintf(stderr, "ds4: %s expects 'auto' or a size such as 8G or 512M, got '%s'\n", flag, s);
    return -1;
}

/* The decode phase alone: counters since the prompt was evaluated, over
 * the decode wall time (what a streaming decode reads per token). */
void cli_print_decode_moe_stats(const ds4_model *model, const ds4_moe_stats *at_prefill, long tokens, double seconds) {
    ds4_moe_stats st;
    ds4_model_moe_stats(model, &st);
    if (!st.streaming || tokens <= 0 || seconds <= 0) return;
    uint64_t hits = st.hits - at_prefill->hits, pre = st.prefetch_used - at_prefill->prefetch_used,
             miss = st.misses - at_prefill->misses, refs = hits + pre + miss;
    double mb = (st.bytes_read - at_prefill->bytes_read) / 1e6;
    double busy = st.io_busy_s - at_prefill->io_busy_s;
    /* Two rates: over the decode wall time (what decode asked of the disk,
     * low whenever compute dominates) and over the time reads were in
     * flight (what the disk delivered while asked: the one to hold
     * against `ds4-sidecar probe`). */
    fprintf(stderr,
            "ds4: Flash-MoE decode: %ld tokens in %.2fs: hit %.1f%% prefetched %.1f%% miss %.1f%%, read %.1f MB "
            "(%.1f MB/token, %.1f MB/s), stall %.3fs, io-busy %.3fs (%.1f MB/s while reading)\n",
            tokens, seconds, refs ? 100.0 * hits / refs : 0.0, refs ? 100.0 * pre / refs : 0.0,
            refs ? 100.0 * miss / refs : 0.0, mb, mb / tokens, mb / seconds, st.stall_s - at_prefill->stall_s, busy,
            busy > 0 ? mb / busy : 0.0);
}

void cli_print_moe_stats(const ds4_model *model) {
    ds4_moe_stats st;
    ds4_model_moe_stats(model, &st);
    if (!st.sidecar) {
        fprintf(stderr, "ds4: Flash-MoE stats: experts read in place from the GGUF (no sidecar)\n");
        return;
    }
    uint64_t refs = st.hits + st.misses + st.prefetch_used;
    fprintf(stderr,
            "ds4: Flash-MoE stats: %s slots=%u refs=%llu hits=%llu (hit %.1f%%) prefetched=%llu (late %llu) "
            "misses=%llu; prefetch issued=%llu wasted=%llu; returned by the GPU=%llu\n",
            st.streaming ? "slot-bank" : "resident", st.slots, (unsigned long long)refs, (unsigned long long)st.hits,
            refs ? 100.0 * st.hits / refs : 100.0, (unsigned long long)st.prefetch_used,
            (unsigned long long)st.prefetch_late, (unsigned long long)st.misses, (unsigned long long)st.prefetch_issued,
            (unsigned long long)st.prefetch_wasted, (unsigned long long)st.returned);
    fprintf(stderr,
            "ds4: Flash-MoE I/O: reads=%llu (direct %llu, buffered %llu) bytes=%.1f MB retries=%llu stall=%.3fs "
            "io-busy=%.3fs read-rate=%.1f MB/s (bytes / io-busy)\n",
            (unsigned long long)st.reads, (unsigned long long)st.direct, (unsigned long long)st.buffered,
            st.bytes_read / 1e6, (unsigned long long)st.retries, st.stall_s, st.io_busy_s,
            st.io_busy_s > 0 ? st.bytes_read / 1e6 / st.io_busy_s : 0.0);
}

