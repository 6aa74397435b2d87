/* ds4 engine API: everything the tools link against.
 *
 * A ds4_model is the loaded weights (shareable between sessions; for a
 * sidecar package the expert cache is shared too, so the evals of sessions
 * of one such model take turns).
 * A ds4_session is one sequence's decode state (raw KV windows, compressed
 * rows, compressor frontiers) plus the logits of the last position fed.
 * All functions report failure by returning NULL / -1 and filling a
 * ds4_error whose message names the file, tensor or field at fault. */
#ifndef DS4_H
#define DS4_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ds4_chat.h"
#include "ds4_error.h"
#include "ds4_sampler.h"
#include "ds4_tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds4_model ds4_model;
typedef struct ds4_session ds4_session;

/* Numerics of the forward pass.
 * OFFICIAL applies DeepSeek's quantisation simulations (FP8 e4m3 on the
 * non-RoPE KV dims, Hadamard + FP4 e2m1 on indexer queries and keys).
 * HF applies none and computes in fp32, for exact comparison with the
 * transformers implementation. */
typedef enum ds4_numerics {
    DS4_NUMERICS_OFFICIAL = 0,
    DS4_NUMERICS_HF = 1,
} ds4_numerics;

/* How expert records are read from a sidecar package's layer files. */
typedef enum ds4_ssd_io {
    DS4_SSD_IO_AUTO = 0,     /* O_DIRECT when the page cache could not hold the experts anyway */
    DS4_SSD_IO_DIRECT = 1,   /* O_DIRECT (buffered where the file system refuses it) */
    DS4_SSD_IO_BUFFERED = 2, /* through the page cache, which then acts as a second-level cache */
} ds4_ssd_io;
/* Where the forward pass runs. A model loaded for CUDA keeps its weights
 * on the GPU (and its mapped file for CPU sessions); a CUDA session keeps
 * its decode state on the GPU. Builds without CUDA (plain `make`) refuse
 * DS4_BACKEND_CUDA with a message saying so. */
typedef enum ds4_backend {
    DS4_BACKEND_AUTO = 0, /* model: CUDA when built with it and a GPU is usable, else CPU;
                             session: the model's backend */
    DS4_BACKEND_CPU = 1,
    DS4_BACKEND_CUDA = 2,
} ds4_backend;

typedef struct ds4_model_opts {
    int n_threads; /* worker threads for this model's compute; 0 = all cores */
    bool verbose;  /* print a load summary to stderr */
    /* The rest applies when the routed experts stream: always for a sidecar
     * package directory (manifest.json + dense/model-dense.gguf), whose
     * layer files hold them; for a plain GGUF when any of these is set, or
     * by itself when the GGUF is larger than RAM (on a GPU: when its
     * experts fit neither VRAM nor RAM), and then they are read out of the
     * GGUF itself. Dense weights stay mapped. */
    bool ssd_streaming;       /* a plain GGUF: stream its experts (sizes as below, auto by default) */
    bool resident;            /* read every expert record into RAM at load */
    uint32_t moe_slot_bank;   /* streaming: slots per layer, experts-per-token .. experts;
                                 0 = sized from ssd_cache_bytes */
    uint64_t ssd_cache_bytes; /* streaming: bytes for all slot banks; 0 = auto: a share
                                 of MemAvailable left after dense weights and KV (20%,
                                 leaving the rest to the page cache; 40% where reads
                                 bypass it; DS4_SSD_CACHE_AUTO_PCT overrides) */
    ds4_ssd_io ssd_io;
    bool no_moe_prefetch;     /* streaming: no overlap of reads with compute (no early
                                 reads, each layer waits for all its reads) */
    bool no_moe_guess;        /* streaming: no reads of experts guessed for the next
                                 layer (hash layers, known exactly, still are) */
    uint32_t ctx_hint;        /* context the sessions will use, for the auto budget (0 = 32768) */
    ds4_backend backend;
    /* CUDA: VRAM for routed experts. 0 = auto: all experts on the GPU when
     * they fit, else a slot bank in the memory left after the dense
     * weights. Otherwise a slot bank of this many bytes: experts stay in
     * page-locked host memory and are copied into least-recently-used
     * slots as the router asks for them. */
    uint64_t gpu_expert_cache;
    /* Read every page of the mapped weights once at load (a package: its
     * dense file), so that the first prompt does not wait on the disk. */
    bool warm_weights;
} ds4_model_opts;

/* Routed-expert counters since load (all zero for a resident GGUF). Each
 * expert use is a hit (in the bank), prefetched (read started early by a
 * hint; late = still in flight when needed) or a miss (read on demand). */
typedef struct ds4_moe_stats {
    bool sidecar, streaming;
    uint32_t slots;            /* slots per layer */
    uint64_t acquires, hits, misses;
    uint64_t prefetch_issued, prefetch_used, prefetch_late, prefetch_wasted;
    uint64_t reads, bytes_read, retries;
    uint64_t direct, buffered; /* read syscalls by kind: O_DIRECT or page cache */
    uint64_t returned;         /* experts a GPU's bank evicted and handed back (no read) */
    double stall_s;   /* compute waiting for expert reads */
    double io_busy_s; /* time with reads in flight */
} ds4_moe_stats;

typedef struct ds4_session_opts {
    ds4_numerics numerics;
    uint32_t max_ctx;      /* positions this session may hold; 0 = model maximum */
    uint32_t prefill_chunk; /* tokens per prefill pass; 0 = whole prompt at once */
    ds4_backend backend;   /* CPU or CUDA (the model must be loaded for CUDA); AUTO = the model's */
} ds4_session_opts;

