// Forward/backward orchestration of the decoder over the backend operations
// table. Every device computation is a backend op; this file only decides the
// order, the shapes and which buffers hold what.
#include "model.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"

// ---- buffers ---------------------------------------------------------------

// Allocates a device buffer the model owns (freed by es_model_free).
static int own(es_model *m, void **out, size_t n, es_dtype dt, es_mem_kind kind) {
    void *p = m->be->alloc(m->be, n, dt, kind);
    if (!p) return ES_ERR;  // the backend recorded why
    if (m->nowned == m->cap_owned) {
        m->cap_owned = m->cap_owned ? 2 * m->cap_owned : 64;
        void **grown = realloc(m->owned, (size_t)m->cap_owned * sizeof *grown);
        if (!grown) {
            m->be->free(m->be, p);
            return es_fail("model: out of host memory");
        }
        m->owned = grown;
    }
    m->owned[m->nowned++] = p;
    *out = p;
    return ES_OK;
}

static int own_f32(es_model *m, float **out, size_t n, es_mem_kind kind) {
    void *p = NULL;
    if (own(m, &p, n, ES_DT_F32, kind)) return ES_ERR;
    *out = p;
    return ES_OK;
}

static int is_gpt2(const es_model *m) { return m->cfg.arch == ES_ARCH_GPT2; }

// Groups of one layer's saved tensors, by what recomputation drops.
enum {
    ACTS_INPUT = 1,  // ln1_in: the residual stream entering the layer (always kept)
    ACTS_NORM = 2,   // ln1_out, ln2_out: dropped from level MLP on
    ACTS_MLP = 4,    // gate_up, act: dropped from level MLP on
    ACTS_REST = 8,   // attention tensors, res2, norm statistics: dropped at level FULL
    ACTS_ALL = 15,
};

// Allocates the `groups` of one layer's activations for up to N tokens; the
// other fields are taken from `shared` (NULL: left NULL).
static int alloc_layer_acts(es_model *m, es_layer_acts *a, const es_layer_acts *shared, int groups,
                            size_t N) {
    const es_config *c = &m->cfg;
    size_t C = (size_t)c->hidden, F = (size_t)c->ffn, QD = (size_t)c->heads * c->head_dim,
           KD = (size_t)c->kv_heads * c->head_dim;
    es_mem_kind A = ES_MEM_ACTS;
    if (shared) *a = *shared;
    else memset(a, 0, sizeof *a);
    if ((groups & ACTS_INPUT) && own(m, &a->ln1_in, N * C, ES_DT_COMPUTE, A)) return ES_ERR;
    if ((groups & ACTS_NORM) && (own(m, &a->ln1_out, N * C, ES_DT_COMPUTE, A) ||
                                 own(m, &a->ln2_out, N * C, ES_DT_COMPUTE, A)))
        return ES_ERR;
    if ((groups & ACTS_MLP) && (own(m, &a->gate_up, (is_gpt2(m) ? 1 : 2) * N * F, ES_DT_COMPUTE, A) ||
                                own(m, &a->act, N * F, ES_DT_COMPUTE, A)))
        return ES_ERR;
    if (!(groups & ACTS_REST)) return ES_OK;
    if (own_f32(m, &a->ln1_rstd, N, A) || own(m, &a->q, N * QD, ES_DT_COMPUTE, A) ||
        own(m, &a->k, N * KD, ES_DT_COMPUTE, A) || own(m, &a->v, N * KD, ES_DT_COMPUTE, A) ||
        own(m, &a->att, N * QD, ES_DT_COMPUTE, A) ||
        own_f32(m, &a->lse, N * (size_t)c->heads, A) ||
        own(m, &a->res2, N * C, ES_DT_COMPUTE, A) || own_f32(m, &a->ln2_rstd, N, A))
        return ES_ERR;
    if (is_gpt2(m) && (own_f32(m, &a->ln1_mean, N, A) || own_f32(m, &a->ln2_mean, N, A)))
        return ES_ERR;
    if (c->qk_norm) {
        if (own(m, &a->qkv, N * (QD + 2 * KD), ES_DT_COMPUTE, A) ||
            own_f32(m, &a->q_rstd, N * (size_t)c->heads, A) ||
            own_f32(m, &a->k_rstd, N * (size_t)c->kv_heads, A))
            return ES_ERR;
    }
    return ES_OK;
}

