// Per-lane bodies of the vectorised RMSNorm: forward, the residual add fused
// with it, and backward. One warp takes a row of C bf16 values as 16-byte
// vectors of 8: lane l holds vectors l, l + 32, ... (at most VPL of them).
// Host-and-device code, so that tests/test_cuda_emul.c runs this same code on
// the CPU, lane by lane, without a GPU.
#pragma once
#include "hd_portable.cuh"
#ifndef __CUDACC__
#include <math.h>
#endif

#define NR_HD HD_INLINE
#define NR_LANES 32
#define NR_THREADS 256  // the backward's blocks: 8 warps, one block per SM
// Unrolled on the device, where the register arrays need constant indices;
// the host compiler has no such pragma.
#ifdef __CUDA_ARCH__
#define NR_UNROLL _Pragma("unroll")
#else
#define NR_UNROLL
#endif

// Vectors per lane the vectorised kernels are instantiated for at row length C
// (1, 2, 4 or 8); 0 where it does not apply (C not whole 16-byte vectors, or
// over 2048), and the scalar kernels run instead.
NR_HD int nr_vpl(int C) {
    int vpl = (C + NR_LANES * 8 - 1) / (NR_LANES * 8);
    if (C % 8 || vpl > 8) return 0;
    return vpl <= 1 ? 1 : vpl <= 2 ? 2 : vpl <= 4 ? 4 : 8;
}

// Blocks of NR_THREADS the one-pass backward runs on: one warp a row up to
// one block per SM, enough to fill the chip and few enough that the
// weight-gradient partials (one row of C per warp) stay small.
NR_HD int nr_blocks(int N, int sms) {
    int blocks = (N + NR_THREADS / NR_LANES - 1) / (NR_THREADS / NR_LANES);
    return blocks < sms ? blocks : sms;
}

// Whether vector i of this lane lies inside a row of C (a multiple of 8).
NR_HD bool nr_has(int i, int lane, int C) { return (lane + i * NR_LANES) * 8 < C; }

// This lane's vectors of row (C).
template <int VPL>
NR_HD void nr_load(bf16x8 *dst, const __nv_bfloat16 *row, int C, int lane) {
NR_UNROLL
    for (int i = 0; i < VPL; i++)
        if (nr_has(i, lane, C)) dst[i] = ((const bf16x8 *)row)[lane + i * NR_LANES];
}

// res (C) = a + b rounded to bf16 and stored; x keeps the stored values, so
// that the norm after it reads what rmsnorm_fwd would read back from res.
template <int VPL>
NR_HD void nr_add_row(bf16x8 *x, __nv_bfloat16 *res, const bf16x8 *a, const bf16x8 *b, int C, int lane) {
NR_UNROLL
    for (int i = 0; i < VPL; i++) {
        if (!nr_has(i, lane, C)) continue;
NR_UNROLL
        for (int j = 0; j < 8; j++)
            x[i].v[j] = __float2bfloat16(__bfloat162float(a[i].v[j]) + __bfloat162float(b[i].v[j]));
        ((bf16x8 *)res)[lane + i * NR_LANES] = x[i];
    }
}

// This lane's part of sum_c x^2, the forward's one reduction.
template <int VPL>
NR_HD float nr_fwd_sumsq(const bf16x8 *x, int C, int lane) {
    float s = 0.0f;
NR_UNROLL
    for (int i = 0; i < VPL; i++)
        if (nr_has(i, lane, C))
NR_UNROLL
            for (int j = 0; j < 8; j++) s += __bfloat162float(x[i].v[j]) * __bfloat162float(x[i].v[j]);
    return s;
}

// The row's rstd from the warp's sum of squares.
NR_HD float nr_rstd(float ss, int C, float eps) {
#ifdef __CUDA_ARCH__
    return rsqrtf(ss / C + eps);
#else
    return 1.0f / sqrtf(ss / C + eps);
#endif
}

// y (C) = x r w.
template <int VPL>
NR_HD void nr_fwd_row(__nv_bfloat16 *y, const bf16x8 *x, const bf16x8 *w, float r, int C, int lane) {
NR_UNROLL
    for (int i = 0; i < VPL; i++) {
        if (!nr_has(i, lane, C)) continue;
        bf16x8 o;
NR_UNROLL
        for (int j = 0; j < 8; j++)
            o.v[j] = __float2bfloat16(__bfloat162float(x[i].v[j]) * r * __bfloat162float(w[i].v[j]));
        ((bf16x8 *)y)[lane + i * NR_LANES] = o;
    }
}

// This lane's part of sum_c w g x, the backward's one reduction.
template <int VPL>
NR_HD float nr_bwd_dot(const bf16x8 *g, const bf16x8 *x, const bf16x8 *w, int C, int lane) {
    float s = 0.0f;
NR_UNROLL
    for (int i = 0; i < VPL; i++)
        if (nr_has(i, lane, C))
NR_UNROLL
            for (int j = 0; j < 8; j++)
                s += __bfloat162float(w[i].v[j]) * __bfloat162float(g[i].v[j]) * __bfloat162float(x[i].v[j]);
    return s;
}

// dx (C) = r (w g - x k), k = r^2 mean(w g x), added to what dx holds when
// accumulating; acc (VPL x 8, this lane's columns) += g x r, the weight
// gradient's part from this row.
template <int VPL>
NR_HD void nr_bwd_row(__nv_bfloat16 *dx, float (*acc)[8], const bf16x8 *g, const bf16x8 *x, const bf16x8 *w,
                      float r, float k, int C, int lane, int accumulate) {
NR_UNROLL
    for (int i = 0; i < VPL; i++) {
        if (!nr_has(i, lane, C)) continue;
        bf16x8 *out = (bf16x8 *)dx + lane + i * NR_LANES;
        bf16x8 old, res;
        if (accumulate) old = *out;
NR_UNROLL
        for (int j = 0; j < 8; j++) {
            float gj = __bfloat162float(g[i].v[j]), xj = __bfloat162float(x[i].v[j]);
            float d = r * (__bfloat162float(w[i].v[j]) * gj - xj * k);
            res.v[j] = __float2bfloat16(accumulate ? __bfloat162float(old.v[j]) + d : d);
            acc[i][j] += gj * xj * r;
        }
        *out = res;
    }
}

// This lane's columns of acc into part (C).
template <int VPL>
NR_HD void nr_store_acc(float *part, float (*acc)[8], int C, int lane) {
NR_UNROLL
    for (int i = 0; i < VPL; i++)
        if (nr_has(i, lane, C))
NR_UNROLL
            for (int j = 0; j < 8; j++) part[(lane + i * NR_LANES) * 8 + j] = acc[i][j];
}
