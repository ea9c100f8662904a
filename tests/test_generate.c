// Generation with a key/value cache: decode logits equal a full no-cache
// forward of the same tokens for every architecture; greedy tokens equal
// transformers' generate() on the fixture models; stop ids, cache limits and
// the sampler behave as documented.
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "generate.h"
#include "test.h"
#include "gen_fixture.h"
#include "test_models.h"

#define SLOTS 3
#define MAX_LEN 40
static const int prompt_len[SLOTS] = {5, 9, 1};
#define STEPS 12

static es_config tiny_config(es_arch arch) {
    es_config c = t_config(arch, (t_sizes){.vocab = 37, .hidden = 16, .layers = 2, .heads = 4,
                                           .kv_heads = 2, .head_dim = 6,  // heads * head_dim != hidden
                                           .ffn = 24, .max_pos = 64});
    if (arch == ES_ARCH_LLAMA) c.kv_heads = 1;
    if (arch == ES_ARCH_GPT2) c.head_dim = 4;
    return c;
}

// Parameters of order one so that every path carries signal.
static void randomise(es_model *m, es_rng *rng) {
    float *h = es_xmalloc(m->layout.total * sizeof *h);
    t_fill_normal(h, m->layout.total, 0.3f, rng);
    m->be->upload(m->be, m->params, h, m->layout.total, ES_DT_COMPUTE);
    free(h);
}

static void poison_cache(es_gen *g) {
    const es_config *c = &g->model->cfg;
    size_t n = (size_t)g->slots * g->max_len * c->kv_heads * c->head_dim;
    float *nan = es_xmalloc(n * sizeof *nan);
    t_poison(nan, n);
    for (int l = 0; l < c->layers; l++) {
        g->model->be->upload(g->model->be, g->kcache[l], nan, n, ES_DT_COMPUTE);
        g->model->be->upload(g->model->be, g->vcache[l], nan, n, ES_DT_COMPUTE);
    }
    free(nan);
}

// Logits (len, V) of one sequence by a plain forward over all its tokens.
static void full_logits(float *out, es_model *m, const int32_t *ids, int len) {
    es_backend *be = m->be;
    int32_t *pos = es_xmalloc((size_t)len * sizeof *pos), cu[2] = {0, len};
    for (int i = 0; i < len; i++) pos[i] = i;
    es_model_batch b;
    void *lg = be->alloc(be, (size_t)len * m->cfg.vocab, ES_DT_COMPUTE, ES_MEM_ACTS);
    int ok = t_batch_upload(&b, be, ids, pos, cu, len, 1) == ES_OK && lg;
    CHECK(ok, "%s", es_last_error());
    if (ok) {
        CHECK(es_model_forward(m, &b) == ES_OK, "%s", es_last_error());
        be->matmul_fwd(be, lg, m->hidden, es_model_lm_head(m), NULL, len, m->cfg.hidden,
                       m->cfg.vocab);
        be->download(be, out, lg, (size_t)len * m->cfg.vocab, ES_DT_COMPUTE);
    }
    t_batch_free(be, &b);
    be->free(be, lg);
    free(pos);
}

