// The decoder's forward pass with a key/value cache: es_model_forward's layers
// (engine/model.c) with an attention step that adds one kv_append per layer
// and, in decode steps, attends against the cache in place of the packed batch.
#include "generate.h"

#include <stdlib.h>
#include <string.h>

static int alloc_idx(es_backend *be, void **out, size_t n) {
    *out = be->alloc(be, n, ES_DT_I32, ES_MEM_INDEX);
    return *out ? ES_OK : ES_ERR;
}

int es_gen_create(es_gen *g, es_model *m, int slots, int max_len) {
    memset(g, 0, sizeof *g);
    g->model = m;
    g->slots = slots;
    g->max_len = max_len;
    const es_config *c = &m->cfg;
    es_backend *be = m->be;
    if (!be->kv_append || !be->attention_decode)
        return es_fail("generate: the %s backend has no key/value cache ops", be->name);
    if (slots < 1 || max_len < 1 || slots > m->max_tokens)
        return es_fail("generate: %d slots of %d tokens do not fit a model with capacity %d",
                       slots, max_len, m->max_tokens);
    g->kcache = es_xcalloc((size_t)c->layers, sizeof *g->kcache);
    g->vcache = es_xcalloc((size_t)c->layers, sizeof *g->vcache);
    g->len = es_xcalloc((size_t)slots, sizeof *g->len);
    size_t rows = (size_t)slots * max_len, W = (size_t)c->kv_heads * c->head_dim;
    size_t T = (size_t)m->max_tokens;
    g->h_idx = es_xmalloc((T + 1) * sizeof *g->h_idx);
    for (int l = 0; l < c->layers; l++) {
        g->kcache[l] = be->alloc(be, rows * W, ES_DT_COMPUTE, ES_MEM_ACTS);
        g->vcache[l] = be->alloc(be, rows * W, ES_DT_COMPUTE, ES_MEM_ACTS);
        if (!g->kcache[l] || !g->vcache[l]) goto fail;
    }
    if (alloc_idx(be, &g->d_tokens, T) || alloc_idx(be, &g->d_pos, T) ||
        alloc_idx(be, &g->d_rows, T) || alloc_idx(be, &g->d_cu, T + 1) ||
        alloc_idx(be, &g->d_last, (size_t)slots) || alloc_idx(be, &g->d_start, (size_t)slots) ||
        alloc_idx(be, &g->d_len, (size_t)slots))
        goto fail;
    g->last = be->alloc(be, (size_t)slots * c->hidden, ES_DT_COMPUTE, ES_MEM_ACTS);
    g->logits = be->alloc(be, (size_t)slots * c->vocab, ES_DT_COMPUTE, ES_MEM_ACTS);
    if (!g->last || !g->logits) goto fail;
    return ES_OK;
fail:
    es_gen_free(g);
    return es_fail("generate: cannot allocate a cache of %d x %d tokens: %s", slots, max_len,
                   es_last_error());
}

void es_gen_free(es_gen *g) {
    if (!g->model) return;
    es_backend *be = g->model->be;
    for (int l = 0; g->kcache && l < g->model->cfg.layers; l++) {
        be->free(be, g->kcache[l]);
        be->free(be, g->vcache[l]);
    }
    void *bufs[] = {g->d_tokens, g->d_pos, g->d_rows, g->d_cu,  g->d_last,
                    g->d_start,  g->d_len, g->last,   g->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) be->free(be, bufs[i]);
    free(g->kcache);
    free(g->vcache);
    free(g->len);
    free(g->h_idx);
    memset(g, 0, sizeof *g);
}

int es_gen_weights(es_gen *g, es_wfmt fmt) {
    es_model *m = g->model;
    es_backend *be = m->be;
    if (fmt == ES_WFMT_F32) return ES_OK;
    if (!be->pack_weights)
        return es_fail("generate: the %s backend has no %s decode weights (only fp32)", be->name,
                       es_wfmt_names[fmt]);
    for (int l = 0; l < m->cfg.layers; l++) {
        es_matmul_weight mats[ES_LAYER_MATMULS];
        int n = es_model_layer_matmuls(mats, m, l);
        for (int i = 0; i < n; i++)
            if (be->pack_weights(be, mats[i].w, mats[i].OC, mats[i].C, fmt)) return ES_ERR;
    }
    return be->pack_weights(be, es_model_lm_head(m), m->cfg.vocab, m->cfg.hidden, fmt);
}

int es_wfmt_parse(es_wfmt *fmt, const char *name) {
    for (int f = 0; f < ES_WFMTS; f++)
        if (!strcmp(name, es_wfmt_names[f])) {
            *fmt = (es_wfmt)f;
            return ES_OK;
        }
    return es_fail("generate: --weights expects fp32, bf16 or int8 (got '%s')", name);
}

static void upload_idx(es_gen *g, void *dst, size_t n) {
    g->model->be->upload(g->model->be, dst, g->h_idx, n, ES_DT_I32);
}

// Generation's attention step: write the layer's keys and values to cache rows
// g->d_rows, then either attend among packed prompts (ndocs > 0, g->d_cu) or
// let token i attend to its cache (g->d_start, g->d_len).
typedef struct {
    const es_gen *g;
    int ndocs, max_len;
} cached_attention_ctx;

