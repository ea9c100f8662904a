// A whole model on the CUDA backend against the CPU backend: small qwen3 and
// gpt2 models get the same random parameters (rounded to bf16, norms and
// biases moved off 1 and 0) on both, run forward, the distillation loss
// (es_distill_model) and backward on the same packed batch, and must agree on
// the hidden states, the loss, d(loss)/d(hidden) and the gradient of every
// parameter within bf16 tolerance. Prints one table row per compared tensor.
//
// Usage: test_cuda_model [device]   (default cuda; "cpu" checks this test
// itself against a second CPU backend, where every error is ~0)
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "distill.h"
#include "model.h"
#include "test.h"

// bf16 keeps ~3 significant digits; two layers of bf16 activations and
// matmuls with fp32 accumulation stay within a few of its steps.
#define TOL_HIDDEN 3e-2
#define TOL_LOSS 1e-2
#define TOL_GRAD 5e-2

static const char *const configs[][2] = {
    // head_dim 64 != hidden / heads: q/o projections are not square
    {"qwen3", "{\"model_type\": \"qwen3\", \"vocab_size\": 512, \"hidden_size\": 128, "
              "\"intermediate_size\": 256, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
              "\"num_key_value_heads\": 2, \"head_dim\": 64, \"max_position_embeddings\": 1024, "
              "\"rms_norm_eps\": 1e-6, \"rope_theta\": 10000, \"tie_word_embeddings\": false}"},
    {"gpt2", "{\"model_type\": \"gpt2\", \"vocab_size\": 512, \"n_embd\": 128, \"n_layer\": 2, "
             "\"n_head\": 4, \"n_positions\": 1024, \"layer_norm_epsilon\": 1e-5, "
             "\"activation_function\": \"gelu_new\"}"},
};

// Document lengths of the packed batch; a one-token document included.
static const int doc_lens[] = {150, 1, 90, 143};
#define NDOCS ((int)(sizeof doc_lens / sizeof doc_lens[0]))

static es_rng rng;

static void fill_batch(es_microbatch *mb, int V) {
    int N = 0;
    for (int d = 0; d < NDOCS; d++) N += doc_lens[d];
    es_microbatch_alloc(mb, N);
    mb->n = N;
    mb->ndocs = NDOCS;
    mb->nsup = 0;
    mb->cu_seqlens[0] = 0;
    for (int d = 0, t = 0; d < NDOCS; d++) {
        for (int i = 0; i < doc_lens[d]; i++, t++) {
            int last = i + 1 == doc_lens[d];
            uint64_t u = es_rng_u64(&rng) % 4;  // a quarter of the labels unsupervised
            mb->tokens[t] = (int32_t)(es_rng_u64(&rng) % (uint64_t)V);
            mb->pos[t] = i;
            mb->src[t] = i;
            mb->doc_ids[t] = d;
            mb->targets[t] = last ? -1 : (int32_t)(es_rng_u64(&rng) % (uint64_t)V);
            mb->weights[t] = last || u == 0 ? 0.0f : 1.0f;
            mb->nsup += mb->weights[t] > 0;
        }
        mb->cu_seqlens[d + 1] = mb->cu_seqlens[d] + doc_lens[d];
    }
}

// Random parameters in the layout: matrices N(0, 0.05), norm weights near 1,
// biases near 0 (so that a kernel ignoring them shows), rounded to bf16 so
// that both backends hold exactly the same values.
static float *random_params(const es_layout *lo) {
    float *p = es_xmalloc(lo->total * sizeof *p);
    for (int i = 0; i < lo->nparams; i++) {
        const es_param *q = &lo->params[i];
        size_t len = strlen(q->name);
        int bias = len >= 5 && !strcmp(q->name + len - 5, ".bias");
        for (size_t j = 0; j < q->numel; j++) {
            float r = es_rng_normal(&rng);
            float v = q->ndim == 2 ? 0.05f * r : bias ? 0.1f * r : 1.0f + 0.1f * r;
            p[q->offset + j] = es_bf16_to_f32(es_f32_to_bf16(v));
        }
    }
    return p;
}

