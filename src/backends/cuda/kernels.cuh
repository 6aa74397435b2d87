/* Launchers of the CUDA kernels, one per operation of the forward pass
 * (src/compute/ holds the CPU reference of each). Every launcher returns
 * the launch status; device pointers everywhere, host structs by pointer.
 * Weight tensors are ds4_tensor values whose `data` points to device
 * memory. */
#ifndef DS4_BACKENDS_CUDA_KERNELS_CUH
#define DS4_BACKENDS_CUDA_KERNELS_CUH

#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "model/weights.h"
}

/* Largest values the kernels are written for (checked at model load). */
#define K_MAX_HC 16
#define K_MAX_EXPERTS 1024
#define K_MAX_USED 16
#define K_MAX_HEAD_DIM 1024
#define K_MAX_GROUP_ENTRIES 16384 /* tokens x experts_used per MoE grouping (2-byte ids in shared memory) */

/* ---- matrix products ------------------------------------------------------
 * Y[t][g*n_rows + r] = W[r0 + g*n_rows + r] . (X[t] + g*x_group) (* xscale[t])
 * for r < n_rows, t < n_tok, g < groups. Each output is summed in one fixed
 * order whatever n_tok is (F32: one warp's dot product; F16 / BF16: the
 * tensor-core slices of k_linear.cu), so a token's result never depends on
 * the chunk it was computed in. */
cudaError_t k_linear(cudaStream_t st, const ds4_tensor *w, uint64_t r0, uint64_t n_rows, uint32_t groups, uint64_t x_group,
                     const float *x, uint64_t x_stride, const float *xscale, uint32_t n_tok, float *y, uint64_t y_stride);

/* Y[t] = W . (X[t] / rms(X[t])) for float weights (the mHC mixing
 * logits): the RMS of each row (eps added to the mean square) is taken in
 * the kernel that computes the product. */
cudaError_t k_linear_rms(cudaStream_t st, const ds4_tensor *w, const float *x, uint64_t x_stride, uint32_t n_tok, float eps,
                         float *y, uint64_t y_stride);

/* F16 and BF16 weights (rows 16-byte aligned, K % 8 == 0) take tensor-core
 * kernels on compute capability 8.0+ (split fp32 activations, see
 * k_linear.cu); plain = 1 forces the fp32 kernels (the reference the tests
 * compare with; DS4_CUDA_NO_FLMMA=1 does the same for a whole run), -1
 * restores the default. */
void k_linear_set_plain(int plain);

/* Quantized weights (k_quant.cu): the same products for Q8_0, Q2_K, Q4_K,
 * IQ2_XXS and MXFP4, with activations quantized first into `act` (device
 * scratch of n_tok * groups * k_act_row_bytes(type, K) bytes) like the CPU
 * does. k_quant_init uploads the IQ2_XXS tables (once per process). */
cudaError_t k_quant_init(void);
bool k_quant_type(uint32_t type);
uint64_t k_act_row_bytes(uint32_t type, uint64_t K);
/* Whether a quantized type's activations are Q8_K blocks (else Q8_0). */
bool k_act_is_q8k(uint32_t type);
cudaError_t k_quantize_act(cudaStream_t st, uint32_t wtype, const float *x, uint64_t x_stride, uint64_t x_group,
                           const float *xscale, uint32_t K, uint32_t groups, uint32_t n_rows, void *act);
/* The tensor-core layout of quantized activations (k_quantize_split, for
 * the prefill products of k_mmq.cu): the int8 values of all rows
 * [rows][K], then the block scales as floats [rows][K / 32 or K / 256],
 * then, for Q8_K, the sums of 16 values [rows][K / 16]. */
typedef struct act_split {
    int8_t *qs;
    float *d;
    int16_t *bs;
} act_split;
act_split k_act_split(uint32_t wtype, void *act, uint64_t rows, uint64_t K);
/* Scratch bytes for rows activation rows in either layout. */
uint64_t k_act_bytes(uint32_t wtype, uint64_t K, uint64_t rows);
cudaError_t k_quantize_split(cudaStream_t st, uint32_t wtype, const float *x, uint64_t x_stride, uint64_t x_group,
                             const float *xscale, uint32_t K, uint32_t groups, uint32_t n_rows, void *act);
/* x == NULL: act already holds the activations quantized as this call
 * would quantize them (same weight type, K, groups and tokens: a previous
 * k_qlinear on the same x), so they are not quantized again. */