// Prefill three prompts, then decode random tokens; slot 1 skips some steps so
// that sequences of different lengths share a decode batch.
static void check_cache_vs_full(es_backend *be, es_arch arch, es_rng *rng) {
    es_config cfg = tiny_config(arch);
    es_model m;
    if (es_model_create(&m, &cfg, be, MAX_LEN, 0)) {
        CHECK(0, "%s", es_last_error());
        return;
    }
    randomise(&m, rng);
    es_gen g;
    if (es_gen_create(&g, &m, SLOTS, MAX_LEN)) {
        CHECK(0, "%s", es_last_error());
        es_model_free(&m);
        return;
    }
    poison_cache(&g);
    const int V = cfg.vocab;
    int32_t seq[SLOTS][MAX_LEN];
    int len[SLOTS];
    float *got = es_xmalloc((size_t)SLOTS * MAX_LEN * V * sizeof *got);  // (slot, pos, V)
    t_poison(got, (size_t)SLOTS * MAX_LEN * V);
    float *lg = es_xmalloc((size_t)SLOTS * V * sizeof *lg);
    const int32_t *ids[SLOTS];
    int slot[SLOTS] = {2, 0, 1};  // prompts land in slots out of order
    for (int s = 0; s < SLOTS; s++) {
        len[s] = prompt_len[s];
        for (int j = 0; j < len[s]; j++) seq[s][j] = (int32_t)(es_rng_u64(rng) % V);
        ids[s] = seq[s];
    }
    t_poison(lg, (size_t)SLOTS * V);
    CHECK(es_gen_prefill(&g, lg, slot, ids, len, SLOTS) == ES_OK, "%s", es_last_error());
    for (int s = 0; s < SLOTS; s++)
        memcpy(got + ((size_t)s * MAX_LEN + len[s] - 1) * V, lg + (size_t)s * V, V * sizeof *lg);
    for (int step = 0; step < STEPS; step++) {
        int n = 0, which[SLOTS], sl[SLOTS];
        int32_t tok[SLOTS];
        for (int s = 0; s < SLOTS; s++) {
            if (s == 1 && step % 3 == 1) continue;
            which[n] = s;
            sl[n] = slot[s];
            tok[n] = (int32_t)(es_rng_u64(rng) % V);
            seq[s][len[s]++] = tok[n];
            n++;
        }
        t_poison(lg, (size_t)SLOTS * V);
        CHECK(es_gen_decode(&g, lg, sl, tok, n) == ES_OK, "%s", es_last_error());
        for (int i = 0; i < n; i++) {
            int s = which[i];
            memcpy(got + ((size_t)s * MAX_LEN + len[s] - 1) * V, lg + (size_t)i * V,
                   V * sizeof *lg);
        }
    }
    float *want = es_xmalloc((size_t)MAX_LEN * V * sizeof *want);
    for (int s = 0; s < SLOTS; s++) {
        t_poison(want, (size_t)MAX_LEN * V);
        full_logits(want, &m, seq[s], len[s]);
        // Rows from the last prompt token on were produced by the cache path.
        size_t from = (size_t)prompt_len[s] - 1, rows = (size_t)len[s] - from;
        double err = t_rel_err(got + ((size_t)s * MAX_LEN + from) * V, want + from * V,
                               rows * V, 1e-3);
        CHECK(err < 1e-5, "%s sequence %d: cache vs full logits rel err %.3g", cfg.model_type, s,
              err);
    }
    printf("%s: cache decode == full forward over %d steps\n", cfg.model_type, STEPS);
    free(want);
    free(got);
    free(lg);
    es_gen_free(&g);
    es_model_free(&m);
}

// ---- greedy generation against transformers ---------------------------------

typedef struct {
    int32_t out[8][64];
    int n[8], finished[8], calls;
} collected;

static int collect(void *user, int req, int sample, const int32_t *ids, int n, int finished) {
    collected *c = user;
    (void)sample;
    memcpy(c->out[req], ids, (size_t)n * sizeof *ids);
    c->n[req] = n;
    c->finished[req] = finished;
    c->calls++;
    return 0;
}

static int32_t *json_ids(const cJSON *arr, int *n) {
    *n = cJSON_GetArraySize(arr);
    int32_t *ids = es_xmalloc((size_t)(*n ? *n : 1) * sizeof *ids);
    int i = 0;
    for (const cJSON *e = arr->child; e; e = e->next) ids[i++] = (int32_t)e->valueint;
    return ids;
}

static void check_fixture(es_backend *be, const char *name) {
    cJSON *fx = t_gen_fixture(name);
    if (!fx) return;
    char path[256];
    const cJSON *prompts = cJSON_GetObjectItem(fx, "prompts"), *tokens = cJSON_GetObjectItem(fx, "tokens");
    int nreq = cJSON_GetArraySize(prompts), max_new = cJSON_GetObjectItem(fx, "max_new")->valueint;
    es_gen_request reqs[8];
    for (int r = 0; r < nreq; r++)
        reqs[r].ids = json_ids(cJSON_GetArrayItem(prompts, r), &reqs[r].len);
    snprintf(path, sizeof path, "tests/fixtures/%s", name);
    es_model m;
    es_gen g;
    CHECK(es_model_load_hf(&m, path, be, 32, 0) == ES_OK, "%s", es_last_error());
    // Two slots for three prompts: the third waits for a free slot.
    CHECK(es_gen_create(&g, &m, 2, m.cfg.max_pos) == ES_OK, "%s", es_last_error());
    es_gen_params p = {.n = 1, .max_new = max_new, .temperature = 0.0f, .top_p = 1.0f};
    collected *c = calloc(1, sizeof *c);
    CHECK(es_generate(&g, reqs, nreq, &p, collect, c) == ES_OK, "%s", es_last_error());
    CHECK(c->calls == nreq, "%s: %d samples for %d prompts", name, c->calls, nreq);
    for (int r = 0; r < nreq; r++) {
        int n;
        int32_t *want = json_ids(cJSON_GetArrayItem(tokens, r), &n);
        int same = c->n[r] == n && !memcmp(c->out[r], want, (size_t)n * sizeof *want);
        CHECK(same, "%s prompt %d: greedy tokens differ from transformers", name, r);
        CHECK(!c->finished[r], "%s prompt %d: finished without a stop id", name, r);
        if (r == 0) {
            // Stopping at the token seen at step 5 cuts the sample there.
            int32_t stop = want[5];
            int first = 0;
            while (want[first] != stop) first++;
            es_gen_params ps = p;
            ps.stop = &stop;
            ps.nstop = 1;
            collected *d = calloc(1, sizeof *d);
            CHECK(es_generate(&g, reqs, 1, &ps, collect, d) == ES_OK, "%s", es_last_error());
            CHECK(d->n[0] == first + 1 && d->finished[0] && d->out[0][first] == stop,
                  "%s: stop id %d at %d gave %d tokens, finished %d", name, stop, first, d->n[0],
                  d->finished[0]);
            free(d);
        }
        free(want);
    }
    printf("%s: greedy tokens vs transformers checked for %d prompts\n", name, nreq);
    free(c);
    es_gen_free(&g);
    // A short cache ends every sample when it is full.
    const int short_len = reqs[1].len;
    CHECK(es_gen_create(&g, &m, 2, short_len) == ES_OK, "%s", es_last_error());
    c = calloc(1, sizeof *c);
    CHECK(es_generate(&g, reqs, 1, &p, collect, c) == ES_OK, "%s", es_last_error());
    CHECK(c->n[0] == short_len - reqs[0].len + 1 && !c->finished[0],
          "%s: cache of %d, prompt %d: %d tokens", name, short_len, reqs[0].len, c->n[0]);
    // A prompt that fills the cache is refused with a message.
    CHECK(es_generate(&g, &reqs[1], 1, &p, collect, c) == ES_ERR &&
              strstr(es_last_error(), "room"),
          "long prompt: %s", es_last_error());
    free(c);
    es_gen_free(&g);
    es_model_free(&m);
    for (int r = 0; r < nreq; r++) free((void *)reqs[r].ids);
    cJSON_Delete(fx);
}

