// Exact causal attention over packed documents (cu_seqlens) with grouped-query
// heads, flash-style: one warp per (query row, head) streams over the keys of
// its document with an online softmax, so no score matrix is stored; the
// log-sum-exp is saved. The backward recomputes probabilities from it: one
// warp per (query row, head) for dq, one per (key row, kv head) for dk and dv,
// so every output row has one writer and no atomics are needed.
//
// A lane holds dims lane, lane + 32, ...: NT = ceil(D / 32) registers per
// vector, D <= 256. Rows outside every document get zero output, lse 0 and
// zero gradients, as on the CPU.
#include <stdint.h>

#include "cuda_common.cuh"
#include "cuda_sizes.h"

#define ATT_WARPS 4  // warps per block
#define ATT_MAX_D 256

// Document holding token i: [*start, *end); 0 when i lies outside every document.
__device__ int find_doc(int *start, int *end, const int32_t *cu, int ndocs, int i) {
    if (ndocs <= 0 || i < cu[0] || i >= cu[ndocs]) return 0;
    int lo = 0, hi = ndocs;  // the last d with cu[d] <= i
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (cu[mid] <= i) lo = mid;
        else hi = mid;
    }
    *start = cu[lo];
    *end = cu[lo + 1];
    return 1;
}

template <int NT>
__device__ __forceinline__ void load(float *r, const bf16 *x, int D, int lane, float mul) {
#pragma unroll
    for (int t = 0; t < NT; t++) {
        int d = lane + 32 * t;
        r[t] = d < D ? bf(x[d]) * mul : 0.0f;
    }
}

template <int NT>
__device__ __forceinline__ float dot(const float *r, const bf16 *x, int D, int lane) {
    float s = 0.0f;
#pragma unroll
    for (int t = 0; t < NT; t++) {
        int d = lane + 32 * t;
        if (d < D) s += r[t] * bf(x[d]);
    }
    return warp_sum(s);
}

template <int NT>
__device__ __forceinline__ void store(bf16 *x, const float *r, int D, int lane, float mul) {
#pragma unroll
    for (int t = 0; t < NT; t++) {
        int d = lane + 32 * t;
        if (d < D) x[d] = tobf(r[t] * mul);
    }
}

template <int NT>
__device__ __forceinline__ void axpy(float *r, float a, const bf16 *x, int D, int lane) {
#pragma unroll
    for (int t = 0; t < NT; t++) {
        int d = lane + 32 * t;
        if (d < D) r[t] += a * bf(x[d]);
    }
}

template <int NT>
__global__ void attn_fwd_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k,
                                const bf16 *v, const int32_t *cu, int ndocs, int N, int H,
                                int KVH, int D, float scale) {
    long t = (long)blockIdx.x * ATT_WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (t >= (long)N * H) return;
    int i = (int)(t / H), h = (int)(t % H), g = h / (H / KVH), start, end;
    float qr[NT], acc[NT] = {0};
    float m = -INFINITY, l = 0.0f;
    if (find_doc(&start, &end, cu, ndocs, i)) {
        load<NT>(qr, q + (size_t)t * D, D, lane, scale);
        for (int j = start; j <= i; j++) {
            size_t kv = ((size_t)j * KVH + g) * D;
            float s = dot<NT>(qr, k + kv, D, lane);
            float mn = fmaxf(m, s), corr = expf(m - mn), p = expf(s - mn);
            l = l * corr + p;
#pragma unroll
            for (int u = 0; u < NT; u++) acc[u] *= corr;
            axpy<NT>(acc, p, v + kv, D, lane);
            m = mn;
        }
    }
    store<NT>(out + (size_t)t * D, acc, D, lane, l > 0.0f ? 1.0f / l : 0.0f);
    if (lane == 0) lse[t] = l > 0.0f ? m + logf(l) : 0.0f;
}

