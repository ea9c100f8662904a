// RMSNorm and LayerNorm, forward and backward, and the residual add fused
// with RMSNorm's forward: bf16 in/out, fp32 math. One warp per row. Where
// the row allows (C a multiple of 8, at most 2048) RMSNorm takes 16-byte
// loads, forward and fused alike (the same per-lane code, so that they agree
// bit for bit), and its backward one pass with per-warp weight-gradient
// partials; elsewhere scalar kernels, with weight gradients by a
// column-parallel kernel so that each block adds one partial sum per column
// (fp32 atomics).
#include <stdint.h>

#include "cuda_common.cuh"
#include "norm_rows.cuh"

#define NORM_WARPS 4     // rows per block
#define DW_ROWS 64       // rows per weight-gradient block

__device__ __forceinline__ int warp_row(void) {
    return blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
}

__global__ void rmsnorm_fwd_kernel(bf16 *out, float *rstd, const bf16 *inp, const bf16 *w, int N,
                                   int C, float eps) {
    int row = warp_row(), lane = threadIdx.x % 32;
    if (row >= N) return;
    const bf16 *x = inp + (size_t)row * C;
    bf16 *y = out + (size_t)row * C;
    float ss = 0.0f;
    for (int c = lane; c < C; c += 32) ss += bf(x[c]) * bf(x[c]);
    float r = rsqrtf(warp_sum(ss) / C + eps);
    if (lane == 0) rstd[row] = r;
    for (int c = lane; c < C; c += 32) y[c] = tobf(bf(x[c]) * r * bf(w[c]));
}

// The scalar fallback of the fused op: res = a + b, then rmsnorm_fwd_kernel's
// arithmetic on the stored (rounded) res, in its order.
__global__ void add_rmsnorm_fwd_kernel(bf16 *res, bf16 *out, float *rstd, const bf16 *a,
                                       const bf16 *b, const bf16 *w, int N, int C, float eps) {
    int row = warp_row(), lane = threadIdx.x % 32;
    if (row >= N) return;
    size_t o = (size_t)row * C;
    float ss = 0.0f;
    for (int c = lane; c < C; c += 32) {
        bf16 x = tobf(bf(a[o + c]) + bf(b[o + c]));
        res[o + c] = x;
        ss += bf(x) * bf(x);
    }
    float r = rsqrtf(warp_sum(ss) / C + eps);
    if (lane == 0) rstd[row] = r;
    for (int c = lane; c < C; c += 32) out[o + c] = tobf(bf(res[o + c]) * r * bf(w[c]));
}

// RMSNorm forward with 16-byte loads, one warp a row; with a (b != NULL),
// the residual add first: res = a + b, normalised as stored.
template <int VPL>
__global__ void rmsnorm_fwd_vec_kernel(bf16 *res, bf16 *out, float *rstd, const bf16 *a,
                                       const bf16 *b, const bf16 *w, int N, int C, float eps) {
    int row = warp_row(), lane = threadIdx.x % NR_LANES;
    if (row >= N) return;
    size_t o = (size_t)row * C;
    bf16x8 x[VPL], wv[VPL];
    nr_load<VPL>(x, a + o, C, lane);
    if (b) {
        bf16x8 y[VPL];
        nr_load<VPL>(y, b + o, C, lane);
        nr_add_row<VPL>(x, res + o, x, y, C, lane);
    }
    nr_load<VPL>(wv, w, C, lane);
    float r = nr_rstd(warp_sum(nr_fwd_sumsq<VPL>(x, C, lane)), C, eps);
    if (lane == 0) rstd[row] = r;
    nr_fwd_row<VPL>(out + o, x, wv, r, C, lane);
}

// dx = r * (w g - x r^2 mean(w g x))
__global__ void rmsnorm_bwd_kernel(bf16 *dinp, const bf16 *dout, const bf16 *inp, const bf16 *w,
                                   const float *rstd, int N, int C, int accumulate) {
    int row = warp_row(), lane = threadIdx.x % 32;
    if (row >= N) return;
    const bf16 *x = inp + (size_t)row * C, *g = dout + (size_t)row * C;
    bf16 *dx = dinp + (size_t)row * C;
    float r = rstd[row], s = 0.0f;
    for (int c = lane; c < C; c += 32) s += bf(w[c]) * bf(g[c]) * bf(x[c]);
    float k = r * r * warp_sum(s) / C;
    for (int c = lane; c < C; c += 32) {
        float d = r * (bf(w[c]) * bf(g[c]) - bf(x[c]) * k);
        dx[c] = tobf(accumulate ? bf(dx[c]) + d : d);
    }
}

