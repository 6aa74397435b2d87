/* Tokenizer core: tables, BPE, added-token splitting, decoding.
 * Loaders (tokenizer_json.c, tokenizer_gguf.c, ds4_tokenizer_from_arrays
 * below) all funnel into tok_build_run. */
#include "ds4_tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer_build.h"
#include "util/utf8.h"

/* ---------------------------------------------------------------------- */
/* GPT-2 byte <-> code point mapping. Printable Latin-1 bytes stand for
 * themselves; the other 68 bytes (controls, space, DEL, NBSP, soft hyphen)
 * are moved, in byte order, to U+0100 upwards so that every byte has a
 * visible, non-space character. */

#define BYTE_CP_MAX 324

typedef struct byte_map {
    uint16_t cp[256];
    int16_t byte[BYTE_CP_MAX]; /* -1: not a byte character */
} byte_map;

static void byte_map_init(byte_map *m) {
    for (int i = 0; i < BYTE_CP_MAX; i++) m->byte[i] = -1;
    int next = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        m->cp[b] = (uint16_t)(printable ? b : next++);
        m->byte[m->cp[b]] = (int16_t)b;
    }
}

/* ---------------------------------------------------------------------- */
/* String -> id map over token texts stored in the arena. */

typedef struct strmap {
    uint32_t *hash;
    int32_t *id; /* -1: empty slot */
    size_t mask;
} strmap;

static uint32_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return (uint32_t)(h ^ (h >> 32));
}

struct ds4_tokenizer {
    char *source;
    uint32_t n;
    char *arena;
    size_t *text_off, *bytes_off; /* texts are nul-terminated in the arena */
    uint32_t *text_len, *bytes_len;
    uint8_t *type;

    strmap bpe; /* the BPE vocabulary */
    strmap all; /* every token, added ones first (ds4_tokenizer_find) */
    int32_t byte_sym[256]; /* id of each byte's one-character token, or -1 */

    /* Merge table: (left, right) -> (rank, result), open addressing. */
    struct merge_ent {
        uint64_t key;
        uint32_t rank;
        int32_t result; /* -1: empty slot */
    } *mt;
    size_t mt_mask;
    int32_t *merges; /* 2 per merge, in rank order, as given */
    uint32_t n_merges;

    /* Added tokens, one byte trie per HF pass (0: not normalized,
     * 1: normalized). Node 0 of each is the root. */
    struct trie {
        struct trie_node {
            int32_t child, sibling, token;
            uint8_t byte;
        } *node;
        size_t n, cap;
    } trie[2];
    bool has_added;

    ds4_pretok *pretok;
    char *pre_name;
    int32_t bos, eos, pad, unk;
    bool fuse_unk, ignore_merges;
    byte_map bm;
};

static const char *tok_text(const ds4_tokenizer *t, int32_t id, size_t *len) {
    *len = t->text_len[id];
    return t->arena + t->text_off[id];
}

static int strmap_init(strmap *m, size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    m->hash = malloc(cap * sizeof *m->hash);
    m->id = malloc(cap * sizeof *m->id);
    if (!m->hash || !m->id) return -1;
    memset(m->id, 0xff, cap * sizeof *m->id);
    m->mask = cap - 1;
    return 0;
}

static void strmap_free(strmap *m) {
    free(m->hash);
    free(m->id);
}

static int32_t strmap_get(const ds4_tokenizer *t, const strmap *m, const char *s, size_t n) {
    if (!m->id) return -1;
    uint32_t h = hash_bytes(s, n);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        int32_t id = m->id[i];
        if (id < 0) return -1;
        size_t l;
        const char *txt = tok_text(t, id, &l);
        if (m->hash[i] == h && l == n && memcmp(txt, s, n) == 0) return id;
    }
}

