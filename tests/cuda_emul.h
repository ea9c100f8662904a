// The CUDA kernels' own host-and-device code (cuda/norm_rows.cuh,
// swiglu_elem.cuh, qkv_rows.cuh, adamw_elem.cuh) run on the CPU by tests/cuda_emul.cpp, for
// tests/test_cuda_emul.c. bf16 buffers are arrays of 16-bit words (the bits
// of __nv_bfloat16), 16-byte aligned where the kernel loads vectors.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

// The conversions the kernels use (round to nearest even).
uint16_t emul_to_bf16(float x);
float emul_from_bf16(uint16_t h);

// The vectorised RMSNorm forward (rmsnorm_fwd_vec_kernel), warp by warp, lane
// by lane: out (N, C) = a / rms(a) * w, rstd (N); with b (not NULL) the fused
// residual add first, res (N, C) = a + b, normalised as stored. Returns 0,
// touching nothing, where the backend would take the scalar kernel instead.
int emul_rmsnorm_fwd(uint16_t *res, uint16_t *out, float *rstd, const uint16_t *a, const uint16_t *b,
                     const uint16_t *w, int N, int C, float eps);

// The one-pass RMSNorm backward (rmsnorm_bwd_vec_kernel, then the sum of its
// weight-gradient partials) on a device of `sms` SMs, block by block, warp by
// warp, lane by lane: dinp (N, C) written or added to (accumulate), dw (C)
// added to. Returns 0, touching nothing, where the backend would take the
// scalar kernels instead.
int emul_rmsnorm_bwd(uint16_t *dinp, float *dw, const uint16_t *dout, const uint16_t *inp,
                     const uint16_t *w, const float *rstd, int N, int C, int accumulate, int sms);

// swiglu_fwd_kernel, swiglu_bwd_kernel over gu (N, 2F) rows [gate | up]:
// out (N, F), dgu (N, 2F); chunk by chunk, with the vectors where the
// backend would take them (swiglu_vec).
void emul_swiglu_fwd(uint16_t *out, const uint16_t *gu, int N, int F);
void emul_swiglu_bwd(uint16_t *dgu, const uint16_t *dout, const uint16_t *gu, int N, int F);

// qkv_fwd_kernel, and qkv_bwd_kernel then its cuda_dw_sum, on a device of
// `sms` SMs, group by group, lane by lane, with the vectors where the backend
// would take them (qr_vec): the arguments of qkv_fwd/qkv_bwd, bf16 as words.
// Return 0, touching nothing, for a head dim the kernels refuse.
int emul_qkv_fwd(uint16_t *q, uint16_t *k, uint16_t *v, float *q_rstd, float *k_rstd, const uint16_t *qkv,
                 const uint16_t *q_norm, const uint16_t *k_norm, const int32_t *pos, const float *inv_freq, int N,
                 int H, int KVH, int D, float eps, int sms);
int emul_qkv_bwd(uint16_t *dqkv, float *dq_norm, float *dk_norm, const uint16_t *dq, const uint16_t *dk,
                 const uint16_t *dv, const uint16_t *qkv, const uint16_t *q_norm, const uint16_t *k_norm,
                 const float *q_rstd, const float *k_rstd, const int32_t *pos, const float *inv_freq, int N, int H,
                 int KVH, int D, int sms);

// The multi-tensor adamw_kernel over n elements, block by block, thread by
// thread: segs (nsegs) the tensor table, sumsq and skip the values of the
// device scalars it reads. master NULL updates fp32 params in place, else
// master and its bf16 copy in params.
void emul_adamw(void *params, float *master, const float *grads, float *m, float *v, const es_adamw_seg *segs,
                int nsegs, size_t n, double sumsq, float skip, const es_adamw_args *a);

#ifdef __cplusplus
}
#endif
