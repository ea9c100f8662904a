#include "dist.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "es_build.h"

#if ES_HAVE_MPI
#include <mpi.h>

static void mpi_check(int rc, const char *what) {
    if (rc != MPI_SUCCESS) {
        char msg[MPI_MAX_ERROR_STRING];
        int len = 0;
        MPI_Error_string(rc, msg, &len);
        es_die("MPI %s failed: %s", what, msg);
    }
}
#define MPI_CHECK(call) mpi_check((call), #call)
#endif

// A launcher sets one of these in every rank's environment.
static int launched_by_mpi(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK") ||
           getenv("MPI_LOCALNRANKS");
}

int es_dist_init(es_dist *d, int *argc, char ***argv) {
    memset(d, 0, sizeof *d);
    d->size = 1;
    if (!launched_by_mpi()) return ES_OK;
#if ES_HAVE_MPI
    MPI_CHECK(MPI_Init(argc, argv));
    d->mpi = 1;
    // errors return to us, so a lost peer ends this rank with a message
    MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &d->rank));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &d->size));
    return ES_OK;
#else
    (void)argc;
    (void)argv;
    return es_fail("started under an MPI launcher, but this build of essence has no MPI (rebuild with MPI present)");
#endif
}

void es_dist_finalize(es_dist *d) {
#if ES_HAVE_MPI
    if (d->mpi) MPI_Finalize();
#endif
    d->mpi = 0;
}

void es_dist_sum_f32(const es_dist *d, float *x, size_t n) {
#if ES_HAVE_MPI
    if (d->size > 1) MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, x, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
#else
    (void)d, (void)x, (void)n;
#endif
}

void es_dist_sum_f64(const es_dist *d, double *x, size_t n) {
#if ES_HAVE_MPI
    if (d->size > 1) MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, x, (int)n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
#else
    (void)d, (void)x, (void)n;
#endif
}

void es_dist_bcast(const es_dist *d, void *buf, size_t bytes) {
#if ES_HAVE_MPI
    if (d->size > 1) MPI_CHECK(MPI_Bcast(buf, (int)bytes, MPI_BYTE, 0, MPI_COMM_WORLD));
#else
    (void)d, (void)buf, (void)bytes;
#endif
}

void es_dist_max_f64(const es_dist *d, double *x, size_t n) {
#if ES_HAVE_MPI
    if (d->size > 1) MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, x, (int)n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
#else
    (void)d, (void)x, (void)n;
#endif
}

void es_dist_reduce_scatter_f32(const es_dist *d, float *x, size_t n) {
#if ES_HAVE_MPI
    if (d->size == 1) return;
    int part = (int)(n / (size_t)d->size);
    MPI_CHECK(MPI_Reduce_scatter_block(MPI_IN_PLACE, x, part, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
    // MPI leaves the result at the start of the buffer; move it to our part
    if (d->rank) memmove(x + (size_t)d->rank * (size_t)part, x, (size_t)part * sizeof(float));
#else
    (void)d, (void)x, (void)n;
#endif
}

void es_dist_allgather_f32(const es_dist *d, float *x, size_t n) {
#if ES_HAVE_MPI
    if (d->size == 1) return;
    int part = (int)(n / (size_t)d->size);
    MPI_CHECK(MPI_Allgather(MPI_IN_PLACE, part, MPI_FLOAT, x, part, MPI_FLOAT, MPI_COMM_WORLD));
#else
    (void)d, (void)x, (void)n;
#endif
}

void es_dist_barrier(const es_dist *d) {
#if ES_HAVE_MPI
    if (d->size > 1) MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
#else
    (void)d;
#endif
}

int es_dist_check_same(const es_dist *d, const char *what, const char *text) {
#if ES_HAVE_MPI
    if (d->size == 1) return ES_OK;
    int len = (int)strlen(text) + 1;
    MPI_CHECK(MPI_Bcast(&len, 1, MPI_INT, 0, MPI_COMM_WORLD));
    char *ref = es_xmalloc((size_t)len);
    if (d->rank == 0) memcpy(ref, text, (size_t)len);
    MPI_CHECK(MPI_Bcast(ref, len, MPI_CHAR, 0, MPI_COMM_WORLD));
    int differs = strcmp(ref, text) != 0, any = 0;
    char line[256] = "";
    if (differs) {  // name the first differing line
        const char *a = ref, *b = text;
        while (*a && *a == *b) a++, b++;
        while (b > text && b[-1] != '\n') b--;
        size_t n = strcspn(b, "\n");
        snprintf(line, sizeof line, "%.*s", (int)(n < 200 ? n : 200), b);
    }
    MPI_CHECK(MPI_Allreduce(&differs, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
    free(ref);
    if (differs) return es_fail("rank %d: its %s differs from rank 0's at: %s", d->rank, what, line);
    if (any) return es_fail("rank %d: another rank's %s differs from rank 0's", d->rank, what);
    return ES_OK;
#else
    (void)d, (void)what, (void)text;
    return ES_OK;
#endif
}