/* Adds id under its text unless the text is already present. */
static void strmap_put(const ds4_tokenizer *t, strmap *m, int32_t id) {
    size_t n;
    const char *s = tok_text(t, id, &n);
    uint32_t h = hash_bytes(s, n);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        int32_t cur = m->id[i];
        if (cur < 0) {
            m->id[i] = id;
            m->hash[i] = h;
            return;
        }
        size_t l;
        const char *txt = tok_text(t, cur, &l);
        if (m->hash[i] == h && l == n && memcmp(txt, s, n) == 0) return;
    }
}

static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

static size_t pair_slot(uint64_t key, size_t mask) {
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}

static const struct merge_ent *merge_find(const ds4_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = pair_key(a, b);
    for (size_t i = pair_slot(key, t->mt_mask);; i = (i + 1) & t->mt_mask) {
        const struct merge_ent *e = &t->mt[i];
        if (e->result < 0) return NULL;
        if (e->key == key) return e;
    }
}

static int trie_add(struct trie *tr, const char *s, size_t n, int32_t token) {
    if (tr->n == 0) {
        tr->cap = 64;
        if (!(tr->node = malloc(tr->cap * sizeof *tr->node))) return -1;
        tr->node[0] = (struct trie_node){-1, -1, -1, 0};
        tr->n = 1;
    }
    int32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        int32_t c = tr->node[cur].child;
        while (c >= 0 && tr->node[c].byte != b) c = tr->node[c].sibling;
        if (c < 0) {
            if (tr->n == tr->cap) {
                void *p = realloc(tr->node, 2 * tr->cap * sizeof *tr->node);
                if (!p) return -1;
                tr->node = p;
                tr->cap *= 2;
            }
            c = (int32_t)tr->n++;
            tr->node[c] = (struct trie_node){-1, tr->node[cur].child, -1, b};
            tr->node[cur].child = c;
        }
        cur = c;
    }
    /* Two added tokens with the same content: HF keeps the first. */
    if (tr->node[cur].token < 0) tr->node[cur].token = token;
    return 0;
}

/* Longest added token starting at s[0..n): its id and length, or -1. */
static int32_t trie_longest(const struct trie *tr, const char *s, size_t n, size_t *mlen) {
    if (tr->n == 0) return -1;
    int32_t cur = 0, best = -1;
    for (size_t i = 0; i < n; i++) {
        int32_t c = tr->node[cur].child;
        while (c >= 0 && tr->node[c].byte != (uint8_t)s[i]) c = tr->node[c].sibling;
        if (c < 0) break;
        cur = c;
        if (tr->node[cur].token >= 0) {
            best = tr->node[cur].token;
            *mlen = i + 1;
        }
    }
    return best;
}

void ds4_tokenizer_free(ds4_tokenizer *t) {
    if (!t) return;
    free(t->source);
    free(t->arena);
    free(t->text_off);
    free(t->bytes_off);
    free(t->text_len);
    free(t->bytes_len);
    free(t->type);
    strmap_free(&t->bpe);
    strmap_free(&t->all);
    free(t->mt);
    free(t->merges);
    free(t->trie[0].node);
    free(t->trie[1].node);
    ds4_pretok_free(t->pretok);
    free(t->pre_name);
    free(t);
}

static bool is_bpe_type(int type) {
    return type == DS4_TOKEN_NORMAL || type == DS4_TOKEN_UNKNOWN || type == DS4_TOKEN_BYTE;
}

static bool is_added_type(int type) { return type == DS4_TOKEN_CONTROL || type == DS4_TOKEN_USER_DEFINED; }

/* Decoded bytes of a BPE token: each character mapped back through the
 * byte alphabet. Like HF's ByteLevel decoder, a token with any character
 * outside that alphabet decodes to its text unchanged. Returns the length
 * written to out (which has room for n bytes), or -1 for "use the text". */
