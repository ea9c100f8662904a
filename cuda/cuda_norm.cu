// RMSNorm and LayerNorm, forward and backward: bf16 in/out, fp32 math.
// One warp per row; weight gradients by a column-parallel kernel so that each
// block adds one partial sum per column (fp32 atomics).
#include "cuda_common.cuh"

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

static dim3 row_grid(int N) { return dim3((N + NORM_WARPS - 1) / NORM_WARPS); }

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
    rmsnorm_fwd_kernel<<<row_grid(N), 32 * NORM_WARPS, 0, cuda_of(be)->stream>>>(
        (bf16 *)out, rstd, (const bf16 *)inp, (const bf16 *)w, N, C, eps);
    LAUNCH_CHECK();
}

static void cuda_rmsnorm_bwd(es_backend *be, void *dinp, void *dw, const void *dout,
                             const void *inp, const void *w, const float *rstd, int N, int C,
                             int accumulate) {
    cuda_ctx *c = cuda_of(be);
    if (N <= 0) return;
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
    be->layernorm_fwd = cuda_layernorm_fwd;
    be->layernorm_bwd = cuda_layernorm_bwd;
}
