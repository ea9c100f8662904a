// Whole-model gradient vs central finite differences, for every architecture,
// on a tiny random model and a packed batch of two documents. The loss is
// L = sum(hidden * R) for a fixed random R, so dL/dhidden = R.
// For each parameter tensor, the directional derivative along a random
// direction u restricted to that tensor must match g . u.
// Activation recomputation (levels mlp and full) must give the same hidden
// state and the same gradients bit for bit, with activation memory lower by
// exactly the tensors it drops.
#include <math.h>
#include <string.h>

#include "common.h"
#include "model.h"
#include "test.h"
#include "test_models.h"

enum { N = 11, NDOCS = 2, MAXT = 16 };
static const int doc_len[NDOCS] = {7, 4};

static es_config tiny_config(es_arch arch) {
    es_config c = t_config(arch, (t_sizes){.vocab = 17, .hidden = 8, .layers = 2, .heads = 2,
                                           .kv_heads = 1, .head_dim = 4, .ffn = 12, .max_pos = 32});
    if (arch == ES_ARCH_QWEN3) c.head_dim = 6;  // heads * head_dim != hidden
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

// A packed batch of NDOCS documents of random tokens, positions restarting at 0.
static int make_batch(es_model_batch *b, es_backend *be, const es_config *cfg, es_rng *rng) {
    int32_t tokens[N], pos[N], cu[NDOCS + 1] = {0};
    for (int d = 0, i = 0; d < NDOCS; d++) {
        for (int j = 0; j < doc_len[d]; j++, i++) {
            tokens[i] = (int32_t)(es_rng_u64(rng) % (uint64_t)cfg->vocab);
            pos[i] = j;
        }
        cu[d + 1] = cu[d] + doc_len[d];
    }
    return t_batch_upload(b, be, tokens, pos, cu, N, NDOCS);
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

    es_model_batch b;
    void *dh = be->alloc(be, (size_t)N * C, ES_DT_COMPUTE, ES_MEM_ACTS);
    CHECK(make_batch(&b, be, &cfg, rng) == ES_OK && dh, "alloc: %s", es_last_error());

    float *R = es_xmalloc((size_t)N * C * sizeof *R), *hidden = es_xmalloc((size_t)N * C * 4),
          *hidden2 = es_xmalloc((size_t)N * C * 4);
    t_fill_normal(R, (size_t)N * C, 1.0f, rng);

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
    t_batch_free(be, &b);
    be->free(be, dh);
    es_model_free(&fwd_only);
    es_model_free(&m);
}

// Peak activation bytes of a model alone on a fresh backend; 0 on failure.
static size_t acts_peak(const es_config *cfg, int trainable) {
    es_backend *be = es_backend_cpu_create();
    es_model m;
    size_t peak = 0;
    if (be && es_model_create(&m, cfg, be, MAXT, trainable) == ES_OK) {
        peak = be->mem_peak[ES_MEM_ACTS];
        es_model_free(&m);
    }
    if (be) be->destroy(be);
    return peak;
}

// Activation memory per level, from the tensors each level keeps (CPU: 4-byte
// elements everywhere).
static void check_recompute_memory(const es_config *cfg) {
    size_t n = MAXT, L = (size_t)cfg->layers, C = (size_t)cfg->hidden, F = (size_t)cfg->ffn,
           H = (size_t)cfg->heads, KVH = (size_t)cfg->kv_heads, QD = H * cfg->head_dim,
           KD = KVH * cfg->head_dim;
    int gpt2 = cfg->arch == ES_ARCH_GPT2;
    size_t norm_out = 2 * n * C, mlp = (gpt2 ? 2 : 3) * n * F;
    // res2, q, att, k, v, lse, rstd x2 (+ mean x2), the fused q|k|v rows
    // qk-norm reads in backward and its rstd
    size_t rest = n * (C + 2 * QD + 2 * KD + H + 2 + (gpt2 ? 2 : 0)) +
                  (cfg->qk_norm ? n * (QD + 2 * KD + H + KVH) : 0);
    size_t layer = n * C + norm_out + mlp + rest;
    size_t none = acts_peak(cfg, ES_MODEL_TRAIN), fwd = acts_peak(cfg, ES_MODEL_FORWARD_ONLY);
    size_t lmlp = acts_peak(cfg, ES_MODEL_TRAIN_RECOMPUTE_MLP),
           full = acts_peak(cfg, ES_MODEL_TRAIN_RECOMPUTE_FULL);
    CHECK(none > 0 && fwd > 0 && lmlp > 0 && full > 0, "%s: create: %s", cfg->model_type,
          es_last_error());
    // Dropped from every layer, plus one shared set (the norm outputs share a buffer).
    size_t mlp_saved = 4 * (L * (norm_out + mlp) - (n * C + mlp));
    size_t full_saved = 4 * (L * (layer - n * C) - (layer - n * C - n * C));
    CHECK(none - lmlp == mlp_saved, "%s: mlp saves %zu bytes, expected %zu", cfg->model_type,
          none - lmlp, mlp_saved);
    CHECK(none - full == full_saved, "%s: full saves %zu bytes, expected %zu", cfg->model_type,
          none - full, full_saved);
    // A forward-only model keeps one set and no separate final_in, whatever the levels do.
    CHECK(none - fwd == 4 * ((L - 1) * layer + n * C), "%s: forward-only holds %zu bytes of %zu",
          cfg->model_type, fwd, none);
    printf("%s: activation bytes none %zu, mlp %zu, full %zu, forward-only %zu\n",
           cfg->model_type, none, lmlp, full, fwd);
}

// Hidden state and gradients (after two accumulated backward passes) at each
// recompute level equal those without recomputation, bit for bit: backward
// reruns the same ops on the same inputs.
static void check_recompute(es_backend *be, es_arch arch, es_rng *rng) {
    es_config cfg = tiny_config(arch);
    cfg.layers = 3;  // a middle layer: recomputed between two others
    check_recompute_memory(&cfg);
    const int modes[3] = {ES_MODEL_TRAIN, ES_MODEL_TRAIN_RECOMPUTE_MLP,
                          ES_MODEL_TRAIN_RECOMPUTE_FULL};
    es_model m[3];
    int made = 0;
    for (; made < 3; made++)
        if (es_model_create(&m[made], &cfg, be, MAXT, modes[made])) break;
    CHECK(made == 3, "%s: create mode %d: %s", cfg.model_type, made, es_last_error());
    es_model_batch b[2];
    int nb = 0;
    size_t NC = (size_t)N * cfg.hidden;
    void *dh = be->alloc(be, NC, ES_DT_COMPUTE, ES_MEM_ACTS);
    float *R = es_xmalloc(2 * NC * sizeof *R), *hidden = es_xmalloc(NC * sizeof *hidden),
          *hidden0 = es_xmalloc(NC * sizeof *hidden0);
    float *params = NULL, *g0 = NULL, *g = NULL;
    if (made < 3 || !dh) goto done;
    for (; nb < 2; nb++)
        if (make_batch(&b[nb], be, &cfg, rng)) break;
    CHECK(nb == 2, "alloc: %s", es_last_error());
    if (nb < 2) goto done;
    params = randomise(&m[0], rng);
    size_t total = m[0].layout.total;
    g0 = es_xmalloc(total * sizeof *g0);
    g = es_xmalloc(total * sizeof *g);
    t_fill_normal(R, 2 * NC, 1.0f, rng);
    for (int i = 0; i < 3; i++) {
        be->upload(be, m[i].params, params, total, ES_DT_COMPUTE);
        // Two different batches accumulate, so stale tensors of the other batch would show.
        for (int k = 0; k < 2; k++) {
            be->upload(be, dh, R + k * NC, NC, ES_DT_COMPUTE);
            double L = loss_of(&m[i], &b[k], R + k * NC, hidden);
            CHECK(isfinite(L), "%s: mode %d forward", cfg.model_type, modes[i]);
            CHECK(es_model_backward(&m[i], &b[k], dh) == ES_OK, "%s: mode %d backward: %s",
                  cfg.model_type, modes[i], es_last_error());
        }
        if (i == 0) {
            memcpy(hidden0, hidden, NC * sizeof *hidden);
            be->download(be, g0, m[0].grads, total, ES_DT_F32);
            double gn = 0;
            for (size_t j = 0; j < total; j++) gn += (double)g0[j] * g0[j];
            CHECK(isfinite(gn) && gn > 0, "%s: gradient norm %g", cfg.model_type, sqrt(gn));
            continue;
        }
        be->download(be, g, m[i].grads, total, ES_DT_F32);
        CHECK(t_rel_err(hidden, hidden0, NC, 1e-6) == 0, "%s: mode %d hidden differs (%g)",
              cfg.model_type, modes[i], t_rel_err(hidden, hidden0, NC, 1e-6));
        CHECK(t_rel_err(g, g0, total, 1e-6) == 0, "%s: mode %d gradients differ (%g)",
              cfg.model_type, modes[i], t_rel_err(g, g0, total, 1e-6));
    }
    printf("%s: recompute mlp and full compared with none\n", cfg.model_type);
done:
    free(params);
    free(g0);
    free(g);
    free(R);
    free(hidden);
    free(hidden0);
    for (int k = 0; k < nb; k++) t_batch_free(be, &b[k]);
    if (dh) be->free(be, dh);
    for (int i = 0; i < made; i++) es_model_free(&m[i]);
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
    for (int i = 0; i < 4; i++) check_recompute(be, arches[i], &rng);

    int mode = -1;
    CHECK(es_model_train_mode(&mode, "full") == ES_OK && mode == ES_MODEL_TRAIN_RECOMPUTE_FULL,
          "recompute 'full' gives mode %d", mode);
    CHECK(es_model_train_mode(&mode, "some") == ES_ERR && strstr(es_last_error(), "'some'"),
          "recompute 'some' accepted");

    // Bad sizes are refused with a message, and the half-made model frees cleanly.
    es_config cfg = tiny_config(ES_ARCH_QWEN3);
    es_model m;
    CHECK(es_model_create(&m, &cfg, be, 0, 1) == ES_ERR && strstr(es_last_error(), "max_tokens"),
          "zero capacity accepted");
    es_model_free(&m);
    CHECK(es_model_create(&m, &cfg, be, MAXT, ES_MODEL_TRAIN_RECOMPUTE_FULL + 1) == ES_ERR &&
              strstr(es_last_error(), "training mode"),
          "unknown training mode accepted");
    es_model_free(&m);
    cfg.kv_heads = 4;  // does not divide 2 heads
    CHECK(es_model_create(&m, &cfg, be, MAXT, 1) == ES_ERR && strstr(es_last_error(), "config"),
          "kv_heads not dividing heads accepted");
    es_model_free(&m);
    CHECK(be->mem_now_total == 0, "%zu bytes still allocated", be->mem_now_total);
    be->destroy(be);
    TEST_DONE();
}