static long bytelevel_decode(const byte_map *bm, const char *s, size_t n, char *out) {
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int l = ds4_utf8_decode((const uint8_t *)s + i, n - i, &cp);
        if (l == 0 || cp >= BYTE_CP_MAX || bm->byte[cp] < 0) return -1;
        out[w++] = (char)bm->byte[cp];
        i += (size_t)l;
    }
    return (long)w;
}

ds4_tokenizer *tok_build_run(const tok_build *b, ds4_error *err) {
    const char *src = b->source ? b->source : "tokenizer";
    ds4_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        ds4_pretok_free(b->pretok);
        ds4_fail(err, "%s: out of memory", src);
        return NULL;
    }
    t->pretok = b->pretok;
    uint32_t n = b->n_tokens;
    t->n = n;
    t->bos = b->bos;
    t->eos = b->eos;
    t->pad = b->pad;
    t->unk = b->unk;
    t->fuse_unk = b->fuse_unk;
    t->ignore_merges = b->ignore_merges;
    byte_map_init(&t->bm);
    if (n == 0 || n > (uint32_t)INT32_MAX) {
        ds4_fail(err, "%s: vocabulary size %u is out of range", src, n);
        goto fail;
    }
    const int32_t special_ids[4] = {b->bos, b->eos, b->pad, b->unk};
    const char *special_names[4] = {"bos", "eos", "pad", "unk"};
    for (int i = 0; i < 4; i++)
        if (special_ids[i] < -1 || special_ids[i] >= (int32_t)n) {
            ds4_fail(err, "%s: %s token id %d is outside the vocabulary (%u tokens)", src, special_names[i],
                     special_ids[i], n);
            goto fail;
        }
    t->source = strdup(src);
    t->pre_name = b->pre_name ? strdup(b->pre_name) : NULL;
    t->text_off = malloc(n * sizeof *t->text_off);
    t->bytes_off = malloc(n * sizeof *t->bytes_off);
    t->text_len = malloc(n * sizeof *t->text_len);
    t->bytes_len = malloc(n * sizeof *t->bytes_len);
    t->type = malloc(n);
    if (!t->source || (b->pre_name && !t->pre_name) || !t->text_off || !t->bytes_off || !t->text_len ||
        !t->bytes_len || !t->type)
        goto oom;

    /* Arena: every text (nul-terminated) plus room for decoded bytes,
     * which are never longer than the text. */
    size_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t l = !b->text[i] ? 0 : b->text_len ? b->text_len[i] : strlen(b->text[i]);
        if (l > UINT32_MAX / 2) {
            ds4_fail(err, "%s: token %u is too long", src, i);
            goto fail;
        }
        t->text_len[i] = (uint32_t)l;
        total += 2 * l + 1;
    }
    if (!(t->arena = malloc(total ? total : 1))) goto oom;
    size_t off = 0;
    for (uint32_t i = 0; i < n; i++) {
        int type = b->text[i] ? (b->type ? b->type[i] : DS4_TOKEN_NORMAL) : DS4_TOKEN_UNUSED;
        if (type < DS4_TOKEN_NORMAL || type > DS4_TOKEN_BYTE) {
            ds4_fail(err, "%s: token %u has unknown token type %d", src, i, type);
            goto fail;
        }
        t->type[i] = (uint8_t)type;
        size_t l = t->text_len[i];
        t->text_off[i] = off;
        if (l) memcpy(t->arena + off, b->text[i], l);
        t->arena[off + l] = 0;
        off += l + 1;
        /* Added tokens decode to their content, padding to nothing. */
        if (type == DS4_TOKEN_UNUSED) {
            t->bytes_off[i] = off;
            t->bytes_len[i] = 0;
            continue;
        }
        long d = is_added_type(type) ? -1 : bytelevel_decode(&t->bm, t->arena + t->text_off[i], l, t->arena + off);
        if (d < 0) {
            t->bytes_off[i] = t->text_off[i];
            t->bytes_len[i] = (uint32_t)l;
        } else {
            t->bytes_off[i] = off;
            t->bytes_len[i] = (uint32_t)d;
            off += (size_t)d;
        }
    }

    /* Lookup maps. Added tokens go into `all` first so that find() prefers
     * them; HF also resolves an added token's text to the added id. */
    if (strmap_init(&t->bpe, n) || strmap_init(&t->all, n)) goto oom;
    for (uint32_t i = 0; i < n; i++) {
        if (is_added_type(t->type[i])) {
            strmap_put(t, &t->all, (int32_t)i);
            if (t->text_len[i] == 0) {
                ds4_fail(err, "%s: added token %u has empty content", src, i);
                goto fail;
            }
            bool normalized = b->normalized ? b->normalized[i] != 0 : t->type[i] != DS4_TOKEN_CONTROL;
            size_t l;
            const char *s = tok_text(t, (int32_t)i, &l);
            if (trie_add(&t->trie[normalized], s, l, (int32_t)i)) goto oom;
            t->has_added = true;
        }
    }
    for (uint32_t i = 0; i < n; i++) {
        if (b->text[i]) strmap_put(t, &t->all, (int32_t)i);
        if (is_bpe_type(t->type[i])) strmap_put(t, &t->bpe, (int32_t)i);
    }
    for (int c = 0; c < 256; c++) {
        char s[4];
        int l = ds4_utf8_encode(t->bm.cp[c], s);
        t->byte_sym[c] = strmap_get(t, &t->bpe, s, (size_t)l);
    }

    /* Merges. Like HF, a later duplicate of a pair replaces the earlier
     * one's rank. */
    t->n_merges = b->n_merges;
    size_t cap = 16;
    while (cap < 2 * (size_t)b->n_merges) cap <<= 1;
    t->mt = malloc(cap * sizeof *t->mt);
    t->merges = malloc((2 * (size_t)b->n_merges + 1) * sizeof *t->merges);
    if (!t->mt || !t->merges) goto oom;
    t->mt_mask = cap - 1;
    for (size_t i = 0; i < cap; i++) t->mt[i].result = -1;
    char *cat = NULL;
    size_t cat_cap = 0;
    const char *mf = b->merge_field ? b->merge_field : "merges";
    for (uint32_t r = 0; r < b->n_merges; r++) {
        size_t ll = b->left_len ? b->left_len[r] : strlen(b->left[r]);
        size_t rl = b->right_len ? b->right_len[r] : strlen(b->right[r]);
        int32_t a = strmap_get(t, &t->bpe, b->left[r], ll);
        int32_t c = strmap_get(t, &t->bpe, b->right[r], rl);
        if (a < 0 || c < 0) {
            const char *bad = a < 0 ? b->left[r] : b->right[r];
            size_t bl = a < 0 ? ll : rl;
            free(cat);
            ds4_fail(err, "%s: %s[%u] names token \"%.*s\", which is not in the vocabulary", src, mf, r,
                     (int)(bl > 100 ? 100 : bl), bad);
            goto fail;
        }
        if (ll + rl > cat_cap) {
            cat_cap = 2 * (ll + rl);
            char *p = realloc(cat, cat_cap);
            if (!p) {
                free(cat);
                goto oom;
            }
            cat = p;
        }
        memcpy(cat, b->left[r], ll);
        memcpy(cat + ll, b->right[r], rl);
        int32_t res = strmap_get(t, &t->bpe, cat, ll + rl);
        if (res < 0) {
            ds4_fail(err, "%s: %s[%u]: merged token \"%.*s\" is not in the vocabulary", src, mf, r,
                     (int)(ll + rl > 100 ? 100 : ll + rl), cat);
            free(cat);
            goto fail;
        }
        t->merges[2 * r] = a;
        t->merges[2 * r + 1] = c;
        uint64_t key = pair_key(a, c);
        for (size_t i = pair_slot(key, t->mt_mask);; i = (i + 1) & t->mt_mask) {
            struct merge_ent *e = &t->mt[i];
            if (e->result < 0 || e->key == key) {
                *e = (struct merge_ent){key, r, res};
                break;
            }
        }
    }
    free(cat);
    return t;
