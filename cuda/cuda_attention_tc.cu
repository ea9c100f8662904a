// Tensor-core attention over packed documents, FlashAttention-2 style: bf16
// in and out, fp32 accumulation, warp-level mma.sync m16n8k16 for every
// product. The default since the H200 check of 2026-11-30 (30x the simple
// kernel's speed, same results within bf16); ESSENCE_ATTN=simple at backend
// creation keeps cuda_attention.cu's kernels instead. Head dims other than 64
// and 128 (and unaligned buffers) always go to those simple kernels. Same contract as attention_fwd /
// attention_bwd in backend.h, lse included.
//
// Work is cut into 64-row tiles per document; a one-thread kernel turns
// cu_seqlens into each document's first tile, so the host never reads it.
// Forward: a CTA of 4 warps owns 64 query rows of one head (16 per warp, Q in
// registers) and streams 64-key blocks up to the causal diagonal; K and V are
// staged through shared memory with cp.async, each block's load overlapping
// the other half of the step. The online softmax runs on the accumulators.
// Backward: the pre-kernel takes rowdot = rowsum(dO * O); a CTA owns 64 key
// rows of one kv head and walks every query block at or after them for every
// query head of the group, so dK and dV have one writer and sum in registers.
// dQ sums over key blocks of different CTAs: fp32 atomics into a zeroed
// scratch (N, H, D), then one pass scales it and rounds to bf16 (so dQ's last
// bits may differ run to run; dK, dV and the forward are deterministic).
//
// Rows outside every document get zero output, lse 0 and zero gradients.
#include <stdint.h>
#include <string.h>

#include "cuda_common.cuh"
#include "cuda_sizes.h"

#define TC_TILE 64  // query rows per forward CTA, keys per forward step, key rows per backward CTA
#define TC_WARPS 4
#define TC_THREADS (32 * TC_WARPS)
#define TC_PAD 8  // shared rows padded by 16 bytes: the 8 rows of an ldmatrix hit distinct banks
#define TC_LOG2E 1.4426950408889634f
#define TC_LN2 0.6931471805599453f

static_assert(TC_TILE == 16 * TC_WARPS, "a warp owns 16 rows of a tile");

// Backward query block: 32 rows at D = 128 keeps dK, dV and both score tiles in registers.
template <int D> constexpr int tc_bq() { return D == 128 ? 32 : 64; }
template <int D> constexpr size_t tc_fwd_smem() {
    return (size_t)3 * TC_TILE * (D + TC_PAD) * sizeof(bf16);  // Q, K, V
}
template <int D> constexpr size_t tc_bwd_smem() {
    return (size_t)(2 * TC_TILE + 2 * tc_bq<D>()) * (D + TC_PAD) * sizeof(bf16)  // K, V, Q, dO
           + (size_t)TC_TILE * (tc_bq<D>() + TC_PAD) * sizeof(bf16)              // dS^T
           + (size_t)2 * tc_bq<D>() * sizeof(float);                             // lse, rowdot
}

// ---- warp-level primitives --------------------------------------------------

