// Per-operation wall time of a backend, without touching the backend: the
// timer keeps a copy of the operations table and points each op of the live
// table at a wrapper that syncs, times, and calls the original. Syncing around
// every op serialises an asynchronous device, so time steps with the timer
// detached and use the shares from separate, timed steps.
#pragma once
#include "backend.h"

#define ES_OP_TIMER_OPS(X)                                                                           \
    X(upload) X(upload_async) X(download) X(zero) X(embed_fwd) X(embed_bwd) X(matmul_fwd)            \
    X(matmul_bwd) X(rmsnorm_fwd) X(rmsnorm_bwd) X(add_rmsnorm_fwd) X(layernorm_fwd) X(layernorm_bwd) \
    X(rope_fwd) X(rope_bwd) X(qkv_fwd) X(qkv_bwd) X(attention_fwd) X(attention_bwd) X(swiglu_fwd)    \
    X(swiglu_bwd) X(gelu_fwd) X(gelu_bwd) X(add) X(gather_rows) X(scatter_add_rows) X(distill_loss)  \
    X(distill_loss_topk) X(sumsq) X(count_nonfinite) X(adamw)

#define ES_OP_TIMER_ENUM(op) ES_OP_##op,
typedef enum { ES_OP_TIMER_OPS(ES_OP_TIMER_ENUM) ES_OP_COUNT } es_op_id;
#undef ES_OP_TIMER_ENUM

extern const char *const es_op_names[ES_OP_COUNT];

typedef struct {
    es_backend *be;     // the live table, whose op pointers are replaced
    es_backend orig;    // the original table
    double seconds[ES_OP_COUNT];
    long long calls[ES_OP_COUNT];
    double flops[ES_OP_COUNT];  // matmul FLOPs (2 per multiply-add), for achieved rates
} es_op_timer;

// Replaces be's op pointers with timing wrappers. One timer may be attached
// at a time; ES_ERR when another is.
int es_op_timer_attach(es_op_timer *t, es_backend *be);
// Puts the original op pointers back (be's memory tally is left alone).
void es_op_timer_detach(es_op_timer *t);
// Clears the accumulated times, calls and FLOPs.
void es_op_timer_reset(es_op_timer *t);
// Sum of the accumulated op times.
double es_op_timer_total(const es_op_timer *t);