oom:
    ds4_fail(err, "%s: out of memory", src);
fail:
    ds4_tokenizer_free(t);
    return NULL;
}

/* ---------------------------------------------------------------------- */
/* Construction from arrays (the GGUF path). */

ds4_tokenizer *ds4_tokenizer_from_arrays(const ds4_tokenizer_arrays *a, const char *source, ds4_error *err) {
    const char *src = source ? source : "tokenizer";
    ds4_error e2;
    if (!err) err = &e2;
    const char *pre = a->pre ? a->pre : "joyai-llm";
    ds4_pretok *p = ds4_pretok_new(err);
    if (!p) return NULL;
    int rc = 0;
    if (!strcmp(pre, "joyai-llm") || !strcmp(pre, "deepseek-v3")) {
        pre = "joyai-llm";
        for (int i = 0; i < 3 && !rc; i++)
            rc = ds4_pretok_add(p, DS4_PRETOK_DEEPSEEK[i], strlen(DS4_PRETOK_DEEPSEEK[i]), 0, err);
    } else if (!strcmp(pre, "gpt2") || !strcmp(pre, "default")) {
        pre = "gpt2";
        rc = ds4_pretok_add(p, DS4_PRETOK_GPT2, strlen(DS4_PRETOK_GPT2), 0, err);
    } else {
        ds4_pretok_free(p);
        ds4_fail(err, "%s: pre-tokenizer \"%s\" is not supported (expected joyai-llm, deepseek-v3 or gpt2)", src,
                 pre);
        return NULL;
    }
    if (rc) {
        ds4_pretok_free(p);
        ds4_fail_prefix(err, "%s", src);
        return NULL;
    }

    /* Merges are "left right": split at the first space that is not the
     * first character (llama.cpp's rule; byte-level tokens hold no spaces). */
    uint32_t nm = a->n_merges;
    const char **l = malloc((nm + 1) * sizeof *l), **r = malloc((nm + 1) * sizeof *r);
    size_t *ll = malloc((nm + 1) * sizeof *ll), *rl = malloc((nm + 1) * sizeof *rl);
    ds4_tokenizer *t = NULL;
    if (!l || !r || !ll || !rl) {
        ds4_pretok_free(p);
        ds4_fail(err, "%s: out of memory", src);
        goto done;
    }
    for (uint32_t i = 0; i < nm; i++) {
        const char *m = a->merges[i];
        size_t len = a->merge_lens ? a->merge_lens[i] : strlen(m);
        const char *sp = len > 1 ? memchr(m + 1, ' ', len - 1) : NULL;
        if (!sp) {
            ds4_pretok_free(p);
            ds4_fail(err, "%s: merge %u \"%.*s\" is not of the form \"left right\"", src, i,
                     (int)(len > 100 ? 100 : len), m);
            goto done;
        }
        l[i] = m;
        ll[i] = (size_t)(sp - m);
        r[i] = sp + 1;
        rl[i] = len - ll[i] - 1;
    }
    tok_build b = {
        .source = src,
        .n_tokens = a->n_tokens,
        .text = a->tokens,
        .text_len = a->token_lens,
        .type = a->token_types,
        .n_merges = nm,
        .left = l,
        .right = r,
        .left_len = ll,
        .right_len = rl,
        .merge_field = "merges",
        .bos = a->bos_id,
        .eos = a->eos_id,
        .pad = a->pad_id,
        .unk = -1,
        .pretok = p,
        .pre_name = pre,
    };
    t = tok_build_run(&b, err);
done:
    free(l);
    free(r);
    free(ll);
    free(rl);
    return t;
}