__device__ __forceinline__ uint32_t smem_u32(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

// Four 8x8 bf16 matrices from shared memory; lane L gives the address of row
// L % 8 of matrix L / 8, and register i receives matrix i.
__device__ __forceinline__ void ldsm(uint32_t r[4], const bf16 *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// The same, each matrix transposed.
__device__ __forceinline__ void ldsm_t(uint32_t r[4], const bf16 *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// c (16x8, fp32) += a (16x16, bf16, row-major) b (16x8, bf16, column-major).
// Lane L with g = L / 4, t = L % 4 holds c[0..1] at row g, columns 2t, 2t+1,
// c[2..3] at row g + 8; a[0] (g, 2t..), a[1] (g+8, 2t..), a[2] (g, 2t+8..),
// a[3] (g+8, 2t+8..); b0 (rows 2t.., column g), b1 (rows 2t+8.., column g).
__device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Lane offsets into a 16x16 block for ldsm. Pattern A orders the matrices
// (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15): an A operand
// from a row-major (m, k) tile, or with ldsm_t two B n-tiles (r0 r1, r2 r3)
// from a row-major (k, n) tile. Pattern B orders them (0-7, 0-7), (0-7, 8-15),
// (8-15, 0-7), (8-15, 8-15): two B n-tiles from a row-major (n, k) tile, or
// with ldsm_t an A operand from a row-major (k, m) tile.
__device__ __forceinline__ int pa_row(int lane) { return (lane & 7) + ((lane >> 3) & 1) * 8; }
__device__ __forceinline__ int pa_col(int lane) { return (lane >> 4) * 8; }
__device__ __forceinline__ int pb_row(int lane) { return (lane & 7) + (lane >> 4) * 8; }
__device__ __forceinline__ int pb_col(int lane) { return ((lane >> 3) & 1) * 8; }

// Two floats as a bf16 pair, the first in the low half (the lower column).
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return (uint32_t)__bfloat16_as_ushort(v.x) | (uint32_t)__bfloat16_as_ushort(v.y) << 16;
}

__device__ __forceinline__ void store2(bf16 *p, float a, float b) {
    *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(a, b);
}

__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src)
                 : "memory");
}
__device__ __forceinline__ void cp_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most N of the most recently committed groups are pending.
template <int N> __device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// rows (rows, D) into shared memory (row stride S) from global rows `stride`
// elements apart; rows at or past `valid` are zero, so padding never carries
// NaN or another document's values into a product.
template <int D, int S>
__device__ __forceinline__ void load_rows(bf16 *dst, const bf16 *src, size_t stride, int rows,
                                          int valid) {
    constexpr int CH = D / 8;  // 16-byte chunks per row
    for (int c = threadIdx.x; c < rows * CH; c += TC_THREADS) {
        int r = c / CH, x = (c % CH) * 8;
        bf16 *d = dst + r * S + x;
        if (r < valid) cp_async16(d, src + (size_t)r * stride + x);
        else *reinterpret_cast<uint4 *>(d) = make_uint4(0, 0, 0, 0);
    }
}

// ---- tiles over documents ---------------------------------------------------

// tiles (ndocs + 1): tiles[d] = sum over earlier documents of ceil(len / TC_TILE).
__global__ void tc_tiles_kernel(int32_t *tiles, const int32_t *cu, int ndocs) {
    int32_t t = 0;
    for (int d = 0; d < ndocs; d++) {
        tiles[d] = t;
        int len = cu[d + 1] - cu[d];
        t += len > 0 ? (len + TC_TILE - 1) / TC_TILE : 0;
    }
    tiles[ndocs] = t;
}

// The document holding tile t; 0 when t is past the last tile.
__device__ int tile_doc(int *doc, const int32_t *tiles, int ndocs, int t) {
    if (t >= tiles[ndocs]) return 0;
    int lo = 0, hi = ndocs;  // the last d with tiles[d] <= t: never an empty document
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (tiles[mid] <= t) lo = mid;
        else hi = mid;
    }
    *doc = lo;
    return 1;
}

// ---- forward ----------------------------------------------------------------

