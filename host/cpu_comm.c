// The CPU backend's collectives: MPI on MPI_COMM_WORLD. Errors return to us
// (the engine sets MPI_ERRORS_RETURN), so a lost peer becomes a message.
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "cpu_ops.h"
#include "es_build.h"

#if ES_HAVE_MPI
#include <mpi.h>

static int mpi_fail(int rc, const char *what) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return es_fail("cpu backend: %s failed (a rank died or the network failed): %.*s", what, len, msg);
}

static int cpu_comm_id(es_backend *be, void *id) {
    memset(id, 0, ES_COMM_ID_BYTES);  // MPI_COMM_WORLD needs no id
    return ES_OK;
}

static int cpu_comm_init(es_backend *be, const void *id, int rank, int nranks) {
    int flag = 0, r = -1, n = 0;
    MPI_Initialized(&flag);
    if (!flag) return es_fail("cpu backend: %d ranks requested but MPI is not initialised", nranks);
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    if (r != rank || n != nranks)
        return es_fail("cpu backend: rank %d of %d does not match MPI's %d of %d", rank, nranks, r, n);
    return ES_OK;
}

// MPI counts are int: larger buffers go in pieces.
#define PIECE ((size_t)1 << 30)

// All-reduces in flight until comm_wait. One list per process, as
// MPI_COMM_WORLD is.
static MPI_Request *pending;
static int npending, cap_pending;

// Started, not finished: backward goes on while MPI reduces the bucket. MPI
// moves a non-blocking collective along only inside MPI calls, so each new
// bucket also tests the earlier ones.
static int cpu_grad_allreduce(es_backend *be, float *g, size_t n) {
    for (size_t at = 0; at < n; at += PIECE) {
        int cnt = (int)(n - at < PIECE ? n - at : PIECE);
        if (npending == cap_pending) {
            cap_pending = cap_pending ? 2 * cap_pending : 64;
            MPI_Request *p = es_xmalloc((size_t)cap_pending * sizeof *p);
            if (npending) memcpy(p, pending, (size_t)npending * sizeof *p);
            free(pending);
            pending = p;
        }
        int rc = MPI_Iallreduce(MPI_IN_PLACE, g + at, cnt, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &pending[npending]);
        if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Iallreduce of the gradients");
        npending++;
    }
    int done;
    int rc = MPI_Testall(npending, pending, &done, MPI_STATUSES_IGNORE);
    return rc == MPI_SUCCESS ? ES_OK : mpi_fail(rc, "MPI_Testall of the gradient all-reduces");
}

// Per-rank element counts and offsets of es_shard_range (one allocation:
// free counts); ES_ERR when they do not fit MPI's int counts.
static int shard_counts(int **counts, int **displs, int *rank, size_t n) {
    int nranks;
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    if (n > INT_MAX) return es_fail("cpu backend: %zu parameters are too many for sharded MPI collectives", n);
    *counts = es_xmalloc(2 * (size_t)nranks * sizeof(int));
    *displs = *counts + nranks;
    for (int r = 0; r < nranks; r++) {
        size_t lo, hi;
        es_shard_range(&lo, &hi, n, r, nranks);
        (*counts)[r] = (int)(hi - lo);
        (*displs)[r] = (int)lo;
    }
    return ES_OK;
}

static int cpu_grad_reduce_scatter(es_backend *be, float *g, size_t n) {
    int *counts, *displs, rank;
    if (shard_counts(&counts, &displs, &rank, n)) return ES_ERR;
    // in place, MPI leaves this rank's sum at the start of the buffer
    int rc = MPI_Reduce_scatter(MPI_IN_PLACE, g, counts, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    if (rc == MPI_SUCCESS && displs[rank])
        memmove(g + displs[rank], g, (size_t)counts[rank] * sizeof(float));
    free(counts);
    return rc == MPI_SUCCESS ? ES_OK : mpi_fail(rc, "MPI_Reduce_scatter of the gradients");
}

static int cpu_param_allgather(es_backend *be, void *x, size_t n, es_dtype dt) {
    int *counts, *displs, rank;
    if (shard_counts(&counts, &displs, &rank, n)) return ES_ERR;
    MPI_Datatype t = dt == ES_DT_I32 ? MPI_INT : MPI_FLOAT;  // the compute type is fp32 here
    int rc = MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x, counts, displs, t, MPI_COMM_WORLD);
    free(counts);
    return rc == MPI_SUCCESS ? ES_OK : mpi_fail(rc, "MPI_Allgatherv of the parameters");
}

// The gradient all-reduces finish here; the other collectives block.
static int cpu_comm_wait(es_backend *be) {
    int rc = MPI_Waitall(npending, pending, MPI_STATUSES_IGNORE);
    npending = 0;
    return rc == MPI_SUCCESS ? ES_OK : mpi_fail(rc, "MPI_Waitall of the gradient all-reduces");
}

void cpu_fill_comm(es_backend *be) {
    be->comm_id = cpu_comm_id;
    be->comm_init = cpu_comm_init;
    be->grad_allreduce = cpu_grad_allreduce;
    be->grad_reduce_scatter = cpu_grad_reduce_scatter;
    be->param_allgather = cpu_param_allgather;
    be->comm_wait = cpu_comm_wait;
}
#else
// Without MPI there is one rank and no collectives: the ops stay NULL.
void cpu_fill_comm(es_backend *be) { (void)be; }
#endif