cudaError_t k_qlinear(cudaStream_t st, const ds4_tensor *w, uint64_t r0, uint64_t n_rows, uint32_t groups,
                      uint64_t x_group, const float *x, uint64_t x_stride, const float *xscale, uint32_t n_tok, float *y,
                      uint64_t y_stride, void *act);
/* One token through two quantized matrices with the same input (all their
 * rows; w1 and w2 of one type and width: one launch, each row's result as
 * k_qlinear gives it; otherwise two k_qlinear calls). x == NULL as for
 * k_qlinear. */
cudaError_t k_qlinear_pair(cudaStream_t st, const ds4_tensor *w1, float *y1, const ds4_tensor *w2, float *y2, const float *x,
                           void *act);
/* One token through a quantized matrix of E rows (all of them, into y),
 * then the mHC post step of the hc streams X of width E with that output
 * (k_mhc_post): in one launch where the staged kernel takes the matrix
 * and hc is 4 (each column's post step as k_mhc_post computes it), else
 * two. */
cudaError_t k_qlinear_post(cudaStream_t st, const ds4_tensor *w, const float *x, void *act, float *y, float *X,
                           const float *post, const float *comb, uint32_t hc);
/* Tensor-core versions (k_mmq.cu) that k_qlinear, k_qffn_up and
 * k_qffn_down use for two or more tokens where k_mmq_usable (Q8_0, Q2_K,
 * IQ2_XXS; K a multiple of 256; rows of whole 16-byte lines; sm_80 or
 * newer; not with DS4_CUDA_NO_MMA set): act in the split layout, tab the
 * IQ2_XXS tables on the device. */
bool k_mmq_usable(uint32_t type, const void *w, uint64_t row_bytes, uint64_t K);
cudaError_t k_mmq_linear(cudaStream_t st, const ds4_tensor *w, uint64_t r0, uint64_t n_rows, uint32_t groups,
                         const void *act, uint32_t n_tok, float *y, uint64_t y_stride, const uint8_t *tab);
cudaError_t k_mmq_ffn(cudaStream_t st, bool up, const ds4_tensor *w0, const ds4_tensor *w1, const int32_t *grp, uint32_t k,
                      uint32_t n, uint32_t j0, uint32_t slots, const uint8_t *const *wtab, const void *act,
                      uint64_t act_rows, float limit, float *y, const uint8_t *tab);
/* k_ffn_up / k_ffn_down for quantized expert (or shared expert) weights;
 * act is the scratch for n rows (up) or the h rows (down: n*k routed, n
 * shared). Up with x NULL: act already holds the n rows in the activation
 * block layout (k_quantize_act's). Down leaves act undefined (a single
 * token's kernel quantizes its h row in shared memory only). */
cudaError_t k_qffn_up(cudaStream_t st, const ds4_tensor *gate, const ds4_tensor *up, const int32_t *grp, uint32_t k,
                      uint32_t n, uint32_t j0, uint32_t max_slots, const uint8_t *const *wtab, const float *x, float limit,
                      float *h, void *act);
cudaError_t k_qffn_down(cudaStream_t st, const ds4_tensor *down, const int32_t *grp, uint32_t k, uint32_t n, uint32_t j0,
                        uint32_t max_slots, const uint8_t *const *wtab, const float *h, float *out, void *act);

/* ---- row transforms --------------------------------------------------------
 * Per row, in place and in this order: RMSNorm (weighted when norm_w),
 * RoPE on the last 2*n_pairs entries at position pos0 + row / rows_per_tok
 * (conjugate when inverse), then a QAT simulation: 1 = FP8 on the first
 * n - n_rot entries (blocks of 64), 2 = Hadamard then FP4 (blocks of 32). */
typedef struct row_op {
    float *x;
    uint32_t n_rows, n;
    uint64_t stride;
    uint32_t rows_per_tok;
    int norm;
    const float *norm_w;
    float eps;
    const float *inv_freq; /* device, n_pairs entries; NULL = no RoPE */
    uint32_t n_pairs;
    uint64_t pos0;
    int inverse;
    int qat;
    uint32_t n_rot;
    float *copy; /* each row also written to copy + row * n (NULL: not) */
    uint8_t *q8; /* each row also as Q8_0 blocks at q8 + row * (n / 32 * 34) (NULL: not; n a multiple of 32) */
} row_op;
cudaError_t k_rows(cudaStream_t st, const row_op *op);
/* op0's and op1's rows in one launch (op1 may be NULL), each row with the
 * bits k_rows gives it. */