template <int D>
__global__ void __launch_bounds__(TC_THREADS)
    tc_fwd_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                  const int32_t *cu, const int32_t *tiles, int ndocs, int H, int KVH, float sl2) {
    constexpr int S = D + TC_PAD, KS = D / 16, NT = TC_TILE / 8, DT = D / 8;
    extern __shared__ __align__(16) unsigned char tc_smem[];
    bf16 *sq = (bf16 *)tc_smem, *sk = sq + TC_TILE * S, *sv = sk + TC_TILE * S;  // (64, S) each
    int doc;
    if (!tile_doc(&doc, tiles, ndocs, blockIdx.x)) return;
    const int start = cu[doc], end = cu[doc + 1];
    // The last query blocks see the most keys: they start first.
    const int q0 = start + (tiles[doc + 1] - 1 - (int)blockIdx.x) * TC_TILE;
    const int qn = min(TC_TILE, end - q0);
    const int h = blockIdx.y, g = h / (H / KVH);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, tg = lane % 4;
    const size_t qs = (size_t)H * D, ks = (size_t)KVH * D;  // global row strides
    const bf16 *kg = k + (size_t)g * D, *vg = v + (size_t)g * D;
    const int nkb = (q0 + qn - 1 - start) / TC_TILE + 1;  // key blocks up to the diagonal

    // Groups in flight: Q, K0, V0; then each step commits K(next) and V(next).
    load_rows<D, S>(sq, q + (size_t)q0 * qs + (size_t)h * D, qs, TC_TILE, qn);
    cp_commit();
    load_rows<D, S>(sk, kg + (size_t)start * ks, ks, TC_TILE, min(TC_TILE, end - start));
    cp_commit();
    load_rows<D, S>(sv, vg + (size_t)start * ks, ks, TC_TILE, min(TC_TILE, end - start));
    cp_commit();
    cp_wait<1>();
    __syncthreads();
    uint32_t qf[KS][4];  // this warp's 16 query rows as A operands
#pragma unroll
    for (int kk = 0; kk < KS; kk++)
        ldsm(qf[kk], sq + (warp * 16 + pa_row(lane)) * S + kk * 16 + pa_col(lane));

    float o[DT][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int dt = 0; dt < DT; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
    for (int kb = 0; kb < nkb; kb++) {
        const int k0 = start + kb * TC_TILE, next = k0 + TC_TILE;
        if (kb > 0) {
            cp_wait<1>();  // K of this block (V of this block may still be in flight)
            __syncthreads();
        }
        float s[NT][4];  // (16 query rows, 64 keys) of this warp
#pragma unroll
        for (int nt = 0; nt < NT; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KS; kk++)
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                uint32_t b[4];
                ldsm(b, sk + (np * 16 + pb_row(lane)) * S + kk * 16 + pb_col(lane));
                mma(s[2 * np], qf[kk], b[0], b[1]);
                mma(s[2 * np + 1], qf[kk], b[2], b[3]);
            }
        __syncthreads();  // every warp is done with K
        if (kb + 1 < nkb)
            load_rows<D, S>(sk, kg + (size_t)next * ks, ks, TC_TILE, min(TC_TILE, end - next));
        cp_commit();

        // Scores in log2 units; only the diagonal block needs the causal mask
        // (it also covers keys past the document's end).
        const bool diag = next > q0;
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int i = q0 + warp * 16 + gr + 8 * r;
            float mx = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float x = s[nt][2 * r + e] * sl2;
                    int j = k0 + nt * 8 + 2 * tg + e;
                    if (diag && (j > i || j >= end)) x = -INFINITY;
                    s[nt][2 * r + e] = x;
                    mx = fmaxf(mx, x);
                }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mn = fmaxf(m[r], mx), base = mn == -INFINITY ? 0.0f : mn;
            const float corr = exp2f(m[r] - base);
            float sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float p = exp2f(s[nt][2 * r + e] - base);
                    s[nt][2 * r + e] = p;
                    sum += p;
                }
            l[r] = l[r] * corr + sum;  // this lane's share; the quad is summed at the end
#pragma unroll
            for (int dt = 0; dt < DT; dt++) {
                o[dt][2 * r] *= corr;
                o[dt][2 * r + 1] *= corr;
            }
            m[r] = mn;
        }

        cp_wait<1>();  // V of this block (K of the next may still be in flight)
        __syncthreads();
        // O += P V: the score accumulators are already laid out as A operands.
#pragma unroll
        for (int kk = 0; kk < NT / 2; kk++) {
            const uint32_t a[4] = {pack2(s[2 * kk][0], s[2 * kk][1]),
                                   pack2(s[2 * kk][2], s[2 * kk][3]),
                                   pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                   pack2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                uint32_t b[4];
                ldsm_t(b, sv + (kk * 16 + pa_row(lane)) * S + dp * 16 + pa_col(lane));
                mma(o[2 * dp], a, b[0], b[1]);
                mma(o[2 * dp + 1], a, b[2], b[3]);
            }
        }
        __syncthreads();  // every warp is done with V
        if (kb + 1 < nkb)
            load_rows<D, S>(sv, vg + (size_t)next * ks, ks, TC_TILE, min(TC_TILE, end - next));
        cp_commit();
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        const int il = warp * 16 + gr + 8 * r;
        if (il >= qn) continue;
        const int i = q0 + il;
        const float inv = 1.0f / l[r];  // l >= 1: the row's maximum contributes exp2(0)
        bf16 *orow = out + (size_t)i * qs + (size_t)h * D;
