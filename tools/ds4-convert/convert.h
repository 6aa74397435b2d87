/* ds4-convert internals: checkpoint configuration and the tensor plan. */
#ifndef DS4_CONVERT_H
#define DS4_CONVERT_H

#include <stdbool.h>
#include <stdint.h>

#include "compute/threadpool.h"
#include "formats/gguf.h"
#include "formats/imatrix.h"
#include "formats/safetensors.h"
#include "model/hparams.h"
#include "model/layout.h"

/* Hyperparameters read from config.json (either the transformers layout
 * with layer_types/compress_rates or the official one with
 * compress_ratios), plus what only the converter needs. */
typedef struct convert_config {
    ds4_hparams hp;
    uint32_t n_nextn;
    uint32_t bos_id, eos_id;
} convert_config;

int convert_read_config(const char *dir, convert_config *cfg, ds4_error *err);
int convert_write_metadata(gguf_writer *w, const convert_config *cfg, const char *name, bool has_tokenizer);

/* Checkpoint tensors by canonical (official-style) name. */
typedef struct ckpt_index ckpt_index;
ckpt_index *ckpt_index_build(const st_checkpoint *c, ds4_error *err);
void ckpt_index_free(ckpt_index *ix);
const st_tensor *ckpt_find(const ckpt_index *ix, const char *canonical);

/* Reads a weight as float32 (dequantising FP8 with 128x128 block scales and
 * FP4 experts with per-32 scales); checks its torch shape [rows, cols]
 * (cols = 0 for a vector). */
int ckpt_read_f32(const ckpt_index *ix, const char *canonical, uint64_t rows, uint64_t cols, float *out, ds4_error *err);
/* A routed expert stored as FP4 (I8 pairs of e2m1 codes, low nibble first,
 * with an E8M0 byte per 32 inputs): points at its code bytes [rows, cols/2]
 * and scale bytes [rows, cols/32] for a lossless copy into MXFP4. Returns 1
 * when so, 0 when the tensor is stored otherwise, -1 on a shape error. */
int ckpt_fp4_planes(const ckpt_index *ix, const char *canonical, uint64_t rows, uint64_t cols, const uint8_t **codes,
                    const uint8_t **scales, ds4_error *err);
int ckpt_read_i32(const ckpt_index *ix, const char *canonical, uint64_t rows, uint64_t cols, uint32_t max_value,
                  int32_t *out, ds4_error *err);

/* Writing the tensors: each one read as float32 (or, for FP4 experts going
 * to MXFP4, copied losslessly) and encoded in its type, rows split over the
 * worker pool, with a progress line. */
typedef struct convert_emit {
    gguf_writer *w;
    const ckpt_index *ix;
    const ds4_hparams *hp;
    ds4_pool *pool;
    const ds4_imatrix *im;    /* NULL: the quantizers' own weighting */
    float *buf;                   /* one matrix as float32 */
    uint8_t *enc;                 /* one matrix encoded */
    uint64_t done, total;         /* bytes, for the progress line */
    size_t n_done, n_total;       /* tensors */
    uint64_t n_passthrough;       /* FP4 experts copied losslessly into MXFP4 */
    double last_report;
    int tty;
} convert_emit;

/* Bytes of the largest single matrix (one expert of an expert tensor) as
 * float32, which sizes buf and enc. */
uint64_t convert_max_matrix_elems(const ds4_layout *l);
int convert_emit_tensor(convert_emit *c, const ds4_layout_tensor *t, uint32_t type, ds4_error *err);
void convert_progress(convert_emit *c, const char *name, int final);

#endif
