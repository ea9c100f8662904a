// AdamW over a model's parameter layout, with decoupled weight decay on
// matrices only, global-norm clipping, and learning-rate schedules. The norm
// stays on the device: the update reads it there, so the host never waits.
#pragma once
#include "model.h"

typedef struct {
    float *m, *v;    // fp32 moments, hi - lo elements
    float *master;   // fp32 master weights, NULL when params are fp32
    int step;        // updates applied so far
    size_t lo, hi;   // the part of the flat layout this state covers
    void *segs;      // its tensors (es_adamw_seg, offsets from lo), on the device
    int nsegs;
} es_optim;

typedef struct {
    float lr, beta1, beta2, eps, wd, clip;
} es_optim_hparams;

int es_optim_create(es_optim *o, es_model *m);
// The state of parameters [lo, hi) of the flat layout only (one rank's part
// under ZeRO-1): moments and master weights of hi - lo elements.
int es_optim_create_part(es_optim *o, es_model *m, size_t lo, size_t hi);
void es_optim_free(es_optim *o, es_backend *be);
// *sumsq (a device fp64 scalar) = the squared global L2 norm of the model's
// gradients, left on the device.
void es_grad_sumsq(double *sumsq, es_model *m);
// One AdamW update of o's part of the model, all tensors in one backend call,
// clipped to hp->clip by the norm sqrt(*sumsq); the device skips it when
// *skip != 0 or the norm is not finite (sumsq, skip: device scalars). It is
// update o->step + 1: the caller counts it (o->step++) once it has read the
// step's statistics and knows it ran.
void es_optim_step(es_optim *o, es_model *m, const es_optim_hparams *hp, const double *sumsq, const float *skip);

typedef enum { ES_SCHED_CONSTANT, ES_SCHED_COSINE, ES_SCHED_LINEAR, ES_SCHED_ONECYCLE } es_schedule;
int es_schedule_parse(es_schedule *s, const char *name);
// Learning rate at step (0-based) of total: warm-up linear from 0 for
// warmup*total steps (none for constant), then decay to min_ratio*peak.
// onecycle is the paper's (PyTorch OneCycleLR defaults): cosine from peak/25
// up to the peak over the warm-up, then cosine down to peak/25/1e4.
float es_schedule_lr(es_schedule s, float peak, float min_ratio, float warmup, int step, int total);
