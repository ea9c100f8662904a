// Exact causal softmax attention over packed documents (cu_seqlens), with
// grouped-query heads. Each (query row, head) is one task, so documents never
// mix and a row's result does not depend on the rest of the batch. The
// backward recomputes probabilities from the saved log-sum-exp: one pass over
// (query row, head) for dq, one over (key row, kv head) for dk and dv, so no
// two threads write the same row.
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "cpu_ops.h"

static inline float dotf(const float *a, const float *b, int D) {
    float acc[16] = {0};  // independent lanes let the compiler vectorise
    int d = 0;
    for (; d + 16 <= D; d += 16)
        for (int l = 0; l < 16; l++) acc[l] += a[d + l] * b[d + l];
    float s = 0.0f;
    for (; d < D; d++) s += a[d] * b[d];
    for (int l = 0; l < 16; l++) s += acc[l];
    return s;
}

static inline void axpyf(float *y, float a, const float *x, int D) {
    for (int d = 0; d < D; d++) y[d] += a * x[d];
}

// Document holding token i: [*start, *end); 0 when i lies outside every document.
static int find_doc(int *start, int *end, const int32_t *cu, int ndocs, int i) {
    int lo = 0, hi = ndocs;  // find the last d with cu[d] <= i
    if (ndocs <= 0 || i < cu[0] || i >= cu[ndocs]) return 0;
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (cu[mid] <= i) lo = mid; else hi = mid;
    }
    *start = cu[lo];
    *end = cu[lo + 1];
    return 1;
}

static int max_doc_len(const int32_t *cu, int ndocs) {
    int m = 1;
    for (int d = 0; d < ndocs; d++)
        if (cu[d + 1] - cu[d] > m) m = cu[d + 1] - cu[d];
    return m;
}

void cpu_attention_fwd(es_backend *be, void *out_, float *lse, const void *q_, const void *k_,
                       const void *v_, const void *cu_seqlens, int ndocs, int N, int H, int KVH,
                       int D) {
    float *out = out_;
    const float *q = q_, *k = k_, *v = v_;
    const int32_t *cu = cu_seqlens;
    const float scale = 1.0f / sqrtf((float)D);
    const int group = H / KVH, L = max_doc_len(cu, ndocs);
    float *scores = cpu_scratch(be, (size_t)omp_get_max_threads() * L);
    #pragma omp parallel
    {
        float *sc = scores + (size_t)omp_get_thread_num() * L;  // (L) scores of one row
        #pragma omp for schedule(dynamic, 16)
        for (long t = 0; t < (long)N * H; t++) {
            int i = (int)(t / H), h = (int)(t % H), g = h / group, start, end;
            float *o = out + (size_t)t * D;
            memset(o, 0, (size_t)D * sizeof(float));
            if (!find_doc(&start, &end, cu, ndocs, i)) {
                lse[t] = 0.0f;
                continue;
            }
            const float *qi = q + (size_t)t * D;
            float mx = -INFINITY;
            for (int j = start; j <= i; j++) {
                float s = scale * dotf(qi, k + ((size_t)j * KVH + g) * D, D);
                sc[j - start] = s;
                if (s > mx) mx = s;
            }
            float sum = 0.0f;
            for (int j = start; j <= i; j++) {
                float p = expf(sc[j - start] - mx);
                sum += p;
                axpyf(o, p, v + ((size_t)j * KVH + g) * D, D);
            }
            float inv = 1.0f / sum;
            for (int d = 0; d < D; d++) o[d] *= inv;
            lse[t] = mx + logf(sum);
        }
    }
}

void cpu_attention_bwd(es_backend *be, void *dq_, void *dk_, void *dv_, const void *dout_,
                       const void *q_, const void *k_, const void *v_, const void *out_,
                       const float *lse, const void *cu_seqlens, int ndocs, int N, int H, int KVH,
                       int D) {
    float *dq = dq_, *dk = dk_, *dv = dv_;
    const float *dout = dout_, *q = q_, *k = k_, *v = v_, *out = out_;
    const int32_t *cu = cu_seqlens;
    const float scale = 1.0f / sqrtf((float)D);
    const int group = H / KVH;
    float *rowdot = cpu_scratch(be, (size_t)N * H);  // (N, H) sum(dout * out) per row
    #pragma omp parallel
    {
        // dS_ij = P_ij (dout_i . v_j - rowdot_i); dq_i = scale * sum_j dS_ij k_j
        #pragma omp for schedule(dynamic, 16)
        for (long t = 0; t < (long)N * H; t++) {
            int i = (int)(t / H), h = (int)(t % H), g = h / group, start, end;
            float *dqi = dq + (size_t)t * D;
            memset(dqi, 0, (size_t)D * sizeof(float));
            const float *doi = dout + (size_t)t * D, *qi = q + (size_t)t * D;
            float rd = dotf(doi, out + (size_t)t * D, D);
            rowdot[t] = rd;
            if (!find_doc(&start, &end, cu, ndocs, i)) continue;
            for (int j = start; j <= i; j++) {
                const float *kj = k + ((size_t)j * KVH + g) * D, *vj = v + ((size_t)j * KVH + g) * D;
                float p = expf(scale * dotf(qi, kj, D) - lse[t]);
                float ds = p * (dotf(doi, vj, D) - rd);
                axpyf(dqi, scale * ds, kj, D);
            }
        }
        // implicit barrier: rowdot is complete
        // dv_j = sum_i P_ij dout_i ; dk_j = scale * sum_i dS_ij q_i over the heads of group g
        #pragma omp for schedule(dynamic, 16)
        for (long t = 0; t < (long)N * KVH; t++) {
            int j = (int)(t / KVH), g = (int)(t % KVH), start, end;
            float *dkj = dk + (size_t)t * D, *dvj = dv + (size_t)t * D;
            memset(dkj, 0, (size_t)D * sizeof(float));
            memset(dvj, 0, (size_t)D * sizeof(float));
            if (!find_doc(&start, &end, cu, ndocs, j)) continue;
            const float *kj = k + (size_t)t * D, *vj = v + (size_t)t * D;
            for (int h = g * group; h < (g + 1) * group; h++) {
                for (int i = j; i < end; i++) {
                    size_t ih = (size_t)i * H + h;
                    const float *qi = q + ih * D, *doi = dout + ih * D;
                    float p = expf(scale * dotf(qi, kj, D) - lse[ih]);
                    float ds = p * (dotf(doi, vj, D) - rowdot[ih]);
                    axpyf(dvj, p, doi, D);
                    axpyf(dkj, scale * ds, qi, D);
                }
            }
        }
    }
}
