#include "step_buffers.h"

#include <string.h>

#include "common.h"

int es_step_buffers_create(es_step_buffers *b, es_backend *be, int capacity, int accum, int max_tokens, int C,
                           int V, int chunk, int teacher_C, int topk) {
    memset(b, 0, sizeof *b);
    if (es_distill_create(&b->loss, be, max_tokens, C, V, chunk, teacher_C, topk)) return ES_ERR;
    b->tokens = be->alloc(be, (size_t)max_tokens, ES_DT_I32, ES_MEM_INDEX);
    b->pos = be->alloc(be, (size_t)max_tokens, ES_DT_I32, ES_MEM_INDEX);
    b->cu = be->alloc(be, (size_t)max_tokens + 1, ES_DT_I32, ES_MEM_INDEX);
    b->dhidden = be->alloc(be, (size_t)capacity * (size_t)C, ES_DT_COMPUTE, ES_MEM_ACTS);
    b->accum = accum;
    b->stats = be->alloc(be, 1 + 2 * (size_t)accum, ES_DT_F64, ES_MEM_WORKSPACE);
    b->skip = be->alloc(be, 1, ES_DT_F32, ES_MEM_WORKSPACE);
    if (!b->tokens || !b->pos || !b->cu || !b->dhidden || !b->stats || !b->skip ||
        es_staging_create(&b->stage, be, (3 * (size_t)max_tokens + 1) * 4)) {
        es_step_buffers_free(b, be);
        return ES_ERR;  // the backend or the staging recorded why
    }
    return ES_OK;
}

void es_step_buffers_free(es_step_buffers *b, es_backend *be) {
    void *bufs[] = {b->tokens, b->pos, b->cu, b->dhidden, b->stats, b->skip};
    for (int i = 0; i < 6; i++)
        if (bufs[i]) be->free(be, bufs[i]);
    if (b->stage.be) es_staging_free(&b->stage);
    es_distill_free(&b->loss);
    memset(b, 0, sizeof *b);
}