__global__ void layernorm_fwd_kernel(bf16 *out, float *mean, float *rstd, const bf16 *inp,
                                     const bf16 *w, const bf16 *b, int N, int C, float eps) {
    int row = warp_row(), lane = threadIdx.x % 32;
    if (row >= N) return;
    const bf16 *x = inp + (size_t)row * C;
    bf16 *y = out + (size_t)row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) s += bf(x[c]);
    float mu = warp_sum(s) / C, v = 0.0f;
    // Two passes: the one-pass variance cancels badly for large means.
    for (int c = lane; c < C; c += 32) v += (bf(x[c]) - mu) * (bf(x[c]) - mu);
    float r = rsqrtf(warp_sum(v) / C + eps);
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = r;
    }
    for (int c = lane; c < C; c += 32)
        y[c] = tobf((bf(x[c]) - mu) * r * bf(w[c]) + (b ? bf(b[c]) : 0.0f));
}

// dx = r * (w g - mean(w g) - xhat mean(w g xhat))
__global__ void layernorm_bwd_kernel(bf16 *dinp, const bf16 *dout, const bf16 *inp,
                                     const bf16 *w, const float *mean, const float *rstd, int N,
                                     int C, int accumulate) {
    int row = warp_row(), lane = threadIdx.x % 32;
    if (row >= N) return;
    const bf16 *x = inp + (size_t)row * C, *g = dout + (size_t)row * C;
    bf16 *dx = dinp + (size_t)row * C;
    float mu = mean[row], r = rstd[row], s1 = 0.0f, s2 = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float wg = bf(w[c]) * bf(g[c]);
        s1 += wg;
        s2 += wg * (bf(x[c]) - mu) * r;
    }
    s1 = warp_sum(s1) / C;
    s2 = warp_sum(s2) / C;
    for (int c = lane; c < C; c += 32) {
        float d = r * (bf(w[c]) * bf(g[c]) - s1 - (bf(x[c]) - mu) * r * s2);
        dx[c] = tobf(accumulate ? bf(dx[c]) + d : d);
    }
}

// dw (C) += sum_rows g * (x - mean) * rstd ; db (C) += sum_rows g. mean NULL for
// RMSNorm; dw or db NULL when that gradient is not wanted.
__global__ void norm_dweight_kernel(float *dw, float *db, const bf16 *dout, const bf16 *inp,
                                    const float *mean, const float *rstd, int N, int C) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= C) return;
    // Row blocks stride by the grid: N * heads rows (q/k norm) can need more
    // than gridDim.y's 65535.
    for (int r0 = blockIdx.y * DW_ROWS; r0 < N; r0 += gridDim.y * DW_ROWS) {
        int r1 = min(N, r0 + DW_ROWS);
        float sw = 0.0f, sb = 0.0f;
        for (int r = r0; r < r1; r++) {
            float g = bf(dout[(size_t)r * C + col]);
            float xh = (bf(inp[(size_t)r * C + col]) - (mean ? mean[r] : 0.0f)) * rstd[r];
            sw += g * xh;
            sb += g;
        }
        if (dw) atomicAdd(dw + col, sw);
        if (db) atomicAdd(db + col, sb);
    }
}

