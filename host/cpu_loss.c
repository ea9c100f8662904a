// The distillation loss over one chunk of student logits, replaced in place
// by their gradient: weighted cross-entropy on the targets plus
// tau^2 * KL(teacher || student) at temperature tau. Log-probabilities are
// formed as (x - max) - log(sum exp(x - max)), so large logits lose nothing
// to rounding. Exponentials use the vectorised exp of cpu_fastmath.h; row
// sums keep LOSS_LANES float partial sums over chunks of LOSS_CHUNK values,
// so that they vectorise, and add the chunks up in double.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu_fastmath.h"
#include "cpu_ops.h"

#define LOSS_LANES 16
#define LOSS_CHUNK 256

// log(sum_v exp((x[v] - mx) * k))
static float log_sum_exp(const float *x, float mx, float k, int V) {
    double z = 0.0;
    for (int v0 = 0; v0 < V; v0 += LOSS_CHUNK) {
        float acc[LOSS_LANES] = {0};
        int n = V - v0 < LOSS_CHUNK ? V - v0 : LOSS_CHUNK, v = 0;
        const float *c = x + v0;
        for (; v + LOSS_LANES <= n; v += LOSS_LANES)
            for (int l = 0; l < LOSS_LANES; l++) acc[l] += es_expf((c[v + l] - mx) * k);
        for (; v < n; v++) z += es_expf((c[v] - mx) * k);
        for (int l = 0; l < LOSS_LANES; l++) z += acc[l];
    }
    return (float)log(z);
}

// KL(p || q) with log p = (t - tmax) k - lzt and log q = (s - smax) k - lzs.
static double kl_div(const float *t, const float *s, float tmax, float smax, float k, float lzt,
                     float lzs, int V) {
    double kl = 0.0;
    for (int v0 = 0; v0 < V; v0 += LOSS_CHUNK) {
        float acc[LOSS_LANES] = {0};
        int n = V - v0 < LOSS_CHUNK ? V - v0 : LOSS_CHUNK, v = 0;
        const float *tc = t + v0, *sc = s + v0;
        for (; v + LOSS_LANES <= n; v += LOSS_LANES)
            for (int l = 0; l < LOSS_LANES; l++) {
                float lpt = (tc[v + l] - tmax) * k - lzt, lqs = (sc[v + l] - smax) * k - lzs;
                acc[l] += es_expf(lpt) * (lpt - lqs);
            }
        for (; v < n; v++) {
            float lpt = (tc[v] - tmax) * k - lzt, lqs = (sc[v] - smax) * k - lzs;
            kl += es_expf(lpt) * (lpt - lqs);
        }
        for (int l = 0; l < LOSS_LANES; l++) kl += acc[l];
    }
    return kl;
}

void cpu_distill_loss(es_backend *be, double *sums, void *logits_, const void *tlogits_,
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
        float smax = es_maxf(s, V), lz = log_sum_exp(s, smax, 1.0f, V);
        float ce = (smax - s[tgt]) + lz;
        float tmax = 0.0f, lzs = 0.0f, lzt = 0.0f;
        double kl = 0.0;
        if (t) {
            tmax = es_maxf(t, V);
            lzs = log_sum_exp(s, smax, itau, V);
            lzt = log_sum_exp(t, tmax, itau, V);
            kl = kl_div(t, s, tmax, smax, itau, lzt, lzs, V);
        }
        float gs = w * grad_scale, gce = gs * a, gkd = gs * (1.0f - a) * tau;
        for (int v = 0; v < V; v++) {
            float d = s[v] - smax, g = gce * es_expf(d - lz);
            if (t) g += gkd * (es_expf(d * itau - lzs) - es_expf((t[v] - tmax) * itau - lzt));
            s[v] = g;
        }
        s[tgt] -= gce;
        ce_sum += (double)w * ce;
        kd_sum += (double)w * tau * tau * kl;
    }
    sums[0] = (float)sums[0] + (float)ce_sum;
    sums[1] = (float)sums[1] + (float)kd_sum;
}
