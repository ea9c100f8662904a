// The planner behind `essence plan`: a run config's memory per device, FLOPs
// and time, on a device it need not have, without running a model. Memory is
// counted through the trainer's own allocation calls on the counting backend
// (backend.h), so it is what `essence train` allocates; FLOPs are
// engine/flops.c's on the packing the trainer would make of the shards (or of
// a length histogram, engine/lengths.h).
#pragma once
#include <stddef.h>

#include "backend.h"
#include "model.h"
#include "peaks.h"
#include "run_config.h"
#include "train.h"

#define ES_GIB (1024.0 * 1048576.0)  // bytes

// FLOPs of an epoch. The first three add up to the total; attention and the
// LM head are the parts of it spent there (student 3x forward, teacher 1x).
typedef struct {
    double student_fwd, student_bwd, teacher_fwd;
    double attention, lm_head;
    double total;  // es_flops_train of every micro-batch, summed as the trainer sums
} es_plan_flops;

// Device memory of one rank (the first: under ZeRO-1 it holds the largest
// part), in bytes.
typedef struct {
    double weights;     // the student's parameters (compute type) and rotary table
    double master;      // fp32 master weights (0 when the compute type is fp32)
    double grads;       // fp32 gradients, all of them (ZeRO-1 reduces them in place)
    double moments;     // AdamW's two fp32 moments (this rank's part under ZeRO-1)
    double teacher;     // the online teacher's parameters
    double acts;        // student activations kept for backward, the teacher's one layer, dhidden
    double lm_head;     // the fused loss: one chunk of rows and logits, and its per-token buffers
    double workspace;   // the models' scratch and residual gradient; on a GPU the backend's
                        // cuBLASLt workspace and attention scratch
    double index;       // int32 batch and row indices
    double validation;  // a forward-only view of whole validation sequences, while validating
    double kinds[ES_MEM_KINDS];  // peaks by the engine's tally kinds (what `essence bench` reports)
    double total;       // peak of all of it together
} es_plan_mem;

// One column of a plan: the run at one lead-span proportion.
typedef struct {
    double r;
    int capacity;       // tokens per micro-batch
    int longest;        // tokens of the longest kept example
    int max_tokens;     // loss and index buffers: the capacity, or whole validation sequences
    double kept;        // tokens per epoch
    double supervised;  // labels per epoch
    size_t batches;     // micro-batches per epoch
    es_run_steps steps;
    int accum;          // micro-batches per device per step, at most
    es_plan_flops flops;  // per epoch
    double flops_step;  // mean per optimizer step over the epoch
    double seconds;     // per epoch at the plan's MFU
    es_plan_mem mem[3];  // at recompute none, mlp and full
    int fits;           // at the run's recompute level, within the device's usable memory
    int max_capacity;   // largest capacity (a multiple of ES_CAPACITY_ROUND) that fits; 0: none
} es_plan_col;

typedef struct {
    es_config student, teacher;
    int has_teacher;
    es_device dev;
    int gpus;
    int zero1;          // ZeRO-1 in effect (run.zero1 with several devices)
    es_recompute recompute;
    double usable;      // bytes of a device's memory the run may take
    double mfu;
    char mfu_source[200];
    char data_source[300];
    size_t examples, tokens;
    es_plan_col col[2];  // [0] at the run's r, [1] at r = 1 (no truncation)
} es_plan;

// Plans rc on `gpus` devices like `dev`, timed at `mfu` (0: the MFU on
// record for that device and a student of that size, else 40%), from the
// length histogram at lengths_path (NULL: rc's training shards). ES_ERR
// naming the problem, among them a run that fits the device at no capacity.
int es_plan_make(es_plan *p, const es_run_config *rc, const es_device *dev, int gpus, double mfu,
                 const char *lengths_path);