// The per-layer activations. A forward-only model saves nothing, so every
// layer reuses one set; its residual stream is updated in place in ln1_in.
// With recomputation each layer keeps only its own groups and the dropped
// ones point into one set that backward refills layer by layer.
static int alloc_layer_sets(es_model *m, int trainable, size_t N) {
    const es_config *c = &m->cfg;
    m->acts = es_xcalloc((size_t)c->layers, sizeof *m->acts);
    if (!trainable) {
        if (alloc_layer_acts(m, &m->acts[0], NULL, ACTS_ALL, N)) return ES_ERR;
        for (int l = 1; l < c->layers; l++) m->acts[l] = m->acts[0];
        return ES_OK;
    }
    int dropped = 0;
    es_layer_acts shared;
    memset(&shared, 0, sizeof shared);
    if (m->recompute != ES_RECOMPUTE_NONE) {
        dropped = ACTS_NORM | ACTS_MLP | (m->recompute == ES_RECOMPUTE_FULL ? ACTS_REST : 0);
        // The two norm outputs share one buffer: backward recomputes ln1_out
        // only after the MLP's backward is done with ln2_out.
        if (alloc_layer_acts(m, &shared, NULL, dropped & ~ACTS_NORM, N) ||
            own(m, &shared.ln1_out, N * (size_t)c->hidden, ES_DT_COMPUTE, ES_MEM_ACTS))
            return ES_ERR;
        shared.ln2_out = shared.ln1_out;
    }
    for (int l = 0; l < c->layers; l++)
        if (alloc_layer_acts(m, &m->acts[l], &shared, ACTS_ALL & ~dropped, N)) return ES_ERR;
    return ES_OK;
}

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

// Rows of the fused QKV projection: (H + 2 KVH) D.
static int qkv_width(const es_config *c) { return (c->heads + 2 * c->kv_heads) * c->head_dim; }

// The workspace, in elements of N-token rows. Forward: the fused QKV output
// (when not kept) and the projections' outputs at 0. Backward of attention:
// at 0 the output gradient, then dqkv; at work_mid dq | dk | dv, then the
// norm input's gradient. Backward of the MLP: at 0 dgate|dup, at 2F per
// token d(act), then the norm input's gradient.
static size_t work_mid(const es_model *m, size_t N) {
    return N * max_sz((size_t)qkv_width(&m->cfg), (size_t)m->cfg.hidden);
}

static size_t work_size(const es_model *m, size_t N, int trainable) {
    size_t C = (size_t)m->cfg.hidden, F = (size_t)m->cfg.ffn;
    if (!trainable) return work_mid(m, N);
    return max_sz(2 * work_mid(m, N), N * (2 * F + max_sz(F, C)));
}

static void *work_at(const es_model *m, size_t off) {
    return m->be->offset(m->be, m->work, off, ES_DT_COMPUTE);
}

static int alloc_acts(es_model *m, int trainable) {
    const es_config *c = &m->cfg;
    size_t N = (size_t)m->max_tokens, C = (size_t)c->hidden;
    if (alloc_layer_sets(m, trainable, N)) return ES_ERR;
    if (trainable) {
        if (own(m, &m->final_in, N * C, ES_DT_COMPUTE, ES_MEM_ACTS)) return ES_ERR;
    } else {
        m->final_in = m->acts[0].ln1_in;
    }
    if (own(m, &m->hidden, N * C, ES_DT_COMPUTE, ES_MEM_ACTS) ||
        own_f32(m, &m->lnf_rstd, N, ES_MEM_ACTS))
        return ES_ERR;
    if (is_gpt2(m) && own_f32(m, &m->lnf_mean, N, ES_MEM_ACTS)) return ES_ERR;
    if (own(m, &m->work, work_size(m, N, trainable), ES_DT_COMPUTE, ES_MEM_WORKSPACE)) return ES_ERR;
    if (trainable && own(m, &m->dres, N * C, ES_DT_COMPUTE, ES_MEM_WORKSPACE)) return ES_ERR;
    return ES_OK;
}

int es_model_train_mode(int *trainable, const char *recompute) {
    static const char *const names[] = {"none", "mlp", "full"};
    for (int i = 0; i < 3; i++)
        if (!strcmp(recompute, names[i])) {
            *trainable = ES_MODEL_TRAIN + i;
            return ES_OK;
        }
    return es_fail("model: recompute level '%s' is not none, mlp or full", recompute);
}

