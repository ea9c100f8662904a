// The CUDA backend's collectives: NCCL on its own stream, so that gradient
// buckets reduce while backward computes. The communicator's unique id comes
// from rank 0's comm_id and reaches the other ranks over MPI (the engine).
#include <sched.h>
#include <string.h>

#include "cuda_common.cuh"
extern "C" {
#include "es_build.h"
}

#if ES_HAVE_NCCL
#include <nccl.h>

static_assert(sizeof(ncclUniqueId) <= ES_COMM_ID_BYTES, "NCCL's unique id outgrew ES_COMM_ID_BYTES");

typedef struct {
    ncclComm_t comm;
    cudaStream_t stream;       // communication stream
    cudaEvent_t ready, done;   // compute -> communication, communication -> compute
    int rank, nranks;
} cuda_comm;

static cuda_comm *comm_of(es_backend *be) { return (cuda_comm *)cuda_of(be)->comm; }

static int nccl_fail(ncclResult_t r, const char *what) {
    return es_fail("cuda backend: NCCL %s failed (a rank died or the network failed): %s", what,
                   ncclGetErrorString(r));
}

static int cuda_comm_id(es_backend *be, void *id) {
    ncclUniqueId uid;
    ncclResult_t r = ncclGetUniqueId(&uid);
    if (r != ncclSuccess) return nccl_fail(r, "ncclGetUniqueId");
    memset(id, 0, ES_COMM_ID_BYTES);
    memcpy(id, &uid, sizeof uid);
    return ES_OK;
}

static int cuda_comm_init(es_backend *be, const void *id, int rank, int nranks) {
    cuda_ctx *c = cuda_of(be);
    if (c->comm) return es_fail("cuda backend: the communicator is already set up");
    cuda_comm *k = (cuda_comm *)calloc(1, sizeof *k);
    if (!k) return es_fail("cuda backend: out of host memory for the communicator");
    ncclUniqueId uid;
    memcpy(&uid, id, sizeof uid);
    ncclResult_t r = ncclCommInitRank(&k->comm, nranks, uid, rank);
    if (r != ncclSuccess) {
        free(k);
        return nccl_fail(r, "ncclCommInitRank");
    }
    CUDA_CHECK(cudaStreamCreateWithFlags(&k->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&k->ready, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&k->done, cudaEventDisableTiming));
    k->rank = rank;
    k->nranks = nranks;
    c->comm = k;
    return ES_OK;
}

// The collective about to be issued reads what the compute stream wrote so far.
static cuda_comm *begin(es_backend *be) {
    cuda_comm *k = comm_of(be);
    CUDA_REQUIRE(k, "cuda backend: a collective before comm_init");
    CUDA_REQUIRE(k->comm, "cuda backend: a collective after the communicator failed");
    CUDA_CHECK(cudaEventRecord(k->ready, cuda_of(be)->stream));
    CUDA_CHECK(cudaStreamWaitEvent(k->stream, k->ready, 0));
    return k;
}

static int cuda_grad_allreduce(es_backend *be, float *g, size_t n) {
    cuda_comm *k = begin(be);
    ncclResult_t r = ncclAllReduce(g, g, n, ncclFloat, ncclSum, k->comm, k->stream);
    return r == ncclSuccess ? ES_OK : nccl_fail(r, "ncclAllReduce of the gradients");
}

// NCCL's reduce-scatter and all-gather need equal parts; es_shard_range's
// differ by one, so each part is a reduce to (broadcast from) its owner, grouped.
static int cuda_grad_reduce_scatter(es_backend *be, float *g, size_t n) {
    cuda_comm *k = begin(be);
    ncclResult_t r = ncclGroupStart();
    for (int p = 0; p < k->nranks && r == ncclSuccess; p++) {
        size_t lo, hi;
        es_shard_range(&lo, &hi, n, p, k->nranks);
        r = ncclReduce(g + lo, g + lo, hi - lo, ncclFloat, ncclSum, p, k->comm, k->stream);
    }
    ncclResult_t e = ncclGroupEnd();
    if (r == ncclSuccess) r = e;
    return r == ncclSuccess ? ES_OK : nccl_fail(r, "reduce-scatter of the gradients");
}

static int cuda_param_allgather(es_backend *be, void *x, size_t n, es_dtype dt) {
    cuda_comm *k = begin(be);
    ncclDataType_t t = dt == ES_DT_COMPUTE ? ncclBfloat16 : dt == ES_DT_I32 ? ncclInt32 : ncclFloat;
    size_t esz = dt == ES_DT_COMPUTE ? sizeof(bf16) : 4;
    ncclResult_t r = ncclGroupStart();
    for (int p = 0; p < k->nranks && r == ncclSuccess; p++) {
        size_t lo, hi;
        es_shard_range(&lo, &hi, n, p, k->nranks);
        char *at = (char *)x + lo * esz;
        r = ncclBroadcast(at, at, hi - lo, t, p, k->comm, k->stream);
    }
    ncclResult_t e = ncclGroupEnd();
    if (r == ncclSuccess) r = e;
    return r == ncclSuccess ? ES_OK : nccl_fail(r, "all-gather of the parameters");
}

// A lost peer leaves NCCL's kernels spinning and shows only as the
// communicator's asynchronous error, so the collectives are polled to the end
// (never waited on blindly) and a failed communicator is aborted, which ends
// its kernels; otherwise the next download or sync would hang for good.
static int cuda_comm_wait(es_backend *be) {
    cuda_comm *k = comm_of(be);
    if (!k) return ES_OK;
    if (!k->comm) return es_fail("cuda backend: the communicator failed earlier");
    CUDA_CHECK(cudaEventRecord(k->done, k->stream));
    for (;;) {
        cudaError_t e = cudaEventQuery(k->done);
        if (e == cudaSuccess) break;
        if (e != cudaErrorNotReady) CUDA_CHECK(e);
        ncclResult_t async = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(k->comm, &async);
        if (r == ncclSuccess) r = async;
        if (r != ncclSuccess) {
            (void)ncclCommAbort(k->comm);  // the failure above is the one to report
            k->comm = NULL;
            return nccl_fail(r, "collective");
        }
        sched_yield();
    }
    CUDA_CHECK(cudaStreamWaitEvent(cuda_of(be)->stream, k->done, 0));
    return ES_OK;
}

void cuda_comm_destroy(es_backend *be) {
    cuda_comm *k = comm_of(be);
    if (!k) return;
    CUDA_CHECK(cudaStreamSynchronize(k->stream));
    if (k->comm) ncclCommDestroy(k->comm);  // NULL: already aborted
    CUDA_CHECK(cudaEventDestroy(k->ready));
    CUDA_CHECK(cudaEventDestroy(k->done));
    CUDA_CHECK(cudaStreamDestroy(k->stream));
    free(k);
    cuda_of(be)->comm = NULL;
}

void cuda_fill_comm(es_backend *be) {
    be->comm_id = cuda_comm_id;
    be->comm_init = cuda_comm_init;
    be->grad_allreduce = cuda_grad_allreduce;
    be->grad_reduce_scatter = cuda_grad_reduce_scatter;
    be->param_allgather = cuda_param_allgather;
    be->comm_wait = cuda_comm_wait;
}
#else
// Without NCCL the CUDA backend runs one rank: the collectives stay NULL.
void cuda_fill_comm(es_backend *be) { (void)be; }
void cuda_comm_destroy(es_backend *be) { (void)be; }
#endif
