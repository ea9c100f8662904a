#include "distill.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static void *alloc_or_fail(es_backend *be, size_t n, es_dtype dt, es_mem_kind kind, int *ok) {
    void *p = *ok ? be->alloc(be, n, dt, kind) : NULL;
    if (!p) *ok = 0;
    return p;
}

int es_distill_create(es_distill *d, es_backend *be, int max_tokens, int C, int V, int chunk,
                      int teacher_C, int topk) {
    memset(d, 0, sizeof *d);
    if (max_tokens < 1 || C < 1 || V < 1 || chunk < 0 || teacher_C < 0 || topk < 0)
        return es_fail("distill: bad sizes (tokens %d, C %d, V %d, chunk %d, teacher C %d, top-k %d)",
                       max_tokens, C, V, chunk, teacher_C, topk);
    if (topk > 0 && !be->distill_loss_topk)
        return es_fail("distill: the %s backend has no offline top-k teacher loss", be->name);
    if (chunk == 0) {
        size_t row = (size_t)V * (be->compute_is_f32 ? 4 : 2) * (teacher_C > 0 ? 2 : 1);
        size_t rows = ES_DISTILL_LOGIT_BYTES / row / 256 * 256;
        chunk = rows < 256 ? 256 : rows > (size_t)max_tokens ? max_tokens : (int)rows;
    }
    if (chunk > max_tokens) chunk = max_tokens;
    d->be = be;
    d->max_tokens = max_tokens;
    d->C = C;
    d->Ct = teacher_C;
    d->V = V;
    d->K = topk;
    d->chunk = chunk;
    size_t T = (size_t)max_tokens, R = (size_t)chunk;
    int ok = 1;
    d->rows = alloc_or_fail(be, T, ES_DT_I32, ES_MEM_INDEX, &ok);
    d->targets = alloc_or_fail(be, T, ES_DT_I32, ES_MEM_INDEX, &ok);
    d->weights = alloc_or_fail(be, T, ES_DT_F32, ES_MEM_WORKSPACE, &ok);
    d->h = alloc_or_fail(be, R * (size_t)C, ES_DT_COMPUTE, ES_MEM_WORKSPACE, &ok);
    d->dh = alloc_or_fail(be, R * (size_t)C, ES_DT_COMPUTE, ES_MEM_WORKSPACE, &ok);
    d->logits = alloc_or_fail(be, R * (size_t)V, ES_DT_COMPUTE, ES_MEM_WORKSPACE, &ok);
    if (teacher_C > 0) {
        d->th = alloc_or_fail(be, R * (size_t)teacher_C, ES_DT_COMPUTE, ES_MEM_WORKSPACE, &ok);
        d->tlogits = alloc_or_fail(be, R * (size_t)V, ES_DT_COMPUTE, ES_MEM_WORKSPACE, &ok);
    }
    if (topk > 0) {
        d->tids = alloc_or_fail(be, T * (size_t)topk, ES_DT_I32, ES_MEM_INDEX, &ok);
        d->tlogp = alloc_or_fail(be, T * (size_t)topk, ES_DT_F32, ES_MEM_WORKSPACE, &ok);
    }
    // rows, targets, weights (T each) and tids, tlogp (T * K each), 4 bytes an entry
    if (ok && es_staging_create(&d->stage, be, T * (3 + 2 * (size_t)topk) * 4)) ok = 0;
    if (!ok) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", es_last_error());
        es_distill_free(d);
        return es_fail("distill: workspace: %s", msg);
    }
    return ES_OK;
}

void es_distill_free(es_distill *d) {
    if (d->be) {
        void *bufs[] = {d->rows, d->targets, d->weights, d->h,    d->dh,
                        d->th,   d->logits,  d->tlogits, d->tids, d->tlogp};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            if (bufs[i]) d->be->free(d->be, bufs[i]);
    }
    if (d->stage.be) es_staging_free(&d->stage);
    memset(d, 0, sizeof *d);
}