// The rotary frequencies of the config, computed once and kept on the device.
static int alloc_inv_freq(es_model *m) {
    size_t half = (size_t)m->cfg.head_dim / 2;
    if (own_f32(m, &m->inv_freq, half, ES_MEM_WEIGHTS)) return ES_ERR;
    float *host = es_xmalloc(half * sizeof *host);
    es_rope_inv_freq(host, &m->cfg);
    m->be->upload(m->be, m->inv_freq, host, half, ES_DT_F32);
    free(host);
    return ES_OK;
}

// A model with its own parameters, or (shared != NULL, forward only) one that
// reads another model's parameters.
static int create(es_model *m, const es_config *cfg, es_backend *be, int max_tokens, int trainable,
                  void *shared) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->be = be;
    m->max_tokens = max_tokens;
    if (trainable < ES_MODEL_FORWARD_ONLY || trainable > ES_MODEL_TRAIN_RECOMPUTE_FULL)
        return es_fail("model: unknown training mode %d", trainable);
    m->recompute = trainable > ES_MODEL_TRAIN ? (es_recompute)(trainable - ES_MODEL_TRAIN)
                                              : ES_RECOMPUTE_NONE;
    if (max_tokens < 1) return es_fail("model: max_tokens must be positive (got %d)", max_tokens);
    if (cfg->layers < 1 || cfg->hidden < 1 || cfg->heads < 1 || cfg->kv_heads < 1 ||
        cfg->head_dim < 1 || cfg->ffn < 1 || cfg->vocab < 1 || cfg->heads % cfg->kv_heads)
        return es_fail("model: invalid dimensions in config (%s)", cfg->model_type);
    if (cfg->arch != ES_ARCH_GPT2 && cfg->head_dim % 2)
        return es_fail("model: rotary embedding needs an even head_dim (got %d)", cfg->head_dim);
    if (es_layout_build(&m->layout, cfg)) return ES_ERR;
    if (!is_gpt2(m) && alloc_inv_freq(m)) goto fail;
    if (shared) m->params = shared;
    else if (own(m, &m->params, m->layout.total, ES_DT_COMPUTE, ES_MEM_WEIGHTS)) goto fail;
    if (trainable) {
        void *g = NULL;
        if (own(m, &g, m->layout.total, ES_DT_F32, ES_MEM_GRADS)) goto fail;
        m->grads = g;
        be->zero(be, g, m->layout.total, ES_DT_F32);
    }
    if (alloc_acts(m, trainable)) goto fail;
    return ES_OK;
fail:
    es_model_free(m);
    return ES_ERR;
}

int es_model_create(es_model *m, const es_config *cfg, es_backend *be, int max_tokens,
                    int trainable) {
    return create(m, cfg, be, max_tokens, trainable, NULL);
}

int es_model_create_view(es_model *view, const es_model *src, int max_tokens) {
    return create(view, &src->cfg, src->be, max_tokens, ES_MODEL_FORWARD_ONLY, src->params);
}

void es_model_free(es_model *m) {
    for (int i = 0; i < m->nowned; i++) m->be->free(m->be, m->owned[i]);
    free(m->owned);
    free(m->acts);
    if (m->layout.params) es_layout_free(&m->layout);
    memset(m, 0, sizeof *m);
}

// ---- parameters ------------------------------------------------------------

// Device pointer to parameter `idx` (NULL when the architecture lacks it).
static void *P(const es_model *m, int idx) {
    if (idx < 0) return NULL;
    return m->be->offset(m->be, m->params, m->layout.params[idx].offset, ES_DT_COMPUTE);
}

// Its fp32 gradient (NULL when absent).
static void *G(const es_model *m, int idx) {
    if (idx < 0) return NULL;
    return m->be->offset(m->be, m->grads, m->layout.params[idx].offset, ES_DT_F32);
}

