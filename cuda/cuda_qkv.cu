// The fused QKV projection's rows split into q, k, v with Qwen3's per-head
// RMSNorm and rope in one pass, and its backward into the fused rows. The
// lane layout and arithmetic are qkv_rows.cuh's; here the rows are dealt to
// groups of lanes and the norm's row sums are shuffles within a group.
// Backward keeps the norm weights' gradient in registers per group over the
// rows it takes and leaves one partial row per group, summed by cuda_dw_sum:
// the same sum every run.
#include <stdint.h>

#include "cuda_common.cuh"
#include "qkv_rows.cuh"

// Sum over the G lanes of a group (consecutive lanes, G-aligned); every lane
// of the warp must call it.
template <int G>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// How the rows of a head set are dealt: group g takes rows g, g + groups, ...,
// and a warp loops over them together (its shuffles need every lane), from
// `first`, its first group, whose rows end last.
struct deal {
    int lane, group, groups, first;
};

template <int G>
__device__ __forceinline__ deal deal_rows(void) {
    deal d;
    d.lane = threadIdx.x % G;
    d.group = (blockIdx.x * blockDim.x + threadIdx.x) / G;
    d.groups = gridDim.x * blockDim.x / G;
    d.first = d.group - (threadIdx.x % 32) / G;
    return d;
}

template <int E, int G, int NP>
__device__ void fwd_rows(bf16 *dst, const bf16 *qkv, qr_heads hs, const int32_t *pos,
                         const float *inv_freq, int N, int W, int D, float eps) {
    int half = D / 2, rows = N * hs.count;
    deal d = deal_rows<G>();
    int lane = d.lane;
    for (int r0 = d.first; r0 < rows; r0 += d.groups) {
        int r = r0 + d.group - d.first, ok = r < rows;
        int i = ok ? r / hs.count : 0, h = ok ? r % hs.count : 0;
        float a[NP][E], b[NP][E], ss = 0.0f;
        if (ok) ss = qr_fwd_load<E, NP>(a, b, qkv + (size_t)i * W + hs.off + (size_t)h * D, half, lane, G);
        float rs = hs.w ? rsqrtf(group_sum<G>(ss) / D + eps) : 1.0f;
        if (!ok) continue;
        if (hs.w && lane == 0) hs.rstd[r] = rs;
        qr_fwd_store<E, NP>(dst + (size_t)r * D, a, b, &hs, rs, (float)pos[i], inv_freq, half, lane, G);
    }
}

template <int E, int G, int NP>
__global__ void __launch_bounds__(QR_THREADS) qkv_fwd_kernel(
    bf16 *q, bf16 *k, bf16 *v, float *q_rstd, float *k_rstd, const bf16 *qkv, const bf16 *q_norm,
    const bf16 *k_norm, const int32_t *pos, const float *inv_freq, int N, int H, int KVH, int D,
    float eps) {
    int W = (H + 2 * KVH) * D;
    fwd_rows<E, G, NP>(q, qkv, qr_heads{H, 0, q_norm, q_rstd, 1}, pos, inv_freq, N, W, D, eps);
    fwd_rows<E, G, NP>(k, qkv, qr_heads{KVH, H * D, k_norm, k_rstd, 1}, pos, inv_freq, N, W, D, eps);
    fwd_rows<E, G, NP>(v, qkv, qr_heads{KVH, (H + KVH) * D, NULL, NULL, 0}, pos, inv_freq, N, W, D,
                       eps);
}

// The fused rows' gradient from dy (N * count, D) of one head set; part
// (groups, D) gets each group's share of the norm weights' gradient (hs.w).
template <int E, int G, int NP>
__device__ void bwd_rows(bf16 *dqkv, float *part, const bf16 *dy, const bf16 *qkv, qr_heads hs,
                         const int32_t *pos, const float *inv_freq, int N, int W, int D) {
    int half = D / 2, rows = N * hs.count;
    deal d = deal_rows<G>();
    int lane = d.lane;
    float acc[NP][2][E];
#pragma unroll
    for (int k = 0; k < NP; k++)
#pragma unroll
        for (int e = 0; e < E; e++) acc[k][0][e] = acc[k][1][e] = 0.0f;
    for (int r0 = d.first; r0 < rows; r0 += d.groups) {
        int r = r0 + d.group - d.first, ok = r < rows;
        int i = ok ? r / hs.count : 0, h = ok ? r % hs.count : 0;
        size_t at = (size_t)i * W + hs.off + (size_t)h * D;
        float ga[NP][E], gb[NP][E], xa[NP][E], xb[NP][E], dot = 0.0f;
        if (ok)
            dot = qr_bwd_load<E, NP>(ga, gb, xa, xb, dy + (size_t)r * D, qkv + at, &hs, (float)pos[i],
                                     inv_freq, half, lane, G);
        float rs = 0.0f, kk = 0.0f;
        if (hs.w) {
            dot = group_sum<G>(dot);
            rs = ok ? hs.rstd[r] : 0.0f;
            kk = rs * rs * dot / D;
        }
        if (ok) qr_bwd_store<E, NP>(dqkv + at, acc, ga, gb, xa, xb, &hs, rs, kk, half, lane, G);
    }
    if (hs.w) qr_store_acc<E, NP>(part + (size_t)d.group * D, acc, half, lane, G);
}