// rowdot (N, H) = sum(dout * out) per row; dq_i = scale * sum_j P_ij (dout_i . v_j - rowdot_i) k_j
template <int NT>
__global__ void attn_dq_kernel(bf16 *dq, float *rowdot, const bf16 *dout, const bf16 *q,
                               const bf16 *k, const bf16 *v, const bf16 *out, const float *lse,
                               const int32_t *cu, int ndocs, int N, int H, int KVH, int D,
                               float scale) {
    long t = (long)blockIdx.x * ATT_WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (t >= (long)N * H) return;
    int i = (int)(t / H), h = (int)(t % H), g = h / (H / KVH), start, end;
    float qr[NT], dor[NT], acc[NT] = {0};
    load<NT>(dor, dout + (size_t)t * D, D, lane, 1.0f);
    float rd = dot<NT>(dor, out + (size_t)t * D, D, lane);
    if (lane == 0) rowdot[t] = rd;
    if (find_doc(&start, &end, cu, ndocs, i)) {
        load<NT>(qr, q + (size_t)t * D, D, lane, scale);
        for (int j = start; j <= i; j++) {
            size_t kv = ((size_t)j * KVH + g) * D;
            float p = expf(dot<NT>(qr, k + kv, D, lane) - lse[t]);
            float ds = p * (dot<NT>(dor, v + kv, D, lane) - rd);
            axpy<NT>(acc, ds, k + kv, D, lane);
        }
    }
    store<NT>(dq + (size_t)t * D, acc, D, lane, scale);
}

// dv_j = sum_i P_ij dout_i ; dk_j = scale * sum_i dS_ij q_i over the query heads of group g
template <int NT>
__global__ void attn_dkdv_kernel(bf16 *dk, bf16 *dv, const float *rowdot, const bf16 *dout,
                                 const bf16 *q, const bf16 *k, const bf16 *v, const float *lse,
                                 const int32_t *cu, int ndocs, int N, int H, int KVH, int D,
                                 float scale) {
    long t = (long)blockIdx.x * ATT_WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (t >= (long)N * KVH) return;
    int j = (int)(t / KVH), g = (int)(t % KVH), group = H / KVH, start, end;
    float kr[NT], vr[NT], dkr[NT] = {0}, dvr[NT] = {0};
    if (find_doc(&start, &end, cu, ndocs, j)) {
        load<NT>(kr, k + (size_t)t * D, D, lane, scale);
        load<NT>(vr, v + (size_t)t * D, D, lane, 1.0f);
        for (int h = g * group; h < (g + 1) * group; h++) {
            for (int i = j; i < end; i++) {
                size_t ih = (size_t)i * H + h;
                float p = expf(dot<NT>(kr, q + ih * D, D, lane) - lse[ih]);
                float ds = p * (dot<NT>(vr, dout + ih * D, D, lane) - rowdot[ih]);
                axpy<NT>(dvr, p, dout + ih * D, D, lane);
                axpy<NT>(dkr, ds, q + ih * D, D, lane);
            }
        }
    }
    store<NT>(dk + (size_t)t * D, dkr, D, lane, scale);
    store<NT>(dv + (size_t)t * D, dvr, D, lane, 1.0f);
}

static unsigned warps_grid(long rows) { return (unsigned)((rows + ATT_WARPS - 1) / ATT_WARPS); }

static void check_shape(int N, int H, int KVH, int D) {
    CUDA_REQUIRE(D > 0 && D <= ATT_MAX_D, "cuda attention: head dim %d unsupported (1..%d)", D,
                 ATT_MAX_D);
    CUDA_REQUIRE(KVH > 0 && H % KVH == 0, "cuda attention: %d heads not a multiple of %d kv heads",
                 H, KVH);
    CUDA_REQUIRE((long)N * H / ATT_WARPS < 2147483647L, "cuda attention: %d rows too many", N);
}

// Each launch below picks the register count NT = ceil(D / 32) rounded to 1, 2, 4 or 8.
static void cuda_attention_fwd(es_backend *be, void *out, float *lse, const void *q, const void *k,
                               const void *v, const void *cu_seqlens, int ndocs, int N, int H,
                               int KVH, int D) {
    if (N <= 0 || H <= 0) return;
    check_shape(N, H, KVH, D);
    cudaStream_t st = cuda_of(be)->stream;
    float scale = 1.0f / sqrtf((float)D);
#define ARGS                                                                               \
    (bf16 *)out, lse, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v,                   \
        (const int32_t *)cu_seqlens, ndocs, N, H, KVH, D, scale
    if (D <= 32) attn_fwd_kernel<1><<<warps_grid((long)N * H), 32 * ATT_WARPS, 0, st>>>(ARGS);
    else if (D <= 64) attn_fwd_kernel<2><<<warps_grid((long)N * H), 32 * ATT_WARPS, 0, st>>>(ARGS);
    else if (D <= 128) attn_fwd_kernel<4><<<warps_grid((long)N * H), 32 * ATT_WARPS, 0, st>>>(ARGS);
    else attn_fwd_kernel<8><<<warps_grid((long)N * H), 32 * ATT_WARPS, 0, st>>>(ARGS);
#undef ARGS
    LAUNCH_CHECK();
}