void es_model_init_random(es_model *m, unsigned long long seed) {
    es_rng rng;
    es_rng_seed(&rng, seed);
    size_t most = 0;
    for (int i = 0; i < m->layout.nparams; i++)
        if (m->layout.params[i].numel > most) most = m->layout.params[i].numel;
    float *host = es_xmalloc(most * sizeof *host);
    for (int i = 0; i < m->layout.nparams; i++) {
        const es_param *p = &m->layout.params[i];
        size_t len = strlen(p->name);
        int bias = len >= 5 && !strcmp(p->name + len - 5, ".bias");
        for (size_t j = 0; j < p->numel; j++)
            host[j] = p->ndim == 2 ? 0.02f * es_rng_normal(&rng) : bias ? 0.0f : 1.0f;
        m->be->upload(m->be, P(m, i), host, p->numel, ES_DT_COMPUTE);
    }
    free(host);
}

const void *es_model_lm_head(const es_model *m) { return P(m, m->layout.lm_head); }

int es_model_layer_matmuls(es_matmul_weight out[ES_LAYER_MATMULS], const es_model *m, int layer) {
    const es_config *c = &m->cfg;
    const es_layer_params *lp = &m->layout.layer[layer];
    int C = c->hidden, F = c->ffn, QD = c->heads * c->head_dim, KD = c->kv_heads * c->head_dim, n = 0;
    if (is_gpt2(m)) {
        out[n++] = (es_matmul_weight){P(m, lp->q_w), QD, C};
        out[n++] = (es_matmul_weight){P(m, lp->k_w), KD, C};
        out[n++] = (es_matmul_weight){P(m, lp->v_w), KD, C};
        out[n++] = (es_matmul_weight){P(m, lp->up_w), F, C};
    } else {
        out[n++] = (es_matmul_weight){P(m, lp->q_w), qkv_width(c), C};
        out[n++] = (es_matmul_weight){P(m, lp->gate_w), 2 * F, C};
    }
    out[n++] = (es_matmul_weight){P(m, lp->o_w), C, QD};
    out[n++] = (es_matmul_weight){P(m, lp->down_w), C, F};
    return n;
}

float *es_model_lm_head_grad(es_model *m) {
    return m->grads ? G(m, m->layout.lm_head) : NULL;
}

// ---- forward ---------------------------------------------------------------

// The block's normalisation: LayerNorm with bias for gpt2, RMSNorm otherwise.
static void norm_fwd(es_model *m, void *out, float *mean, float *rstd, const void *inp, int w,
                     int b, int N) {
    es_backend *be = m->be;
    if (is_gpt2(m))
        be->layernorm_fwd(be, out, mean, rstd, inp, P(m, w), P(m, b), N, m->cfg.hidden,
                          m->cfg.norm_eps);
    else
        be->rmsnorm_fwd(be, out, rstd, inp, P(m, w), N, m->cfg.hidden, m->cfg.norm_eps);
}

static void norm_bwd(es_model *m, void *dinp, const void *dout, const void *inp, int w, int b,
                     const float *mean, const float *rstd, int N, int accumulate) {
    es_backend *be = m->be;
    if (is_gpt2(m))
        be->layernorm_bwd(be, dinp, G(m, w), G(m, b), dout, inp, P(m, w), mean, rstd, N,
                          m->cfg.hidden, accumulate);
    else
        be->rmsnorm_bwd(be, dinp, G(m, w), dout, inp, P(m, w), rstd, N, m->cfg.hidden,
                        accumulate);
}

// Layer l's input norm: ln1_out from the residual stream entering the layer.
static void ln1_fwd(es_model *m, es_layer_acts *a, int l, int N) {
    const es_layer_params *lp = &m->layout.layer[l];
    norm_fwd(m, a->ln1_out, a->ln1_mean, a->ln1_rstd, a->ln1_in, lp->ln1_w, lp->ln1_b, N);
}

// The residual add closing a block and the norm after it (the next block's
// or the final one): res = a + b, out = norm(res). One op for the RMSNorm
// models; gpt2 adds, then takes its LayerNorm.
static void residual_norm_fwd(es_model *m, void *res, void *out, float *mean, float *rstd,
                              const void *a, const void *b, int w, int bias, int N) {
    es_backend *be = m->be;
    if (is_gpt2(m)) {
        be->add(be, res, a, b, (size_t)N * m->cfg.hidden);
        norm_fwd(m, out, mean, rstd, res, w, bias, N);
    } else {
        be->add_rmsnorm_fwd(be, res, out, rstd, a, b, P(m, w), N, m->cfg.hidden,
                            m->cfg.norm_eps);
    }
}

