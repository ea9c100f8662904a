// The flat parameter buffer: every tensor named as in Hugging Face's
// qwen3/llama models, contiguous, in a fixed order. GPT-2 uses the same names
// (its c_fc is mlp.up_proj, c_proj mlp.down_proj, ln_f model.norm) plus its
// learned positions, named "model.wpe.weight" (P, C). Outside gpt2 the q/k/v
// weights are adjacent (then their biases), as are gate and up, so that each
// group is one matrix for one matmul. Checkpoints before this order
// (qkv_bias models only) are refused on resume (checkpoint.c).
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "model.h"

typedef struct {
    es_layout *lo;
    int cap;
} builder;

// Appends a parameter and returns its index. Matrices decay (embeddings too,
// as most trainers do); norms and biases do not.
static int add(builder *b, const char *name, int rows, int cols) {
    es_layout *lo = b->lo;
    if (lo->nparams == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 64;
        es_param *p = es_xmalloc((size_t)b->cap * sizeof *p);
        if (lo->nparams) memcpy(p, lo->params, (size_t)lo->nparams * sizeof *p);
        free(lo->params);
        lo->params = p;
    }
    es_param *p = &lo->params[lo->nparams];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = cols ? 2 : 1;
    p->shape[0] = rows;
    p->shape[1] = cols;
    p->numel = (size_t)rows * (size_t)(cols ? cols : 1);
    p->offset = lo->total;
    p->decay = p->ndim == 2;
    lo->total += p->numel;
    return lo->nparams++;
}

static int add_layer(builder *b, const char *pre, int rows, int cols, const char *suffix) {
    char name[96];
    snprintf(name, sizeof name, "%s%s", pre, suffix);
    return add(b, name, rows, cols);
}

static void build_layer(builder *b, es_layer_params *lp, const es_config *c, int l) {
    int C = c->hidden, QD = c->heads * c->head_dim, KD = c->kv_heads * c->head_dim, F = c->ffn;
    int ln_bias = c->arch == ES_ARCH_GPT2;  // LayerNorm has a bias, RMSNorm not
    char pre[64];
    snprintf(pre, sizeof pre, "model.layers.%d.", l);
    lp->ln1_w = add_layer(b, pre, C, 0, "input_layernorm.weight");
    lp->ln1_b = ln_bias ? add_layer(b, pre, C, 0, "input_layernorm.bias") : -1;
    if (c->arch == ES_ARCH_GPT2) {  // each projection with its bias, as before
        lp->q_w = add_layer(b, pre, QD, C, "self_attn.q_proj.weight");
        lp->q_b = add_layer(b, pre, QD, 0, "self_attn.q_proj.bias");
        lp->k_w = add_layer(b, pre, KD, C, "self_attn.k_proj.weight");
        lp->k_b = add_layer(b, pre, KD, 0, "self_attn.k_proj.bias");
        lp->v_w = add_layer(b, pre, KD, C, "self_attn.v_proj.weight");
        lp->v_b = add_layer(b, pre, KD, 0, "self_attn.v_proj.bias");
    } else {  // one ((H + 2 KVH) D, C) matrix and one bias: the fused QKV matmul's
        lp->q_w = add_layer(b, pre, QD, C, "self_attn.q_proj.weight");
        lp->k_w = add_layer(b, pre, KD, C, "self_attn.k_proj.weight");
        lp->v_w = add_layer(b, pre, KD, C, "self_attn.v_proj.weight");
        lp->q_b = c->qkv_bias ? add_layer(b, pre, QD, 0, "self_attn.q_proj.bias") : -1;
        lp->k_b = c->qkv_bias ? add_layer(b, pre, KD, 0, "self_attn.k_proj.bias") : -1;
        lp->v_b = c->qkv_bias ? add_layer(b, pre, KD, 0, "self_attn.v_proj.bias") : -1;
    }
    lp->q_norm = c->qk_norm ? add_layer(b, pre, c->head_dim, 0, "self_attn.q_norm.weight") : -1;
    lp->k_norm = c->qk_norm ? add_layer(b, pre, c->head_dim, 0, "self_attn.k_norm.weight") : -1;
    lp->o_w = add_layer(b, pre, C, QD, "self_attn.o_proj.weight");
    lp->o_b = c->o_bias ? add_layer(b, pre, C, 0, "self_attn.o_proj.bias") : -1;
    lp->ln2_w = add_layer(b, pre, C, 0, "post_attention_layernorm.weight");
    lp->ln2_b = ln_bias ? add_layer(b, pre, C, 0, "post_attention_layernorm.bias") : -1;
    // gate then up: one (2F, C) matrix, the fused gate|up matmul's
    lp->gate_w = c->arch == ES_ARCH_GPT2 ? -1 : add_layer(b, pre, F, C, "mlp.gate_proj.weight");
    lp->up_w = add_layer(b, pre, F, C, "mlp.up_proj.weight");
    lp->up_b = c->mlp_bias ? add_layer(b, pre, F, 0, "mlp.up_proj.bias") : -1;
    lp->down_w = add_layer(b, pre, C, F, "mlp.down_proj.weight");
    lp->down_b = c->mlp_bias ? add_layer(b, pre, C, 0, "mlp.down_proj.bias") : -1;
}

int es_layout_build(es_layout *lo, const es_config *c) {
    memset(lo, 0, sizeof *lo);
    if (c->vocab < 1 || c->hidden < 1 || c->layers < 1 || c->heads < 1 || c->kv_heads < 1 ||
        c->head_dim < 1 || c->ffn < 1 || (c->arch == ES_ARCH_GPT2 && c->max_pos < 1))
        return es_fail("model: layout needs positive sizes (%s)", c->model_type);
    builder b = {lo, 0};
    lo->wte = add(&b, "model.embed_tokens.weight", c->vocab, c->hidden);
    lo->wpe = c->arch == ES_ARCH_GPT2 ? add(&b, "model.wpe.weight", c->max_pos, c->hidden) : -1;
    lo->layer = es_xcalloc((size_t)c->layers, sizeof *lo->layer);
    for (int l = 0; l < c->layers; l++) build_layer(&b, &lo->layer[l], c, l);
    lo->lnf_w = add(&b, "model.norm.weight", c->hidden, 0);
    lo->lnf_b = c->arch == ES_ARCH_GPT2 ? add(&b, "model.norm.bias", c->hidden, 0) : -1;
    lo->lm_head = c->tied ? lo->wte : add(&b, "lm_head.weight", c->vocab, c->hidden);
    return ES_OK;
}

void es_layout_free(es_layout *lo) {
    free(lo->params);
    free(lo->layer);
    memset(lo, 0, sizeof *lo);
}

int es_layout_find(const es_layout *lo, const char *name) {
    for (int i = 0; i < lo->nparams; i++)
        if (!strcmp(lo->params[i].name, name)) return i;
    return -1;
}