static void cuda_attention_bwd(es_backend *be, void *dq, void *dk, void *dv, const void *dout,
                               const void *q, const void *k, const void *v, const void *out,
                               const float *lse, const void *cu_seqlens, int ndocs, int N, int H,
                               int KVH, int D) {
    if (N <= 0 || H <= 0) return;
    check_shape(N, H, KVH, D);
    cudaStream_t st = cuda_of(be)->stream;
    float scale = 1.0f / sqrtf((float)D);
    float *rowdot = (float *)cuda_scratch(be, es_cuda_attn_bwd_scratch_plain(N, H));  // (N, H)
    unsigned gq = warps_grid((long)N * H), gk = warps_grid((long)N * KVH);
#define ARGS                                                                                \
    (bf16 *)dq, rowdot, (const bf16 *)dout, (const bf16 *)q, (const bf16 *)k,               \
        (const bf16 *)v, (const bf16 *)out, lse, (const int32_t *)cu_seqlens, ndocs, N, H,  \
        KVH, D, scale
    if (D <= 32) attn_dq_kernel<1><<<gq, 32 * ATT_WARPS, 0, st>>>(ARGS);
    else if (D <= 64) attn_dq_kernel<2><<<gq, 32 * ATT_WARPS, 0, st>>>(ARGS);
    else if (D <= 128) attn_dq_kernel<4><<<gq, 32 * ATT_WARPS, 0, st>>>(ARGS);
    else attn_dq_kernel<8><<<gq, 32 * ATT_WARPS, 0, st>>>(ARGS);
#undef ARGS
    LAUNCH_CHECK();
    // Same stream: rowdot is complete before dk/dv read it.
#define ARGS                                                                                 \
    (bf16 *)dk, (bf16 *)dv, rowdot, (const bf16 *)dout, (const bf16 *)q, (const bf16 *)k,    \
        (const bf16 *)v, lse, (const int32_t *)cu_seqlens, ndocs, N, H, KVH, D, scale
    if (D <= 32) attn_dkdv_kernel<1><<<gk, 32 * ATT_WARPS, 0, st>>>(ARGS);
    else if (D <= 64) attn_dkdv_kernel<2><<<gk, 32 * ATT_WARPS, 0, st>>>(ARGS);
    else if (D <= 128) attn_dkdv_kernel<4><<<gk, 32 * ATT_WARPS, 0, st>>>(ARGS);
    else attn_dkdv_kernel<8><<<gk, 32 * ATT_WARPS, 0, st>>>(ARGS);
#undef ARGS
    LAUNCH_CHECK();
}

// x (N, W): rows before cu[0] or from cu[ndocs] on are zero.
template <typename T>
__global__ void zero_outside_kernel(T *x, const int32_t *cu, int ndocs, int N, int W) {
    const int lo = cu[0], hi = cu[ndocs];
    size_t n = (size_t)N * W;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x) {
        int r = (int)(e / W);
        if (r < lo || r >= hi) x[e] = (T)0.0f;
    }
}

template <typename T>
void cuda_zero_outside_docs(cudaStream_t st, T *x, const int32_t *cu, int ndocs, int N, int W) {
    zero_outside_kernel<T><<<cuda_blocks((size_t)N * W, 256), 256, 0, st>>>(x, cu, ndocs, N, W);
    LAUNCH_CHECK();
}
template void cuda_zero_outside_docs<bf16>(cudaStream_t, bf16 *, const int32_t *, int, int, int);
template void cuda_zero_outside_docs<float>(cudaStream_t, float *, const int32_t *, int, int, int);

void cuda_fill_attention(es_backend *be) {
    be->attention = "simple";
    be->attention_fwd = cuda_attention_fwd;
    be->attention_bwd = cuda_attention_bwd;
}
