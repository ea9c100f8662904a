// Optimizer arithmetic on fp32 state: gradient norm and AdamW. Both stream
// hundreds of MB per step, so each is one vectorised, threaded pass.
#include <math.h>

#include "cpu_ops.h"

void cpu_sumsq(es_backend *be, double *out, const float *x, size_t n) {
    (void)be;
    double s = 0.0;
    // simd lets the compiler reorder the double sum into vector lanes.
    #pragma omp parallel for simd schedule(static) reduction(+ : s)
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    *out = s;
}

void cpu_count_nonfinite(es_backend *be, float *out, const double *x, size_t n) {
    (void)be;
    float bad = 0.0f;
    for (size_t i = 0; i < n; i++) bad += !isfinite(x[i]);
    *out = bad;
}

// PyTorch's AdamW: p -= lr * wd * p, then p -= lr * mhat / (sqrt(vhat) + eps)
// with bias-corrected moments mhat = m / (1 - beta1^t), vhat = v / (1 - beta2^t),
// on g = grads * gscale. One element's update; both loops below inline it.
static inline float adamw_one(float *p, float *m, float *v, float g, float lr, float beta1, float beta2,
                              float eps, float wd, float bc1, float bc2) {
    float mi = beta1 * *m + (1.0f - beta1) * g;
    float vi = beta2 * *v + (1.0f - beta2) * g * g;
    *m = mi;
    *v = vi;
    float pi = *p * (1.0f - lr * wd);
    pi -= lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
    *p = pi;
    return pi;
}

// One tensor's elements [0, n) of the flat buffers.
static void adamw_seg(float *params, float *master, const float *grads, float *m, float *v, size_t n,
                      float gscale, float lr, float beta1, float beta2, float eps, float wd, float bc1,
                      float bc2) {
    // Two loops, so that neither carries a branch and both vectorise.
    if (master) {
        #pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++)
            params[i] = adamw_one(master + i, m + i, v + i, grads[i] * gscale, lr, beta1, beta2, eps, wd, bc1, bc2);
    } else {
        #pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++)
            adamw_one(params + i, m + i, v + i, grads[i] * gscale, lr, beta1, beta2, eps, wd, bc1, bc2);
    }
}

void cpu_adamw(es_backend *be, void *params_, float *master, const float *grads, float *m, float *v,
               const void *segs_, int nsegs, size_t n, const double *sumsq, const float *skip,
               const es_adamw_args *a) {
    (void)be;
    const es_adamw_seg *segs = segs_;
    if (*skip != 0.0f || !isfinite(*sumsq)) return;  // a bad step changes nothing
    double norm = sqrt(*sumsq);
    const float gscale = a->clip > 0 && norm > a->clip ? (float)(a->clip / norm) : 1.0f;
    float *params = params_;
    for (int s = 0; s < nsegs; s++) {
        size_t o = (size_t)segs[s].offset, k = (size_t)segs[s].count;
        if (o >= n) continue;  // as the CUDA kernel: nothing outside [0, n)
        if (k > n - o) k = n - o;
        adamw_seg(params + o, master ? master + o : NULL, grads + o, m + o, v + o, k, gscale, a->lr,
                  a->beta1, a->beta2, a->eps, segs[s].decay ? a->wd : 0.0f, a->bc1, a->bc2);
    }
}
