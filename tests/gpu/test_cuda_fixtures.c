// The CUDA backend against Hugging Face transformers: each fixture of
// tests/fixtures (written by tools/make_fixtures.py in fp32) is loaded with
// es_model_load_hf onto the device, its packed batch run forward, through the
// full LM head and the cross-entropy, then backward. Logits and loss must match
// the reference within bf16 tolerance, and so must every gradient of the
// qwen3/qwen2/llama cases, which share the Hugging Face names of our layout
// (gpt2's Conv1D gradients are checked on the CPU by test_fixtures, and CUDA
// against the CPU by test_cuda_model).
//
// Usage: test_cuda_fixtures [device [dump-dir]]  (default cuda). With a dump
// dir, each case's logits (N, V) are written there as raw fp32
// (<case>.logits.f32) for tests/gpu/torch_parity.py.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "model.h"
#include "safetensors.h"
#include "test.h"

#define TOL_LOGITS 3e-2
#define TOL_LOSS 1e-2
#define TOL_GRAD 5e-2

static const char *const cases[] = {"qwen3_tied", "qwen3_untied", "qwen2", "llama", "gpt2"};

// Tensor `name` of io as fp32 if it holds n elements; NULL with a failed check.
static float *tensor(const es_st_file *io, const char *name, size_t n) {
    int i = es_st_find(io, name);
    size_t numel = i >= 0 ? es_st_numel(&io->tensors[i]) : 0;
    CHECK(i >= 0 && numel == n, "%s: tensor '%s' missing or not %zu elements", io->path, name, n);
    if (i < 0 || numel != n) return NULL;
    float *x = es_xmalloc(n * sizeof *x);
    es_st_read_f32(x, io, i);
    return x;
}

// Device buffer of n int32 values converted from fp32 host values.
static void *index_buf(es_backend *be, const float *v, size_t n) {
    int32_t *h = es_xmalloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++) h[i] = (int32_t)v[i];
    void *d = be->alloc(be, n, ES_DT_I32, ES_MEM_INDEX);
    if (d) be->upload(be, d, h, n, ES_DT_I32);
    free(h);
    return d;
}

static int dump(const char *dir, const char *name, const float *x, size_t n) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s.logits.f32", dir, name);
    return es_write_atomic(path, x, n * sizeof *x);
}

// Worst relative error over the reference gradients that carry our layout's
// names; *covered counts the elements compared.
static double compare_grads(const es_st_file *io, const es_model *m, size_t *covered) {
    size_t total = m->layout.total;
    float *g = es_xmalloc(total * sizeof *g);
    t_poison(g, total);
    m->be->download(m->be, g, m->grads, total, ES_DT_F32);
    double gmax = 0, worst = 0;
    for (size_t i = 0; i < total; i++)
        if (fabs(g[i]) > gmax) gmax = fabs(g[i]);
    *covered = 0;
    for (int i = 0; i < m->layout.nparams; i++) {
        const es_param *p = &m->layout.params[i];
        char name[128];
        snprintf(name, sizeof name, "grad.%s", p->name);
        if (es_st_find(io, name) < 0) continue;  // gpt2: other names; the count tells
        float *ref = tensor(io, name, p->numel);
        if (!ref) continue;
        double e = t_rel_err(g + p->offset, ref, p->numel, 1e-2 * gmax);
        CHECK(e <= TOL_GRAD, "%s: gradient %s rel err %.3g > %.3g", io->path, p->name, e, TOL_GRAD);
        if (e > worst || !isfinite(e)) worst = e;
        *covered += p->numel;
        free(ref);
    }
    free(g);
    return worst;
}

