#include "model/quant_mix.h"

#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

#include "formats/ggml_types.h"

#define MAX_OVERRIDES 64

typedef struct preset {
    const char *name;
    uint32_t role_type[DS4_ROLE_COUNT];
} preset;

/* Every matrix role gets `t`. */
#define UNIFORM(name, t)                                                                                               \
    {                                                                                                                  \
        name, {                                                                                                        \
            [DS4_ROLE_VECTOR] = GGML_TYPE_F32, [DS4_ROLE_EMBED] = t, [DS4_ROLE_OUTPUT] = t, [DS4_ROLE_HC_FN] = t,      \
            [DS4_ROLE_ATTN] = t, [DS4_ROLE_APE] = t, [DS4_ROLE_COMPRESSOR] = t, [DS4_ROLE_INDEXER] = t,                 \
            [DS4_ROLE_ROUTER] = t, [DS4_ROLE_TID2EID] = GGML_TYPE_I32, [DS4_ROLE_SHEXP] = t,                           \
            [DS4_ROLE_EXPERT_GATE] = t, [DS4_ROLE_EXPERT_UP] = t, [DS4_ROLE_EXPERT_DOWN] = t,                           \
        }                                                                                                              \
    }

/* The published files' dense part around a choice of expert types. */
#define PUBLISHED(name, gate_up, down)                                                                                 \
    {                                                                                                                  \
        name, {                                                                                                        \
            [DS4_ROLE_VECTOR] = GGML_TYPE_F32, [DS4_ROLE_EMBED] = GGML_TYPE_F16, [DS4_ROLE_OUTPUT] = GGML_TYPE_Q8_0,   \
            [DS4_ROLE_HC_FN] = GGML_TYPE_F16, [DS4_ROLE_ATTN] = GGML_TYPE_Q8_0, [DS4_ROLE_APE] = GGML_TYPE_F16,         \
            [DS4_ROLE_COMPRESSOR] = GGML_TYPE_F16, [DS4_ROLE_INDEXER] = GGML_TYPE_F16,                                  \
            [DS4_ROLE_ROUTER] = GGML_TYPE_F16, [DS4_ROLE_TID2EID] = GGML_TYPE_I32, [DS4_ROLE_SHEXP] = GGML_TYPE_Q8_0,   \
            [DS4_ROLE_EXPERT_GATE] = gate_up, [DS4_ROLE_EXPERT_UP] = gate_up, [DS4_ROLE_EXPERT_DOWN] = down,            \
        }                                                                                                              \
    }

static const preset k_presets[] = {
    UNIFORM("f32", GGML_TYPE_F32),
    UNIFORM("f16", GGML_TYPE_F16),
    UNIFORM("bf16", GGML_TYPE_BF16),
    {"q8_0",
     {
         [DS4_ROLE_VECTOR] = GGML_TYPE_F32, [DS4_ROLE_EMBED] = GGML_TYPE_Q8_0, [DS4_ROLE_OUTPUT] = GGML_TYPE_Q8_0,
         [DS4_ROLE_HC_FN] = GGML_TYPE_F16, [DS4_ROLE_ATTN] = GGML_TYPE_Q8_0, [DS4_ROLE_APE] = GGML_TYPE_F16,
         [DS4_ROLE_COMPRESSOR] = GGML_TYPE_Q8_0, [DS4_ROLE_INDEXER] = GGML_TYPE_Q8_0, [DS4_ROLE_ROUTER] = GGML_TYPE_Q8_0,
         [DS4_ROLE_TID2EID] = GGML_TYPE_I32, [DS4_ROLE_SHEXP] = GGML_TYPE_Q8_0, [DS4_ROLE_EXPERT_GATE] = GGML_TYPE_Q8_0,
         [DS4_ROLE_EXPERT_UP] = GGML_TYPE_Q8_0, [DS4_ROLE_EXPERT_DOWN] = GGML_TYPE_Q8_0,
     }},
    PUBLISHED("q4", GGML_TYPE_Q4_K, GGML_TYPE_Q4_K),
    PUBLISHED("q2", GGML_TYPE_IQ2_XXS, GGML_TYPE_Q2_K),
    PUBLISHED("mxfp4", GGML_TYPE_MXFP4, GGML_TYPE_MXFP4),
};

typedef struct override {
    char *pattern;
    uint32_t type;
} override;

struct ds4_quant_mix {
    const preset *p;
    override ov[MAX_OVERRIDES];
    int n_ov;
};

const char *ds4_quant_mix_presets(void) { return "f32, f16, bf16, q8_0, q4, q2, mxfp4"; }