#pragma unroll
        for (int dt = 0; dt < DT; dt++)
            store2(orow + dt * 8 + 2 * tg, o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
        if (tg == 0) lse[(size_t)i * H + h] = (m[r] + log2f(l[r])) * TC_LN2;
    }
}

// ---- backward ---------------------------------------------------------------

// rowdot (rows) = sum(dout * out) per (token, head) row of D values; a warp per row.
__global__ void tc_rowdot_kernel(float *rowdot, const bf16 *dout, const bf16 *out, long rows,
                                 int D) {
    long t = (long)blockIdx.x * TC_WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (t >= rows) return;
    const __nv_bfloat162 *a = reinterpret_cast<const __nv_bfloat162 *>(dout + (size_t)t * D);
    const __nv_bfloat162 *b = reinterpret_cast<const __nv_bfloat162 *>(out + (size_t)t * D);
    float s = 0.0f;
    for (int d = lane; d < D / 2; d += 32) {
        float2 x = __bfloat1622float2(a[d]), y = __bfloat1622float2(b[d]);
        s += x.x * y.x + x.y * y.y;
    }
    s = warp_sum(s);
    if (lane == 0) rowdot[t] = s;
}

template <int D>
__global__ void __launch_bounds__(TC_THREADS)
    tc_bwd_kernel(float *dqa, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *q, const bf16 *k,
                  const bf16 *v, const float *lse, const float *rowdot, const int32_t *cu,
                  const int32_t *tiles, int ndocs, int H, int KVH, float scale, float sl2) {
    constexpr int BQ = tc_bq<D>(), S = D + TC_PAD, SD = BQ + TC_PAD, KS = D / 16, NQ = BQ / 8;
    constexpr int DT = D / 8;
    // dQ of a query block: warps as WR x WC blocks of 16 rows x DC dims.
    constexpr int WR = BQ / 16, WC = TC_WARPS / WR, DC = D / WC;
    static_assert(WR * WC == TC_WARPS && DC % 16 == 0, "dQ warp layout");
    extern __shared__ __align__(16) unsigned char tc_smem[];
    bf16 *sk = (bf16 *)tc_smem, *sv = sk + TC_TILE * S;  // (64, S) each
    bf16 *sq = sv + TC_TILE * S, *sdo = sq + BQ * S;    // (BQ, S) each
    bf16 *sds = sdo + BQ * S;                           // dS^T (64 keys, SD)
    float *slse = (float *)(sds + TC_TILE * SD), *srd = slse + BQ;  // (BQ) each
    int doc;
    if (!tile_doc(&doc, tiles, ndocs, blockIdx.x)) return;
    const int start = cu[doc], end = cu[doc + 1];
    const int k0 = start + ((int)blockIdx.x - tiles[doc]) * TC_TILE, kn = min(TC_TILE, end - k0);
    const int g = blockIdx.y, group = H / KVH;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, tg = lane % 4;
    const int wr = warp % WR, wc = warp / WR;
    const int jr = warp * 16 + gr;  // this lane's key rows in the tile: jr and jr + 8
    const size_t qs = (size_t)H * D, ks = (size_t)KVH * D;

    load_rows<D, S>(sk, k + (size_t)k0 * ks + (size_t)g * D, ks, TC_TILE, kn);
    load_rows<D, S>(sv, v + (size_t)k0 * ks + (size_t)g * D, ks, TC_TILE, kn);
    cp_commit();
    float dkr[DT][4], dvr[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; dt++)
#pragma unroll
        for (int e = 0; e < 4; e++) dkr[dt][e] = dvr[dt][e] = 0.0f;

    for (int h = g * group; h < (g + 1) * group; h++) {
        // k0 - start is a multiple of 64, so query blocks from k0 stay aligned to the document.
        for (int q0 = k0; q0 < end; q0 += BQ) {
            const int qn = min(BQ, end - q0);
            load_rows<D, S>(sq, q + (size_t)q0 * qs + (size_t)h * D, qs, BQ, qn);
            load_rows<D, S>(sdo, dout + (size_t)q0 * qs + (size_t)h * D, qs, BQ, qn);
            cp_commit();
            for (int r = threadIdx.x; r < BQ; r += TC_THREADS) {
                slse[r] = r < qn ? lse[(size_t)(q0 + r) * H + h] * TC_LOG2E : 0.0f;
                srd[r] = r < qn ? rowdot[(size_t)(q0 + r) * H + h] : 0.0f;
            }
            cp_wait<0>();
            __syncthreads();

            // S^T = K Q^T and dP^T = V dO^T: this warp's 16 keys x BQ queries.
            float st[NQ][4], dpt[NQ][4];
#pragma unroll
            for (int nt = 0; nt < NQ; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) st[nt][e] = dpt[nt][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KS; kk++) {
                uint32_t ak[4], av[4];
                ldsm(ak, sk + (warp * 16 + pa_row(lane)) * S + kk * 16 + pa_col(lane));
                ldsm(av, sv + (warp * 16 + pa_row(lane)) * S + kk * 16 + pa_col(lane));
#pragma unroll
                for (int np = 0; np < NQ / 2; np++) {
                    uint32_t b[4];
                    ldsm(b, sq + (np * 16 + pb_row(lane)) * S + kk * 16 + pb_col(lane));
                    mma(st[2 * np], ak, b[0], b[1]);
                    mma(st[2 * np + 1], ak, b[2], b[3]);
                    ldsm(b, sdo + (np * 16 + pb_row(lane)) * S + kk * 16 + pb_col(lane));
                    mma(dpt[2 * np], av, b[0], b[1]);
                    mma(dpt[2 * np + 1], av, b[2], b[3]);
                }
            }
            // P^T = exp(S^T scale - lse), zero above the diagonal and past the
            // document; dS^T = P^T (dP^T - rowdot), kept in dpt.
#pragma unroll
            for (int nt = 0; nt < NQ; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int jl = jr + (e >> 1) * 8, il = nt * 8 + 2 * tg + (e & 1);
                    const bool keep = il < qn && q0 + il >= k0 + jl;
                    const float p = keep ? exp2f(st[nt][e] * sl2 - slse[il]) : 0.0f;
                    dpt[nt][e] = p * (dpt[nt][e] - srd[il]);
                    st[nt][e] = p;
                }
            // dV += P^T dO and dK += dS^T Q, A operands straight from the accumulators.
#pragma unroll
            for (int kk = 0; kk < NQ / 2; kk++) {
                const uint32_t ap[4] = {pack2(st[2 * kk][0], st[2 * kk][1]),
                                        pack2(st[2 * kk][2], st[2 * kk][3]),
                                        pack2(st[2 * kk + 1][0], st[2 * kk + 1][1]),
                                        pack2(st[2 * kk + 1][2], st[2 * kk + 1][3])};
                const uint32_t as[4] = {pack2(dpt[2 * kk][0], dpt[2 * kk][1]),
                                        pack2(dpt[2 * kk][2], dpt[2 * kk][3]),
                                        pack2(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]),
                                        pack2(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3])};
#pragma unroll
                for (int dp = 0; dp < D / 16; dp++) {
                    uint32_t b[4];
                    ldsm_t(b, sdo + (kk * 16 + pa_row(lane)) * S + dp * 16 + pa_col(lane));
                    mma(dvr[2 * dp], ap, b[0], b[1]);
                    mma(dvr[2 * dp + 1], ap, b[2], b[3]);
                    ldsm_t(b, sq + (kk * 16 + pa_row(lane)) * S + dp * 16 + pa_col(lane));
                    mma(dkr[2 * dp], as, b[0], b[1]);
                    mma(dkr[2 * dp + 1], as, b[2], b[3]);
                }
            }
            // dQ sums over the keys of every warp: dS^T goes through shared memory.
#pragma unroll
            for (int nt = 0; nt < NQ; nt++) {
                *reinterpret_cast<uint32_t *>(sds + jr * SD + nt * 8 + 2 * tg) =
                    pack2(dpt[nt][0], dpt[nt][1]);
                *reinterpret_cast<uint32_t *>(sds + (jr + 8) * SD + nt * 8 + 2 * tg) =
                    pack2(dpt[nt][2], dpt[nt][3]);
            }
            __syncthreads();
            float dq[DC / 8][4];
#pragma unroll
            for (int dt = 0; dt < DC / 8; dt++)
#pragma unroll
                for (int e = 0; e < 4; e++) dq[dt][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < TC_TILE / 16; kk++) {
                uint32_t a[4];  // dS (queries wr*16.., keys kk*16..) from the stored transpose
                ldsm_t(a, sds + (kk * 16 + pb_row(lane)) * SD + wr * 16 + pb_col(lane));
#pragma unroll
                for (int dp = 0; dp < DC / 16; dp++) {
                    uint32_t b[4];
                    ldsm_t(b, sk + (kk * 16 + pa_row(lane)) * S + wc * DC + dp * 16 + pa_col(lane));
                    mma(dq[2 * dp], a, b[0], b[1]);
                    mma(dq[2 * dp + 1], a, b[2], b[3]);
                }
            }
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int il = wr * 16 + gr + 8 * r;
                if (il >= qn) continue;
                float *row = dqa + (size_t)(q0 + il) * qs + (size_t)h * D + wc * DC + 2 * tg;
#pragma unroll
                for (int dt = 0; dt < DC / 8; dt++) {
                    atomicAdd(row + dt * 8, dq[dt][2 * r]);
                    atomicAdd(row + dt * 8 + 1, dq[dt][2 * r + 1]);
                }
            }
            __syncthreads();  // Q, dO, dS^T, lse and rowdot are refilled next
        }
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int jl = jr + 8 * r;
        if (jl >= kn) continue;
        const size_t row = (size_t)(k0 + jl) * ks + (size_t)g * D + 2 * tg;
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            store2(dk + row + dt * 8, dkr[dt][2 * r] * scale, dkr[dt][2 * r + 1] * scale);
            store2(dv + row + dt * 8, dvr[dt][2 * r], dvr[dt][2 * r + 1]);
        }
    }
}