static void check_case(es_backend *be, const char *name, const char *dump_dir) {
    char dir[256], path[512];
    snprintf(dir, sizeof dir, "tests/fixtures/%s", name);
    snprintf(path, sizeof path, "%s/io.safetensors", dir);
    es_st_file io;
    if (es_st_open(&io, path)) {
        CHECK(0, "%s", es_last_error());
        return;
    }
    int ti = es_st_find(&io, "tokens"), ci = es_st_find(&io, "cu_seqlens");
    CHECK(ti >= 0 && ci >= 0, "%s: tokens or cu_seqlens missing", path);
    int N = ti >= 0 ? (int)es_st_numel(&io.tensors[ti]) : 0;
    int ndocs = ci >= 0 ? (int)es_st_numel(&io.tensors[ci]) - 1 : 0;
    es_model m;
    if (N < 1 || ndocs < 1 || es_model_load_hf(&m, dir, be, N, 1)) {
        CHECK(0, "%s: load: %s", name, es_last_error());
        es_st_close(&io);
        return;
    }
    int C = m.cfg.hidden, V = m.cfg.vocab;
    size_t NV = (size_t)N * V;
    float *tok = tensor(&io, "tokens", N), *pos = tensor(&io, "position_ids", N),
          *cu = tensor(&io, "cu_seqlens", ndocs + 1), *tgt = tensor(&io, "targets", N),
          *loss_ref = tensor(&io, "loss", 1), *logits_ref = tensor(&io, "logits", NV);
    float *host = es_xmalloc(NV * sizeof *host), *w = es_xmalloc((size_t)N * sizeof *w);
    es_model_batch b = {.N = N, .ndocs = ndocs};
    void *d_tgt = NULL, *d_w = NULL, *d_logits = NULL, *d_dh = NULL;
    if (tok && pos && cu && tgt && loss_ref && logits_ref) {
        int count = 0;
        for (int i = 0; i < N; i++) {
            w[i] = tgt[i] >= 0 ? 1.0f : 0.0f;  // ignored targets become 0 with weight 0
            count += tgt[i] >= 0;
            tgt[i] = tgt[i] >= 0 ? tgt[i] : 0;
        }
        b.tokens = index_buf(be, tok, N);
        b.pos = index_buf(be, pos, N);
        b.cu_seqlens = index_buf(be, cu, ndocs + 1);
        d_tgt = index_buf(be, tgt, N);
        d_w = be->alloc(be, N, ES_DT_F32, ES_MEM_ACTS);
        d_logits = be->alloc(be, NV, ES_DT_COMPUTE, ES_MEM_ACTS);
        d_dh = be->alloc(be, (size_t)N * C, ES_DT_COMPUTE, ES_MEM_ACTS);
        int ok = b.tokens && b.pos && b.cu_seqlens && d_tgt && d_w && d_logits && d_dh && count > 0;
        CHECK(ok, "%s: alloc: %s", name, es_last_error());
        if (ok) {
            be->upload(be, d_w, w, N, ES_DT_F32);
            t_poison(host, NV);  // outputs start as NaN
            be->upload(be, m.hidden, host, (size_t)N * C, ES_DT_COMPUTE);
            be->upload(be, d_logits, host, NV, ES_DT_COMPUTE);
            be->upload(be, d_dh, host, (size_t)N * C, ES_DT_COMPUTE);

            CHECK(es_model_forward(&m, &b) == ES_OK, "%s: forward: %s", name, es_last_error());
            be->matmul_fwd(be, d_logits, m.hidden, es_model_lm_head(&m), NULL, N, C, V);
            be->download(be, host, d_logits, NV, ES_DT_COMPUTE);
            double e_logits = t_rel_err(host, logits_ref, NV, 1e-6);
            CHECK(e_logits <= TOL_LOGITS, "%s: logits rel err %.3g", name, e_logits);
            if (dump_dir)
                CHECK(dump(dump_dir, name, host, NV) == ES_OK, "%s: %s", name, es_last_error());

            float sums[2] = {0, 0};
            be->distill_loss(be, sums, d_logits, NULL, d_tgt, d_w, N, V, 1.0f, 1.0f, 1.0f / (float)count);
            double loss = sums[0] / count, e_loss = fabs(loss - loss_ref[0]) / fabs(loss_ref[0]);
            CHECK(e_loss <= TOL_LOSS, "%s: loss %.6f vs %.6f", name, loss, loss_ref[0]);

            be->matmul_bwd(be, d_dh, es_model_lm_head_grad(&m), NULL, d_logits, m.hidden,
                           es_model_lm_head(&m), N, C, V, 0);
            CHECK(es_model_backward(&m, &b, d_dh) == ES_OK, "%s: backward: %s", name, es_last_error());
            be->sync(be);
            size_t covered = 0;
            int all = m.cfg.arch != ES_ARCH_GPT2;
            double e_grad = all ? compare_grads(&io, &m, &covered) : 0;
            CHECK(!all || covered == m.layout.total, "%s: %zu of %zu gradient elements compared", name,
                  covered, m.layout.total);
            printf("  %-13s %-5s N=%d docs=%d  logits %8.2e  loss %8.2e  grads ", name, be->name, N, ndocs,
                   e_logits, e_loss);
            if (all) printf("%8.2e\n", e_grad);
            else printf("(CPU-checked)\n");
        }
    }
    void *bufs[] = {b.tokens, b.pos, b.cu_seqlens, d_tgt, d_w, d_logits, d_dh};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) be->free(be, bufs[i]);
    float *hosts[] = {tok, pos, cu, tgt, loss_ref, logits_ref, host, w};
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) free(hosts[i]);
    es_model_free(&m);
    es_st_close(&io);
}

int main(int argc, char **argv) {
    const char *device = argc > 1 ? argv[1] : "cuda", *dump_dir = argc > 2 ? argv[2] : NULL;
    if (dump_dir && es_mkdir_p(dump_dir)) {
        fprintf(stderr, "test_cuda_fixtures: %s\n", es_last_error());
        return 1;
    }
    es_backend *be = es_backend_create(device);
    if (!be) {
        fprintf(stderr, "test_cuda_fixtures: %s backend: %s\n", device, es_last_error());
        return 1;
    }
    printf("transformers fixtures on %s (rel err, tolerances logits %.0e, loss %.0e, grads %.0e)\n", be->name,
           TOL_LOGITS, TOL_LOSS, TOL_GRAD);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(be, cases[i], dump_dir);
    CHECK(be->mem_now_total == 0, "%zu bytes still allocated", be->mem_now_total);
    be->destroy(be);
    TEST_DONE();
}
