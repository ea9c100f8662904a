// The CPU backend against Hugging Face transformers: for each fixture written
// by tools/make_fixtures.py, load the model with es_model_load_hf, run the
// packed batch forward, the full LM head and the cross-entropy, then backward,
// and compare logits, loss and the gradient of every parameter (by its
// Hugging Face name) with the reference.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "model.h"
#include "safetensors.h"
#include "test.h"
#include "test_models.h"

#define TOL 1e-4

static const char *const cases[] = T_FIXTURE_CASES;

// GPT-2's Conv1D modules hold (in, out) weights whose output columns are the
// internal (out, in) matrices of `parts` side by side; biases are concatenated.
typedef struct {
    const char *hf;        // module inside transformer.h.<l>.
    const char *parts[3];  // internal modules inside model.layers.<l>.
    int conv;              // Conv1D: transposed weight
} gpt2_module;

static const gpt2_module gpt2_modules[] = {
    {"attn.c_attn", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}, 1},
    {"attn.c_proj", {"self_attn.o_proj"}, 1},
    {"mlp.c_fc", {"mlp.up_proj"}, 1},
    {"mlp.c_proj", {"mlp.down_proj"}, 1},
    {"ln_1", {"input_layernorm"}, 0},
    {"ln_2", {"post_attention_layernorm"}, 0},
};

static const char *const gpt2_top[][2] = {
    {"transformer.wte.weight", "model.embed_tokens.weight"},
    {"transformer.wpe.weight", "model.wpe.weight"},
    {"transformer.ln_f.weight", "model.norm.weight"},
    {"transformer.ln_f.bias", "model.norm.bias"},
};

// Writes our gradient of Hugging Face parameter `hf` into out, in Hugging Face
// layout; returns its element count, or 0 when the name maps to nothing.
static size_t internal_grad(float *out, const es_layout *lo, const float *g, const char *hf,
                            int gpt2) {
    if (!gpt2) {
        int i = es_layout_find(lo, hf);
        if (i < 0) return 0;
        memcpy(out, g + lo->params[i].offset, lo->params[i].numel * sizeof *out);
        return lo->params[i].numel;
    }
    for (size_t t = 0; t < sizeof gpt2_top / sizeof gpt2_top[0]; t++) {
        if (strcmp(hf, gpt2_top[t][0])) continue;
        return internal_grad(out, lo, g, gpt2_top[t][1], 0);
    }
    int l, at = 0;
    if (sscanf(hf, "transformer.h.%d.%n", &l, &at) != 1 || !at) return 0;
    const char *rest = hf + at, *kind = strrchr(rest, '.');
    if (!kind) return 0;
    for (size_t k = 0; k < sizeof gpt2_modules / sizeof gpt2_modules[0]; k++) {
        const gpt2_module *mod = &gpt2_modules[k];
        size_t len = strlen(mod->hf);
        if (strncmp(rest, mod->hf, len) || rest + len != kind) continue;
        int idx[3], nparts = 0, out_total = 0;
        for (; nparts < 3 && mod->parts[nparts]; nparts++) {
            char name[96];
            snprintf(name, sizeof name, "model.layers.%d.%s%s", l, mod->parts[nparts], kind);
            idx[nparts] = es_layout_find(lo, name);
            if (idx[nparts] < 0) return 0;
            out_total += lo->params[idx[nparts]].shape[0];
        }
        int is_weight = !strcmp(kind, ".weight");
        size_t n = 0;
        for (int p = 0, o_off = 0; p < nparts; p++) {
            const es_param *pp = &lo->params[idx[p]];
            const float *src = g + pp->offset;
            if (is_weight && mod->conv) {  // (out_p, in) -> columns of (in, out_total)
                int OC = pp->shape[0], IC = pp->shape[1];
                for (int o = 0; o < OC; o++)
                    for (int i = 0; i < IC; i++) out[(size_t)i * out_total + o_off + o] = src[(size_t)o * IC + i];
                o_off += OC;
            } else {
                memcpy(out + n, src, pp->numel * sizeof *out);
            }
            n += pp->numel;
        }
        return n;
    }
    return 0;
}