// One side of the comparison: a model, its batch and the loss workspace.
typedef struct {
    es_model m;
    es_model_batch b;
    es_distill d;
    void *dhidden;  // (N, C)
    double *dsums;  // (2) the loss sums on the device
    double sums[2];
} side;

static int side_run(side *s, es_backend *be, const es_config *cfg, const float *params,
                    const es_microbatch *mb) {
    memset(s, 0, sizeof *s);
    int N = mb->n, C = cfg->hidden;
    if (es_model_create(&s->m, cfg, be, N, 1)) return ES_ERR;
    if (es_distill_create(&s->d, be, N, C, cfg->vocab, 64, 0, 0)) return ES_ERR;
    s->b = (es_model_batch){.N = N, .ndocs = mb->ndocs};
    s->b.tokens = be->alloc(be, (size_t)N, ES_DT_I32, ES_MEM_INDEX);
    s->b.pos = be->alloc(be, (size_t)N, ES_DT_I32, ES_MEM_INDEX);
    s->b.cu_seqlens = be->alloc(be, (size_t)mb->ndocs + 1, ES_DT_I32, ES_MEM_INDEX);
    s->dhidden = be->alloc(be, (size_t)N * C, ES_DT_COMPUTE, ES_MEM_ACTS);
    s->dsums = be->alloc(be, 2, ES_DT_F64, ES_MEM_WORKSPACE);
    if (!s->b.tokens || !s->b.pos || !s->b.cu_seqlens || !s->dhidden || !s->dsums) return ES_ERR;
    be->zero(be, s->dsums, 2, ES_DT_F64);
    be->upload(be, s->m.params, params, s->m.layout.total, ES_DT_COMPUTE);
    be->upload(be, s->b.tokens, mb->tokens, (size_t)N, ES_DT_I32);
    be->upload(be, s->b.pos, mb->pos, (size_t)N, ES_DT_I32);
    be->upload(be, s->b.cu_seqlens, mb->cu_seqlens, (size_t)mb->ndocs + 1, ES_DT_I32);
    // Outputs start as NaN so that anything left unwritten fails.
    float *nan = es_xmalloc((size_t)N * C * sizeof *nan);
    t_poison(nan, (size_t)N * C);
    be->upload(be, s->m.hidden, nan, (size_t)N * C, ES_DT_COMPUTE);
    be->upload(be, s->dhidden, nan, (size_t)N * C, ES_DT_COMPUTE);
    free(nan);

    es_distill_params dp = {.alpha = 1.0f, .tau = 1.0f, .grad_scale = 1.0f / (float)mb->nsup};
    if (es_model_forward(&s->m, &s->b)) return ES_ERR;
    if (es_distill_model(&s->d, s->dsums, s->dhidden, &s->m, NULL, NULL, NULL, mb, &dp)) return ES_ERR;
    if (es_model_backward(&s->m, &s->b, s->dhidden)) return ES_ERR;
    be->download(be, s->sums, s->dsums, 2, ES_DT_F64);
    return ES_OK;
}

static void side_free(side *s) {
    es_backend *be = s->m.be;
    void *bufs[] = {s->b.tokens, s->b.pos, s->b.cu_seqlens, s->dhidden, s->dsums};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) be->free(be, bufs[i]);
    es_distill_free(&s->d);
    if (be) es_model_free(&s->m);
}

static float *fetch(const side *s, const void *p, size_t n, es_dtype dt) {
    float *h = es_xmalloc(n * sizeof *h);
    t_poison(h, n);
    s->m.be->download(s->m.be, h, p, n, dt);
    return h;
}

static void row(const char *model, const char *what, double err, double tol) {
    printf("  %-6s %-44s %9.2e %s\n", model, what, err, err <= tol ? "ok" : "FAIL");
    CHECK(err <= tol, "%s %s: rel err %.3g > %.3g", model, what, err, tol);
}