// RMSNorm backward in one pass over the rows with 16-byte loads: each warp
// takes rows warp, warp + warps, ..., writes dx and keeps its share of the
// weight gradient in registers, then stores it as one row of part (warps, C);
// rmsnorm_dw_sum adds the rows of part to dw. No atomics: the sum is the same
// on every run.
// One block per SM (launch bounds, 1): room in the registers for the VPL x 8
// weight-gradient sums (at C = 2048 ptxas still spills 84 bytes).
template <int VPL>
__global__ void __launch_bounds__(NR_THREADS, 1) rmsnorm_bwd_vec_kernel(bf16 *dinp, float *part, const bf16 *dout, const bf16 *inp,
                                       const bf16 *w, const float *rstd, int N, int C, int accumulate) {
    int lane = threadIdx.x % NR_LANES;
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / NR_LANES, warps = gridDim.x * blockDim.x / NR_LANES;
    bf16x8 wv[VPL], g[VPL], x[VPL];
    float acc[VPL][8];
#pragma unroll
    for (int i = 0; i < VPL; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[i][j] = 0.0f;
    nr_load<VPL>(wv, w, C, lane);
    for (int row = warp; row < N; row += warps) {  // the same rows for the whole warp
        nr_load<VPL>(g, dout + (size_t)row * C, C, lane);
        nr_load<VPL>(x, inp + (size_t)row * C, C, lane);
        float r = rstd[row];
        float k = r * r * warp_sum(nr_bwd_dot<VPL>(g, x, wv, C, lane)) / C;
        nr_bwd_row<VPL>(dinp + (size_t)row * C, acc, g, x, wv, r, k, C, lane, accumulate);
    }
    if (part) nr_store_acc<VPL>(part + (size_t)warp * C, acc, C, lane);
}

// dw (C) += sum of the rows of part (rows, C): a block of 32 columns x 32
// slices of the rows, the slices summed in shared memory.
__global__ void rmsnorm_dw_sum_kernel(float *dw, const float *part, int rows, int C) {
    __shared__ float s[32][33];  // padded: the column sums read down a column
    int col = blockIdx.x * 32 + threadIdx.x;
    float v = 0.0f;
    if (col < C)
        for (int r = threadIdx.y; r < rows; r += 32) v += part[(size_t)r * C + col];
    s[threadIdx.y][threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.y == 0 && col < C) {
        float t = 0.0f;
        for (int y = 0; y < 32; y++) t += s[y][threadIdx.x];
        dw[col] += t;
    }
}

void cuda_dw_sum(cudaStream_t st, float *dw, const float *part, int rows, int C) {
    rmsnorm_dw_sum_kernel<<<(C + 31) / 32, dim3(32, 32), 0, st>>>(dw, part, rows, C);
    LAUNCH_CHECK();
}

static dim3 row_grid(int N) { return dim3((N + NORM_WARPS - 1) / NORM_WARPS); }

// The vectorised forward (rmsnorm_fwd_vec_kernel) where it applies, else 0
// and the caller takes the scalar kernel. b NULL: plain RMSNorm of a.
static int rmsnorm_fwd_vec(es_backend *be, void *res, void *out, float *rstd, const void *a,
                           const void *b, const void *w, int N, int C, float eps) {
    int vpl = nr_vpl(C);
    if (!vpl || !hd_aligned16(out) || !hd_aligned16(a) || !hd_aligned16(w) ||
        (b && (!hd_aligned16(b) || !hd_aligned16(res))))
        return 0;
    bf16 *rs = (bf16 *)res, *y = (bf16 *)out;
    const bf16 *x = (const bf16 *)a, *x2 = (const bf16 *)b, *wt = (const bf16 *)w;
    dim3 grid = row_grid(N);
    int threads = 32 * NORM_WARPS;
    cudaStream_t s = cuda_of(be)->stream;
    switch (vpl) {
    case 1: rmsnorm_fwd_vec_kernel<1><<<grid, threads, 0, s>>>(rs, y, rstd, x, x2, wt, N, C, eps); break;
    case 2: rmsnorm_fwd_vec_kernel<2><<<grid, threads, 0, s>>>(rs, y, rstd, x, x2, wt, N, C, eps); break;
    case 4: rmsnorm_fwd_vec_kernel<4><<<grid, threads, 0, s>>>(rs, y, rstd, x, x2, wt, N, C, eps); break;
    default: rmsnorm_fwd_vec_kernel<8><<<grid, threads, 0, s>>>(rs, y, rstd, x, x2, wt, N, C, eps); break;
    }
    LAUNCH_CHECK();
    return 1;
}

// The one-pass kernel where it applies (rows of whole 16-byte vectors, at
// most 8 of them a lane: C <= 2048), else 0 and the caller takes the two
// scalar passes.
static int rmsnorm_bwd_vec(es_backend *be, void *dinp, void *dw, const void *dout, const void *inp,
                           const void *w, const float *rstd, int N, int C, int accumulate) {
    cuda_ctx *c = cuda_of(be);
    int vpl = nr_vpl(C);
    if (!vpl || !hd_aligned16(dinp) || !hd_aligned16(dout) || !hd_aligned16(inp) ||
        !hd_aligned16(w))
        return 0;
    int sms = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c->device));
    int threads = NR_THREADS, blocks = nr_blocks(N, sms);
    int warps = blocks * (threads / NR_LANES);
    float *part = dw ? (float *)cuda_scratch(be, (size_t)warps * C * sizeof(float)) : NULL;
    const bf16 *g = (const bf16 *)dout, *x = (const bf16 *)inp, *wt = (const bf16 *)w;
    bf16 *dx = (bf16 *)dinp;
    switch (vpl) {
    case 1: rmsnorm_bwd_vec_kernel<1><<<blocks, threads, 0, c->stream>>>(dx, part, g, x, wt, rstd, N, C, accumulate); break;
    case 2: rmsnorm_bwd_vec_kernel<2><<<blocks, threads, 0, c->stream>>>(dx, part, g, x, wt, rstd, N, C, accumulate); break;
    case 4: rmsnorm_bwd_vec_kernel<4><<<blocks, threads, 0, c->stream>>>(dx, part, g, x, wt, rstd, N, C, accumulate); break;
    default: rmsnorm_bwd_vec_kernel<8><<<blocks, threads, 0, c->stream>>>(dx, part, g, x, wt, rstd, N, C, accumulate); break;
    }
    LAUNCH_CHECK();
    if (dw) cuda_dw_sum(c->stream, (float *)dw, part, warps, C);
    return 1;
}

