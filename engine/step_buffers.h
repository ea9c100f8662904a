// The device buffers of a training step besides the models and the
// optimizer: the loss workspace (es_distill) and the batch the model reads.
// The trainer allocates them through es_step_buffers_create, and the planner
// (engine/plan.c) counts memory through the same call.
#pragma once
#include "backend.h"
#include "distill.h"

typedef struct {
    es_distill loss;
    void *tokens, *pos;  // (max_tokens) int32 each
    void *cu;            // (max_tokens + 1) int32 document boundaries
    void *dhidden;       // (capacity, C) gradient of the student's final hidden states
} es_step_buffers;

// Micro-batches of up to `capacity` tokens train; the loss and index buffers
// take up to max_tokens (>= capacity: whole validation sequences). C, V: the
// student's width and vocabulary; chunk: LM-head rows per chunk; teacher_C:
// an online teacher's width (0: none); topk: offline teacher entries (0: none).
int es_step_buffers_create(es_step_buffers *b, es_backend *be, int capacity, int max_tokens, int C, int V,
                           int chunk, int teacher_C, int topk);
void es_step_buffers_free(es_step_buffers *b, es_backend *be);