// dq (n) = dqa * scale, rounded to bf16.
__global__ void tc_dq_kernel(bf16 *dq, const float *dqa, size_t n, float scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dq[i] = tobf(dqa[i] * scale);
}

// ---- host -------------------------------------------------------------------

// These kernels take D = 64 or 128 and 16-byte aligned rows (cp.async).
static void tc_attention_fwd(es_backend *be, void *out, float *lse, const void *q, const void *k,
                             const void *v, const void *cu_seqlens, int ndocs, int N, int H,
                             int KVH, int D) {
    cuda_ctx *c = cuda_of(be);
    const void *bufs[] = {out, q, k, v};
    if (!cuda_attn_tc_takes(D, bufs, 4)) {
        c->attn_fwd_default(be, out, lse, q, k, v, cu_seqlens, ndocs, N, H, KVH, D);
        return;
    }
    if (N <= 0 || H <= 0) return;
    cuda_attn_check_shape(N, H, KVH);
    cudaStream_t st = c->stream;
    const int32_t *cu = (const int32_t *)cu_seqlens;
    int32_t *tiles = (int32_t *)cuda_scratch(be, (size_t)(ndocs + 1) * sizeof(int32_t));
    tc_tiles_kernel<<<1, 1, 0, st>>>(tiles, cu, ndocs);
    LAUNCH_CHECK();
    cuda_zero_outside_docs(st, (bf16 *)out, cu, ndocs, N, H * D);
    cuda_zero_outside_docs(st, lse, cu, ndocs, N, H);
    const dim3 grid((unsigned)((N + TC_TILE - 1) / TC_TILE + ndocs), (unsigned)H);
    const float sl2 = TC_LOG2E / sqrtf((float)D);
#define ARGS                                                                                      \
    (bf16 *)out, lse, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, cu, tiles, ndocs, H, KVH, \
        sl2
    if (D == 64) tc_fwd_kernel<64><<<grid, TC_THREADS, tc_fwd_smem<64>(), st>>>(ARGS);
    else tc_fwd_kernel<128><<<grid, TC_THREADS, tc_fwd_smem<128>(), st>>>(ARGS);
#undef ARGS
    LAUNCH_CHECK();
}