cudaError_t k_rows2(cudaStream_t st, const row_op *op0, const row_op *op1);

/* ---- mHC ------------------------------------------------------------------ */
/* X[t][i] = the embedding of tokens[t] for each of the hc streams; a
 * token below 0 is *dev_pick's (when dev_pick is given), and tok_copy (when
 * given) receives the tokens used. tokens may be page-locked host memory. */
cudaError_t k_embed(cudaStream_t st, const ds4_tensor *emb, const int32_t *tokens, uint32_t n, uint32_t hc, float *X,
                    int32_t *tok_copy, const int32_t *dev_pick);
/* rinv[r] = 1 / sqrt(mean(x_r^2) + eps) over rows of n floats. */
cudaError_t k_rms_inv(cudaStream_t st, const float *x, uint32_t n_rows, uint32_t n, float eps, float *rinv);
/* pre/post/comb from the mixing logits (ds4_mhc_pre); head: pre only;
 * pre == NULL: post and comb only. */
cudaError_t k_mhc_coeffs(cudaStream_t st, const float *mix, uint32_t n_tok, uint32_t hc, const float *base,
                         const float *scale, float eps, uint32_t iters, int head, float *pre, float *post, float *comb);
/* k_mhc_coeffs then k_mhc_collapse, and with norm_w the weighted RMSNorm
 * of y (eps norm_eps), in one launch (a block per token); with q8 (q8k),
 * y's rows also as Q8_0 (Q8_K) blocks there, E a multiple of 32 (256), as
 * the activation quantizer writes them. */
cudaError_t k_mhc_finish(cudaStream_t st, const float *mix, const float *X, uint32_t n_tok, uint32_t hc, uint32_t E,
                         const float *base, const float *scale, float eps, uint32_t iters, int head, float *pre,
                         float *post, float *comb, const float *norm_w, float norm_eps, float *y,
                         uint8_t *q8, uint8_t *q8k);
/* The same for one token (the decode step), the mixing logits included
 * (k_linear_rms's with fn), but for post and comb: one launch, a cluster of
 * blocks (k_mhc.cu), the bits of k_linear_rms then k_mhc_finish. It writes
 * the mixing logits to mix, from which k_mhc_coeffs makes post and
 * comb (a serial chain the next steps do not wait for: the caller may run
 * it on a side lane). cudaErrorNotSupported, with nothing launched, where
 * it does not apply (no clusters, a weight type or shape it does not take,
 * DS4_CUDA_MHC_ONE=0): the caller uses those two instead. */
cudaError_t k_mhc_one(cudaStream_t st, const ds4_tensor *fn, const float *X, uint32_t hc, uint32_t E, float rms_eps,
                      const float *base, const float *scale, float hc_eps, int head, float *mix, float *pre,
                      const float *norm_w, float norm_eps, float *y, uint8_t *q8, uint8_t *q8k);
/* y[t] = sum_i pre[t][i] * X[t][i] */
cudaError_t k_mhc_collapse(cudaStream_t st, const float *X, const float *pre, uint32_t n_tok, uint32_t hc, uint32_t E,
                           float *y);
/* X[t][j] = post[t][j] * o[t] + sum_i comb[t][i][j] * X[t][i] */
cudaError_t k_mhc_post(cudaStream_t st, float *X, const float *o, const float *post, const float *comb, uint32_t n_tok,
                       uint32_t hc, uint32_t E);
/* k_moe_combine (into o) then k_mhc_post, in one launch */
cudaError_t k_mhc_post_moe(cudaStream_t st, float *X, const float *shared, const float *d, const int32_t *ids,
                           const float *wts, const int32_t *grp, uint32_t n_expert, uint32_t k, const float *post,
                           const float *comb, uint32_t n_tok, uint32_t hc, uint32_t E);

/* ---- compressors ------------------------------------------------------------
 * A chunk of n tokens at pos0 with projections ck, cz (n x halves*width).
 * The frontier (slots of halves*width floats, the CPU ds4_comp_state
 * layout) describes the tokens before pos0; k_comp_emit pools every window
 * that completes inside the chunk, finishes the row (norm, RoPE at the
 * window start, QAT) and stores it at rows + window * width;
 * k_comp_frontier writes the frontier after the chunk into fk_new/fz_new. */
