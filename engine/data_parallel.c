#include "data_parallel.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

int es_dp_init(es_dp *dp, es_backend *be, const es_dist *d, int zero1, int overlap, size_t bucket) {
    memset(dp, 0, sizeof *dp);
    dp->nranks = d->size;
    dp->rank = d->rank;
    dp->sharded = zero1 && d->size > 1;
    // ZeRO-1's parts do not align with layers: one reduce-scatter after backward
    dp->overlap = overlap && d->size > 1 && !dp->sharded;
    dp->bucket = bucket;
    if (d->size == 1) return ES_OK;
    if (es_dist_check_same(d, "backend", be->name)) return ES_ERR;  // "auto" may differ by node
    if (!be->comm_init || !be->grad_allreduce || !be->grad_reduce_scatter || !be->param_allgather)
        return es_fail("backend %s: this build has no collectives for %d ranks (rebuild with MPI%s)", be->name,
                       d->size, strcmp(be->name, "cuda") ? "" : " and NCCL");
    unsigned char id[ES_COMM_ID_BYTES];
    int r = d->rank == 0 ? be->comm_id(be, id) : ES_OK;
    double failed = r != ES_OK;  // every rank learns of rank 0's failure
    es_dist_max_f64(d, &failed, 1);
    if (failed) return r ? ES_ERR : es_fail("rank %d: rank 0 could not create the communicator", d->rank);
    es_dist_bcast(d, id, sizeof id);
    return be->comm_init(be, id, d->rank, d->size);
}

int es_dp_optim_create(es_optim *o, es_dp *dp, es_model *m) {
    size_t n = m->layout.total;
    dp->lo = 0;
    dp->hi = n;
    if (dp->sharded) es_shard_range(&dp->lo, &dp->hi, n, dp->rank, dp->nranks);
    return es_optim_create_part(o, m, dp->lo, dp->hi);
}

// A step starts with nothing finished: the hook expects the final norm and
// LM head first.
static void step_start(es_dp *dp, es_model *m) {
    dp->m = m;
    dp->next_layer = m->cfg.layers;
    dp->pend_lo = dp->pend_hi = m->layout.total;
}

// Takes a finished layer's range [lo, hi) into the pending run; when the run
// reaches a bucket it is all-reduced (only enqueued where the backend can).
static int layer_done(void *ctx, int layer, size_t lo, size_t hi) {
    es_dp *dp = ctx;
    if (layer != dp->next_layer || hi != dp->pend_lo)
        return es_fail("data parallel: backward finished layer %d out of order (expected layer %d)", layer,
                       dp->next_layer);
    dp->next_layer--;
    dp->pend_lo = lo;
    if (dp->pend_hi - lo < dp->bucket) return ES_OK;
    es_backend *be = dp->m->be;
    int r = be->grad_allreduce(be, dp->m->grads + lo, dp->pend_hi - lo);
    dp->pend_hi = lo;
    return r;
}

void es_dp_overlap_begin(es_dp *dp, es_model *m) {
    if (!dp->overlap) return;
    step_start(dp, m);
    m->on_layer_grads = layer_done;
    m->hook_ctx = dp;
}

void es_dp_buckets(int *all, int *during, const es_dp *dp, const es_model *m) {
    *all = *during = 0;
    if (!dp->overlap) return;
    size_t pend_hi = m->layout.total;
    for (int l = m->cfg.layers; l >= 0; l--) {  // as layer_done cuts them
        size_t lo, hi;
        es_model_layer_range(&lo, &hi, m, l);
        if (pend_hi - lo >= dp->bucket) {
            (*during)++;
            pend_hi = lo;
        }
    }
    *all = *during + 1;  // the rest, with the embeddings, after backward
}

int es_dp_reduce_grads(es_dp *dp, es_model *m, float *skip, const double *sums, size_t n) {
    es_backend *be = m->be;
    be->count_nonfinite(be, skip, sums, n);
    if (dp->nranks == 1) return ES_OK;
    int r = ES_OK;
    if (dp->overlap) {
        m->on_layer_grads = NULL;
        m->hook_ctx = NULL;
        if (!dp->m) step_start(dp, m);  // this rank ran no backward in the step
        // the buckets the hook did not issue, in the order it would have
        for (int l = dp->next_layer; l >= 0 && r == ES_OK; l--) {
            size_t lo, hi;
            es_model_layer_range(&lo, &hi, m, l);
            r = layer_done(dp, l, lo, hi);
        }
        if (r == ES_OK) r = be->grad_allreduce(be, m->grads, dp->pend_hi);  // the rest, with the embeddings
        dp->m = NULL;
    } else {
        r = dp->sharded ? be->grad_reduce_scatter(be, m->grads, m->layout.total)
                        : be->grad_allreduce(be, m->grads, m->layout.total);
    }
    // a count is exact in fp32, whatever the order of the sum
    if (r == ES_OK) r = be->grad_allreduce(be, skip, 1);
    return r ? r : be->comm_wait(be);
}

void es_dp_grad_sumsq(double *sumsq, const es_dp *dp, const es_dist *d, es_model *m) {
    es_backend *be = m->be;
    if (!dp->sharded) {
        es_grad_sumsq(sumsq, m);
        return;
    }
    // A device-side sum over ranks would add the parts in an order that
    // depends on the collective; on the host they add in rank order.
    double ss;
    be->sumsq(be, sumsq, m->grads + dp->lo, dp->hi - dp->lo);
    be->download(be, &ss, sumsq, 1, ES_DT_F64);
    es_dist_sum_f64(d, &ss, 1);
    be->upload(be, sumsq, &ss, 1, ES_DT_F64);
}

int es_dp_optim_step(es_optim *o, const es_dp *dp, es_model *m, const es_optim_hparams *hp, const double *sumsq,
                     const float *skip) {
    es_backend *be = m->be;
    es_optim_step(o, m, hp, sumsq, skip);
    if (!dp->sharded) return ES_OK;
    if (be->param_allgather(be, m->params, m->layout.total, ES_DT_COMPUTE)) return ES_ERR;
    return be->comm_wait(be);
}