/* ---------------------------------------------------------------------- */
/* Encoding. */

int ds4_tokens_push(ds4_tokens *t, int32_t id) {
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 64;
        int32_t *ids = realloc(t->ids, cap * sizeof *ids);
        if (!ids) return -1;
        t->ids = ids;
        t->cap = cap;
    }
    t->ids[t->n++] = id;
    return 0;
}

void ds4_tokens_free(ds4_tokens *t) {
    if (!t) return;
    free(t->ids);
    t->ids = NULL;
    t->n = t->cap = 0;
}

static int tokens_push(ds4_tokens *t, int32_t id) {
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 64;
        int32_t *p = realloc(t->ids, cap * sizeof *p);
        if (!p) return -1;
        t->ids = p;
        t->cap = cap;
    }
    t->ids[t->n++] = id;
    return 0;
}

typedef struct sym {
    int32_t id;
    int32_t prev, next;
    int32_t alive;
} sym;

typedef struct cand {
    uint32_t rank;
    uint32_t pos;
    int32_t result;
} cand;

typedef struct enc_ctx {
    const ds4_tokenizer *t;
    ds4_tokens *out;
    sym *syms;
    cand *heap;
    char *scratch; /* byte-level form of a word (ignore_merges only) */
    size_t cap;    /* capacity of syms (heap and scratch are sized from it) */
} enc_ctx;

