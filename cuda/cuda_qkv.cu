// The fused QKV projection's rows split into q, k, v with Qwen3's per-head
// RMSNorm and rope in one pass, and its backward into the fused rows.
// A head row of D is taken by a group of G lanes (a power of two, at most a
// warp); lane p of the group holds the rope pairs (j, j + D/2) for j in its
// E-element chunks p, p + G, ... (NP of them): E = 8 as 16-byte vectors
// where D is a multiple of 16 and the buffers are aligned, else E = 1. The
// norm's row sums are shuffles within the group. Backward keeps the norm
// weights' gradient in registers per group over the rows it takes and leaves
// one partial row per group, summed by cuda_dw_sum: the same sum every run.
#include <stdint.h>

#include "cuda_common.cuh"

#define QKV_THREADS 256

// E consecutive bf16 values as floats, and back.
template <int E>
__device__ __forceinline__ void ld(float *x, const bf16 *p) {
    if constexpr (E == 8) {
        uint4 u = *(const uint4 *)p;
        const bf16 *h = (const bf16 *)&u;
#pragma unroll
        for (int e = 0; e < 8; e++) x[e] = bf(h[e]);
    } else {
        x[0] = bf(*p);
    }
}

template <int E>
__device__ __forceinline__ void st(bf16 *p, const float *x) {
    if constexpr (E == 8) {
        uint4 u;
        bf16 *h = (bf16 *)&u;
#pragma unroll
        for (int e = 0; e < 8; e++) h[e] = tobf(x[e]);
        *(uint4 *)p = u;
    } else {
        *p = tobf(x[0]);
    }
}

// Sum over the G lanes of a group (consecutive lanes, G-aligned); every lane
// of the warp must call it.
template <int G>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// What one set of head rows (q, k or v) of the fused layout is.
struct heads {
    int count;   // heads a token
    int off;     // first column in the fused row
    const bf16 *w;  // norm weights (D), NULL: none
    float *rstd;    // (N * count)
    int rope;
};

// Rotates the pair (x1, x2) by pos * inv_freq[j]; sign -1: the inverse.
__device__ __forceinline__ void rotate(float *x1, float *x2, float p, float f, float sign) {
    float s, c;
    sincosf(p * f, &s, &c);
    s *= sign;
    float a = *x1, b = *x2;
    *x1 = a * c - b * s;
    *x2 = b * c + a * s;
}

// Forward over the rows of one head set: dst (N * count, D) from the fused rows.
template <int E, int G, int NP>
__device__ void fwd_rows(bf16 *dst, const bf16 *qkv, heads hs, const int32_t *pos,
                         const float *inv_freq, int N, int W, int D, float eps) {
    int half = D / 2, lane = threadIdx.x % G;
    int group = (blockIdx.x * blockDim.x + threadIdx.x) / G, groups = gridDim.x * blockDim.x / G;
    int first = group - (threadIdx.x % 32) / G;  // the warp's first group: its loop is the warp's
    int rows = N * hs.count;
    for (int r0 = first; r0 < rows; r0 += groups) {
        int r = r0 + (group - first), ok = r < rows;
        int i = ok ? r / hs.count : 0, h = ok ? r % hs.count : 0;
        const bf16 *src = qkv + (size_t)i * W + hs.off + (size_t)h * D;
        float a[NP][E], b[NP][E], ss = 0.0f;
#pragma unroll
        for (int k = 0; k < NP; k++) {
            int j = (lane + k * G) * E;
            if (ok && j < half) {
                ld<E>(a[k], src + j);
                ld<E>(b[k], src + j + half);
#pragma unroll
                for (int e = 0; e < E; e++) ss += a[k][e] * a[k][e] + b[k][e] * b[k][e];
            }
        }
        float rs = 1.0f;
        if (hs.w) rs = rsqrtf(group_sum<G>(ss) / D + eps);
        if (!ok) continue;
        if (hs.w && lane == 0) hs.rstd[r] = rs;
        bf16 *out = dst + (size_t)r * D;
#pragma unroll
        for (int k = 0; k < NP; k++) {
            int j = (lane + k * G) * E;
            if (j >= half) continue;
#pragma unroll
            for (int e = 0; e < E; e++) {
                if (hs.w) {
                    a[k][e] *= rs * bf(hs.w[j + e]);
                    b[k][e] *= rs * bf(hs.w[j + e + half]);
                }
                if (hs.rope) rotate(&a[k][e], &b[k][e], (float)pos[i], inv_freq[j + e], 1.0f);
            }
            st<E>(out + j, a[k]);
            st<E>(out + j + half, b[k]);
        }
    }
}

