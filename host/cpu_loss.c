// The distillation loss over one chunk of student logits, replaced in place
// by their gradient: weighted cross-entropy on the targets plus
// tau^2 * KL(teacher || student) at temperature tau. Log-probabilities are
// formed as (x - max) - log(sum exp(x - max)), so large logits lose nothing
// to rounding; the sums are taken in double.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu_ops.h"

static float row_max(const float *x, int V) {
    float m = -INFINITY;
    for (int v = 0; v < V; v++) m = x[v] > m ? x[v] : m;
    return m;
}

// log(sum_v exp((x[v] - mx) * k))
static float log_sum_exp(const float *x, float mx, float k, int V) {
    double z = 0.0;
    for (int v = 0; v < V; v++) z += exp((double)((x[v] - mx) * k));
    return (float)log(z);
}

void cpu_distill_loss(es_backend *be, float *sums, void *logits_, const void *tlogits_,
                      const void *targets_, const void *weights_, int M, int V, float alpha,
                      float tau, float grad_scale) {
    (void)be;
    float *logits = logits_;
    const float *tlogits = tlogits_, *weights = weights_;
    const int32_t *targets = targets_;
    const float a = tlogits ? alpha : 1.0f, itau = 1.0f / tau;
    double ce_sum = 0.0, kd_sum = 0.0;
    #pragma omp parallel for schedule(dynamic, 1) reduction(+ : ce_sum, kd_sum)
    for (int r = 0; r < M; r++) {
        float *s = logits + (size_t)r * V;
        const float *t = tlogits ? tlogits + (size_t)r * V : NULL;
        float w = weights[r];
        int tgt = targets[r];
        // unsupervised rows, and rows whose target is no token, carry no loss
        if (w == 0.0f || tgt < 0 || tgt >= V) {
            memset(s, 0, (size_t)V * sizeof(float));
            continue;
        }
        float smax = row_max(s, V), lz = log_sum_exp(s, smax, 1.0f, V);
        float ce = (smax - s[tgt]) + lz;
        float tmax = 0.0f, lzs = 0.0f, lzt = 0.0f;
        double kl = 0.0;
        if (t) {
            tmax = row_max(t, V);
            lzs = log_sum_exp(s, smax, itau, V);
            lzt = log_sum_exp(t, tmax, itau, V);
            for (int v = 0; v < V; v++) {
                double lpt = (double)((t[v] - tmax) * itau) - lzt;
                double lqs = (double)((s[v] - smax) * itau) - lzs;
                kl += exp(lpt) * (lpt - lqs);
            }
        }
        float gs = w * grad_scale, gce = gs * a, gkd = gs * (1.0f - a) * tau;
        for (int v = 0; v < V; v++) {
            float d = s[v] - smax, g = gce * expf(d - lz);
            if (t) g += gkd * (expf(d * itau - lzs) - expf((t[v] - tmax) * itau - lzt));
            s[v] = g;
        }
        s[tgt] -= gce;
        ce_sum += (double)w * ce;
        kd_sum += (double)w * tau * tau * kl;
    }
    sums[0] += (float)ce_sum;
    sums[1] += (float)kd_sum;
}
