/* Importance matrices ("imatrix") for importance-weighted quantization: per
 * weight tensor, the mean squared activation of each input column, as
 * written by llama.cpp's llama-imatrix and by antirez/ds4 --imatrix-out.
 * Both of llama.cpp's file formats are read (told apart by the magic):
 *
 * legacy .dat (little endian):
 *     i32 n_entries
 *     n_entries x { i32 name_len; name bytes (GGUF tensor name, no NUL);
 *                   i32 ncall; i32 nval; f32 values[nval] }
 *     optional: i32 chunks; i32 len; dataset name bytes
 *   value / ncall is the importance (ncall <= 0 counts as 1). A 3-D expert
 *   tensor's entry holds n_expert x ne0 values, expert by expert.
 *
 * GGUF (general.type = "imatrix"): for tensor NAME, an F32 tensor
 *   NAME.in_sum2 [ne0, n_mat] (sums of squared activations) and an F32
 *   tensor NAME.counts [1, n_mat] (tokens seen per matrix); importance =
 *   in_sum2 / counts. Keys imatrix.datasets (string array) and
 *   imatrix.chunk_count are reported when present.
 *
 * A matrix with no data (zero count, or all-zero values) has no importance:
 * the quantizer then uses its own default weighting. */
#ifndef DS4_FORMATS_IMATRIX_H
#define DS4_FORMATS_IMATRIX_H

#include <stddef.h>
#include <stdint.h>

#include "util/error.h"

typedef struct ds4_imatrix ds4_imatrix;

ds4_imatrix *ds4_imatrix_load(const char *path, ds4_error *err);
void ds4_imatrix_free(ds4_imatrix *im);

/* Importance of the ne0 input columns of matrix `mat` (the expert index;
 * 0 for a 2-D weight) of the GGUF tensor `name`, which holds n_mat
 * matrices. *out = NULL when the file has nothing for it. Fails (naming the
 * file and the entry) when the entry's size does not fit ne0 x n_mat. */
int ds4_imatrix_get(const ds4_imatrix *im, const char *name, uint64_t ne0, uint64_t n_mat, uint64_t mat,
                    const float **out, ds4_error *err);

size_t ds4_imatrix_entries(const ds4_imatrix *im);
int ds4_imatrix_chunks(const ds4_imatrix *im);     /* -1 when unknown */
const char *ds4_imatrix_dataset(const ds4_imatrix *im); /* "" when unknown */
const char *ds4_imatrix_path(const ds4_imatrix *im);

#endif