static void dweight(cuda_ctx *c, void *dw, void *db, const void *dout, const void *inp,
                    const float *mean, const float *rstd, int N, int C) {
    if (!dw && !db) return;
    dim3 grid((C + 127) / 128, cuda_blocks(N, DW_ROWS));
    norm_dweight_kernel<<<grid, 128, 0, c->stream>>>((float *)dw, (float *)db,
                                                     (const bf16 *)dout, (const bf16 *)inp,
                                                     mean, rstd, N, C);
    LAUNCH_CHECK();
}

static void cuda_rmsnorm_fwd(es_backend *be, void *out, float *rstd, const void *inp,
                             const void *w, int N, int C, float eps) {
    if (N <= 0) return;
    if (rmsnorm_fwd_vec(be, NULL, out, rstd, inp, NULL, w, N, C, eps)) return;
    rmsnorm_fwd_kernel<<<row_grid(N), 32 * NORM_WARPS, 0, cuda_of(be)->stream>>>(
        (bf16 *)out, rstd, (const bf16 *)inp, (const bf16 *)w, N, C, eps);
    LAUNCH_CHECK();
}

static void cuda_add_rmsnorm_fwd(es_backend *be, void *res, void *out, float *rstd, const void *a,
                                 const void *b, const void *w, int N, int C, float eps) {
    if (N <= 0) return;
    if (rmsnorm_fwd_vec(be, res, out, rstd, a, b, w, N, C, eps)) return;
    add_rmsnorm_fwd_kernel<<<row_grid(N), 32 * NORM_WARPS, 0, cuda_of(be)->stream>>>(
        (bf16 *)res, (bf16 *)out, rstd, (const bf16 *)a, (const bf16 *)b, (const bf16 *)w, N, C,
        eps);
    LAUNCH_CHECK();
}

static void cuda_rmsnorm_bwd(es_backend *be, void *dinp, void *dw, const void *dout,
                             const void *inp, const void *w, const float *rstd, int N, int C,
                             int accumulate) {
    cuda_ctx *c = cuda_of(be);
    if (N <= 0) return;
    if (rmsnorm_bwd_vec(be, dinp, dw, dout, inp, w, rstd, N, C, accumulate)) return;
    rmsnorm_bwd_kernel<<<row_grid(N), 32 * NORM_WARPS, 0, c->stream>>>(
        (bf16 *)dinp, (const bf16 *)dout, (const bf16 *)inp, (const bf16 *)w, rstd, N, C,
        accumulate);
    LAUNCH_CHECK();
    dweight(c, dw, NULL, dout, inp, NULL, rstd, N, C);
}

static void cuda_layernorm_fwd(es_backend *be, void *out, float *mean, float *rstd,
                               const void *inp, const void *w, const void *b, int N, int C,
                               float eps) {
    if (N <= 0) return;
    layernorm_fwd_kernel<<<row_grid(N), 32 * NORM_WARPS, 0, cuda_of(be)->stream>>>(
        (bf16 *)out, mean, rstd, (const bf16 *)inp, (const bf16 *)w, (const bf16 *)b, N, C, eps);
    LAUNCH_CHECK();
}

static void cuda_layernorm_bwd(es_backend *be, void *dinp, void *dw, void *db, const void *dout,
                               const void *inp, const void *w, const float *mean,
                               const float *rstd, int N, int C, int accumulate) {
    cuda_ctx *c = cuda_of(be);
    if (N <= 0) return;
    layernorm_bwd_kernel<<<row_grid(N), 32 * NORM_WARPS, 0, c->stream>>>(
        (bf16 *)dinp, (const bf16 *)dout, (const bf16 *)inp, (const bf16 *)w, mean, rstd, N, C,
        accumulate);
    LAUNCH_CHECK();
    dweight(c, dw, db, dout, inp, mean, rstd, N, C);
}

void cuda_fill_norm(es_backend *be) {
    be->rmsnorm_fwd = cuda_rmsnorm_fwd;
    be->rmsnorm_bwd = cuda_rmsnorm_bwd;
    be->add_rmsnorm_fwd = cuda_add_rmsnorm_fwd;
    be->layernorm_fwd = cuda_layernorm_fwd;
    be->layernorm_bwd = cuda_layernorm_bwd;
}
