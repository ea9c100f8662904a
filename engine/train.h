// The trainer: sets up a run from its config (backend, data, packer, student,
// teacher, optimizer, resume) and runs optimizer steps. `essence train` and
// `essence bench` both drive it.
#pragma once
#include <stdint.h>

#include "checkpoint.h"
#include "data_parallel.h"
#include "dist.h"
#include "distill.h"
#include "metrics.h"
#include "model.h"
#include "optim.h"
#include "packer.h"
#include "run_config.h"
#include "shard.h"
#include "step_buffers.h"

typedef struct {
    es_run_config rc;
    const es_dist *dist;
    es_backend *be;
    es_model student, teacher;
    int has_teacher;
    es_dataset train, val;
    int has_val;
    es_pack_config pack, val_pack;
    es_packer *packer;
    es_step_buffers buf;   // loss workspace and batch buffers on the device
    es_optim opt;          // this rank's part of the state under ZeRO-1
    es_dp dp;              // gradient reduction across ranks, ZeRO-1 part
    es_schedule sched;
    es_train_state st;
    int resumed;
    char resumed_from[600];
    int capacity;          // tokens per micro-batch
    int step_mbs;          // micro-batches per optimizer step, all ranks together
    int accum;             // this rank's share of them at most: ceil(step_mbs / ranks)
    int steps_per_epoch;   // optimizer steps
    int total_steps;
    es_microbatch *mbs;    // (accum) micro-batches of the current step
    int32_t *topk_ids;     // (capacity, K) offline teacher rows, or NULL
    float *topk_logp;
    char *config_json;     // resolved config, stored in checkpoints
} es_trainer;

// What one optimizer step did (summed over ranks).
typedef struct {
    double loss, ce, kd;   // per supervised token
    double nsup;           // supervised tokens
    double tokens;         // kept tokens run through the student
    double docs;
    double flops;          // training FLOPs (student fwd+bwd, teacher fwd)
    double grad_norm;
    float lr;
    int skipped;           // non-finite loss or gradient: no update
    int empty;             // no supervised token in the step: no update
    double seconds;
} es_step_result;

// The packer settings a run config gives (full: r = 1, no answer drop or
// label mask, as validation uses).
int es_run_pack_config(es_pack_config *pc, const es_run_config *rc, int rank, int nranks, int full);

// The optimizer steps of a run over the packer's epoch 0 (packed for all
// ranks together) of `ndocs` training examples.
typedef struct {
    int step_mbs;         // micro-batches per optimizer step, all ranks together
    int steps_per_epoch;  // optimizer steps
    int total_steps;      // run.steps, or run.epochs x steps_per_epoch
} es_run_steps;
void es_run_steps_plan(es_run_steps *s, const es_run_config *rc, const es_packer *p, size_t ndocs);

// Sets up everything; resumes from the newest checkpoint in rc->out unless
// `fresh`. Prints the resolved config and the memory plan when `verbose`.
int es_trainer_init(es_trainer *t, const es_run_config *rc, const es_dist *dist, int fresh,
                    int verbose);
void es_trainer_free(es_trainer *t);
// One optimizer step.
int es_trainer_step(es_trainer *t, es_step_result *r);
// Cross-entropy per supervised token on the validation shards at r = 1
// (the whole sequences), all ranks together. NAN when no validation data.
int es_trainer_validate(es_trainer *t, double *val_loss);
// Writes a checkpoint of the current state (rank 0 writes, all ranks call).
int es_trainer_checkpoint(es_trainer *t);
