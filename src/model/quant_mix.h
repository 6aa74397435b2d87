/* Quantization mixes: which ggml type each tensor of the ds4 layout gets.
 *
 * Presets (spec/MODEL.md §8.3):
 *   q2     routed experts IQ2_XXS gate/up + Q2_K down; attention, shared
 *          expert and output Q8_0; token embedding, mHC fn, compressor
 *          (incl. ape), indexer and router F16 (the published q2 file)
 *   q4     the same with Q4_K for all three expert tensors (published q4)
 *   mxfp4  the same with MXFP4 experts (the official checkpoint's FP4)
 *   q8_0   every matrix the linear kernels read is Q8_0; mHC fn and ape,
 *          used elementwise, stay F16
 *   f32, f16, bf16   every matrix in that type
 * In all of them vectors (norms, biases, sinks, mHC base/scale) are F32 and
 * tid2eid is I32.
 *
 * Overrides "PATTERN=TYPE" (fnmatch globs on GGUF tensor names, e.g.
 * "blk.4[0-2].ffn_*_exps.weight=q4_k") apply after the preset; the last
 * matching override wins. A type the loader refuses for the tensor's role is
 * an error; a row length that is not a multiple of the type's block size
 * falls back to the nearest type that fits (256-value blocks -> Q8_0 ->
 * F16), with a note. */
#ifndef DS4_MODEL_QUANT_MIX_H
#define DS4_MODEL_QUANT_MIX_H

#include <stdint.h>
#include <stdio.h>

#include "model/layout.h"
#include "util/error.h"

typedef struct ds4_quant_mix ds4_quant_mix;

/* NULL (err filled) for an unknown preset name. */
ds4_quant_mix *ds4_quant_mix_new(const char *preset, ds4_error *err);
void ds4_quant_mix_free(ds4_quant_mix *m);
const char *ds4_quant_mix_name(const ds4_quant_mix *m);
/* The list of preset names for usage texts. */
const char *ds4_quant_mix_presets(void);

int ds4_quant_mix_override(ds4_quant_mix *m, const char *spec, ds4_error *err);

/* types[i] for every tensor of the layout. Fallback notes go to `notes`
 * (may be NULL) prefixed by `who`. Fails on a type the role does not allow,
 * or when a layer's gate and up experts end up with different types. */
int ds4_quant_mix_resolve(const ds4_quant_mix *m, const ds4_layout *l, uint32_t *types, FILE *notes, const char *who,
                          ds4_error *err);

#endif
