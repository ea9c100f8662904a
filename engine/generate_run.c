// Continuous batching over the cache slots: waiting samples are prefilled
// into free slots, every busy slot decodes one token per step, and a slot is
// released as soon as its sample ends.
#include <stdlib.h>
#include <string.h>

#include "generate.h"

typedef struct {
    int busy, req, sample, n;
    int32_t *out;  // (max_new) tokens so far
    es_rng rng;
} slot_state;

// A stream per (request, sample), so results do not depend on scheduling.
static uint64_t stream_seed(uint64_t seed, int req, int sample) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * ((uint64_t)req * 65537u + (uint64_t)sample + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int is_stop(const es_gen_params *p, int32_t t) {
    for (int i = 0; i < p->nstop; i++)
        if (p->stop[i] == t) return 1;
    return 0;
}

// Adds the token drawn from logits to slot s; emits and frees it when done.
static int advance(es_gen *g, slot_state *st, int s, const float *logits, const es_gen_params *p,
                   float *work, es_gen_emit emit, void *user) {
    slot_state *x = &st[s];
    int32_t t = es_sample(logits, g->model->cfg.vocab, p->temperature, p->top_p, &x->rng, work);
    x->out[x->n++] = t;
    int stop = is_stop(p, t);
    if (!stop && x->n < p->max_new && g->len[s] < g->max_len) return ES_OK;
    x->busy = 0;
    g->len[s] = 0;
    if (emit(user, x->req, x->sample, x->out, x->n, stop))
        return es_fail("generate: writing the output failed");
    return ES_OK;
}

int es_generate(es_gen *g, const es_gen_request *reqs, int nreq, const es_gen_params *p,
                es_gen_emit emit, void *user) {
    const int V = g->model->cfg.vocab, S = g->slots;
    if (p->n < 1 || p->max_new < 1 || p->top_p <= 0.0f || p->top_p > 1.0f)
        return es_fail("generate: bad parameters (n %d, max-new %d, top-p %g)", p->n,
                       p->max_new, p->top_p);
    for (int r = 0; r < nreq; r++)
        if (reqs[r].len < 1 || reqs[r].len >= g->max_len || reqs[r].len > g->model->max_tokens)
            return es_fail("generate: request %d: prompt of %d tokens leaves no room (cache %d, "
                           "prefill capacity %d)",
                           r, reqs[r].len, g->max_len, g->model->max_tokens);
    slot_state *st = es_xcalloc((size_t)S, sizeof *st);
    for (int s = 0; s < S; s++) st[s].out = es_xmalloc((size_t)p->max_new * sizeof(int32_t));
    float *logits = es_xmalloc((size_t)S * V * sizeof *logits);
    float *work = es_xmalloc(2 * (size_t)V * sizeof *work);
    int *slot = es_xmalloc((size_t)S * sizeof *slot), *lens = es_xmalloc((size_t)S * sizeof *lens);
    const int32_t **ids = es_xmalloc((size_t)S * sizeof *ids);
    int32_t *tok = es_xmalloc((size_t)S * sizeof *tok);
    long next = 0, total = (long)nreq * p->n;
    int rc = ES_OK;
    for (;;) {
        // Fill free slots with waiting samples, as many as one prefill holds.
        int n = 0, tokens = 0;
        for (int s = 0; s < S && next < total; s++) {
            if (st[s].busy) continue;
            const es_gen_request *r = &reqs[next / p->n];
            if (tokens + r->len > g->model->max_tokens) break;
            st[s] = (slot_state){1, (int)(next / p->n), (int)(next % p->n), 0, st[s].out, {0}};
            es_rng_seed(&st[s].rng, stream_seed(p->seed, st[s].req, st[s].sample));
            slot[n] = s;
            ids[n] = r->ids;
            lens[n] = r->len;
            tokens += r->len;
            n++;
            next++;
        }
        if (n) {
            if ((rc = es_gen_prefill(g, logits, slot, ids, lens, n))) break;
            for (int i = 0; i < n && !rc; i++)
                rc = advance(g, st, slot[i], logits + (size_t)i * V, p, work, emit, user);
            if (rc) break;
        }
        n = 0;
        for (int s = 0; s < S; s++)
            if (st[s].busy) {
                slot[n] = s;
                tok[n++] = st[s].out[st[s].n - 1];
            }
        if (!n) {
            if (next < total) continue;
            break;
        }
        if ((rc = es_gen_decode(g, logits, slot, tok, n))) break;
        for (int i = 0; i < n && !rc; i++)
            rc = advance(g, st, slot[i], logits + (size_t)i * V, p, work, emit, user);
        if (rc) break;
    }
    for (int s = 0; s < S; s++) free(st[s].out);
    free(st);
    free(logits);
    free(work);
    free(slot);
    free(lens);
    free(ids);
    free(tok);
    return rc;
}
