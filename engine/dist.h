// Ranks: MPI bootstrap when launched under mpirun (or srun), one rank
// otherwise. Host-side collectives for scalars and CPU buffers.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int rank, size;
    int mpi;  // MPI was initialised by us
} es_dist;

// Initialises MPI when the process was started by an MPI launcher.
int es_dist_init(es_dist *d, int *argc, char ***argv);
void es_dist_finalize(es_dist *d);
// Sums n values across ranks, in place.
void es_dist_sum_f32(const es_dist *d, float *x, size_t n);
void es_dist_sum_f64(const es_dist *d, double *x, size_t n);
// Rank 0's `bytes` bytes of buf copied to every rank.
void es_dist_bcast(const es_dist *d, void *buf, size_t bytes);
// Max of n values across ranks, in place.
void es_dist_max_f64(const es_dist *d, double *x, size_t n);
// Reduce-scatter (sum) of x (n, divisible into size equal parts of n/size)
// leaving this rank's summed part in place at x + rank * n/size; and the
// matching all-gather of those parts.
void es_dist_reduce_scatter_f32(const es_dist *d, float *x, size_t n);
void es_dist_allgather_f32(const es_dist *d, float *x, size_t n);
// Refuses to start when ranks disagree: compares a text (the resolved config,
// data fingerprints) with rank 0's and names the first differing line.
int es_dist_check_same(const es_dist *d, const char *what, const char *text);
void es_dist_barrier(const es_dist *d);
