// AdamW over a model's parameter layout, with decoupled weight decay on
// matrices only, global-norm clipping, and learning-rate schedules.
#pragma once
#include "model.h"

typedef struct {
    float *m, *v;    // fp32 moments, layout.total elements
    float *master;   // fp32 master weights, NULL when params are fp32
    int step;        // updates applied so far
} es_optim;

typedef struct {
    float lr, beta1, beta2, eps, wd, clip;
} es_optim_hparams;

int es_optim_create(es_optim *o, es_model *m);
// The state of parameters [lo, hi) of the flat layout only (one rank's part
// under ZeRO-1): moments and master weights of hi - lo elements.
int es_optim_create_part(es_optim *o, es_model *m, size_t lo, size_t hi);
void es_optim_free(es_optim *o, es_backend *be);
// Global L2 norm of the model's gradients.
double es_grad_norm(es_model *m);
// The factor norm clipping applies to the gradients: clip / norm when
// hp->clip > 0 and the norm exceeds it, else 1.
float es_clip_scale(const es_optim_hparams *hp, double grad_norm);
// Clips (when hp->clip > 0 and norm > clip) and applies one AdamW update.
// The caller checks the norm for finiteness first.
void es_optim_step(es_optim *o, es_model *m, const es_optim_hparams *hp, double grad_norm);

typedef enum { ES_SCHED_CONSTANT, ES_SCHED_COSINE, ES_SCHED_LINEAR, ES_SCHED_ONECYCLE } es_schedule;
int es_schedule_parse(es_schedule *s, const char *name);
// Learning rate at step (0-based) of total: warm-up linear from 0 for
// warmup*total steps (none for constant), then decay to min_ratio*peak.
// onecycle is the paper's (PyTorch OneCycleLR defaults): cosine from peak/25
// up to the peak over the warm-up, then cosine down to peak/25/1e4.
float es_schedule_lr(es_schedule s, float peak, float min_ratio, float warmup, int step, int total);
