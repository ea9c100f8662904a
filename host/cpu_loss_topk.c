// The distillation loss against an offline teacher stored as top-k
// (id, log-probability) entries plus one bucket for the remaining mass.
// Student logits are replaced in place by their gradient. With q the student
// softmax, p the teacher entries and r the teacher's remaining mass, the KD
// gradient is q_v - p_v on the listed ids and q_v (1 - r / q_rest) elsewhere.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "cpu_ops.h"

void cpu_distill_loss_topk(es_backend *be, double *sums, void *logits_, const void *tids_,
                           const void *tlogp_, const void *targets_, const void *weights_, int M,
                           int V, int K, float alpha, float grad_scale) {
    (void)be;
    float *logits = logits_;
    const float *tlogp = tlogp_, *weights = weights_;
    const int32_t *tids = tids_, *targets = targets_;
    double ce_sum = 0.0, kd_sum = 0.0;
    #pragma omp parallel reduction(+ : ce_sum, kd_sum)
    {
        float *qk = es_xmalloc((size_t)(K > 0 ? K : 1) * sizeof *qk);  // student q of listed ids
        #pragma omp for schedule(dynamic, 1)
        for (int r = 0; r < M; r++) {
            float *s = logits + (size_t)r * V;
            const int32_t *ids = tids + (size_t)r * K;
            const float *lp = tlogp + (size_t)r * K;
            float w = weights[r];
            int tgt = targets[r];
            if (w == 0.0f || tgt < 0 || tgt >= V) {
                memset(s, 0, (size_t)V * sizeof(float));
                continue;
            }
            int has_teacher = K > 0 && ids[0] >= 0;
            float a = has_teacher ? alpha : 1.0f;
            float smax = -INFINITY;
            for (int v = 0; v < V; v++) smax = s[v] > smax ? s[v] : smax;
            double se = 0.0;
            for (int v = 0; v < V; v++) se += exp((double)(s[v] - smax));
            double lse = smax + log(se);
            double ce = lse - s[tgt], kd = 0.0, rest_t = 0.0, rest_s = 1.0;
            if (has_teacher) {
                // The student's mass outside the listed ids, from the listed
                // exponentials subtracted in double.
                double listed_t = 0.0, listed_e = 0.0;
                for (int j = 0; j < K; j++) {
                    double p = exp((double)lp[j]);
                    listed_t += p;
                    listed_e += exp((double)(s[ids[j]] - smax));
                    qk[j] = (float)exp((double)s[ids[j]] - lse);
                    kd += p * ((double)lp[j] - ((double)s[ids[j]] - lse));
                }
                rest_t = listed_t < 1.0 ? 1.0 - listed_t : 0.0;
                rest_s = (se - listed_e) / se;
                if (rest_s < 1e-30) rest_s = 1e-30;
                if (rest_t > 0.0) kd += rest_t * (log(rest_t) - log(rest_s));
            }
            float gs = w * grad_scale, gce = gs * a, gkd = has_teacher ? gs * (1.0f - a) : 0.0f;
            float gall = gce + gkd * (float)(1.0 - rest_t / rest_s);
            // unlisted ids; the listed ones are overwritten next
            for (int v = 0; v < V; v++) s[v] = gall * (float)exp((double)s[v] - lse);
            if (has_teacher)
                for (int j = 0; j < K; j++)
                    s[ids[j]] = gce * qk[j] + gkd * (qk[j] - (float)exp((double)lp[j]));
            s[tgt] -= gce;
            ce_sum += (double)w * ce;
            kd_sum += (double)w * kd;
        }
        free(qk);
    }
    sums[0] = (float)sums[0] + (float)ce_sum;
    sums[1] = (float)sums[1] + (float)kd_sum;
}