typedef struct comp_op {
    uint32_t ratio, width, halves;
    const float *ck, *cz;
    const uint8_t *ape; /* ratio rows of halves*width (device; F32, F16 or BF16) */
    uint32_t ape_type;
    uint64_t ape_row_bytes;
    const float *fk_old, *fz_old;
    float *fk_new, *fz_new;
    uint64_t pos0;
    uint32_t n;
    const float *norm_w;
    float eps;
    const float *inv_freq;
    uint32_t n_pairs;
    int qat;
    uint32_t n_rot;
    float *rows;
} comp_op;
cudaError_t k_comp_emit(cudaStream_t st, const comp_op *op);
cudaError_t k_comp_frontier(cudaStream_t st, const comp_op *op);

/* ---- indexer ---------------------------------------------------------------
 * For token t (position pos0 + t) with n_vis = (pos0 + t + 1) / 4 keys, only
 * when n_vis > topk: scores[t][w] = sum_h wscale * iw[t][h] * scale *
 * relu(iq[t][h] . keys[w]), then sel[t] = the topk best key indices
 * (ties: lower index), in ascending index order. */
/* Raises the scoring kernel's shared memory limit for n_head x d queries
 * (once, before any k_idx_scores). */
cudaError_t k_idx_prepare(uint32_t n_head, uint32_t d);
cudaError_t k_idx_scores(cudaStream_t st, const float *iq, const float *iw, uint32_t n, uint32_t n_head, uint32_t d,
                         const float *keys, uint64_t pos0, uint32_t topk, float *scores, uint64_t score_stride);
/* work: k_idx_topk_work_bytes(n) bytes of device scratch (no contents
 * needed, none kept between calls) */
cudaError_t k_idx_topk(cudaStream_t st, const float *scores, uint64_t score_stride, uint32_t n, uint64_t pos0,
                       uint32_t topk, int32_t *sel, void *work);
size_t k_idx_topk_work_bytes(uint32_t n_max);

/* ---- attention ---------------------------------------------------------------
 * Token t at p = pos0 + t attends with every head to the raw rows of
 * positions max(0, p-W+1)..p (from kv when >= pos0, else from the ring) and
 * to compressed rows: all (p+1)/ratio of them, or sel[t] when ratio == 4 and
 * there are more than topk; sinks; then inverse RoPE on the output. */
typedef struct attn_op {
    const float *q;    /* n x H x hd */
    const float *kv;   /* n x hd (this chunk's raw rows) */
    const float *ring; /* W x hd */
    const float *comp; /* compressed rows */
    const int32_t *sel;
    const float *sinks;
    uint32_t n, H, hd, W, ratio, topk;
    uint64_t pos0;
    const float *inv_freq;
    uint32_t n_pairs;
    float *out; /* n x H x hd */
    /* Optional: room for part_slots (token, segment) partials of
     * H x (hd + 2) floats, which lets decode spread a token's rows over
     * several blocks (same bits as without). */
    float *part;
    uint32_t part_slots;
    /* Optional (> 0, and only where k_attention_norms_q says so): q holds
     * q_b's raw rows, and the kernel first applies a query's per-head
     * RMSNorm (no weight, this eps) and its RoPE at the token's position,
     * which saves decode the launch of that row transform. */
    float q_eps;
} attn_op;
/* Raises the shared memory limit of the tensor-core attention kernel for
 * head dim hd (call at model load, outside graph capture); without it, or
 * for head dims other than 64, 128, 256, 512, or with DS4_CUDA_ATTN_FP32=1,
 * k_attention runs the fp32 kernel. */
cudaError_t k_attn_prepare(uint32_t hd);
cudaError_t k_attention(cudaStream_t st, const attn_op *op);
/* Whether k_attention normalizes and rotates the raw queries itself
 * (op->q_eps) for this op; else the caller transforms q's rows first. */
bool k_attention_norms_q(const attn_op *op);
/* Segments (blocks of the split decode attention, partial slots) that
 * rows candidate rows take. */
uint32_t k_attn_segments(uint64_t rows);
/* ring[p % W] = kv[p - pos0] for the last min(n, W) positions of the chunk. */
cudaError_t k_ring_write(cudaStream_t st, const float *kv, uint32_t n, uint64_t pos0, uint32_t W, uint32_t hd, float *ring);

/* ---- MoE ----------------------------------------------------------------------
 * Routing: sqrt(softplus) scores, hash (tid2eid) or biased top-k, weights
 * normalised over the selection times scale. grp (only for n == 1, else
 * NULL): also write the grouping k_moe_group would make of the ids. */
/* Device scratch of k_pick_scratch_bytes() for k_argmax or k_band (their
 * per-block partial results). */
