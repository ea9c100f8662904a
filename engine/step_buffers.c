#include "step_buffers.h"

#include <string.h>

#include "common.h"

int es_step_buffers_create(es_step_buffers *b, es_backend *be, int capacity, int max_tokens, int C, int V,
                           int chunk, int teacher_C, int topk) {
    memset(b, 0, sizeof *b);
    if (es_distill_create(&b->loss, be, max_tokens, C, V, chunk, teacher_C, topk)) return ES_ERR;
    b->tokens = be->alloc(be, (size_t)max_tokens, ES_DT_I32, ES_MEM_INDEX);
    b->pos = be->alloc(be, (size_t)max_tokens, ES_DT_I32, ES_MEM_INDEX);
    b->cu = be->alloc(be, (size_t)max_tokens + 1, ES_DT_I32, ES_MEM_INDEX);
    b->dhidden = be->alloc(be, (size_t)capacity * (size_t)C, ES_DT_COMPUTE, ES_MEM_ACTS);
    if (!b->tokens || !b->pos || !b->cu || !b->dhidden) {
        es_step_buffers_free(b, be);
        return ES_ERR;  // the backend recorded why
    }
    return ES_OK;
}

void es_step_buffers_free(es_step_buffers *b, es_backend *be) {
    void *bufs[] = {b->tokens, b->pos, b->cu, b->dhidden};
    for (int i = 0; i < 4; i++)
        if (bufs[i]) be->free(be, bufs[i]);
    es_distill_free(&b->loss);
    memset(b, 0, sizeof *b);
}