static void compare_case(es_backend *cpu, es_backend *dev, const char *name, const char *json) {
    es_config cfg;
    if (es_config_parse(&cfg, json, name)) {
        CHECK(0, "%s", es_last_error());
        return;
    }
    es_layout lo;
    if (es_layout_build(&lo, &cfg)) {
        CHECK(0, "%s", es_last_error());
        return;
    }
    es_microbatch mb;
    fill_batch(&mb, cfg.vocab);
    float *params = random_params(&lo);
    side ref = {0}, got = {0};
    int ok = side_run(&ref, cpu, &cfg, params, &mb) == ES_OK;
    CHECK(ok, "%s on cpu: %s", name, es_last_error());
    if (ok) {
        ok = side_run(&got, dev, &cfg, params, &mb) == ES_OK;
        CHECK(ok, "%s on %s: %s", name, dev->name, es_last_error());
    }
    if (ok) {
        size_t NC = (size_t)mb.n * cfg.hidden, total = lo.total;
        float *hr = fetch(&ref, ref.m.hidden, NC, ES_DT_COMPUTE), *hg = fetch(&got, got.m.hidden, NC, ES_DT_COMPUTE);
        row(name, "hidden (final norm output)", t_rel_err(hg, hr, NC, 1e-3), TOL_HIDDEN);
        double lr = ref.sums[0] / mb.nsup, lg = got.sums[0] / mb.nsup;
        CHECK(isfinite(lr) && lr > 0, "%s: reference loss %g", name, lr);
        row(name, "loss", isfinite(lg) ? fabs(lg - lr) / fabs(lr) : INFINITY, TOL_LOSS);
        free(hr);
        free(hg);
        hr = fetch(&ref, ref.dhidden, NC, ES_DT_COMPUTE);
        hg = fetch(&got, got.dhidden, NC, ES_DT_COMPUTE);
        row(name, "dhidden", t_rel_err(hg, hr, NC, 1e-6), TOL_GRAD);
        free(hr);
        free(hg);

        float *gr = fetch(&ref, ref.m.grads, total, ES_DT_F32), *gg = fetch(&got, got.m.grads, total, ES_DT_F32);
        double gmax = 0;
        for (size_t i = 0; i < total; i++)
            if (fabs(gr[i]) > gmax) gmax = fabs(gr[i]);
        CHECK(gmax > 0, "%s: every reference gradient is zero", name);
        // Small gradients are judged against the model's largest, as a
        // parameter with a tiny gradient has no significant digits to match.
        double worst = 0;
        const char *worst_name = "-";
        for (int i = 0; i < lo.nparams; i++) {
            const es_param *p = &lo.params[i];
            double e = t_rel_err(gg + p->offset, gr + p->offset, p->numel, 1e-2 * gmax);
            CHECK(e <= TOL_GRAD, "%s: gradient %s rel err %.3g > %.3g", name, p->name, e, TOL_GRAD);
            if (e > worst || !isfinite(e)) worst = e, worst_name = p->name;
        }
        char what[96];
        snprintf(what, sizeof what, "grads, %d tensors (worst %.30s)", lo.nparams, worst_name);
        row(name, what, worst, TOL_GRAD);
        free(gr);
        free(gg);
    }
    side_free(&got);
    side_free(&ref);
    free(params);
    es_microbatch_free(&mb);
    es_layout_free(&lo);
}

int main(int argc, char **argv) {
    const char *device = argc > 1 ? argv[1] : "cuda";
    es_rng_seed(&rng, 20240611);
    es_backend *cpu = es_backend_cpu_create(), *dev = es_backend_create(device);
    if (!cpu || !dev) {
        fprintf(stderr, "test_cuda_model: %s backend: %s\n", cpu ? device : "cpu", es_last_error());
        if (cpu) cpu->destroy(cpu);
        return t_no_backend_status(es_last_error());
    }
    printf("model forward/backward, %s vs cpu (rel err, tolerances hidden %.0e, loss %.0e, grads %.0e)\n",
           dev->name, TOL_HIDDEN, TOL_LOSS, TOL_GRAD);
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++)
        compare_case(cpu, dev, configs[i][0], configs[i][1]);
    CHECK(T_MEM_HELD(cpu) == 0, "cpu: %zu bytes still allocated", T_MEM_HELD(cpu));
    CHECK(T_MEM_HELD(dev) == 0, "%s: %zu bytes still allocated", dev->name, T_MEM_HELD(dev));
    dev->destroy(dev);
    cpu->destroy(cpu);
    TEST_DONE();
}