uint64_t k_pick_scratch_bytes(void);
/* out = ds4_argmax(x, n): the first maximum among finite values (0 when
 * none), on the device, so a greedy step returns one index, not n logits;
 * also into out2 (page-locked host memory, say) when given. */
cudaError_t k_argmax(cudaStream_t st, const float *x, uint32_t n, void *scratch, int32_t *out, int32_t *out2);
/* The candidates of a banded draw (ds4_sample_banded) over x[0..n): out[0]
 * their count, out[1..] and vals[] the first cap of them in index order. */
cudaError_t k_band(cudaStream_t st, const float *x, uint32_t n, float T, float min_p, uint32_t cap, void *scratch,
                   int32_t *out, float *vals);
cudaError_t k_route(cudaStream_t st, const float *logits, uint32_t n, uint32_t n_expert, uint32_t k,
                    const int32_t *tokens, const int32_t *tid2eid, const float *bias, float scale, int32_t *ids,
                    float *wts, int32_t *grp);
/* Groups the n*k (token, slot) entries by expert. grp layout (int32):
 * [0] n_used, then used[X], off[X], cnt[X] (per used-expert slot j),
 * members[n*k] (entries t*k+slot sorted by expert, then entry), pos[n*k]
 * (where each entry landed in members). */
static inline uint64_t k_group_ints(uint32_t n_expert, uint32_t n_entries) {
    return 1 + 3 * (uint64_t)n_expert + 2 * (uint64_t)n_entries;
}
cudaError_t k_moe_group(cudaStream_t st, const int32_t *ids, uint32_t n_entries, uint32_t n_expert, int32_t *grp);
/* h = swiglu_clamped(gate x, up x). Routed (grp != NULL): the weights are
 * 3-D expert tensors, grid slot i runs used-expert j = j0 + i of grp over
 * its members, rows of h indexed by member position; max_slots bounds the
 * grid. With wtab (the slot bank), the expert's gate, up and down matrices
 * are at wtab[3i], wtab[3i+1], wtab[3i+2] instead of inside the tensors
 * (which then only give types and shapes). Shared (grp == NULL): 2-D
 * weights over all n tokens, rows of h per token. */
cudaError_t k_ffn_up(cudaStream_t st, const ds4_tensor *gate, const ds4_tensor *up, const int32_t *grp, uint32_t k,
                     uint32_t n, uint32_t j0, uint32_t max_slots, const uint8_t *const *wtab, const float *x, float limit,
                     float *h);
/* out rows = down . h rows, same indexing as k_ffn_up. */
cudaError_t k_ffn_down(cudaStream_t st, const ds4_tensor *down, const int32_t *grp, uint32_t n, uint32_t j0,
                       uint32_t max_slots, const uint8_t *const *wtab, const float *h, float *out);
/* out[t] = shared[t] + sum over t's experts in ascending id of w * d[pos]. */
cudaError_t k_moe_combine(cudaStream_t st, const float *shared, const float *d, const int32_t *ids, const float *wts,
                          const int32_t *grp, uint32_t n, uint32_t k, uint32_t n_expert, uint32_t E, float *out);

/* Which expert slot j of an expert-FFN grid runs (float or quantized
 * arguments alike): its expert e, its first grouped entry m0, and cnt
 * entries whose token indices are members (NULL without grouping: the
 * shared expert over all n tokens). False for slots past the number of
 * experts in use. */
template <class Args>
__device__ __forceinline__ bool expert_slot(const Args &a, uint32_t j, uint32_t *e, uint32_t *m0, uint32_t *cnt,
                                            const int32_t **members) {
    if (!a.grp) {
        *e = 0, *m0 = 0, *cnt = a.n, *members = nullptr;
        return true;
    }
    j += a.j0;
    if ((int32_t)j >= a.grp[0]) return false;
    const int32_t *used = a.grp + 1, *off = used + a.n_expert, *count = off + a.n_expert;
    *e = (uint32_t)used[j];
    *m0 = (uint32_t)off[j];
    *cnt = (uint32_t)count[j];
    *members = count + a.n_expert;
    return true;
}

/* Row r of expert e's matrices for an expert-FFN kernel (float or
 * quantized arguments alike): gate (UP, with *up set) or down. Weights come
 * from the per-slot table of the VRAM slot bank when there is one, else
 * from the resident 3-D tensors. */