typedef struct ds4_model_info {
    uint32_t n_layer, n_embd, n_vocab, n_head, head_dim, n_expert, n_expert_used;
    uint64_t context_length;
    uint64_t n_params;      /* weights counted from tensor shapes */
    uint64_t weight_bytes;  /* bytes of all tensors in the file */
    /* What one decoded token must read and compute: every dense tensor
     * except the embedding table (one row of it), plus expert_used of
     * n_expert routed experts per layer. */
    uint64_t routed_bytes;        /* all routed-expert tensors */
    uint64_t token_bytes;         /* weight bytes read per decoded token */
    uint64_t token_params;        /* weights multiplied per token (2 flops each) */
    int bos_id, eos_id;     /* -1 when unknown */
} ds4_model_info;

ds4_model *ds4_model_load(const char *path, const ds4_model_opts *opts, ds4_error *err);
void ds4_model_free(ds4_model *m);
void ds4_model_get_info(const ds4_model *m, ds4_model_info *out);
void ds4_model_moe_stats(const ds4_model *m, ds4_moe_stats *out);

/* Prints what the file holds, without computing anything: geometry and
 * layer schedule, tensor count and bytes per type, the routed-expert types
 * of every layer, per-token cost and the tokenizer (ds4 --inspect). */
void ds4_model_print_summary(const ds4_model *m, FILE *out);
/* Counters of a CUDA model's expert slot bank (slots == 0: no bank, every
 * expert resident). */
typedef struct ds4_expert_cache_stats {
    uint32_t slots;
    uint64_t slot_bytes;
    uint64_t hits, misses;  /* expert lookups, one per expert a layer uses per chunk group */
    uint64_t bytes_copied;  /* host to device */
} ds4_expert_cache_stats;
void ds4_model_expert_cache_stats(const ds4_model *m, ds4_expert_cache_stats *out);

/* The backend the model's sessions use by default (CPU or CUDA, never AUTO). */
ds4_backend ds4_model_backend(const ds4_model *m);
const char *ds4_backend_name(ds4_backend b);
/* The inverse of ds4_backend_name (cpu, cuda, auto), or -1 with a message
 * naming what there is. */
int ds4_backend_parse(const char *name, ds4_backend *out, ds4_error *err);
/* Whether this build can run CUDA and a GPU is usable; when not, why. */
bool ds4_cuda_available(ds4_error *why);
/* The GPU's measured bandwidths in bytes/s, for roofline reports (best of
 * several passes over buffers much larger than its cache): a kernel only
 * reading, and a device-to-device copy counting the bytes it reads and
 * the bytes it writes. */
int ds4_cuda_bandwidth(double *read_bytes_per_s, double *copy_bytes_per_s, ds4_error *err);

/* The tokenizer embedded in the model file, or NULL when it has none. */
const ds4_tokenizer *ds4_model_tokenizer(const ds4_model *m);

/* A tokenizer alone, without weights: from a GGUF's metadata or from an HF
 * tokenizer.json (with tokenizer_config.json beside it when present). */
ds4_tokenizer *ds4_tokenizer_load(const char *path, ds4_error *err);

ds4_session *ds4_session_new(ds4_model *m, const ds4_session_opts *opts, ds4_error *err);
void ds4_session_free(ds4_session *s);
/* Tokens fed so far (the position of the next token). */
uint32_t ds4_session_pos(const ds4_session *s);
ds4_backend ds4_session_backend(const ds4_session *s);
/* Forgets everything: the next token is position 0. */
void ds4_session_reset(ds4_session *s);

/* Feeds n tokens (a prompt chunk or one decode token). When all_logits is
 * non-NULL it receives n × n_vocab floats: the logits after each token.
 * The last token's logits are always available via ds4_session_logits. */
/* Copies the whole decode state of src into dst (sessions of the same
 * model): an in-memory snapshot / restore. The last logits are copied too. */
int ds4_session_copy_state(ds4_session *dst, const ds4_session *src, ds4_error *err);
/* Bytes of decode state held now (KV windows and compressed rows). */
uint64_t ds4_session_state_bytes(const ds4_session *s);

int ds4_session_eval(ds4_session *s, const int32_t *tokens, uint32_t n, float *all_logits, ds4_error *err);
const float *ds4_session_logits(const ds4_session *s);
/* ds4_session_eval whose result is the greedy pick: next = the first
 * maximum among the last token's first n_cand finite logits (0: all; as
 * ds4_argmax). On CUDA the pick is made on the device and a decode step
 * copies one index to the host instead of the logits; ds4_session_logits
 * still gives the logits (fetched from the device when asked for). */
int ds4_session_eval_pick(ds4_session *s, const int32_t *tokens, uint32_t n, uint32_t n_cand, int32_t *next,
                          ds4_error *err);
/* ds4_session_eval_pick over the whole vocabulary with token except left
 * out (the first maximum of the other finite logits): greedy generation
 * that must not end, as ds4-bench times it with except = EOS. */
int ds4_session_eval_pick_except(ds4_session *s, const int32_t *tokens, uint32_t n, int32_t except, int32_t *next,
                                 ds4_error *err);
/* ds4_session_eval whose result is the token ds4_sample draws from the last
 * token's first n_cand logits (0: all) with settings sp and rng: the same
 * token as sampling the logits of ds4_session_eval. On CUDA a greedy step
 * returns one index and a banded draw (ds4_sample_banded: temperature,
 * min-p, no top-k or top-p) the few candidates near the maximum, instead
 * of the logits; ds4_session_logits still gives them. */
int ds4_session_eval_sample(ds4_session *s, const int32_t *tokens, uint32_t n, uint32_t n_cand, const ds4_sampling *sp,
                            ds4_rng *rng, int32_t *next, ds4_error *err);

#ifdef __cplusplus
}
#endif
#endif
