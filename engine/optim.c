#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define MASTER_COPY_CHUNK ((size_t)1 << 24)  // elements per host round trip (64 MiB)

// The table of o's tensors: each tensor's overlap with [lo, hi), so that
// decay follows the tensor kind.
static int make_segs(es_optim *o, es_model *m) {
    es_backend *be = m->be;
    es_adamw_seg *segs = es_xcalloc((size_t)m->layout.nparams + 1, sizeof *segs);
    int n = 0;
    for (int i = 0; i < m->layout.nparams; i++) {
        const es_param *p = &m->layout.params[i];
        size_t a = p->offset > o->lo ? p->offset : o->lo;
        size_t b = p->offset + p->numel < o->hi ? p->offset + p->numel : o->hi;
        if (a >= b) continue;
        segs[n++] = (es_adamw_seg){.offset = a - o->lo, .count = b - a, .decay = p->decay};
    }
    size_t words = (size_t)(n ? n : 1) * ES_ADAMW_SEG_I32;
    // workspace, not optimizer state: its size follows the tensors, not the elements
    o->segs = be->alloc(be, words, ES_DT_I32, ES_MEM_WORKSPACE);
    if (o->segs) be->upload(be, o->segs, segs, (size_t)n * ES_ADAMW_SEG_I32, ES_DT_I32);
    o->nsegs = n;
    free(segs);
    return o->segs ? ES_OK : es_fail("optimizer: cannot allocate the table of %d tensors", n);
}

int es_optim_create_part(es_optim *o, es_model *m, size_t lo, size_t hi) {
    es_backend *be = m->be;
    size_t n = hi - lo;
    memset(o, 0, sizeof *o);
    o->lo = lo;
    o->hi = hi;
    o->m = be->alloc(be, n, ES_DT_F32, ES_MEM_OPTIM);
    o->v = be->alloc(be, n, ES_DT_F32, ES_MEM_OPTIM);
    if (!o->m || !o->v) return es_fail("optimizer: cannot allocate %zu moments", n);
    be->zero(be, o->m, n, ES_DT_F32);
    be->zero(be, o->v, n, ES_DT_F32);
    if (make_segs(o, m)) return ES_ERR;
    if (!be->compute_is_f32) {
        // master weights start from the loaded parameters, copied through a
        // bounded host buffer (all of an 8B model at once would take 32 GB)
        o->master = be->alloc(be, n, ES_DT_F32, ES_MEM_OPTIM);
        if (!o->master) return es_fail("optimizer: cannot allocate %zu master weights", n);
        size_t chunk = n < MASTER_COPY_CHUNK ? n : MASTER_COPY_CHUNK;
        float *host = es_xmalloc((chunk ? chunk : 1) * sizeof(float));
        for (size_t i = 0; i < n; i += chunk) {
            size_t k = n - i < chunk ? n - i : chunk;
            be->download(be, host, be->offset(be, m->params, lo + i, ES_DT_COMPUTE), k, ES_DT_COMPUTE);
            be->upload(be, be->offset(be, o->master, i, ES_DT_F32), host, k, ES_DT_F32);
        }
        free(host);
    }
    return ES_OK;
}

int es_optim_create(es_optim *o, es_model *m) {
    return es_optim_create_part(o, m, 0, m->layout.total);
}

void es_optim_free(es_optim *o, es_backend *be) {
    if (o->m) be->free(be, o->m);
    if (o->v) be->free(be, o->v);
    if (o->master) be->free(be, o->master);
    if (o->segs) be->free(be, o->segs);
    memset(o, 0, sizeof *o);
}

void es_grad_sumsq(double *sumsq, es_model *m) { m->be->sumsq(m->be, sumsq, m->grads, m->layout.total); }

void es_optim_step(es_optim *o, es_model *m, const es_optim_hparams *hp, const double *sumsq, const float *skip) {
    es_backend *be = m->be;
    int step = o->step + 1;
    es_adamw_args a = {.lr = hp->lr, .beta1 = hp->beta1, .beta2 = hp->beta2, .eps = hp->eps, .wd = hp->wd,
                       .clip = hp->clip, .bc1 = (float)(1.0 - pow(hp->beta1, step)),
                       .bc2 = (float)(1.0 - pow(hp->beta2, step))};
    be->adamw(be, be->offset(be, m->params, o->lo, ES_DT_COMPUTE), o->master, m->grads + o->lo, o->m, o->v, o->segs,
              o->nsegs, o->hi - o->lo, sumsq, skip, &a);
}

int es_schedule_parse(es_schedule *s, const char *name) {
    static const char *names[] = {"constant", "cosine", "linear", "onecycle"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) {
            *s = (es_schedule)i;
            return ES_OK;
        }
    return es_fail("optim.schedule: unknown schedule '%s'", name);
}

float es_schedule_lr(es_schedule s, float peak, float min_ratio, float warmup, int step, int total) {
    if (s == ES_SCHED_CONSTANT || total <= 1) return peak;
    const float pi = 3.14159265358979f;
    int nwarm = (int)(warmup * (float)total);
    float t = (float)(step - nwarm) / (float)(total - nwarm > 1 ? total - nwarm - 1 : 1);
    if (t > 1) t = 1;
    if (s == ES_SCHED_ONECYCLE) {
        // PyTorch OneCycleLR defaults: cosine from peak/25 up to peak, then
        // cosine down to peak/25/1e4
        float lo0 = peak / 25.0f, lo1 = lo0 / 1e4f;
        if (step < nwarm) {
            float u = (float)step / (float)nwarm;
            return peak + (lo0 - peak) * 0.5f * (1 + cosf(pi * u));
        }
        return lo1 + (peak - lo1) * 0.5f * (1 + cosf(pi * t));
    }
    if (step < nwarm) return peak * (float)(step + 1) / (float)nwarm;
    float lo = peak * min_ratio;
    if (s == ES_SCHED_LINEAR) return lo + (peak - lo) * (1 - t);
    return lo + (peak - lo) * 0.5f * (1 + cosf(pi * t));
}