ds4_quant_mix *ds4_quant_mix_new(const char *name, ds4_error *err) {
    for (size_t i = 0; i < sizeof k_presets / sizeof k_presets[0]; i++)
        if (!strcmp(k_presets[i].name, name)) {
            ds4_quant_mix *m = calloc(1, sizeof *m);
            if (!m) {
                ds4_fail(err, "out of memory");
                return NULL;
            }
            m->p = &k_presets[i];
            return m;
        }
    ds4_fail(err, "unknown type '%s' (expected one of: %s)", name, ds4_quant_mix_presets());
    return NULL;
}

void ds4_quant_mix_free(ds4_quant_mix *m) {
    if (!m) return;
    for (int i = 0; i < m->n_ov; i++) free(m->ov[i].pattern);
    free(m);
}

const char *ds4_quant_mix_name(const ds4_quant_mix *m) { return m->p->name; }

int ds4_quant_mix_override(ds4_quant_mix *m, const char *spec, ds4_error *err) {
    const char *eq = strrchr(spec, '=');
    if (!eq || eq == spec || !eq[1])
        return ds4_fail(err, "--override '%s': expected PATTERN=TYPE (e.g. 'blk.*.ffn_down_exps.weight=q4_k')", spec);
    uint32_t type = ggml_type_from_name(eq + 1);
    if (type == GGML_TYPE_COUNT_MAX || !(DS4_TYPES_DENSE & DS4_TYPE_BIT(type)))
        return ds4_fail(err, "--override '%s': '%s' is not a weight type (F32, F16, BF16, Q8_0, Q4_K, Q2_K, IQ2_XXS, MXFP4)",
                        spec, eq + 1);
    if (m->n_ov == MAX_OVERRIDES) return ds4_fail(err, "--override '%s': more than %d overrides", spec, MAX_OVERRIDES);
    override *o = &m->ov[m->n_ov];
    o->pattern = strndup(spec, (size_t)(eq - spec));
    if (!o->pattern) return ds4_fail(err, "out of memory");
    o->type = type;
    m->n_ov++;
    return 0;
}

/* Next type down when the row length does not fit the block size. */
static uint32_t fallback(uint32_t type) {
    uint32_t be = ggml_type_get(type)->block_elems;
    if (be > 32) return GGML_TYPE_Q8_0;
    return GGML_TYPE_F16;
}

int ds4_quant_mix_resolve(const ds4_quant_mix *m, const ds4_layout *l, uint32_t *types, FILE *notes, const char *who,
                          ds4_error *err) {
    for (size_t i = 0; i < l->n; i++) {
        const ds4_layout_tensor *t = &l->t[i];
        uint32_t type = m->p->role_type[t->role];
        const char *by = NULL;
        for (int k = 0; k < m->n_ov; k++)
            if (fnmatch(m->ov[k].pattern, t->name, 0) == 0) {
                type = m->ov[k].type;
                by = m->ov[k].pattern;
            }
        uint64_t allowed = ds4_role_types(t->role);
        if (!(allowed & DS4_TYPE_BIT(type))) {
            /* Fixed-type tensors (vectors, tid2eid) silently keep theirs
             * under broad patterns; a matrix given a type the engine cannot
             * use is a mistake worth stopping for. */
            if (t->role == DS4_ROLE_VECTOR || t->role == DS4_ROLE_TID2EID) {
                type = m->p->role_type[t->role];
            } else {
                char list[128];
                int n = 0;
                for (uint32_t ty = 0; ty < 64; ty++)
                    if (allowed & DS4_TYPE_BIT(ty))
                        n += snprintf(list + n, sizeof list - (size_t)n, "%s%s", n ? ", " : "", ggml_type_name(ty));
                return ds4_fail(err, "tensor '%s' (%s): type %s%s%s%s is not allowed (one of: %s)", t->name,
                                ds4_role_name(t->role), ggml_type_name(type), by ? " from --override '" : "",
                                by ? by : "", by ? "'" : "", list);
            }
        }
        while (!ggml_row_ok(type, t->ne[0])) {
            uint32_t next = fallback(type);
            if (notes)
                fprintf(notes, "%s: note: %s: rows of %llu values do not fit %s blocks of %u; using %s\n", who, t->name,
                        (unsigned long long)t->ne[0], ggml_type_name(type), ggml_type_get(type)->block_elems,
                        ggml_type_name(next));
            type = next;
        }
        types[i] = type;
    }
    /* The expert kernels run gate and up together: one type per layer. */
    for (size_t i = 0; i < l->n; i++) {
        if (l->t[i].role != DS4_ROLE_EXPERT_UP) continue;
        for (size_t j = 0; j < l->n; j++)
            if (l->t[j].role == DS4_ROLE_EXPERT_GATE && l->t[j].layer == l->t[i].layer && types[j] != types[i])
                return ds4_fail(err, "'%s' is %s but '%s' is %s: gate and up experts of a layer must have the same type",
                                l->t[j].name, ggml_type_name(types[j]), l->t[i].name, ggml_type_name(types[i]));
    }
    return 0;
}