template <int E, int G, int NP>
__global__ void __launch_bounds__(QKV_THREADS) qkv_fwd_kernel(
    bf16 *q, bf16 *k, bf16 *v, float *q_rstd, float *k_rstd, const bf16 *qkv, const bf16 *q_norm,
    const bf16 *k_norm, const int32_t *pos, const float *inv_freq, int N, int H, int KVH, int D,
    float eps) {
    int W = (H + 2 * KVH) * D;
    fwd_rows<E, G, NP>(q, qkv, heads{H, 0, q_norm, q_rstd, 1}, pos, inv_freq, N, W, D, eps);
    fwd_rows<E, G, NP>(k, qkv, heads{KVH, H * D, k_norm, k_rstd, 1}, pos, inv_freq, N, W, D, eps);
    fwd_rows<E, G, NP>(v, qkv, heads{KVH, (H + KVH) * D, NULL, NULL, 0}, pos, inv_freq, N, W, D,
                       eps);
}

// Backward over the rows of one head set: the fused rows' gradient from dy
// (N * count, D); part (groups, D) gets this group's share of the norm
// weights' gradient (when hs.w).
template <int E, int G, int NP>
__device__ void bwd_rows(bf16 *dqkv, float *part, const bf16 *dy, const bf16 *qkv, heads hs,
                         const int32_t *pos, const float *inv_freq, int N, int W, int D) {
    int half = D / 2, lane = threadIdx.x % G;
    int group = (blockIdx.x * blockDim.x + threadIdx.x) / G, groups = gridDim.x * blockDim.x / G;
    int first = group - (threadIdx.x % 32) / G;
    int rows = N * hs.count;
    float acc[NP][2][E];
#pragma unroll
    for (int k = 0; k < NP; k++)
#pragma unroll
        for (int e = 0; e < E; e++) acc[k][0][e] = acc[k][1][e] = 0.0f;
    for (int r0 = first; r0 < rows; r0 += groups) {
        int r = r0 + (group - first), ok = r < rows;
        int i = ok ? r / hs.count : 0, h = ok ? r % hs.count : 0;
        size_t at = (size_t)i * W + hs.off + (size_t)h * D;
        const bf16 *g = dy + (size_t)r * D;
        float ga[NP][E], gb[NP][E], xa[NP][E], xb[NP][E], dot = 0.0f;
#pragma unroll
        for (int k = 0; k < NP; k++) {
            int j = (lane + k * G) * E;
            if (!ok || j >= half) continue;
            ld<E>(ga[k], g + j);
            ld<E>(gb[k], g + j + half);
#pragma unroll
            for (int e = 0; e < E; e++)
                if (hs.rope) rotate(&ga[k][e], &gb[k][e], (float)pos[i], inv_freq[j + e], -1.0f);
            if (!hs.w) continue;
            ld<E>(xa[k], qkv + at + j);
            ld<E>(xb[k], qkv + at + j + half);
#pragma unroll
            for (int e = 0; e < E; e++)
                dot += bf(hs.w[j + e]) * ga[k][e] * xa[k][e] +
                       bf(hs.w[j + e + half]) * gb[k][e] * xb[k][e];
        }
        float rs = 0.0f, kk = 0.0f;
        if (hs.w) {
            dot = group_sum<G>(dot);
            rs = ok ? hs.rstd[r] : 0.0f;
            kk = rs * rs * dot / D;
        }
        if (!ok) continue;
#pragma unroll
        for (int k = 0; k < NP; k++) {
            int j = (lane + k * G) * E;
            if (j >= half) continue;
            if (hs.w) {
#pragma unroll
                for (int e = 0; e < E; e++) {
                    acc[k][0][e] += ga[k][e] * xa[k][e] * rs;
                    acc[k][1][e] += gb[k][e] * xb[k][e] * rs;
                    ga[k][e] = rs * (bf(hs.w[j + e]) * ga[k][e] - xa[k][e] * kk);
                    gb[k][e] = rs * (bf(hs.w[j + e + half]) * gb[k][e] - xb[k][e] * kk);
                }
            }
            st<E>(dqkv + at + j, ga[k]);
            st<E>(dqkv + at + j + half, gb[k]);
        }
    }
    if (!hs.w) return;
#pragma unroll
    for (int k = 0; k < NP; k++) {
        int j = (lane + k * G) * E;
        if (j >= half) continue;
#pragma unroll
        for (int e = 0; e < E; e++) {
            part[(size_t)group * D + j + e] = acc[k][0][e];
            part[(size_t)group * D + j + e + half] = acc[k][1][e];
        }
    }
}

