// Data parallelism over the backend's collectives: the gradient reduction of
// an optimizer step and ZeRO-1, where each rank holds and updates only its
// part of the master weights and AdamW moments and the updated parameters are
// then all-gathered.
#pragma once
#include <stddef.h>

#include "dist.h"
#include "model.h"
#include "optim.h"
#include "packer.h"

typedef struct {
    int nranks, rank;
    int sharded;     // ZeRO-1 with more than one rank
    size_t lo, hi;   // this rank's part of the flat parameter layout (all of it unless sharded)
} es_dp;

// Sets up the backend's communicator (NCCL's id goes out over MPI) when
// there are several ranks.
int es_dp_init(es_dp *dp, es_backend *be, const es_dist *d, int zero1);
// The optimizer state of this rank's part of m's parameters; fixes dp->lo, hi.
int es_dp_optim_create(es_optim *o, es_dp *dp, es_model *m);
// Sums the micro-batch gradients of every rank: all of them, or under
// ZeRO-1 only this rank's part (the rest of m->grads is then undefined).
int es_dp_reduce_grads(const es_dp *dp, es_model *m);
// Global L2 norm of the reduced gradients.
double es_dp_grad_norm(const es_dp *dp, const es_dist *d, es_model *m);
// A checkpoint's data position counts micro-batches per rank of the
// `saved_ranks` that wrote it; converts it for `nranks`, or refuses when
// those ranks cannot continue from exactly there.
int es_dp_data_position(es_packer_state *pos, int saved_ranks, int nranks, const char *ckpt);
// Clips and applies one AdamW update (to this rank's part, then all-gathers
// the parameters when sharded).
int es_dp_optim_step(es_optim *o, const es_dp *dp, es_model *m, const es_optim_hparams *hp, double grad_norm);
