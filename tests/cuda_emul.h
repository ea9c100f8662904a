// The CUDA kernels' own host-and-device code (cuda/norm_rows.cuh,
// swiglu_elem.cuh, adamw_elem.cuh) run on the CPU by tests/cuda_emul.cpp, for
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

// swiglu_fwd_kernel, swiglu_bwd_kernel over n elements.
void emul_swiglu_fwd(uint16_t *out, const uint16_t *gate, const uint16_t *up, size_t n);
void emul_swiglu_bwd(uint16_t *dgate, uint16_t *dup, const uint16_t *dout, const uint16_t *gate,
                     const uint16_t *up, size_t n);

// The multi-tensor adamw_kernel over n elements, block by block, thread by
// thread: segs (nsegs) the tensor table, sumsq and skip the values of the
// device scalars it reads. master NULL updates fp32 params in place, else
// master and its bf16 copy in params.
void emul_adamw(void *params, float *master, const float *grads, float *m, float *v, const es_adamw_seg *segs,
                int nsegs, size_t n, double sumsq, float skip, const es_adamw_args *a);

#ifdef __cplusplus
}
#endif