static void cached_attention(const void *ctx, es_model *m, es_layer_acts *a, int l, int N) {
    const cached_attention_ctx *x = ctx;
    const es_gen *g = x->g;
    es_backend *be = m->be;
    const es_config *c = &m->cfg;
    int H = c->heads, KVH = c->kv_heads, D = c->head_dim;
    be->kv_append(be, g->kcache[l], g->vcache[l], a->k, a->v, g->d_rows, N, KVH * D);
    if (x->ndocs)
        be->attention_fwd(be, a->att, a->lse, a->q, a->k, a->v, g->d_cu, x->ndocs, N, H, KVH, D);
    else
        be->attention_decode(be, a->att, a->q, g->kcache[l], g->vcache[l], g->d_start, g->d_len,
                             N, H, KVH, D, x->max_len);
}

// Runs N tokens (g->d_tokens at g->d_pos) through the model, filling
// model->hidden (N, C) and the cache.
static void forward(es_gen *g, int N, int ndocs, int max_len) {
    cached_attention_ctx x = {g, ndocs, max_len};
    es_model_forward_with(g->model, g->d_tokens, g->d_pos, N, cached_attention, &x);
}

// logits (n, V) on the host from n rows (C) of hidden states.
static void logits_of(es_gen *g, float *logits, const void *rows, int n) {
    es_model *m = g->model;
    es_backend *be = m->be;
    be->matmul_fwd(be, g->logits, rows, es_model_lm_head(m), NULL, n, m->cfg.hidden,
                   m->cfg.vocab);
    be->download(be, logits, g->logits, (size_t)n * m->cfg.vocab, ES_DT_COMPUTE);
}

static int check_slot(const es_gen *g, int s) {
    if (s < 0 || s >= g->slots) return es_fail("generate: slot %d out of range", s);
    return ES_OK;
}

int es_gen_prefill(es_gen *g, float *logits, const int *slot, const int32_t *const *ids,
                   const int *lens, int n) {
    es_model *m = g->model;
    int N = 0;
    if (n < 1 || n > g->slots) return es_fail("generate: prefill of %d prompts", n);
    for (int i = 0; i < n; i++) {
        if (check_slot(g, slot[i])) return ES_ERR;
        if (g->len[slot[i]]) return es_fail("generate: prefill into busy slot %d", slot[i]);
        if (lens[i] < 1 || lens[i] >= g->max_len)
            return es_fail("generate: prompt of %d tokens does not fit %d cache rows", lens[i],
                           g->max_len);
        for (int j = 0; j < lens[i]; j++)
            if (ids[i][j] < 0 || ids[i][j] >= m->cfg.vocab)
                return es_fail("generate: token id %d outside the vocabulary (%d)", ids[i][j],
                               m->cfg.vocab);
        N += lens[i];
        if (N > m->max_tokens)
            return es_fail("generate: prefill of %d+ tokens exceeds capacity %d", N,
                           m->max_tokens);
    }
    for (int i = 0, t = 0; i < n; i++)
        for (int j = 0; j < lens[i]; j++, t++) g->h_idx[t] = ids[i][j];
    upload_idx(g, g->d_tokens, (size_t)N);
    for (int i = 0, t = 0; i < n; i++)
        for (int j = 0; j < lens[i]; j++, t++) g->h_idx[t] = j;
    upload_idx(g, g->d_pos, (size_t)N);
    for (int i = 0, t = 0; i < n; i++)
        for (int j = 0; j < lens[i]; j++, t++) g->h_idx[t] = slot[i] * g->max_len + j;
    upload_idx(g, g->d_rows, (size_t)N);
    g->h_idx[0] = 0;
    for (int i = 0; i < n; i++) g->h_idx[i + 1] = g->h_idx[i] + lens[i];
    upload_idx(g, g->d_cu, (size_t)n + 1);
    for (int i = 0; i < n; i++) g->h_idx[i] = g->h_idx[i + 1] - 1;  // each prompt's last row
    upload_idx(g, g->d_last, (size_t)n);
    forward(g, N, n, 0);
    m->be->gather_rows(m->be, g->last, m->hidden, g->d_last, n, m->cfg.hidden);
    logits_of(g, logits, g->last, n);
    for (int i = 0; i < n; i++) g->len[slot[i]] = lens[i];
    return ES_OK;
}

int es_gen_decode(es_gen *g, float *logits, const int *slot, const int32_t *token, int n) {
    es_model *m = g->model;
    if (n < 1 || n > g->slots) return es_fail("generate: decode of %d sequences", n);
    int longest = 0;
    for (int i = 0; i < n; i++) {
        if (check_slot(g, slot[i])) return ES_ERR;
        int len = g->len[slot[i]];
        if (len < 1 || len >= g->max_len)
            return es_fail("generate: slot %d holds %d of %d tokens", slot[i], len, g->max_len);
        if (token[i] < 0 || token[i] >= m->cfg.vocab)
            return es_fail("generate: token id %d outside the vocabulary (%d)", token[i],
                           m->cfg.vocab);
        if (len + 1 > longest) longest = len + 1;
    }
    for (int i = 0; i < n; i++) g->h_idx[i] = token[i];
    upload_idx(g, g->d_tokens, (size_t)n);
    for (int i = 0; i < n; i++) g->h_idx[i] = g->len[slot[i]];
    upload_idx(g, g->d_pos, (size_t)n);
    for (int i = 0; i < n; i++) g->h_idx[i] = slot[i] * g->max_len + g->len[slot[i]];
    upload_idx(g, g->d_rows, (size_t)n);
    for (int i = 0; i < n; i++) g->h_idx[i] = slot[i] * g->max_len;
    upload_idx(g, g->d_start, (size_t)n);
    for (int i = 0; i < n; i++) g->h_idx[i] = g->len[slot[i]] + 1;
    upload_idx(g, g->d_len, (size_t)n);
    forward(g, n, 0, longest);
    logits_of(g, logits, m->hidden, n);
    for (int i = 0; i < n; i++) g->len[slot[i]]++;
    return ES_OK;
}
