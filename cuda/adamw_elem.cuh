// PyTorch's AdamW on one fp32 element: host-and-device code, so that
// tests/test_cuda_emul.c checks the kernel's own update on the CPU.
#pragma once
#include <math.h>

#include "hd_portable.cuh"

// The new weight: p -= lr wd p, then p -= lr mhat / (sqrt(vhat) + eps), with
// the moments m, v updated in place and bc1, bc2 the bias corrections
// 1 - beta^step.
HD_INLINE float adamw_elem(float *m, float *v, float p, float g, float lr, float beta1, float beta2,
                           float eps, float wd, float bc1, float bc2) {
    float mi = beta1 * *m + (1.0f - beta1) * g;
    float vi = beta2 * *v + (1.0f - beta2) * g * g;
    *m = mi;
    *v = vi;
    p *= 1.0f - lr * wd;
    return p - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
}
