/* ds4-convert internals: checkpoint configuration and the tensor plan. */
#ifndef DS4_CONVERT_H
#define DS4_CONVERT_H

#include <stdbool.h>
#include <stdint.h>

#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "model/hparams.h"

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
int ckpt_read_i32(const ckpt_index *ix, const char *canonical, uint64_t rows, uint64_t cols, uint32_t max_value,
                  int32_t *out, ds4_error *err);

#endif
