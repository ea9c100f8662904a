// Private to the CUDA backend: its context, error checks, bf16 helpers and
// the functions each cuda_*.cu file uses to fill its part of the ops table.
#pragma once
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "backend.h"
#include "common.h"
#include "cuda_sizes.h"
}
#include "hd_portable.cuh"

typedef __nv_bfloat16 bf16;

// A failing CUDA call means a broken device or a bug in this backend: there is
// no state to recover, so report where and why, and abort.
#define CUDA_CHECK(call)                                                              \
    do {                                                                              \
        cudaError_t e_ = (call);                                                      \
        if (e_ != cudaSuccess) {                                                      \
            fprintf(stderr, "essence: %s:%d: CUDA error: %s\n", __FILE__, __LINE__,   \
                    cudaGetErrorString(e_));                                          \
            abort();                                                                  \
        }                                                                             \
    } while (0)

#define CUBLAS_CHECK(call)                                                            \
    do {                                                                              \
        cublasStatus_t s_ = (call);                                                   \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                            \
            fprintf(stderr, "essence: %s:%d: cuBLASLt error: %s\n", __FILE__, __LINE__, \
                    cublasLtGetStatusString(s_));                                     \
            abort();                                                                  \
        }                                                                             \
    } while (0)

// Checks a kernel launch (bad configuration shows up here, not at the call).
#define LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

// A shape this backend does not support is a caller bug: say which, abort.
#define CUDA_REQUIRE(cond, ...)                                                       \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "essence: %s:%d: ", __FILE__, __LINE__);                  \
            fprintf(stderr, __VA_ARGS__);                                             \
            fputc('\n', stderr);                                                      \
            abort();                                                                  \
        }                                                                             \
    } while (0)

typedef struct {
    void *ptr;
    size_t bytes;
    es_mem_kind kind;
} cuda_alloc_rec;

// A pinned host block (host_alloc) and the event after the last upload from it.
typedef struct {
    void *ptr;
    size_t bytes;
    cudaEvent_t read;
} cuda_host_rec;

typedef struct cuda_lt_plans cuda_lt_plans;  // cuda_matmul.cu's cache of cuBLASLt plans

typedef struct {
    int device;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *lt_workspace;  // cuBLASLt scratch, fixed size
    size_t lt_workspace_bytes;
    cuda_lt_plans *lt_plans;  // made on first use
    void *scratch;  // op-internal scratch, grown on demand
    size_t scratch_bytes;
    double *dsum;  // (4) device accumulators for reductions read by the host
    cuda_alloc_rec *recs;  // live allocations, for free's tally
    size_t nrecs, caprecs;
    cuda_host_rec *hrecs;  // live pinned host blocks
    size_t nhrecs;
    void *comm;  // cuda_comm.cu's NCCL communicator; NULL for one rank
    // Set when cuda_attention_tc.cu's ops went into the table (unless
    // ESSENCE_ATTN=simple): the simple ops, which take the shapes those do not.
    decltype(es_backend::attention_fwd) attn_fwd_default;
    decltype(es_backend::attention_bwd) attn_bwd_default;
    void *cudnn_attn;  // cuda_attention_cudnn.cu's handle and plans; NULL unless in the table
} cuda_ctx;

static inline cuda_ctx *cuda_of(es_backend *be) { return (cuda_ctx *)be->ctx; }

// Scratch of at least `bytes` on the backend's stream, valid until the next call.
void *cuda_scratch(es_backend *be, size_t bytes);

// Whether the tensor-core and cuDNN attention take a call: head dims 64 and
// 128, every buffer 16-byte aligned; the simple kernels take the rest.
static inline int cuda_attn_tc_takes(int D, const void *const *bufs, int n) {
    return es_cuda_attn_tc_dim(D) && hd_all_aligned16(bufs, n);
}

static inline void cuda_attn_check_shape(int N, int H, int KVH) {
    CUDA_REQUIRE(KVH > 0 && H % KVH == 0, "cuda attention: %d heads not a multiple of %d kv heads", H, KVH);
    CUDA_REQUIRE((long)N * H < 2147483647L, "cuda attention: %d rows too many", N);
}

// Grid size for a grid-stride loop over n elements.
static inline unsigned cuda_blocks(size_t n, int threads) {
    size_t b = (n + threads - 1) / threads;
    if (b > 65535) b = 65535;
    return b ? (unsigned)b : 1;
}

__device__ __forceinline__ float bf(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 tobf(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// Each file fills the ops it owns.
void cuda_fill_matmul(es_backend *be);
void cuda_matmul_destroy(es_backend *be);  // before the cuBLASLt handle goes
void cuda_fill_norm(es_backend *be);
void cuda_fill_rope(es_backend *be);
void cuda_fill_qkv(es_backend *be);
// dw (C) += the column sums of part (rows, C), in a fixed order (cuda_norm.cu).
void cuda_dw_sum(cudaStream_t st, float *dw, const float *part, int rows, int C);
void cuda_fill_attention(es_backend *be);
// x (N, W) on st: zero in the rows outside every document (before cu[0], from
// cu[ndocs] on), which the attention kernels leave alone; bf16 or float.
template <typename T>
void cuda_zero_outside_docs(cudaStream_t st, T *x, const int32_t *cu, int ndocs, int N, int W);
// The tensor-core attention over the simple one (cuda_attention_tc.cu).
int cuda_fill_attention_tc(es_backend *be);
// cuDNN's fused attention over what the table holds (cuda_attention_cudnn.cu,
// built where cuDNN and its frontend were found); ES_ERR, saying why, where
// the runtime cuDNN or the GPU cannot run it.
int cuda_fill_attention_cudnn(es_backend *be);
void cuda_attention_cudnn_destroy(es_backend *be);
void cuda_fill_pointwise(es_backend *be);
void cuda_fill_loss(es_backend *be);
void cuda_fill_optim(es_backend *be);
void cuda_fill_decode(es_backend *be);
void cuda_fill_comm(es_backend *be);
void cuda_comm_destroy(es_backend *be);