template <int E, int G, int NP>
__global__ void __launch_bounds__(QR_THREADS) qkv_bwd_kernel(
    bf16 *dqkv, float *q_part, float *k_part, const bf16 *dq, const bf16 *dk, const bf16 *dv,
    const bf16 *qkv, const bf16 *q_norm, const bf16 *k_norm, const float *q_rstd,
    const float *k_rstd, const int32_t *pos, const float *inv_freq, int N, int H, int KVH, int D) {
    int W = (H + 2 * KVH) * D;
    bwd_rows<E, G, NP>(dqkv, q_part, dq, qkv, qr_heads{H, 0, q_norm, (float *)q_rstd, 1}, pos,
                       inv_freq, N, W, D);
    bwd_rows<E, G, NP>(dqkv, k_part, dk, qkv, qr_heads{KVH, H * D, k_norm, (float *)k_rstd, 1}, pos,
                       inv_freq, N, W, D);
    bwd_rows<E, G, NP>(dqkv, NULL, dv, qkv, qr_heads{KVH, (H + KVH) * D, NULL, NULL, 0}, pos,
                       inv_freq, N, W, D);
}

static int sm_count(es_backend *be) {
    int sms = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, cuda_of(be)->device));
    return sms;
}

// The instantiation for (vec, G): one chunk a lane with vectors (D <= 512),
// up to 4 with single elements once a warp takes a head (D <= 256).
#define QKV_DISPATCH(KERNEL, ARGS)                                                        \
    do {                                                                                  \
        cudaStream_t st_ = cuda_of(be)->stream;                                           \
        if (vec) {                                                                        \
            switch (G) {                                                                  \
            case 1: KERNEL<8, 1, 1><<<blocks, QR_THREADS, 0, st_>>> ARGS; break;          \
            case 2: KERNEL<8, 2, 1><<<blocks, QR_THREADS, 0, st_>>> ARGS; break;          \
            case 4: KERNEL<8, 4, 1><<<blocks, QR_THREADS, 0, st_>>> ARGS; break;          \
            case 8: KERNEL<8, 8, 1><<<blocks, QR_THREADS, 0, st_>>> ARGS; break;          \
            case 16: KERNEL<8, 16, 1><<<blocks, QR_THREADS, 0, st_>>> ARGS; break;        \
            default: KERNEL<8, 32, 1><<<blocks, QR_THREADS, 0, st_>>> ARGS; break;        \
            }                                                                             \
        } else {                                                                          \
            switch (G) {                                                                  \
            case 1: KERNEL<1, 1, 1><<<blocks, QR_THREADS, 0, st_>>> ARGS; break;          \
            case 2: KERNEL<1, 2, 1><<<blocks, QR_THREADS, 0, st_>>> ARGS; break;          \
            case 4: KERNEL<1, 4, 1><<<blocks, QR_THREADS, 0, st_>>> ARGS; break;          \
            case 8: KERNEL<1, 8, 1><<<blocks, QR_THREADS, 0, st_>>> ARGS; break;          \
            case 16: KERNEL<1, 16, 1><<<blocks, QR_THREADS, 0, st_>>> ARGS; break;        \
            default: KERNEL<1, 32, 4><<<blocks, QR_THREADS, 0, st_>>> ARGS; break;        \
            }                                                                             \
        }                                                                                 \
        LAUNCH_CHECK();                                                                   \
    } while (0)

static void cuda_qkv_fwd(es_backend *be, void *q, void *k, void *v, float *q_rstd, float *k_rstd,
                         const void *qkv, const void *q_norm, const void *k_norm, const void *pos,
                         const float *inv_freq, int N, int H, int KVH, int D, float eps) {
    if (N < 1) return;
    const void *bufs[] = {q, k, v, qkv, q_norm, k_norm};
    int vec = qr_vec(D, bufs, 6);
    int G = qr_group(D, vec);
    CUDA_REQUIRE(G, "cuda qkv: head dim %d unsupported", D);
    int blocks = qr_blocks(N, H, G, sm_count(be));
    QKV_DISPATCH(qkv_fwd_kernel, ((bf16 *)q, (bf16 *)k, (bf16 *)v, q_rstd, k_rstd,
                                  (const bf16 *)qkv, (const bf16 *)q_norm, (const bf16 *)k_norm,
                                  (const int32_t *)pos, inv_freq, N, H, KVH, D, eps));
}

static void cuda_qkv_bwd(es_backend *be, void *dqkv, void *dq_norm, void *dk_norm, const void *dq,
                         const void *dk, const void *dv, const void *qkv, const void *q_norm,
                         const void *k_norm, const float *q_rstd, const float *k_rstd,
                         const void *pos, const float *inv_freq, int N, int H, int KVH, int D) {
    if (N < 1) return;
    const void *bufs[] = {dqkv, dq, dk, dv, qkv, q_norm, k_norm};
    int vec = qr_vec(D, bufs, 7);
    int G = qr_group(D, vec);
    CUDA_REQUIRE(G, "cuda qkv: head dim %d unsupported", D);
    int blocks = qr_blocks(N, H, G, sm_count(be));
    size_t groups = (size_t)blocks * QR_THREADS / G;
    float *part = q_norm ? (float *)cuda_scratch(be, 2 * groups * D * sizeof(float)) : NULL;
    float *q_part = part, *k_part = part ? part + groups * D : NULL;
    QKV_DISPATCH(qkv_bwd_kernel, ((bf16 *)dqkv, q_part, k_part, (const bf16 *)dq,
                                  (const bf16 *)dk, (const bf16 *)dv, (const bf16 *)qkv,
                                  (const bf16 *)q_norm, (const bf16 *)k_norm, q_rstd, k_rstd,
                                  (const int32_t *)pos, inv_freq, N, H, KVH, D));
    if (part) {
        cudaStream_t st = cuda_of(be)->stream;
        cuda_dw_sum(st, (float *)dq_norm, q_part, (int)groups, D);
        cuda_dw_sum(st, (float *)dk_norm, k_part, (int)groups, D);
    }
}

void cuda_fill_qkv(es_backend *be) {
    be->qkv_fwd = cuda_qkv_fwd;
    be->qkv_bwd = cuda_qkv_bwd;
}
