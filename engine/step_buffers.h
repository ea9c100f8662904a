// The device buffers of a training step besides the models and the
// optimizer: the loss workspace (es_distill), the batch the model reads (sent
// from host staging with upload_async), and the step's statistics, which the
// device fills and the trainer reads once, at the end of the step.
// The trainer allocates them through es_step_buffers_create, and the planner
// (engine/plan.c) counts memory through the same call.
#pragma once
#include "backend.h"
#include "distill.h"
#include "staging.h"

typedef struct {
    es_distill loss;
    void *tokens, *pos;  // (max_tokens) int32 each
    void *cu;            // (max_tokens + 1) int32 document boundaries
    void *dhidden;       // (capacity, C) gradient of the student's final hidden states
    es_staging stage;    // host tokens, pos, cu of a micro-batch (3 * max_tokens + 1 int32)
    // (1 + 2 * accum) fp64: the gradients' sum of squares, then the CE and KD
    // sums of each micro-batch of a rank's share of a step
    double *stats;
    int accum;
    float *skip;  // (1) fp32: non-finite loss sums on all ranks; the update is skipped unless 0
} es_step_buffers;

// Micro-batches of up to `capacity` tokens train, `accum` of them a step on a
// rank; the loss and index buffers take up to max_tokens (>= capacity: whole
// validation sequences). C, V: the student's width and vocabulary; chunk:
// LM-head rows per chunk; teacher_C: an online teacher's width (0: none);
// topk: offline teacher entries (0: none).
int es_step_buffers_create(es_step_buffers *b, es_backend *be, int capacity, int accum, int max_tokens, int C,
                           int V, int chunk, int teacher_C, int topk);
void es_step_buffers_free(es_step_buffers *b, es_backend *be);