template <bool UP, class Args>
__device__ __forceinline__ const uint8_t *expert_row(const Args &a, uint32_t e, uint32_t r, const uint8_t **up) {
    if (a.wtab) {
        if (UP) *up = a.wtab[3 * blockIdx.y + 1] + r * a.row_bytes;
        return a.wtab[3 * blockIdx.y + (UP ? 0 : 2)] + r * a.row_bytes;
    }
    uint64_t row = (uint64_t)e * a.rows + r;
    if (UP) *up = a.w1 + row * a.row_bytes;
    return a.w0 + row * a.row_bytes;
}

/* The plain expert-FFN kernels' rows (float and quantized weights alike):
 * warp w of block b takes row b * RPB + w of its slot's expert, against
 * the expert's entries in tiles of up to TT. dots(w0, w1, members, m, nt,
 * g, u) makes a tile's gate results g (UP: and up results u) for entries
 * m .. m + nt - 1; they land in a.y, through swiglu_clamped when UP. */
template <int TT, bool UP, int RPB, class Args, class Dots>
__device__ __forceinline__ void expert_warp_rows(const Args &a, Dots dots) {
    uint64_t r = (uint64_t)blockIdx.x * RPB + (threadIdx.x >> 5);
    if (r >= a.rows) return;
    uint32_t e, m0, cnt;
    const int32_t *members;
    if (!expert_slot(a, blockIdx.y, &e, &m0, &cnt, &members)) return;
    const uint8_t *w1 = nullptr, *w0 = expert_row<UP>(a, e, r, &w1);
    int lane = threadIdx.x & 31;
    for (uint32_t i0 = 0; i0 < cnt; i0 += TT) {
        int nt = cnt - i0 < TT ? (int)(cnt - i0) : TT;
        float g[TT], u[TT];
        dots(w0, w1, members, m0 + i0, nt, g, u);
#pragma unroll
        for (int tt = 0; tt < TT; tt++) {
            if (tt < nt && lane == tt) {
                float v = g[tt];
                if (UP) v = swiglu_clamped(v, u[tt], a.limit);
                a.y[(uint64_t)(m0 + i0 + tt) * a.rows + r] = v;
            }
        }
    }
}

/* ---- L2 ahead (k_ahead.cu) --------------------------------------------------
 * Asks the n spans [p[j], p[j] + bytes[j]) of weights into L2 (bulk
 * prefetches; no results), for a side lane of a decode step. */
typedef struct l2_spans {
    const uint8_t *p[4];
    uint64_t bytes[4];
    uint32_t n;
} l2_spans;
cudaError_t k_l2_ahead(cudaStream_t st, const l2_spans *sp);

/* ---- the VRAM expert slot bank on the device (k_bank.cu) --------------------
 * For experts in page-locked host memory: the least-recently-used slot
 * table, the counters and the group's misses in device memory. */
typedef struct bank_dev_state {
    uint64_t clock, hits, misses, bytes; /* the counters as the host bank keeps them */
    uint64_t miss_bytes;                 /* the last lookup's: record bytes of its layer */
    uint32_t n_miss;                     /* and its misses (miss_slot, miss_src) */
} bank_dev_state;
typedef struct bank_dev {
    bank_dev_state *st;
    int32_t *slot_of;       /* (layer * n_expert + expert) -> slot or -1 */
    uint64_t *key, *stamp;  /* slot -> its key (UINT64_MAX: empty), its last use */
    uint32_t n_slots, n_expert;
    uint8_t *dev;           /* the slots */
    uint64_t slot_bytes;
    const uint8_t *host;    /* the records, device-mapped: layer_off[il] + expert * stride[il] */
    const uint64_t *layer_off, *stride, *rec_bytes, *off_up, *off_down; /* per layer, device copies */
    uint32_t *miss_slot;    /* up to n_expert misses of a lookup */
    const uint8_t **miss_src;
} bank_dev;
/* Experts used[g0 .. g0 + gn) of grp (the routing's grouping of layer il;
 * gn = UINT32_MAX: all of them, a decode step's one group) through the
 * bank: hits stamped, misses given the least recently used slots, and
 * wtab[3 (g0 + j) ..] their gate, up and down addresses. k_bank_copy then
 * brings the misses in. */
cudaError_t k_bank_lookup(cudaStream_t st, const bank_dev *a, const int32_t *grp, uint32_t il, uint32_t g0, uint32_t gn,
                          const uint8_t **wtab);
cudaError_t k_bank_copy(cudaStream_t st, const bank_dev *a);

#endif
