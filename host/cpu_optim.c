// Optimizer arithmetic on fp32 state: gradient norm, scaling, AdamW.
#include <math.h>

#include "cpu_ops.h"

double cpu_sumsq(es_backend *be, const float *x, size_t n) {
    (void)be;
    double s = 0.0;
    #pragma omp parallel for schedule(static) reduction(+ : s)
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

void cpu_scale(es_backend *be, float *x, float s, size_t n) {
    (void)be;
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

// PyTorch's AdamW: p -= lr * wd * p, then p -= lr * mhat / (sqrt(vhat) + eps)
// with bias-corrected moments mhat = m / (1 - beta1^t), vhat = v / (1 - beta2^t).
void cpu_adamw(es_backend *be, void *params_, float *master, const float *grads, float *m, float *v,
               size_t n, float lr, float beta1, float beta2, float eps, float wd, int step) {
    (void)be;
    float *params = params_;
    float *p = master ? master : params;
    const float bc1 = (float)(1.0 - pow(beta1, step)), bc2 = (float)(1.0 - pow(beta2, step));
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = grads[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float pi = p[i] * (1.0f - lr * wd);
        pi -= lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
        p[i] = pi;
        if (master) params[i] = pi;
    }
}