static bool cand_less(const cand *a, const cand *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(cand *h, size_t *n, cand c) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static cand heap_pop(cand *h, size_t *n) {
    cand top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && cand_less(&h[c + 1], &h[c])) c++;
        if (!cand_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

static void push_pair(const ds4_tokenizer *t, const sym *s, int32_t pos, cand *heap, size_t *nh) {
    int32_t nx = s[pos].next;
    if (nx < 0) return;
    const struct merge_ent *m = merge_find(t, s[pos].id, s[nx].id);
    if (m) heap_push(heap, nh, (cand){m->rank, (uint32_t)pos, m->result});
}

static int enc_reserve(enc_ctx *c, size_t n) {
    if (n <= c->cap) return 0;
    size_t cap = c->cap ? c->cap : 256;
    while (cap < n) cap *= 2;
    sym *s = realloc(c->syms, cap * sizeof *s);
    if (s) c->syms = s;
    /* Each merge adds at most two candidates after the n-1 initial ones. */
    cand *h = realloc(c->heap, 3 * cap * sizeof *h);
    if (h) c->heap = h;
    char *sc = c->t->ignore_merges ? realloc(c->scratch, 2 * cap) : c->scratch;
    if (sc) c->scratch = sc;
    if (!s || !h || (c->t->ignore_merges && !sc)) return -1;
    c->cap = cap;
    return 0;
}

/* BPE over one pre-tokenized word, as HF's BPE model does it: start from
 * one symbol per byte, then repeatedly apply the lowest-ranked merge among
 * adjacent pairs (leftmost first on equal rank), using a heap of candidate
 * pairs that are re-validated when popped. */
static int bpe_word(void *ctx, const char *w, size_t n, ds4_error *err) {
    enc_ctx *c = ctx;
    const ds4_tokenizer *t = c->t;
    if (n == 1 && t->byte_sym[(uint8_t)w[0]] >= 0) {
        if (tokens_push(c->out, t->byte_sym[(uint8_t)w[0]])) return ds4_fail(err, "out of memory");
        return 0;
    }
    if (enc_reserve(c, n)) return ds4_fail(err, "out of memory");
    if (t->ignore_merges) {
        size_t l = 0;
        for (size_t i = 0; i < n; i++) l += (size_t)ds4_utf8_encode(t->bm.cp[(uint8_t)w[i]], c->scratch + l);
        int32_t id = strmap_get(t, &t->bpe, c->scratch, l);
        if (id >= 0) return tokens_push(c->out, id) ? ds4_fail(err, "out of memory") : 0;
    }
    sym *s = c->syms;
    int32_t ns = 0;
    bool pending_unk = false;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_sym[(uint8_t)w[i]];
        if (id < 0) {
            /* A byte with no token: HF drops it, or uses unk (fusing
             * consecutive unknowns when asked to). */
            if (t->unk < 0) continue;
            if (t->fuse_unk && pending_unk) continue;
            id = t->unk;
            pending_unk = true;
        } else {
            pending_unk = false;
        }
        s[ns] = (sym){id, ns - 1, ns + 1, 1};
        ns++;
    }
    if (ns == 0) return 0;
    s[ns - 1].next = -1;
    size_t nh = 0;
    for (int32_t i = 0; i + 1 < ns; i++) push_pair(t, s, i, c->heap, &nh);
    while (nh) {
        cand top = heap_pop(c->heap, &nh);
        sym *a = &s[top.pos];
        if (!a->alive || a->next < 0) continue;
        sym *bsym = &s[a->next];
        const struct merge_ent *m = merge_find(t, a->id, bsym->id);
        if (!m || m->result != top.result) continue; /* stale candidate */
        a->id = top.result;
        bsym->alive = 0;
        a->next = bsym->next;
        if (a->next >= 0) s[a->next].prev = (int32_t)top.pos;
        if (a->prev >= 0) push_pair(t, s, a->prev, c->heap, &nh);
        push_pair(t, s, (int32_t)top.pos, c->heap, &nh);
    }
    for (int32_t i = 0; i >= 0; i = s[i].next)
        if (tokens_push(c->out, s[i].id)) return ds4_fail(err, "out of memory");
    return 0;
}

static int encode_plain(enc_ctx *c, const char *s, size_t n, ds4_error *err) {
    if (n == 0) return 0;
    return ds4_pretok_run(c->t->pretok, s, n, bpe_word, c, err);
}

/* Cuts added tokens of one pass out of s[0..n) (leftmost-longest, as HF's
 * Aho-Corasick matcher), handing the gaps to the next pass. */
static int split_added(enc_ctx *c, int pass, const char *s, size_t n, ds4_error *err) {
    if (pass == 2) return encode_plain(c, s, n, err);
    const struct trie *tr = &c->t->trie[pass];
    if (tr->n == 0) return split_added(c, pass + 1, s, n, err);
    size_t gap = 0;
    for (size_t i = 0; i < n;) {
        size_t ml = 0;
        int32_t id = trie_longest(tr, s + i, n - i, &ml);
        if (id < 0) {
            i++;
            continue;
        }
        if (split_added(c, pass + 1, s + gap, i - gap, err)) return -1;
        if (tokens_push(c->out, id)) return ds4_fail(err, "out of memory");
        i += ml;
        gap = i;
    }
    return split_added(c, pass + 1, s + gap, n - gap, err);
}

int ds4_tokenize(const ds4_tokenizer *tok, const char *text, size_t len, bool parse_special, ds4_tokens *out,
                 ds4_error *err) {
    enc_ctx c = {.t = tok, .out = out};
    size_t n0 = out->n;
    int rc = parse_special && tok->has_added ? split_added(&c, 0, text, len, err) : encode_plain(&c, text, len, err);
    free(c.syms);
    free(c.heap);
    free(c.scratch);
    if (rc) {
        out->n = n0;
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Decoding. */

const char *ds4_tokenizer_token_bytes(const ds4_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || (uint32_t)id >= t->n) return NULL;
    *len = t->bytes_len[id];
    return t->arena + t->bytes_off[id];
}

char *ds4_detokenize(const ds4_tokenizer *t, const int32_t *ids, size_t n, size_t *len, ds4_error *err) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= t->n) {
            ds4_fail(err, "%s: token id %d at position %zu is outside the vocabulary (%u tokens)", t->source, ids[i],
                     i, t->n);
            return NULL;
        }
        total += t->bytes_len[ids[i]];
    }
    char *out = malloc(DS4_UTF8_FEED_MAX(total) + 4);
    if (!out) {
        ds4_fail(err, "out of memory");
        return NULL;
    }
    ds4_utf8_stream us = {0};
    size_t w = 0;
    for (size_t i = 0; i < n; i++)
        w += ds4_utf8_feed(&us, t->arena + t->bytes_off[ids[i]], t->bytes_len[ids[i]], out + w);
    w += ds4_utf8_finish(&us, out + w);
    out[w] = 0;
    if (len) *len = w;
    return out;
}

