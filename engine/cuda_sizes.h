// Device memory the CUDA backend takes outside the engine's allocation calls:
// the cuBLASLt workspace and reduction slots it holds from creation on, and
// the scratch its attention backward grows. One definition for the backend
// and for the planner (engine/plan.c), which counts them for a GPU it does
// not have. Plain C: included by the .cu files too.
#pragma once
#include <stddef.h>

#define ES_CUDA_LT_WORKSPACE_BYTES ((size_t)32 << 20)
// The workspace plus the 4 double slots reductions return their sums in.
#define ES_CUDA_HELD_BYTES (ES_CUDA_LT_WORKSPACE_BYTES + 4 * sizeof(double))

// Head dims the tensor-core attention kernels take (with 16-byte aligned
// rows, which every engine buffer has); the plain kernels run the rest.
static inline int es_cuda_attn_tc_dim(int D) { return D == 64 || D == 128; }

// Rounds a byte count up to 256 so that scratch parts stay aligned.
static inline size_t es_cuda_align256(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

// The tensor-core attention backward's scratch, in order: tile table
// (ndocs + 1) int32 | rowdot (N, H) fp32 | dQ sums (N, H, D) fp32 (bytes).
typedef struct {
    size_t tiles, rowdot, dq;
} es_cuda_attn_scratch;

static inline es_cuda_attn_scratch es_cuda_attn_bwd_scratch(int N, int H, int D, int ndocs) {
    es_cuda_attn_scratch s;
    s.tiles = es_cuda_align256((size_t)(ndocs + 1) * sizeof(int));
    s.rowdot = es_cuda_align256((size_t)N * H * sizeof(float));
    s.dq = (size_t)N * H * D * sizeof(float);
    return s;
}

// The plain kernels' backward scratch: rowdot (N, H) fp32 (bytes).
static inline size_t es_cuda_attn_bwd_scratch_plain(int N, int H) { return (size_t)N * H * sizeof(float); }
