// Key/value cache ops for generation: row appends and one-query attention
// over each sequence's cached keys. Each (sequence, head) is one task, so a
// row's result does not depend on the rest of the batch.
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "cpu_fastmath.h"
#include "cpu_ops.h"

void cpu_kv_append(es_backend *be, void *kcache, void *vcache, const void *k, const void *v,
                   const void *rows_, int N, int W) {
    (void)be;
    const int32_t *rows = rows_;
    float *kc = kcache, *vc = vcache;
    const float *kk = k, *vv = v;
    for (int i = 0; i < N; i++) {
        memcpy(kc + (size_t)rows[i] * W, kk + (size_t)i * W, (size_t)W * sizeof(float));
        memcpy(vc + (size_t)rows[i] * W, vv + (size_t)i * W, (size_t)W * sizeof(float));
    }
}

void cpu_attention_decode(es_backend *be, void *out_, const void *q_, const void *kcache,
                          const void *vcache, const void *start_, const void *len_, int B, int H,
                          int KVH, int D, int max_len) {
    float *out = out_;
    const float *q = q_, *kc = kcache, *vc = vcache;
    const int32_t *start = start_, *len = len_;
    const float scale = 1.0f / sqrtf((float)D);
    const int group = H / KVH;
    const size_t W = (size_t)KVH * D;
    float *scores = cpu_scratch(be, (size_t)omp_get_max_threads() * max_len);
    #pragma omp parallel
    {
        float *sc = scores + (size_t)omp_get_thread_num() * max_len;  // (max_len)
        #pragma omp for schedule(dynamic, 1)
        for (long t = 0; t < (long)B * H; t++) {
            int b = (int)(t / H), g = (int)(t % H) / group, n = len[b];
            const float *qi = q + (size_t)t * D;
            const float *kb = kc + (size_t)start[b] * W + (size_t)g * D;
            const float *vb = vc + (size_t)start[b] * W + (size_t)g * D;
            float *o = out + (size_t)t * D, mx = -INFINITY;
            for (int j = 0; j < n; j++) {
                sc[j] = scale * es_dotf(qi, kb + (size_t)j * W, D);
                if (sc[j] > mx) mx = sc[j];
            }
            float sum = 0.0f;
            memset(o, 0, (size_t)D * sizeof(float));
            for (int j = 0; j < n; j++) {
                float p = expf(sc[j] - mx);
                const float *vj = vb + (size_t)j * W;
                sum += p;
                for (int d = 0; d < D; d++) o[d] += p * vj[d];
            }
            float inv = 1.0f / sum;
            for (int d = 0; d < D; d++) o[d] *= inv;
        }
    }
}
