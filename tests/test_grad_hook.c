// The backward hook that data parallelism reduces gradient buckets from: it
// must report the final norm and head, then every layer from the last down,
// with contiguous ranges that hold exactly that layer's tensors, and only once
// backward writes no more into them: a copy taken in the hook equals the
// gradient after backward. A failing hook stops backward with its error.
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"
#include "model.h"
#include "test.h"
#include "test_models.h"

enum { N = 9, MAXT = 12 };

typedef struct {
    es_model *m;
    float *snap;   // (total) gradients as the hook saw them, NaN where never reported
    int calls, next, fail_at;
} hook_state;

static int on_grads(void *ctx, int layer, size_t lo, size_t hi) {
    hook_state *h = ctx;
    h->calls++;
    CHECK(layer == h->next, "hook reported layer %d, expected %d", layer, h->next);
    h->next = layer - 1;
    size_t elo, ehi;
    es_model_layer_range(&elo, &ehi, h->m, layer);
    CHECK(lo == elo && hi == ehi && lo < hi, "layer %d: [%zu, %zu) vs [%zu, %zu)", layer, lo, hi, elo, ehi);
    h->m->be->download(h->m->be, h->snap + lo, h->m->grads + lo, hi - lo, ES_DT_F32);
    if (layer == h->fail_at) return es_fail("test hook: refused layer %d", layer);
    return ES_OK;
}

// The layer a tensor belongs to by its name: -1 embeddings, cfg.layers the rest.
static int layer_of_name(const char *name, int layers) {
    if (!strncmp(name, "model.layers.", 13)) return atoi(name + 13);
    return strstr(name, "embed_tokens") || strstr(name, "wpe") ? -1 : layers;
}

// llama without biases, or gpt2 (every bias); tied or untied.
static es_config tiny(es_arch arch, int tied) {
    es_config c = t_config(arch, (t_sizes){.vocab = 19, .hidden = 8, .layers = 3, .heads = 2,
                                           .kv_heads = 1, .head_dim = 4, .ffn = 12, .max_pos = 32});
    if (arch == ES_ARCH_LLAMA) c.qkv_bias = c.o_bias = 0;
    c.tied = tied;
    return c;
}

static void check_arch(es_backend *be, es_arch arch, int tied, uint64_t seed) {
    es_config cfg = tiny(arch, tied);
    es_model m;
    if (es_model_create(&m, &cfg, be, MAXT, ES_MODEL_TRAIN)) {
        CHECK(0, "%s", es_last_error());
        return;
    }
    es_model_init_random(&m, seed);
    es_rng rng;
    es_rng_seed(&rng, seed);
    size_t total = m.layout.total, NC = (size_t)N * cfg.hidden;
    const es_layout *L = &m.layout;

    // ranges: -1 .. layers tile the layout in order, each holding its own tensors
    size_t prev_hi = 0;
    for (int l = -1; l <= cfg.layers; l++) {
        size_t lo, hi;
        es_model_layer_range(&lo, &hi, &m, l);
        CHECK(lo == prev_hi && lo < hi, "layer %d: [%zu, %zu) after %zu", l, lo, hi, prev_hi);
        prev_hi = hi;
    }
    CHECK(prev_hi == total, "ranges end at %zu of %zu", prev_hi, total);
    for (int i = 0; i < L->nparams; i++) {
        const es_param *p = &L->params[i];
        size_t lo, hi;
        es_model_layer_range(&lo, &hi, &m, layer_of_name(p->name, cfg.layers));
        CHECK(p->offset >= lo && p->offset + p->numel <= hi, "%s outside its layer's range", p->name);
    }

    // one document of random tokens; gradients start non-zero (accumulation)
    int32_t tok[N], pos[N], cu[2] = {0, N};
    for (int i = 0; i < N; i++) {
        tok[i] = (int32_t)(es_rng_u64(&rng) % (uint64_t)cfg.vocab);
        pos[i] = i;
    }
    es_model_batch b;
    CHECK(t_batch_upload(&b, be, tok, pos, cu, N, 1) == ES_OK, "%s", es_last_error());
    void *dh = be->alloc(be, NC, ES_DT_COMPUTE, ES_MEM_ACTS);
    float *host = es_xmalloc((total > NC ? total : NC) * sizeof *host);
    float *before = es_xmalloc(total * sizeof *before), *after = es_xmalloc(total * sizeof *after);
    hook_state h = {.m = &m, .snap = es_xmalloc(total * sizeof(float)), .next = cfg.layers, .fail_at = -2};
    t_fill_normal(host, NC, 1.0f, &rng);
    be->upload(be, dh, host, NC, ES_DT_COMPUTE);
    t_fill_normal(before, total, 0.1f, &rng);
    be->upload(be, m.grads, before, total, ES_DT_F32);
    t_poison(h.snap, total);
    t_poison(after, total);

    m.on_layer_grads = on_grads;
    m.hook_ctx = &h;
    CHECK(es_model_forward(&m, &b) == ES_OK && es_model_backward(&m, &b, dh) == ES_OK, "%s", es_last_error());
    be->download(be, after, m.grads, total, ES_DT_F32);
    CHECK(h.calls == cfg.layers + 1 && h.next == -1, "%d hook calls, next %d", h.calls, h.next);
    for (int l = 0; l <= cfg.layers; l++) {
        size_t lo, hi;
        es_model_layer_range(&lo, &hi, &m, l);
        // final when reported (NaN would mean never reported: rel err inf)
        double e = t_rel_err(h.snap + lo, after + lo, hi - lo, 1e-30);
        CHECK(e == 0, "%s layer %d: gradient changed after the hook (rel err %g)", cfg.model_type, l, e);
        // and backward wrote there (an untied head's gradient comes from the
        // loss, not backward, but the final norm's from backward)
        CHECK(t_rel_err(after + lo, before + lo, hi - lo, 1.0) > 1e-7, "%s layer %d: no gradient", cfg.model_type, l);
    }
    size_t elo, ehi;
    es_model_layer_range(&elo, &ehi, &m, -1);
    CHECK(t_rel_err(after, before, ehi, 1.0) > 1e-7, "%s: embeddings got no gradient", cfg.model_type);

    // a refusing hook stops backward with its message
    h = (hook_state){.m = &m, .snap = h.snap, .next = cfg.layers, .fail_at = 1};
    CHECK(es_model_forward(&m, &b) == ES_OK, "%s", es_last_error());
    CHECK(es_model_backward(&m, &b, dh) != ES_OK && strstr(es_last_error(), "refused layer 1"), "%s",
          es_last_error());
    CHECK(h.calls == cfg.layers, "backward went on after the hook failed: %d calls", h.calls);

    free(h.snap);
    free(before);
    free(after);
    free(host);
    be->free(be, dh);
    t_batch_free(be, &b);
    es_model_free(&m);
}

int main(void) {
    es_backend *be = es_backend_cpu_create();
    if (!be) {
        fprintf(stderr, "%s\n", es_last_error());
        return 1;
    }
    uint64_t seed = (uint64_t)time(NULL);
    printf("seed %llu\n", (unsigned long long)seed);
    check_arch(be, ES_ARCH_LLAMA, 0, seed);
    check_arch(be, ES_ARCH_LLAMA, 1, seed + 1);
    check_arch(be, ES_ARCH_GPT2, 1, seed + 2);
    be->destroy(be);
    TEST_DONE();
}