static void tc_attention_bwd(es_backend *be, void *dq, void *dk, void *dv, const void *dout,
                             const void *q, const void *k, const void *v, const void *out,
                             const float *lse, const void *cu_seqlens, int ndocs, int N, int H,
                             int KVH, int D) {
    cuda_ctx *c = cuda_of(be);
    const void *bufs[] = {dq, dk, dv, dout, q, k, v, out};
    if (!cuda_attn_tc_takes(D, bufs, 8)) {
        c->attn_bwd_default(be, dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, ndocs, N, H, KVH,
                            D);
        return;
    }
    if (N <= 0 || H <= 0) return;
    cuda_attn_check_shape(N, H, KVH);
    cudaStream_t st = c->stream;
    const int32_t *cu = (const int32_t *)cu_seqlens;
    const es_cuda_attn_scratch sz = es_cuda_attn_bwd_scratch(N, H, D, ndocs);
    const size_t nq = (size_t)N * H * D;
    char *scr = (char *)cuda_scratch(be, sz.tiles + sz.rowdot + sz.dq);
    int32_t *tiles = (int32_t *)scr;
    float *rowdot = (float *)(scr + sz.tiles), *dqa = (float *)(scr + sz.tiles + sz.rowdot);
    CUDA_CHECK(cudaMemsetAsync(dqa, 0, nq * sizeof(float), st));
    tc_tiles_kernel<<<1, 1, 0, st>>>(tiles, cu, ndocs);
    LAUNCH_CHECK();
    tc_rowdot_kernel<<<(unsigned)(((long)N * H + TC_WARPS - 1) / TC_WARPS), TC_THREADS, 0, st>>>(
        rowdot, (const bf16 *)dout, (const bf16 *)out, (long)N * H, D);
    LAUNCH_CHECK();
    cuda_zero_outside_docs(st, (bf16 *)dk, cu, ndocs, N, KVH * D);
    cuda_zero_outside_docs(st, (bf16 *)dv, cu, ndocs, N, KVH * D);
    const dim3 grid((unsigned)((N + TC_TILE - 1) / TC_TILE + ndocs), (unsigned)KVH);
    const float scale = 1.0f / sqrtf((float)D), sl2 = TC_LOG2E * scale;
#define ARGS                                                                                       \
    dqa, (bf16 *)dk, (bf16 *)dv, (const bf16 *)dout, (const bf16 *)q, (const bf16 *)k,             \
        (const bf16 *)v, lse, rowdot, cu, tiles, ndocs, H, KVH, scale, sl2
    if (D == 64) tc_bwd_kernel<64><<<grid, TC_THREADS, tc_bwd_smem<64>(), st>>>(ARGS);
    else tc_bwd_kernel<128><<<grid, TC_THREADS, tc_bwd_smem<128>(), st>>>(ARGS);
#undef ARGS
    LAUNCH_CHECK();
    tc_dq_kernel<<<cuda_blocks(nq, 256), 256, 0, st>>>((bf16 *)dq, dqa, nq, scale);
    LAUNCH_CHECK();
}