// Compares every Hugging Face gradient in io with ours. Each must have a
// counterpart and the counts must add up to our whole buffer, so that no
// parameter goes unchecked. Returns the worst relative error.
static double compare_grads(const es_st_file *io, const es_model *m, const char *name) {
    size_t total = m->layout.total, covered = 0;
    float *g = es_xmalloc(total * sizeof *g), *mine = es_xmalloc(total * sizeof *mine);
    m->be->download(m->be, g, m->grads, total, ES_DT_F32);
    double gmax = 0, worst = 0;
    for (size_t i = 0; i < total; i++)
        if (fabs(g[i]) > gmax) gmax = fabs(g[i]);
    for (int t = 0; t < io->ntensors; t++) {
        const char *tn = io->tensors[t].name;
        if (strncmp(tn, "grad.", 5)) continue;
        size_t n = es_st_numel(&io->tensors[t]);
        float *ref = t_read_tensor(io, tn, n);
        CHECK(ref, "%s", es_last_error());
        if (!ref) continue;
        t_poison(mine, n < total ? n : total);
        size_t got = internal_grad(mine, &m->layout, g, tn + 5, m->cfg.arch == ES_ARCH_GPT2);
        CHECK(got == n, "%s: %s: %zu elements map to %zu of ours", name, tn + 5, n, got);
        if (got == n) {
            // Tiny gradients (a key bias has none) are compared against the
            // model's largest gradient rather than their own size.
            double e = t_rel_err(mine, ref, n, 1e-3 * gmax);
            CHECK(e <= TOL, "%s: gradient %s rel err %g", name, tn + 5, e);
            if (e > worst) worst = e;
            covered += n;
        }
        free(ref);
    }
    CHECK(covered == total, "%s: %zu of %zu gradient elements compared", name, covered, total);
    free(g);
    free(mine);
    return worst;
}

// Forward and the full LM head into d_logits (N, V), copied into host; the
// relative error against ref.
static double logits_err(float *host, es_model *m, const es_model_batch *b, void *d_logits,
                         const float *ref, const char *name) {
    es_backend *be = m->be;
    size_t n = (size_t)b->N * m->cfg.vocab;
    CHECK(es_model_forward(m, b) == ES_OK, "%s: forward: %s", name, es_last_error());
    be->matmul_fwd(be, d_logits, m->hidden, es_model_lm_head(m), NULL, b->N, m->cfg.hidden,
                   m->cfg.vocab);
    be->download(be, host, d_logits, n, ES_DT_COMPUTE);
    return t_rel_err(host, ref, n, 1e-6);
}

// A scaled rope case must exercise its scaling: with the default frequencies
// in its place the logits leave the reference by far more than TOL.
static void check_scaling_matters(es_model *m, const es_model_batch *b, void *d_logits,
                                  float *host, const float *ref, const char *name) {
    es_config plain = m->cfg;
    memset(&plain.rope_scaling, 0, sizeof plain.rope_scaling);
    float inv_freq[256];
    es_rope_inv_freq(inv_freq, &plain);
    m->be->upload(m->be, m->inv_freq, inv_freq, (size_t)plain.head_dim / 2, ES_DT_F32);
    double e = logits_err(host, m, b, d_logits, ref, name);
    CHECK(e > 100 * TOL, "%s: unscaled rope gives the same logits (rel err %g)", name, e);
    printf("%-13s unscaled rope: rel err logits %.2g\n", name, e);
}

