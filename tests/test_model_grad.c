// Whole-model gradient vs central finite differences, for every architecture,
// on a tiny random model and a packed batch of two documents. The loss is
// L = sum(hidden * R) for a fixed random R, so dL/dhidden = R.
// For each parameter tensor, the directional derivative along a random
// direction u restricted to that tensor must match g . u.
#include <math.h>
#include <string.h>

#include "common.h"
#include "model.h"
#include "test.h"

enum { N = 11, NDOCS = 2, MAXT = 16 };
static const int doc_len[NDOCS] = {7, 4};

static es_config tiny_config(es_arch arch) {
    es_config c;
    memset(&c, 0, sizeof c);
    c.arch = arch;
    c.vocab = 17;
    c.hidden = 8;
    c.layers = 2;
    c.heads = 2;
    c.kv_heads = 1;
    c.head_dim = 4;
    c.ffn = 12;
    c.max_pos = 32;
    c.rope_theta = 10000.0f;
    c.norm_eps = 1e-5f;
    c.bos_id = c.eos_id = -1;
    switch (arch) {
    case ES_ARCH_QWEN3:
        strcpy(c.model_type, "qwen3");
        c.head_dim = 6;  // heads * head_dim != hidden
        c.qk_norm = 1;
        c.tied = 1;
        break;
    case ES_ARCH_QWEN2:
        strcpy(c.model_type, "qwen2");
        c.qkv_bias = 1;
        break;
    case ES_ARCH_LLAMA:
        strcpy(c.model_type, "llama");
        c.qkv_bias = c.o_bias = 1;
        break;
    case ES_ARCH_GPT2:
        strcpy(c.model_type, "gpt2");
        c.kv_heads = c.heads;
        c.ffn = 4 * c.hidden;
        c.rope_theta = 0.0f;
        c.qkv_bias = c.o_bias = c.mlp_bias = 1;
        c.tied = 1;
        break;
    }
    return c;
}

// Sets every parameter to values of order one (norms near 1, biases near 0) so
// that each path carries signal; returns the host copy.
static float *randomise(es_model *m, es_rng *rng) {
    float *p = es_xmalloc(m->layout.total * sizeof *p);
    for (int i = 0; i < m->layout.nparams; i++) {
        const es_param *pp = &m->layout.params[i];
        size_t len = strlen(pp->name);
        int bias = len >= 5 && !strcmp(pp->name + len - 5, ".bias");
        for (size_t j = 0; j < pp->numel; j++) {
            float z = es_rng_normal(rng);
            p[pp->offset + j] = pp->ndim == 2 ? 0.25f * z : bias ? 0.2f * z : 1.0f + 0.2f * z;
        }
    }
    m->be->upload(m->be, m->params, p, m->layout.total, ES_DT_COMPUTE);
    return p;
}

static double loss_of(es_model *m, const es_model_batch *b, const float *R, float *hidden) {
    t_poison(hidden, (size_t)N * m->cfg.hidden);
    m->be->upload(m->be, m->hidden, hidden, (size_t)N * m->cfg.hidden, ES_DT_COMPUTE);
    if (es_model_forward(m, b)) return NAN;
    m->be->download(m->be, hidden, m->hidden, (size_t)N * m->cfg.hidden, ES_DT_COMPUTE);
    double L = 0;
    for (int i = 0; i < N * m->cfg.hidden; i++) L += (double)hidden[i] * R[i];
    return L;
}