// Dynamic shared memory above 48 KiB must be opted into per kernel.
static int tc_smem_attr(const void *kernel, size_t bytes, const char *name) {
    cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return es_fail("cuda attention (tensor-core kernels): %s cannot have %zu bytes of shared "
                       "memory: %s", name, bytes, cudaGetErrorString(e));
    }
    return ES_OK;
}

int cuda_fill_attention_tc(es_backend *be) {
    if (tc_smem_attr((const void *)tc_fwd_kernel<64>, tc_fwd_smem<64>(), "forward D=64") ||
        tc_smem_attr((const void *)tc_fwd_kernel<128>, tc_fwd_smem<128>(), "forward D=128") ||
        tc_smem_attr((const void *)tc_bwd_kernel<64>, tc_bwd_smem<64>(), "backward D=64") ||
        tc_smem_attr((const void *)tc_bwd_kernel<128>, tc_bwd_smem<128>(), "backward D=128"))
        return ES_ERR;
    cuda_ctx *c = cuda_of(be);
    c->attn_fwd_default = be->attention_fwd;
    c->attn_bwd_default = be->attention_bwd;
    be->attention_fwd = tc_attention_fwd;
    be->attention_bwd = tc_attention_bwd;
    be->attention = "tc (tensor-core; simple for other head dims)";
    return ES_OK;
}