static int check_batch(const es_model *m, const es_model_batch *b) {
    if (b->N < 1 || b->N > m->max_tokens)
        return es_fail("model: batch of %d tokens does not fit (capacity %d)", b->N,
                       m->max_tokens);
    if (b->ndocs < 1 || b->ndocs > b->N)
        return es_fail("model: batch of %d tokens has %d documents", b->N, b->ndocs);
    return ES_OK;
}

// The attention block from its normalised input (a->ln1_out): projections,
// qk-norm, rope, the caller's attention step, output projection, then the
// residual add with the MLP block's norm after it (res2, ln2_out).
static void attention_block_fwd(es_model *m, es_layer_acts *a, int layer, const void *pos, int N,
                                es_attention_step attend, const void *ctx) {
    es_backend *be = m->be;
    const es_config *c = &m->cfg;
    const es_layer_params *lp = &m->layout.layer[layer];
    int C = c->hidden, H = c->heads, KVH = c->kv_heads, D = c->head_dim;
    if (is_gpt2(m)) {
        be->matmul_fwd(be, a->q, a->ln1_out, P(m, lp->q_w), P(m, lp->q_b), N, C, H * D);
        be->matmul_fwd(be, a->k, a->ln1_out, P(m, lp->k_w), P(m, lp->k_b), N, C, KVH * D);
        be->matmul_fwd(be, a->v, a->ln1_out, P(m, lp->v_w), P(m, lp->v_b), N, C, KVH * D);
    } else {
        // One matmul over the adjacent q/k/v weights, then split, qk-norm and
        // rope in one pass. The fused rows are kept only for qk-norm's backward.
        void *qkv = c->qk_norm ? a->qkv : m->work;
        be->matmul_fwd(be, qkv, a->ln1_out, P(m, lp->q_w), P(m, lp->q_b), N, C, qkv_width(c));
        be->qkv_fwd(be, a->q, a->k, a->v, a->q_rstd, a->k_rstd, qkv, P(m, lp->q_norm),
                    P(m, lp->k_norm), pos, m->inv_freq, N, H, KVH, D, c->norm_eps);
    }
    attend(ctx, m, a, layer, N);
    be->matmul_fwd(be, m->work, a->att, P(m, lp->o_w), P(m, lp->o_b), N, H * D, C);
    residual_norm_fwd(m, a->res2, a->ln2_out, a->ln2_mean, a->ln2_rstd, a->ln1_in, m->work,
                      lp->ln2_w, lp->ln2_b, N);
}

// Training's attention step: causal within each document of the packed batch.
static void packed_attention(const void *ctx, es_model *m, es_layer_acts *a, int layer, int N) {
    (void)layer;
    const es_model_batch *b = ctx;
    const es_config *c = &m->cfg;
    m->be->attention_fwd(m->be, a->att, a->lse, a->q, a->k, a->v, b->cu_seqlens, b->ndocs, N,
                         c->heads, c->kv_heads, c->head_dim);
}

// The MLP block from its normalised input (a->ln2_out) up to its activation:
// what its backward reads.
static void mlp_inner_fwd(es_model *m, es_layer_acts *a, const es_layer_params *lp, int N) {
    es_backend *be = m->be;
    int C = m->cfg.hidden, F = m->cfg.ffn;
    if (is_gpt2(m)) {
        be->matmul_fwd(be, a->gate_up, a->ln2_out, P(m, lp->up_w), P(m, lp->up_b), N, C, F);
        be->gelu_fwd(be, a->act, a->gate_up, (size_t)N * F);
    } else {  // one matmul over the adjacent gate and up weights
        be->matmul_fwd(be, a->gate_up, a->ln2_out, P(m, lp->gate_w), NULL, N, C, 2 * F);
        be->swiglu_fwd(be, a->act, a->gate_up, N, F);
    }
}

// Layer l's MLP block, closed by the residual add and the norm after it:
// the next layer's input norm, or the final norm after the last layer.
static void mlp_block_fwd(es_model *m, int l, int N) {
    es_backend *be = m->be;
    const es_layout *lo = &m->layout;
    es_layer_acts *a = &m->acts[l];
    const es_layer_params *lp = &lo->layer[l];
    mlp_inner_fwd(m, a, lp, N);
    be->matmul_fwd(be, m->work, a->act, P(m, lp->down_w), P(m, lp->down_b), N, m->cfg.ffn,
                   m->cfg.hidden);
    if (l + 1 < m->cfg.layers) {
        es_layer_acts *next = &m->acts[l + 1];
        const es_layer_params *np = &lo->layer[l + 1];
        residual_norm_fwd(m, next->ln1_in, next->ln1_out, next->ln1_mean, next->ln1_rstd, a->res2,
                          m->work, np->ln1_w, np->ln1_b, N);
    } else {
        residual_norm_fwd(m, m->final_in, m->hidden, m->lnf_mean, m->lnf_rstd, a->res2,
                          m->work, lo->lnf_w, lo->lnf_b, N);
    }
}