int es_distill_loss(es_distill *d, double *sums, void *dhidden, float *dlm_head,
                    const void *hidden, const void *lm_head, const es_teacher_rows *teacher,
                    const es_microbatch *mb, const es_distill_params *p) {
    es_backend *be = d->be;
    int online = teacher && teacher->hidden, offline = teacher && teacher->topk_ids;
    if (mb->n > d->max_tokens)
        return es_fail("distill: micro-batch of %d tokens exceeds the workspace's %d", mb->n,
                       d->max_tokens);
    if (online && offline) return es_fail("distill: both an online and an offline teacher given");
    if (online && (d->Ct == 0 || !teacher->lm_head))
        return es_fail("distill: an online teacher needs a workspace made with its hidden size");
    if (offline && (d->K == 0 || !teacher->topk_logp))
        return es_fail("distill: an offline teacher needs a workspace made with its top-k");
    if (offline && p->tau != 1.0f)
        return es_fail("distill: temperature %g with an offline top-k teacher (only 1 is possible)",
                       p->tau);
    if (!(p->alpha >= 0 && p->alpha <= 1 && p->tau > 0 && isfinite(p->grad_scale)))
        return es_fail("distill: alpha %g must be in [0, 1] and tau %g > 0", p->alpha, p->tau);
    int M = 0, C = d->C, V = d->V, K = d->K;
    for (int t = 0; t < mb->n; t++)
        if (mb->weights[t] > 0 && (mb->targets[t] < 0 || mb->targets[t] >= V))
            return es_fail("distill: target %d at position %d is outside the vocabulary of %d",
                           mb->targets[t], t, V);
    size_t T = (size_t)d->max_tokens;
    int32_t *hrows = es_staging_next(&d->stage), *htargets = hrows + T, *htids = htargets + 2 * T;
    float *hweights = (float *)(htargets + T), *htlogp = (float *)(htids + T * (size_t)K);
    for (int t = 0; t < mb->n; t++) {
        if (!(mb->weights[t] > 0)) continue;
        hrows[M] = t;
        htargets[M] = mb->targets[t];
        hweights[M] = mb->weights[t];
        if (offline) {
            memcpy(htids + (size_t)M * K, teacher->topk_ids + (size_t)t * K, (size_t)K * 4);
            memcpy(htlogp + (size_t)M * K, teacher->topk_logp + (size_t)t * K, (size_t)K * 4);
        }
        M++;
    }
    if (dhidden) be->zero(be, dhidden, (size_t)mb->n * C, ES_DT_COMPUTE);
    if (M == 0) return ES_OK;
    be->upload_async(be, d->rows, hrows, (size_t)M, ES_DT_I32);
    be->upload_async(be, d->targets, htargets, (size_t)M, ES_DT_I32);
    be->upload_async(be, d->weights, hweights, (size_t)M, ES_DT_F32);
    if (offline) {
        be->upload_async(be, d->tids, htids, (size_t)M * K, ES_DT_I32);
        be->upload_async(be, d->tlogp, htlogp, (size_t)M * K, ES_DT_F32);
    }
    float alpha = online || offline ? p->alpha : 1.0f;
    for (int c0 = 0; c0 < M; c0 += d->chunk) {
        int r = M - c0 < d->chunk ? M - c0 : d->chunk;
        const void *rows = be->offset(be, d->rows, (size_t)c0, ES_DT_I32);
        const void *tg = be->offset(be, d->targets, (size_t)c0, ES_DT_I32);
        const void *w = be->offset(be, d->weights, (size_t)c0, ES_DT_F32);
        be->gather_rows(be, d->h, hidden, rows, r, C);
        be->matmul_fwd(be, d->logits, d->h, lm_head, NULL, r, C, V);  // (r, V)
        if (online) {
            be->gather_rows(be, d->th, teacher->hidden, rows, r, d->Ct);
            be->matmul_fwd(be, d->tlogits, d->th, teacher->lm_head, NULL, r, d->Ct, V);
            be->distill_loss(be, sums, d->logits, d->tlogits, tg, w, r, V, alpha, p->tau,
                             p->grad_scale);
        } else if (offline) {
            const void *ids = be->offset(be, d->tids, (size_t)c0 * K, ES_DT_I32);
            const void *lp = be->offset(be, d->tlogp, (size_t)c0 * K, ES_DT_F32);
            be->distill_loss_topk(be, sums, d->logits, ids, lp, tg, w, r, V, K, alpha,
                                  p->grad_scale);
        } else {
            be->distill_loss(be, sums, d->logits, NULL, tg, w, r, V, 1.0f, p->tau, p->grad_scale);
        }
        if (!dhidden) continue;  // evaluation: the loss only
        // logits now hold d(loss)/d(logits): back through the LM head
        be->matmul_bwd(be, d->dh, dlm_head, NULL, d->logits, d->h, lm_head, r, C, V, 0);
        be->scatter_add_rows(be, dhidden, d->dh, rows, r, C);
    }
    return ES_OK;
}