template <int E, int G, int NP>
__global__ void __launch_bounds__(QKV_THREADS) qkv_bwd_kernel(
    bf16 *dqkv, float *q_part, float *k_part, const bf16 *dq, const bf16 *dk, const bf16 *dv,
    const bf16 *qkv, const bf16 *q_norm, const bf16 *k_norm, const float *q_rstd,
    const float *k_rstd, const int32_t *pos, const float *inv_freq, int N, int H, int KVH, int D) {
    int W = (H + 2 * KVH) * D;
    bwd_rows<E, G, NP>(dqkv, q_part, dq, qkv, heads{H, 0, q_norm, (float *)q_rstd, 1}, pos,
                       inv_freq, N, W, D);
    bwd_rows<E, G, NP>(dqkv, k_part, dk, qkv, heads{KVH, H * D, k_norm, (float *)k_rstd, 1}, pos,
                       inv_freq, N, W, D);
    bwd_rows<E, G, NP>(dqkv, NULL, dv, qkv, heads{KVH, (H + KVH) * D, NULL, NULL, 0}, pos,
                       inv_freq, N, W, D);
}

// The instantiation for head dim D: 16-byte vectors (E = 8, one chunk a
// lane, D <= 512) where D is a multiple of 16 and every buffer is aligned,
// else single elements (E = 1, up to 4 chunks of a warp's lanes, D <= 256).
// `vec`: whether the vectors apply; returns G.
static int qkv_shape(int D, int vec) {
    int chunks = vec ? D / 16 : D / 2, g = 1;
    while (g < chunks && g < 32) g *= 2;
    CUDA_REQUIRE(vec ? D <= 512 : D <= 256, "cuda qkv: head dim %d unsupported", D);
    return g;
}

static int aligned16(const void *p) { return p == NULL || (uintptr_t)p % 16 == 0; }

static unsigned qkv_blocks(es_backend *be, int N, int heads, int G) {
    int sms = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, cuda_of(be)->device));
    size_t threads = (size_t)N * heads * G, b = (threads + QKV_THREADS - 1) / QKV_THREADS;
    size_t most = (size_t)sms * 8;  // enough to fill the chip; more only grow backward's partials
    return (unsigned)(b < most ? (b ? b : 1) : most);
}