void es_model_forward_with(es_model *m, const void *tokens, const void *pos, int N,
                           es_attention_step attend, const void *ctx) {
    es_backend *be = m->be;
    const es_layout *lo = &m->layout;
    be->embed_fwd(be, m->acts[0].ln1_in, tokens, pos, P(m, lo->wte), P(m, lo->wpe), N,
                  m->cfg.hidden);
    ln1_fwd(m, &m->acts[0], 0, N);  // later layers' come with the residual add before them
    for (int l = 0; l < m->cfg.layers; l++) {
        attention_block_fwd(m, &m->acts[l], l, pos, N, attend, ctx);
        mlp_block_fwd(m, l, N);
    }
}

int es_model_forward(es_model *m, const es_model_batch *b) {
    if (check_batch(m, b)) return ES_ERR;
    es_model_forward_with(m, b->tokens, b->pos, b->N, packed_attention, b);
    return ES_OK;
}

// ---- backward --------------------------------------------------------------
// m->dres holds d(loss)/d(residual stream) at the current depth; each block
// adds its branch's input gradient to it on the way down.

static void mlp_block_bwd(es_model *m, const es_layer_acts *a, const es_layer_params *lp, int N) {
    es_backend *be = m->be;
    int C = m->cfg.hidden, F = m->cfg.ffn;
    void *dgu = m->work, *dact = work_at(m, (size_t)N * 2 * F);
    void *dln = dact;  // dact is dead once the activation's backward ran
    be->matmul_bwd(be, dact, G(m, lp->down_w), G(m, lp->down_b), m->dres, a->act,
                   P(m, lp->down_w), N, F, C, 0);
    if (is_gpt2(m)) {
        be->gelu_bwd(be, dgu, dact, a->gate_up, (size_t)N * F);
        be->matmul_bwd(be, dln, G(m, lp->up_w), G(m, lp->up_b), dgu, a->ln2_out, P(m, lp->up_w),
                       N, C, F, 0);
    } else {
        be->swiglu_bwd(be, dgu, dact, a->gate_up, N, F);
        be->matmul_bwd(be, dln, G(m, lp->gate_w), NULL, dgu, a->ln2_out, P(m, lp->gate_w), N, C,
                       2 * F, 0);
    }
    norm_bwd(m, m->dres, dln, a->res2, lp->ln2_w, lp->ln2_b, a->ln2_mean, a->ln2_rstd, N, 1);
}