static void check_arch(es_backend *be, es_arch arch, es_rng *rng) {
    es_config cfg = tiny_config(arch);
    es_model m, fwd_only;
    if (es_model_create(&m, &cfg, be, MAXT, 1)) {
        CHECK(0, "%s: create: %s", cfg.model_type, es_last_error());
        return;
    }
    if (es_model_create(&fwd_only, &cfg, be, MAXT, 0)) {
        CHECK(0, "%s: create forward-only: %s", cfg.model_type, es_last_error());
        es_model_free(&m);
        return;
    }
    int C = cfg.hidden;
    size_t total = m.layout.total;
    float *params = randomise(&m, rng);
    be->upload(be, fwd_only.params, params, total, ES_DT_COMPUTE);

    int32_t tokens[N], pos[N], cu[NDOCS + 1] = {0};
    for (int d = 0, i = 0; d < NDOCS; d++) {
        for (int j = 0; j < doc_len[d]; j++, i++) {
            tokens[i] = (int32_t)(es_rng_u64(rng) % (uint64_t)cfg.vocab);
            pos[i] = j;
        }
        cu[d + 1] = cu[d] + doc_len[d];
    }
    es_model_batch b = {.N = N, .ndocs = NDOCS};
    b.tokens = be->alloc(be, N, ES_DT_I32, ES_MEM_INDEX);
    b.pos = be->alloc(be, N, ES_DT_I32, ES_MEM_INDEX);
    b.cu_seqlens = be->alloc(be, NDOCS + 1, ES_DT_I32, ES_MEM_INDEX);
    void *dh = be->alloc(be, (size_t)N * C, ES_DT_COMPUTE, ES_MEM_ACTS);
    CHECK(b.tokens && b.pos && b.cu_seqlens && dh, "alloc: %s", es_last_error());
    be->upload(be, b.tokens, tokens, N, ES_DT_I32);
    be->upload(be, b.pos, pos, N, ES_DT_I32);
    be->upload(be, b.cu_seqlens, cu, NDOCS + 1, ES_DT_I32);

    float *R = es_xmalloc((size_t)N * C * sizeof *R), *hidden = es_xmalloc((size_t)N * C * 4),
          *hidden2 = es_xmalloc((size_t)N * C * 4);
    for (int i = 0; i < N * C; i++) R[i] = es_rng_normal(rng);

    // The forward-only model (one shared activation set) computes the same hidden.
    double L0 = loss_of(&m, &b, R, hidden);
    double L1 = loss_of(&fwd_only, &b, R, hidden2);
    CHECK(isfinite(L0) && fabs(L1 - L0) <= 1e-6 * fabs(L0) &&
              t_rel_err(hidden2, hidden, (size_t)N * C, 1e-6) < 1e-6,
          "%s: forward-only hidden differs (%g)", cfg.model_type,
          t_rel_err(hidden2, hidden, (size_t)N * C, 1e-6));
    CHECK(es_model_backward(&fwd_only, &b, dh) == ES_ERR, "%s: forward-only backward accepted",
          cfg.model_type);

    // Analytic gradient.
    CHECK(loss_of(&m, &b, R, hidden) == L0, "%s: forward not deterministic", cfg.model_type);
    be->upload(be, dh, R, (size_t)N * C, ES_DT_COMPUTE);
    CHECK(es_model_backward(&m, &b, dh) == ES_OK, "%s: backward: %s", cfg.model_type,
          es_last_error());
    float *g = es_xmalloc(total * sizeof *g);
    be->download(be, g, m.grads, total, ES_DT_F32);
    double gall = 0;
    for (size_t i = 0; i < total; i++) gall += (double)g[i] * g[i];
    gall = sqrt(gall);
    CHECK(isfinite(gall) && gall > 0, "%s: gradient norm %g", cfg.model_type, gall);

    // Backward accumulates: a second pass doubles every gradient.
    CHECK(loss_of(&m, &b, R, hidden) == L0, "%s: forward changed", cfg.model_type);
    CHECK(es_model_backward(&m, &b, dh) == ES_OK, "%s: second backward", cfg.model_type);
    float *g2 = es_xmalloc(total * sizeof *g2), *g_twice = es_xmalloc(total * sizeof *g2);
    be->download(be, g2, m.grads, total, ES_DT_F32);
    for (size_t i = 0; i < total; i++) g_twice[i] = 2.0f * g[i];
    CHECK(t_rel_err(g2, g_twice, total, 1e-6) < 1e-5, "%s: gradients do not accumulate (%g)",
          cfg.model_type, t_rel_err(g2, g_twice, total, 1e-6));

    // Directional finite differences, one tensor at a time.
    const float eps = 2e-3f;
    float *u = es_xmalloc(total * sizeof *u), *pp = es_xmalloc(total * sizeof *pp);
    for (int t = 0; t < m.layout.nparams; t++) {
        const es_param *p = &m.layout.params[t];
        double gu = 0, gn = 0;
        for (size_t j = 0; j < p->numel; j++) {
            u[j] = es_rng_normal(rng);
            gu += (double)g[p->offset + j] * u[j];
            gn += (double)g[p->offset + j] * g[p->offset + j];
        }
        double Lpm[2];
        for (int s = 0; s < 2; s++) {
            memcpy(pp, params, total * sizeof *pp);
            for (size_t j = 0; j < p->numel; j++) pp[p->offset + j] += (s ? -eps : eps) * u[j];
            be->upload(be, m.params, pp, total, ES_DT_COMPUTE);
            Lpm[s] = loss_of(&m, &b, R, hidden);
        }
        double fd = (Lpm[0] - Lpm[1]) / (2.0 * eps);
        double tol = 2e-2 * sqrt(gn) + 2e-4 * gall;
        CHECK(fabs(fd - gu) <= tol, "%s: %s: finite difference %.6g vs gradient %.6g (tol %.3g)",
              cfg.model_type, p->name, fd, gu, tol);
    }
    be->upload(be, m.params, params, total, ES_DT_COMPUTE);

    // A batch larger than the activation capacity is refused with a message.
    es_model_batch big = b;
    big.N = MAXT + 1;
    CHECK(es_model_forward(&m, &big) == ES_ERR && strstr(es_last_error(), "capacity"),
          "%s: oversized batch accepted", cfg.model_type);

    printf("%s: gradient checked on %d tensors\n", cfg.model_type, m.layout.nparams);
    free(u);
    free(pp);
    free(g);
    free(g2);
    free(g_twice);
    free(R);
    free(hidden);
    free(hidden2);
    free(params);
    be->free(be, b.tokens);
    be->free(be, b.pos);
    be->free(be, b.cu_seqlens);
    be->free(be, dh);
    es_model_free(&fwd_only);
    es_model_free(&m);
}

int main(void) {
    es_backend *be = es_backend_cpu_create();
    if (!be) {
        fprintf(stderr, "cpu backend: %s\n", es_last_error());
        return 1;
    }
    es_rng rng;
    es_rng_seed(&rng, 20240607);
    const es_arch arches[] = {ES_ARCH_QWEN3, ES_ARCH_QWEN2, ES_ARCH_LLAMA, ES_ARCH_GPT2};
    for (int i = 0; i < 4; i++) check_arch(be, arches[i], &rng);

    // Bad sizes are refused with a message, and the half-made model frees cleanly.
    es_config cfg = tiny_config(ES_ARCH_QWEN3);
    es_model m;
    CHECK(es_model_create(&m, &cfg, be, 0, 1) == ES_ERR && strstr(es_last_error(), "max_tokens"),
          "zero capacity accepted");
    es_model_free(&m);
    cfg.kv_heads = 4;  // does not divide 2 heads
    CHECK(es_model_create(&m, &cfg, be, MAXT, 1) == ES_ERR && strstr(es_last_error(), "config"),
          "kv_heads not dividing heads accepted");
    es_model_free(&m);
    CHECK(be->mem_now_total == 0, "%zu bytes still allocated", be->mem_now_total);
    be->destroy(be);
    TEST_DONE();
}