#define QKV_DISPATCH(KERNEL, ARGS)                                                        \
    do {                                                                                  \
        if (vec) {                                                                        \
            switch (G) {                                                                  \
            case 1: KERNEL<8, 1, 1><<<blocks, QKV_THREADS, 0, st>>> ARGS; break;          \
            case 2: KERNEL<8, 2, 1><<<blocks, QKV_THREADS, 0, st>>> ARGS; break;          \
            case 4: KERNEL<8, 4, 1><<<blocks, QKV_THREADS, 0, st>>> ARGS; break;          \
            case 8: KERNEL<8, 8, 1><<<blocks, QKV_THREADS, 0, st>>> ARGS; break;          \
            case 16: KERNEL<8, 16, 1><<<blocks, QKV_THREADS, 0, st>>> ARGS; break;        \
            default: KERNEL<8, 32, 1><<<blocks, QKV_THREADS, 0, st>>> ARGS; break;        \
            }                                                                             \
        } else {                                                                          \
            switch (G) {                                                                  \
            case 1: KERNEL<1, 1, 1><<<blocks, QKV_THREADS, 0, st>>> ARGS; break;          \
            case 2: KERNEL<1, 2, 1><<<blocks, QKV_THREADS, 0, st>>> ARGS; break;          \
            case 4: KERNEL<1, 4, 1><<<blocks, QKV_THREADS, 0, st>>> ARGS; break;          \
            case 8: KERNEL<1, 8, 1><<<blocks, QKV_THREADS, 0, st>>> ARGS; break;          \
            case 16: KERNEL<1, 16, 1><<<blocks, QKV_THREADS, 0, st>>> ARGS; break;        \
            default: KERNEL<1, 32, 4><<<blocks, QKV_THREADS, 0, st>>> ARGS; break;        \
            }                                                                             \
        }                                                                                 \
        LAUNCH_CHECK();                                                                   \
    } while (0)

static void cuda_qkv_fwd(es_backend *be, void *q, void *k, void *v, float *q_rstd, float *k_rstd,
                         const void *qkv, const void *q_norm, const void *k_norm, const void *pos,
                         const float *inv_freq, int N, int H, int KVH, int D, float eps) {
    if (N < 1) return;
    int vec = D % 16 == 0 && aligned16(q) && aligned16(k) && aligned16(v) && aligned16(qkv) &&
              aligned16(q_norm) && aligned16(k_norm);
    int G = qkv_shape(D, vec);
    unsigned blocks = qkv_blocks(be, N, H, G);
    cudaStream_t st = cuda_of(be)->stream;
    QKV_DISPATCH(qkv_fwd_kernel, ((bf16 *)q, (bf16 *)k, (bf16 *)v, q_rstd, k_rstd,
                                  (const bf16 *)qkv, (const bf16 *)q_norm, (const bf16 *)k_norm,
                                  (const int32_t *)pos, inv_freq, N, H, KVH, D, eps));
}

static void cuda_qkv_bwd(es_backend *be, void *dqkv, void *dq_norm, void *dk_norm, const void *dq,
                         const void *dk, const void *dv, const void *qkv, const void *q_norm,
                         const void *k_norm, const float *q_rstd, const float *k_rstd,
                         const void *pos, const float *inv_freq, int N, int H, int KVH, int D) {
    if (N < 1) return;
    int vec = D % 16 == 0 && aligned16(dqkv) && aligned16(dq) && aligned16(dk) && aligned16(dv) &&
              aligned16(qkv) && aligned16(q_norm) && aligned16(k_norm);
    int G = qkv_shape(D, vec);
    unsigned blocks = qkv_blocks(be, N, H, G);
    size_t groups = (size_t)blocks * QKV_THREADS / G;
    float *part = q_norm ? (float *)cuda_scratch(be, 2 * groups * D * sizeof(float)) : NULL;
    float *q_part = part, *k_part = part ? part + groups * D : NULL;
    cudaStream_t st = cuda_of(be)->stream;
    QKV_DISPATCH(qkv_bwd_kernel, ((bf16 *)dqkv, q_part, k_part, (const bf16 *)dq,
                                  (const bf16 *)dk, (const bf16 *)dv, (const bf16 *)qkv,
                                  (const bf16 *)q_norm, (const bf16 *)k_norm, q_rstd, k_rstd,
                                  (const int32_t *)pos, inv_freq, N, H, KVH, D));
    if (part) {
        cuda_dw_sum(st, (float *)dq_norm, q_part, (int)groups, D);
        cuda_dw_sum(st, (float *)dk_norm, k_part, (int)groups, D);
    }
}

void cuda_fill_qkv(es_backend *be) {
    be->qkv_fwd = cuda_qkv_fwd;
    be->qkv_bwd = cuda_qkv_bwd;
}