static void attention_block_bwd(es_model *m, const es_layer_acts *a, const es_layer_params *lp,
                                const es_model_batch *b) {
    es_backend *be = m->be;
    const es_config *c = &m->cfg;
    int N = b->N, C = c->hidden, H = c->heads, KVH = c->kv_heads, D = c->head_dim;
    size_t mid = work_mid(m, (size_t)N), QD = (size_t)N * H * D, KD = (size_t)N * KVH * D;
    void *datt = m->work, *dq = work_at(m, mid), *dk = work_at(m, mid + QD),
         *dv = work_at(m, mid + QD + KD);
    be->matmul_bwd(be, datt, G(m, lp->o_w), G(m, lp->o_b), m->dres, a->att, P(m, lp->o_w), N,
                   H * D, C, 0);
    be->attention_bwd(be, dq, dk, dv, datt, a->q, a->k, a->v, a->att, a->lse, b->cu_seqlens,
                      b->ndocs, N, H, KVH, D);
    if (is_gpt2(m)) {
        void *dln = m->work;  // datt is dead after attention_bwd
        be->matmul_bwd(be, dln, G(m, lp->q_w), G(m, lp->q_b), dq, a->ln1_out, P(m, lp->q_w), N,
                       C, H * D, 0);
        be->matmul_bwd(be, dln, G(m, lp->k_w), G(m, lp->k_b), dk, a->ln1_out, P(m, lp->k_w), N,
                       C, KVH * D, 1);
        be->matmul_bwd(be, dln, G(m, lp->v_w), G(m, lp->v_b), dv, a->ln1_out, P(m, lp->v_w), N,
                       C, KVH * D, 1);
        norm_bwd(m, m->dres, dln, a->ln1_in, lp->ln1_w, lp->ln1_b, a->ln1_mean, a->ln1_rstd, N,
                 1);
        return;
    }
    // rope's inverse and qk-norm's backward into the fused rows (over datt,
    // dead now), then one matmul; dq, dk, dv are dead after the first.
    void *dqkv = m->work, *dln = dq;
    be->qkv_bwd(be, dqkv, G(m, lp->q_norm), G(m, lp->k_norm), dq, dk, dv, a->qkv,
                P(m, lp->q_norm), P(m, lp->k_norm), a->q_rstd, a->k_rstd, b->pos, m->inv_freq, N,
                H, KVH, D);
    be->matmul_bwd(be, dln, G(m, lp->q_w), G(m, lp->q_b), dqkv, a->ln1_out, P(m, lp->q_w), N, C,
                   qkv_width(c), 0);
    norm_bwd(m, m->dres, dln, a->ln1_in, lp->ln1_w, lp->ln1_b, a->ln1_mean, a->ln1_rstd, N, 1);
}

void es_model_layer_range(size_t *lo, size_t *hi, const es_model *m, int layer) {
    const es_layout *L = &m->layout;
    int n = m->cfg.layers;
    // the layout runs embeddings, layers 0..n-1, final norm, untied head
    *lo = layer < 0 ? 0 : layer < n ? L->params[L->layer[layer].ln1_w].offset : L->params[L->lnf_w].offset;
    *hi = layer >= n ? L->total : layer + 1 < n ? L->params[L->layer[layer + 1].ln1_w].offset
                                                : L->params[L->lnf_w].offset;
}

// Tells the hook that backward is done with `layer`'s gradients.
static int grads_done(es_model *m, int layer) {
    if (!m->on_layer_grads) return ES_OK;
    size_t lo, hi;
    es_model_layer_range(&lo, &hi, m, layer);
    return m->on_layer_grads(m->hook_ctx, layer, lo, hi);
}

int es_model_backward(es_model *m, const es_model_batch *b, const void *dhidden) {
    if (!m->grads) return es_fail("model: backward on a forward-only model");
    if (check_batch(m, b)) return ES_ERR;
    es_backend *be = m->be;
    const es_layout *lo = &m->layout;
    int N = b->N;
    norm_bwd(m, m->dres, dhidden, m->final_in, lo->lnf_w, lo->lnf_b, m->lnf_mean, m->lnf_rstd, N,
             0);
    if (grads_done(m, m->cfg.layers)) return ES_ERR;
    for (int l = m->cfg.layers - 1; l >= 0; l--) {
        es_layer_acts *a = &m->acts[l];
        const es_layer_params *lp = &lo->layer[l];
        // The shared set still holds the last layer's tensors from forward.
        // Recomputed norms are those forward fused with the residual adds, bit
        // for bit (add_rmsnorm_fwd normalises its sum as stored).
        if (m->recompute != ES_RECOMPUTE_NONE && l + 1 < m->cfg.layers) {
            if (m->recompute == ES_RECOMPUTE_FULL) {
                ln1_fwd(m, a, l, N);
                attention_block_fwd(m, a, l, b->pos, N, packed_attention, b);
            } else {
                norm_fwd(m, a->ln2_out, a->ln2_mean, a->ln2_rstd, a->res2, lp->ln2_w, lp->ln2_b,
                         N);
            }
            mlp_inner_fwd(m, a, lp, N);
        }
        mlp_block_bwd(m, a, lp, N);
        // ln1_out shares its buffer with ln2_out, which the MLP's backward just read.
        if (m->recompute != ES_RECOMPUTE_NONE) ln1_fwd(m, a, l, N);
        attention_block_bwd(m, a, lp, b);
        if (grads_done(m, l)) return ES_ERR;
    }
    be->embed_bwd(be, G(m, lo->wte), G(m, lo->wpe), m->dres, b->tokens, b->pos, N,
                  m->cfg.hidden);
    return ES_OK;
}