// ---- the sampler --------------------------------------------------------------

static void check_sampler(es_rng *rng) {
    enum { V = 6, DRAWS = 60000 };
    float logits[V], work[2 * V], p[V];
    double sum = 0;
    for (int i = 0; i < V; i++) logits[i] = es_rng_normal(rng);
    logits[3] = 2.5f;  // the argmax
    CHECK(es_sample(logits, V, 0.0f, 1.0f, rng, work) == 3, "greedy is the argmax");
    const float temp = 0.7f;
    for (int i = 0; i < V; i++) sum += p[i] = expf(logits[i] / temp);
    for (int i = 0; i < V; i++) p[i] /= (float)sum;
    int count[V] = {0};
    es_rng r;
    es_rng_seed(&r, 11);
    for (int k = 0; k < DRAWS; k++) count[es_sample(logits, V, temp, 1.0f, &r, work)]++;
    for (int i = 0; i < V; i++) {
        double f = (double)count[i] / DRAWS, sd = sqrt(p[i] * (1 - p[i]) / DRAWS);
        CHECK(fabs(f - p[i]) < 5 * sd + 1e-4, "token %d: frequency %.4f vs p %.4f", i, f, p[i]);
    }
    // top-p: only the smallest set of likeliest tokens reaching the mass.
    int order[V];
    for (int i = 0; i < V; i++) order[i] = i;
    for (int i = 0; i < V; i++)
        for (int j = i + 1; j < V; j++)
            if (p[order[j]] > p[order[i]]) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
    float top_p = p[order[0]] + 0.5f * p[order[1]];  // needs the top two
    double kept = p[order[0]] + p[order[1]];
    memset(count, 0, sizeof count);
    for (int k = 0; k < DRAWS; k++) count[es_sample(logits, V, temp, top_p, &r, work)]++;
    CHECK(count[order[0]] + count[order[1]] == DRAWS, "top-p drew outside the nucleus");
    double f0 = (double)count[order[0]] / DRAWS, p0 = p[order[0]] / kept;
    CHECK(fabs(f0 - p0) < 5 * sqrt(p0 * (1 - p0) / DRAWS), "top-p renormalised %.4f vs %.4f", f0,
          p0);
    // The same seed gives the same draws.
    es_rng a, b;
    es_rng_seed(&a, 5);
    es_rng_seed(&b, 5);
    int same = 1;
    for (int k = 0; k < 200; k++)
        same &= es_sample(logits, V, 1.0f, 0.9f, &a, work) == es_sample(logits, V, 1.0f, 0.9f, &b, work);
    CHECK(same, "seeded draws differ");
}

int main(void) {
    es_backend *be = es_backend_cpu_create();
    if (!be) {
        fprintf(stderr, "%s\n", es_last_error());
        return 1;
    }
    es_rng rng;
    es_rng_seed(&rng, 2024);
    const es_arch arches[] = {ES_ARCH_QWEN3, ES_ARCH_QWEN2, ES_ARCH_LLAMA, ES_ARCH_GPT2};
    for (int i = 0; i < 4; i++) check_cache_vs_full(be, arches[i], &rng);
    const char *const fixtures[] = T_FIXTURE_CASES;
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) check_fixture(be, fixtures[i]);
    check_sampler(&rng);
    be->destroy(be);
    TEST_DONE();
}