int es_distill_model(es_distill *d, double *sums, void *dhidden, es_model *student,
                     const es_model *teacher, const int32_t *topk_ids, const float *topk_logp,
                     const es_microbatch *mb, const es_distill_params *p) {
    float *dlm = es_model_lm_head_grad(student);
    if (!dlm) return es_fail("distill: the student model is not trainable");
    if (student->cfg.vocab != d->V || student->cfg.hidden != d->C)
        return es_fail("distill: student (vocab %d, hidden %d) does not match the workspace "
                       "(vocab %d, hidden %d)", student->cfg.vocab, student->cfg.hidden, d->V, d->C);
    if (teacher && (teacher->cfg.vocab != d->V || teacher->cfg.hidden != d->Ct))
        return es_fail("distill: teacher (vocab %d, hidden %d) does not match the workspace "
                       "(vocab %d, hidden %d)", teacher->cfg.vocab, teacher->cfg.hidden, d->V, d->Ct);
    es_teacher_rows tr = {0};
    if (teacher) {
        tr.hidden = teacher->hidden;
        tr.lm_head = es_model_lm_head(teacher);
    }
    tr.topk_ids = topk_ids;
    tr.topk_logp = topk_logp;
    return es_distill_loss(d, sums, dhidden, dlm, student->hidden, es_model_lm_head(student), &tr,
                           mb, p);
}

int es_microbatch_topk(int32_t *ids, float *logp, const es_microbatch *mb, const es_dataset *ds) {
    int K = ds->topk;
    if (K <= 0) return es_fail("distill: the dataset has no teacher top-k entries");
    for (int d = 0; d < mb->ndocs; d++) {
        const uint32_t *tid;
        const float *tlp;
        if (es_dataset_topk(ds, (size_t)mb->doc_ids[d], &tid, &tlp) != ES_OK) return ES_ERR;
        if (!tid)
            return es_fail("distill: example %lld comes from a shard without teacher top-k entries",
                           (long long)mb->doc_ids[d]);
        for (int t = mb->cu_seqlens[d]; t < mb->cu_seqlens[d + 1]; t++) {
            int32_t *io = ids + (size_t)t * K;
            float *lo = logp + (size_t)t * K;
            size_t j = (size_t)mb->src[t];
            if (t + 1 < mb->cu_seqlens[d + 1] && mb->src[t + 1] == mb->src[t] + 1) {
                for (int k = 0; k < K; k++) io[k] = (int32_t)tid[j * K + k];
                memcpy(lo, tlp + j * K, (size_t)K * sizeof *lo);
            } else {
                for (int k = 0; k < K; k++) io[k] = -1;
                memset(lo, 0, (size_t)K * sizeof *lo);
            }
        }
    }
    return ES_OK;
}