struct ds4_detok_stream {
    const ds4_tokenizer *t;
    ds4_utf8_stream us;
    char *buf;
    size_t cap;
    char tail[4]; /* what flush hands out */
};

ds4_detok_stream *ds4_detok_stream_new(const ds4_tokenizer *tok, ds4_error *err) {
    ds4_detok_stream *s = calloc(1, sizeof *s);
    if (!s) {
        ds4_fail(err, "out of memory");
        return NULL;
    }
    s->t = tok;
    return s;
}

void ds4_detok_stream_free(ds4_detok_stream *s) {
    if (!s) return;
    free(s->buf);
    free(s);
}

int ds4_detok_stream_push(ds4_detok_stream *s, int32_t id, const char **text, size_t *len, ds4_error *err) {
    const ds4_tokenizer *t = s->t;
    *text = "";
    *len = 0;
    if (id < 0 || (uint32_t)id >= t->n)
        return ds4_fail(err, "%s: token id %d is outside the vocabulary (%u tokens)", t->source, id, t->n);
    size_t need = DS4_UTF8_FEED_MAX(t->bytes_len[id]);
    if (need > s->cap) {
        char *p = realloc(s->buf, need);
        if (!p) return ds4_fail(err, "out of memory");
        s->buf = p;
        s->cap = need;
    }
    *len = ds4_utf8_feed(&s->us, t->arena + t->bytes_off[id], t->bytes_len[id], s->buf);
    *text = s->buf;
    return 0;
}

