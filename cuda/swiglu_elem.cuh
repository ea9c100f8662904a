// SwiGLU's arithmetic on one element, fp32: host-and-device code, so that
// tests/test_cuda_emul.c checks the kernels' own formulas on the CPU.
#pragma once
#include <math.h>

#include "hd_portable.cuh"

HD_INLINE float swiglu_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// out = silu(g) u
HD_INLINE float swiglu_elem(float g, float u) { return g * swiglu_sigmoid(g) * u; }

// dup = dy silu(g); dgate = dy u silu'(g)
HD_INLINE void swiglu_bwd_elem(float *dgate, float *dup, float dy, float g, float u) {
    float s = swiglu_sigmoid(g);
    *dup = dy * g * s;
    *dgate = dy * u * s * (1.0f + g * (1.0f - s));
}
