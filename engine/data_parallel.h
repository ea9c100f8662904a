// Data parallelism over the backend's collectives: the gradient reduction of
// an optimizer step and ZeRO-1, where each rank holds and updates only its
// part of the master weights and AdamW moments and the updated parameters are
// then all-gathered.
#pragma once
#include <stddef.h>

#include "dist.h"
#include "model.h"
#include "optim.h"

// Without ZeRO-1 the gradients are all-reduced in buckets: contiguous runs of
// the flat layout, from its end (final norm and LM head, then the last layer)
// down, each at least `bucket` elements. During the last backward of a step
// the model's hook issues each bucket as soon as its lowest layer is done, so
// the reduction overlaps the rest of backward; the last bucket, which holds
// the embeddings, follows backward. Every rank issues the same buckets in the
// same order, also one whose share of the step ran no backward at all.
typedef struct {
    int nranks, rank;
    int sharded;     // ZeRO-1 with more than one rank
    size_t lo, hi;   // this rank's part of the flat parameter layout (all of it unless sharded)
    int overlap;     // bucketed all-reduce during backward (several ranks, not sharded)
    size_t bucket;   // elements a bucket collects at least
    // the step in progress
    es_model *m;              // the model whose backward is hooked
    int next_layer;           // the layer the hook expects next (counting down from cfg.layers)
    size_t pend_lo, pend_hi;  // finished gradients not yet issued
} es_dp;

// Sets up the backend's communicator (NCCL's id goes out over MPI) when
// there are several ranks. overlap: reduce in buckets of at least `bucket`
// elements during backward when not sharded.
int es_dp_init(es_dp *dp, es_backend *be, const es_dist *d, int zero1, int overlap, size_t bucket);
// The optimizer state of this rank's part of m's parameters; fixes dp->lo, hi.
int es_dp_optim_create(es_optim *o, es_dp *dp, es_model *m);
// Before the last backward of a step: hooks m so that finished buckets are
// all-reduced while backward goes on (nothing when not overlapping).
void es_dp_overlap_begin(es_dp *dp, es_model *m);
// Buckets of an overlapping step: all, and how many are issued during backward.
void es_dp_buckets(int *all, int *during, const es_dp *dp, const es_model *m);
// After the step's backward passes: sums the micro-batch gradients of every
// rank: all of them, or under ZeRO-1 only this rank's part (the rest of
// m->grads is then undefined); and sets *skip (a device fp32 scalar) to how
// many of the step's loss sums (n fp64 on the device) are not finite on all
// ranks together, for es_dp_optim_step. Issues the buckets the hook did not,
// then the count's all-reduce (last, so that every rank issues the
// collectives in one order, also one that ran no backward), unhooks m and
// waits for every collective.
int es_dp_reduce_grads(es_dp *dp, es_model *m, float *skip, const double *sums, size_t n);
// *sumsq (a device fp64 scalar) = the squared global L2 norm of the reduced
// gradients. Left on the device, but under ZeRO-1: there the parts' sums are
// added on the host (es_dist_sum_f64, in rank order), a wait for the device.
void es_dp_grad_sumsq(double *sumsq, const es_dp *dp, const es_dist *d, es_model *m);
// es_optim_step on this rank's part, then the parameters all-gathered when
// sharded.
int es_dp_optim_step(es_optim *o, const es_dp *dp, es_model *m, const es_optim_hparams *hp, const double *sumsq,
                     const float *skip);