void ds4_detok_stream_flush(ds4_detok_stream *s, const char **text, size_t *len) {
    *len = ds4_utf8_finish(&s->us, s->tail);
    *text = s->tail;
}

/* ---------------------------------------------------------------------- */
/* Queries. */

uint32_t ds4_tokenizer_n_vocab(const ds4_tokenizer *t) { return t->n; }
int32_t ds4_tokenizer_bos(const ds4_tokenizer *t) { return t->bos; }
int32_t ds4_tokenizer_eos(const ds4_tokenizer *t) { return t->eos; }
int32_t ds4_tokenizer_pad(const ds4_tokenizer *t) { return t->pad; }
void tok_set_special_ids(ds4_tokenizer *t, int32_t bos, int32_t eos, int32_t pad) {
    t->bos = bos;
    t->eos = eos;
    t->pad = pad;
}

const char *ds4_tokenizer_pre_name(const ds4_tokenizer *t) { return t->pre_name; }

const char *ds4_tokenizer_token_text(const ds4_tokenizer *t, int32_t id) {
    if (id < 0 || (uint32_t)id >= t->n) return NULL;
    return t->arena + t->text_off[id];
}

int ds4_tokenizer_token_type(const ds4_tokenizer *t, int32_t id) {
    if (id < 0 || (uint32_t)id >= t->n) return 0;
    return t->type[id];
}

int32_t ds4_tokenizer_find(const ds4_tokenizer *t, const char *text) {
    return strmap_get(t, &t->all, text, strlen(text));
}

uint32_t ds4_tokenizer_n_merges(const ds4_tokenizer *t) { return t->n_merges; }

int ds4_tokenizer_merge(const ds4_tokenizer *t, uint32_t i, int32_t *left, int32_t *right) {
    if (i >= t->n_merges) return -1;
    *left = t->merges[2 * i];
    *right = t->merges[2 * i + 1];
    return 0;
}
