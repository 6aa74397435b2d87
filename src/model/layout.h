/* The ds4 GGUF layout as a list: every tensor of a DeepSeek V4 model with
 * its GGUF name, shape, role and the official checkpoint name it comes
 * from (spec/MODEL.md §8.3 and §8.5), derived from the hyperparameters.
 * Writers (ds4-convert, ds4-mkmodel) walk this list; the loader
 * (model/weights.c) binds the same names and accepts, per role, the types
 * in ds4_role_types(). */
#ifndef DS4_MODEL_LAYOUT_H
#define DS4_MODEL_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "formats/ggml_types.h"
#include "model/hparams.h"
#include "util/error.h"

#define DS4_TYPE_BIT(t) (1ull << (t))
/* Vectors entering elementwise arithmetic: F32, as in the published files. */
#define DS4_TYPES_VEC DS4_TYPE_BIT(GGML_TYPE_F32)
/* Weights read through the linear kernels: any supported row format. */
#define DS4_TYPES_DENSE                                                                                    \
    (DS4_TYPE_BIT(GGML_TYPE_F32) | DS4_TYPE_BIT(GGML_TYPE_F16) | DS4_TYPE_BIT(GGML_TYPE_BF16) |             \
     DS4_TYPE_BIT(GGML_TYPE_Q8_0) | DS4_TYPE_BIT(GGML_TYPE_Q4_K) | DS4_TYPE_BIT(GGML_TYPE_Q2_K) |           \
     DS4_TYPE_BIT(GGML_TYPE_IQ2_XXS) | DS4_TYPE_BIT(GGML_TYPE_MXFP4))
/* Small matrices used elementwise (mHC fn, compressor ape): float types. */
#define DS4_TYPES_SMALL (DS4_TYPE_BIT(GGML_TYPE_F32) | DS4_TYPE_BIT(GGML_TYPE_F16) | DS4_TYPE_BIT(GGML_TYPE_BF16))
#define DS4_TYPES_I32 DS4_TYPE_BIT(GGML_TYPE_I32)

typedef enum ds4_role {
    DS4_ROLE_VECTOR,      /* norms, biases, sinks, mHC base/scale */
    DS4_ROLE_EMBED,       /* token_embd */
    DS4_ROLE_OUTPUT,      /* output (lm head) */
    DS4_ROLE_HC_FN,       /* mHC fn matrices */
    DS4_ROLE_ATTN,        /* attn_q_a, attn_q_b, attn_kv, attn_output_a/b */
    DS4_ROLE_APE,         /* compressor position bias */
    DS4_ROLE_COMPRESSOR,  /* attention and indexer compressor kv / gate */
    DS4_ROLE_INDEXER,     /* indexer q_b and weights projection */
    DS4_ROLE_ROUTER,      /* ffn_gate_inp */
    DS4_ROLE_TID2EID,     /* hash routing table */
    DS4_ROLE_SHEXP,       /* shared expert */
    DS4_ROLE_EXPERT_GATE, /* routed experts: gate and up (same type) */
    DS4_ROLE_EXPERT_UP,
    DS4_ROLE_EXPERT_DOWN,
    DS4_ROLE_COUNT
} ds4_role;

typedef struct ds4_layout_tensor {
    char name[96];  /* GGUF name */
    char src[128];  /* official checkpoint name; routed experts: a pattern with %u for the expert */
    ds4_role role;
    int32_t layer;  /* -1 for the global tensors */
    uint32_t n_dims;
    uint64_t ne[3]; /* ne[0] contiguous (inputs), ne[1] rows, ne[2] experts; unused = 1 */
} ds4_layout_tensor;

typedef struct ds4_layout {
    ds4_layout_tensor *t;
    size_t n;
} ds4_layout;

/* Fills the list in the published order (globals, then each layer). */
int ds4_layout_build(ds4_layout *l, const ds4_hparams *hp, ds4_error *err);
void ds4_layout_free(ds4_layout *l);

/* Types the loader accepts for a role (a mask of DS4_TYPE_BIT). */
uint64_t ds4_role_types(ds4_role r);
const char *ds4_role_name(ds4_role r);
static inline int ds4_role_is_expert(ds4_role r) {
    return r == DS4_ROLE_EXPERT_GATE || r == DS4_ROLE_EXPERT_UP || r == DS4_ROLE_EXPERT_DOWN;
}
/* Rows of ne[0] values (one matrix row); a vector is one row. */
static inline uint64_t ds4_layout_rows(const ds4_layout_tensor *t) { return t->ne[1] * t->ne[2]; }

#endif