// Forward, full LM head, cross-entropy and backward on the CPU backend, each
// compared with the reference.
static void run_case(es_model *m, const es_st_file *io, const t_fixture_batch *fb,
                     const char *name) {
    es_backend *be = m->be;
    int N = fb->N, C = m->cfg.hidden, V = m->cfg.vocab;
    float *logits_ref = t_read_tensor(io, "logits", (size_t)N * V);
    CHECK(logits_ref, "%s", es_last_error());
    if (!logits_ref) return;
    es_model_batch b;
    int ok = t_batch_upload(&b, be, fb->tokens, fb->pos, fb->cu, N, fb->ndocs) == ES_OK;
    void *d_tgt = be->alloc(be, (size_t)N, ES_DT_I32, ES_MEM_INDEX);
    void *d_w = be->alloc(be, (size_t)N, ES_DT_F32, ES_MEM_ACTS);
    double *d_sums = be->alloc(be, 2, ES_DT_F64, ES_MEM_WORKSPACE);
    void *d_logits = be->alloc(be, (size_t)N * V, ES_DT_COMPUTE, ES_MEM_ACTS);
    void *d_dh = be->alloc(be, (size_t)N * C, ES_DT_COMPUTE, ES_MEM_ACTS);
    size_t nbig = (size_t)N * (V > C ? V : C);
    float *host = es_xmalloc(nbig * sizeof *host);
    ok = ok && d_tgt && d_w && d_logits && d_dh;
    CHECK(ok, "%s: alloc: %s", name, es_last_error());
    if (ok) {
        be->upload(be, d_tgt, fb->targets, (size_t)N, ES_DT_I32);
        be->upload(be, d_w, fb->weights, (size_t)N, ES_DT_F32);
        // Outputs start as NaN so that anything left unwritten fails.
        t_poison(host, nbig);
        be->upload(be, m->hidden, host, (size_t)N * C, ES_DT_COMPUTE);
        be->upload(be, d_logits, host, (size_t)N * V, ES_DT_COMPUTE);
        be->upload(be, d_dh, host, (size_t)N * C, ES_DT_COMPUTE);

        double e_logits = logits_err(host, m, &b, d_logits, logits_ref, name);
        CHECK(e_logits <= TOL, "%s: logits rel err %g", name, e_logits);

        double sums[2];
        be->zero(be, d_sums, 2, ES_DT_F64);
        be->distill_loss(be, d_sums, d_logits, NULL, d_tgt, d_w, N, V, 1.0f, 1.0f,
                         1.0f / (float)fb->count);
        be->download(be, sums, d_sums, 2, ES_DT_F64);
        double loss = sums[0] / fb->count, e_loss = fabs(loss - fb->loss) / fabs(fb->loss);
        CHECK(e_loss <= TOL, "%s: loss %.7f vs %.7f (rel err %g)", name, loss, fb->loss, e_loss);

        // dhidden and the LM head gradient, then the model's backward.
        be->matmul_bwd(be, d_dh, es_model_lm_head_grad(m), NULL, d_logits, m->hidden,
                       es_model_lm_head(m), N, C, V, 0);
        CHECK(es_model_backward(m, &b, d_dh) == ES_OK, "%s: backward: %s", name,
              es_last_error());
        double worst = compare_grads(io, m, name);
        printf("%-13s N=%d docs=%d: rel err logits %.2g, loss %.2g, gradients (worst) %.2g\n",
               name, N, fb->ndocs, e_logits, e_loss, worst);
        if (m->cfg.rope_scaling.type != ES_ROPE_DEFAULT)
            check_scaling_matters(m, &b, d_logits, host, logits_ref, name);
    }
    free(host);
    free(logits_ref);
    t_batch_free(be, &b);
    be->free(be, d_tgt);
    be->free(be, d_w);
    be->free(be, d_sums);
    be->free(be, d_logits);
    be->free(be, d_dh);
}

static void check_case(es_backend *be, const char *name) {
    char dir[256];
    es_st_file io;
    t_fixture_batch fb;
    if (t_fixture_open(&io, &fb, dir, sizeof dir, name)) {
        CHECK(0, "%s", es_last_error());
        return;
    }
    es_model m;
    if (es_model_load_hf(&m, dir, be, fb.N, 1) == ES_OK) {
        run_case(&m, &io, &fb, name);
        es_model_free(&m);
    } else {
        CHECK(0, "%s: load: %s", name, es_last_error());
    }
    t_fixture_batch_free(&fb);
    es_st_close(&io);
}

int main(void) {
    es_backend *be = es_backend_cpu_create();
    if (!be) {
        fprintf(stderr, "cpu backend: %s\n", es_last_error());
        return 1;
    }
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(be, cases[i]);
    CHECK(be->mem_now_total == 0, "%zu bytes still allocated", be->mem_now_total);
    be->destroy(be);
    TEST_DONE();
}
