// Checkpoints: a directory out/ckpt-NNNNNNNN holding the student as a Hugging
// Face directory (config.json, model.safetensors, fp32), the optimizer state
// (optim.safetensors) and the trainer state (trainer_state.json: step, data
// position, seed, run config). It is built in a temporary directory and
// renamed into place, so a crash mid-write leaves the previous one intact.
#pragma once
#include <stdint.h>

#include "model.h"
#include "optim.h"
#include "packer.h"

typedef struct {
    int step;                  // training steps done (skipped ones included)
    int optim_step;            // AdamW updates applied
    es_packer_state data;      // where the packer stands
    uint64_t seed;             // run.seed: with `data` it fixes every later batch and label mask
    int bad_steps;             // non-finite steps in a row
    double tokens;             // kept tokens trained on
    double flops;              // FLOPs spent
    double seconds;            // training time so far
} es_train_state;

// Writes checkpoint `st->step` under out_dir and keeps the newest `keep`.
int es_ckpt_save(const char *out_dir, const es_model *m, const es_optim *o, const es_train_state *st,
                 const char *config_json, int keep);
// Removes temporaries left by a checkpoint write that was killed; with
// `all`, also every checkpoint (a fresh start).
int es_ckpt_clean(const char *out_dir, int all);
// Finds the newest intact checkpoint (trainer state valid, every file of the
// size and CRC-32C recorded in it): returns 1 and fills path, 0 if there is
// no checkpoint at all. Each damaged one gets a line on stderr naming the
// file and the problem; when an older one is intact the newer damaged ones
// are renamed to ckpt-NNNNNNNN.damaged (out of pruning's way) and a line says
// which checkpoint resumes instead. ES_ERR when none is intact.
int es_ckpt_pick(char *path, size_t size, const char *out_dir);
// Refuses (one line naming config.json and the first differing tensor) a
// checkpoint whose model has other tensors than the run's student, and (one
// line naming trainer_state.json) one whose optimizer state is stored in
// another flat order (before the q/k/v weights were adjacent, for qkv_bias
// models).
int es_ckpt_check_model(const char *ckpt_dir, const es_config *run);
// Restores the optimizer and trainer state of a checkpoint into an already
// loaded model (load the weights with es_model_load_hf on the same directory).
int es_ckpt_load_state(es_optim *o, es_train_state *st, const es_model *m, const char *ckpt_dir);

// ZeRO-1: the optimizer state is saved in parts, rank r of n writing its part
// (es_shard_range) as optim-RRRRR-of-NNNNN.safetensors, and trainer_state.json
// records "optim_parts": n. Sequence: rank 0 creates the step's staging
// directory (the same path on every rank: a shared run directory), every rank
// writes its part, then rank 0 adds the model and trainer state and moves it
// into place. A crash before that leaves the previous checkpoint the newest.
void es_ckpt_stage_path(char *path, size_t size, const char *out_dir, int step);
int es_ckpt_stage_create(const char *stage);
// o holds the rank's part only.
int es_ckpt_save_part(const char *stage, const es_model *m, const es_optim *o, int rank, int nranks);
int es_ckpt_save_sharded(const char *out_dir, const char *stage, const es_model *m, const es_train_state *st,
                         const char *config_json, int keep, int nranks);
// As es_ckpt_load_state, for elements [lo, hi) of the flat layout only (o
// sized hi - lo). Reads a checkpoint written whole or in parts by any number
// of ranks, so a run may resume on a different number of ranks.
int es_ckpt_load_state_range(es_optim *o, es_train_state *st, const es_model *m, const char *ckpt_dir, size_t lo,
                             size_t hi);
