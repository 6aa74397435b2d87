/* Sidecar packages (spec/SIDECAR_AND_DSPARK.md §1): the routed experts of a
 * model stored apart from its dense weights so they can stream from SSD.
 *
 *   PKG/manifest.json            which bytes of which file hold each expert
 *   PKG/layer_NNN.bin            one file per layer
 *   PKG/dense/model-dense.gguf   every other tensor and all the metadata
 *
 * The manifest is the one ds4-ssd reads (Anemll's flashmoe exporter): one
 * entry per (layer, family) with family ffn_gate_exps, ffn_up_exps or
 * ffn_down_exps. Expert-major layers interleave records: expert e's family f
 * is at e × expert_stride + repacked_offset_f. Legacy family-major layers
 * store each family as one run at repacked_offset_f, expert e at
 * + e × bytes_per_expert. Validation checks every entry against the dense
 * GGUF's geometry (layers, experts, widths) instead of compiled-in
 * constants, and every message names the manifest and the entry. */
#ifndef DS4_FORMATS_SIDECAR_H
#define DS4_FORMATS_SIDECAR_H

#include <stdbool.h>
#include <stdint.h>

#include "util/error.h"

#define DS4_SIDECAR_MANIFEST "manifest.json"
#define DS4_SIDECAR_DENSE "dense/model-dense.gguf"

enum { DS4_FAM_GATE = 0, DS4_FAM_UP = 1, DS4_FAM_DOWN = 2, DS4_FAM_COUNT = 3 };

/* "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps". */
extern const char *const ds4_sidecar_family_name[DS4_FAM_COUNT];

/* Whether a GGUF tensor name is one of a layer's routed expert tensors
 * (blk.N.ffn_{gate,up,down}_exps.weight). */
bool ds4_is_routed_tensor(const char *name);

/* What the package must agree with (from the dense GGUF's metadata). */
typedef struct ds4_sidecar_geom {
    uint32_t n_layer, n_expert, n_embd, n_ff_exp;
} ds4_sidecar_geom;

typedef struct ds4_sidecar_family {
    uint32_t type;      /* enum ggml_type */
    uint64_t shape[3];  /* GGUF order [in, out, n_expert] */
    uint64_t offset;    /* repacked_offset as in the manifest */
    uint64_t bytes;     /* bytes_per_expert */
    uint64_t row_bytes; /* bytes of one row of `in` values */
    uint64_t mem_off;   /* where this family sits in a record held in memory */
    uint64_t lead;      /* bytes read ahead of each expert's part so that its read
                           starts on a 4 KiB block (a GGUF's unaligned runs) */
} ds4_sidecar_family;

typedef struct ds4_sidecar_layer {
    char *file;          /* repacked_file as written (relative to the manifest) */
    char *path;          /* resolved path */
    bool family_major;   /* legacy layout: one run per family */
    uint64_t stride;     /* expert-major: bytes per expert record in the file */
    uint64_t record_bytes; /* bytes of one expert held in memory (all families) */
    uint64_t file_bytes; /* size of the layer file, from stat */
    ds4_sidecar_family fam[DS4_FAM_COUNT];
} ds4_sidecar_layer;

/* A file of the package with its size and SHA-256 (manifest "files"). */
typedef struct ds4_sidecar_file {
    char *path; /* relative to the manifest directory */
    uint64_t bytes;
    char sha256[65];
} ds4_sidecar_file;

typedef struct ds4_sidecar {
    char *dir;      /* directory holding the manifest */
    char *manifest; /* path of manifest.json */
    ds4_sidecar_geom geom;
    ds4_sidecar_layer *layers; /* geom.n_layer */
    ds4_sidecar_file *files;   /* checksums; may be empty (older packages) */
    uint32_t n_files;
    uint64_t expert_bytes; /* Σ over layers of n_expert × record_bytes */
    uint64_t max_record;   /* largest record_bytes of any layer */
    bool in_model_file;    /* the experts of a plain GGUF (ds4_sidecar_from_gguf) */
} ds4_sidecar;

/* Locates a package rooted at `dir`: the manifest at DIR/manifest.json or
 * DIR/sidecar/manifest.json, the dense GGUF at DIR/dense/model-dense.gguf
 * or DIR/model-dense.gguf. Returns 1 and malloc'd paths when found; 0 when
 * `dir` is not a directory (a plain GGUF path); -1 with err naming what is
 * missing when it is a directory but not a package. */
int ds4_sidecar_locate(const char *dir, char **manifest_path, char **dense_path, ds4_error *err);

/* Reads and validates the manifest against `geom`, resolving layer files
 * next to it and checking their sizes (a truncated file is refused here,
 * not on the read that would come up short). */
ds4_sidecar *ds4_sidecar_open(const char *manifest_path, const ds4_sidecar_geom *geom, ds4_error *err);
void ds4_sidecar_free(ds4_sidecar *sc);

/* The routed experts of a plain GGUF described as a package whose layer
 * files are the GGUF itself (family-major: each tensor is one run of its
 * experts), so that the package sources (slot bank, resident) can stream
 * them from the model file without an export. manifest names the GGUF. */
struct gguf_file;
ds4_sidecar *ds4_sidecar_from_gguf(const struct gguf_file *f, const ds4_sidecar_geom *geom, ds4_error *err);

/* One read that brings (part of) an expert into a record buffer. */
typedef struct ds4_sidecar_read {
    uint64_t file_off, len, mem_off;
} ds4_sidecar_read;

/* The reads for expert e of layer il: one whole record for expert-major
 * layers, one per family for family-major ones. Returns the count. */
uint32_t ds4_sidecar_expert_reads(const ds4_sidecar *sc, uint32_t il, uint32_t e, ds4_sidecar_read out[DS4_FAM_COUNT]);

/* ---------------------------------------------------------------------- */
/* Writing (the exporter). */

typedef struct ds4_sidecar_write_info {
    const char *arch;         /* general.architecture of the source */
    const char *source_path;  /* the source GGUF, recorded for provenance */
    uint32_t expert_used;     /* experts per token */
    const char *generator;    /* e.g. "ds4-sidecar 1" */
} ds4_sidecar_write_info;

/* Writes manifest.json for `sc` (layers, families, files) atomically. */
int ds4_sidecar_write_manifest(const char *path, const ds4_sidecar *sc, const ds4_sidecar_write_info *info,
                               ds4_error *err);

#endif
