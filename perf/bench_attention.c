// Times the CPU backend's attention forward + backward on packed documents
// and compares it with the earlier row-at-a-time kernels (kept here only, as
// the baseline). Prints the median of several runs in ms and GFLOP/s, counting
// 4 H D L(L+1)/2 FLOPs per document forward and twice that backward, and the
// largest relative difference between the two; exits non-zero when they
// disagree.
//   bench_attention [reps]
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "cpu_ops.h"

// ---- baseline: the previous kernels, one (row, head) per task ---------------
static inline float base_dot(const float *a, const float *b, int D) {
    float acc[16] = {0};
    int d = 0;
    for (; d + 16 <= D; d += 16)
        for (int l = 0; l < 16; l++) acc[l] += a[d + l] * b[d + l];
    float s = 0.0f;
    for (; d < D; d++) s += a[d] * b[d];
    for (int l = 0; l < 16; l++) s += acc[l];
    return s;
}

static inline void base_axpy(float *y, float a, const float *x, int D) {
    for (int d = 0; d < D; d++) y[d] += a * x[d];
}

static int base_find_doc(int *start, int *end, const int32_t *cu, int ndocs, int i) {
    int lo = 0, hi = ndocs;
    if (ndocs <= 0 || i < cu[0] || i >= cu[ndocs]) return 0;
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (cu[mid] <= i) lo = mid; else hi = mid;
    }
    *start = cu[lo];
    *end = cu[lo + 1];
    return 1;
}

static void base_fwd(float *out, float *lse, float *scores, const float *q, const float *k,
                     const float *v, const int32_t *cu, int ndocs, int N, int H, int KVH, int D,
                     int L) {
    const float scale = 1.0f / sqrtf((float)D);
    const int group = H / KVH;
    #pragma omp parallel
    {
        float *sc = scores + (size_t)omp_get_thread_num() * L;
        #pragma omp for schedule(dynamic, 16)
        for (long t = 0; t < (long)N * H; t++) {
            int i = (int)(t / H), h = (int)(t % H), g = h / group, start, end;
            float *o = out + (size_t)t * D;
            memset(o, 0, (size_t)D * sizeof(float));
            if (!base_find_doc(&start, &end, cu, ndocs, i)) {
                lse[t] = 0.0f;
                continue;
            }
            const float *qi = q + (size_t)t * D;
            float mx = -INFINITY;
            for (int j = start; j <= i; j++) {
                float s = scale * base_dot(qi, k + ((size_t)j * KVH + g) * D, D);
                sc[j - start] = s;
                if (s > mx) mx = s;
            }
            float sum = 0.0f;
            for (int j = start; j <= i; j++) {
                float p = expf(sc[j - start] - mx);
                sum += p;
                base_axpy(o, p, v + ((size_t)j * KVH + g) * D, D);
            }
            float inv = 1.0f / sum;
            for (int d = 0; d < D; d++) o[d] *= inv;
            lse[t] = mx + logf(sum);
        }
    }
}

static void base_bwd(float *dq, float *dk, float *dv, float *rowdot, const float *dout,
                     const float *q, const float *k, const float *v, const float *out,
                     const float *lse, const int32_t *cu, int ndocs, int N, int H, int KVH, int D) {
    const float scale = 1.0f / sqrtf((float)D);
    const int group = H / KVH;
    #pragma omp parallel
    {
        #pragma omp for schedule(dynamic, 16)
        for (long t = 0; t < (long)N * H; t++) {
            int i = (int)(t / H), h = (int)(t % H), g = h / group, start, end;
            float *dqi = dq + (size_t)t * D;
            memset(dqi, 0, (size_t)D * sizeof(float));
            const float *doi = dout + (size_t)t * D, *qi = q + (size_t)t * D;
            float rd = base_dot(doi, out + (size_t)t * D, D);
            rowdot[t] = rd;
            if (!base_find_doc(&start, &end, cu, ndocs, i)) continue;
            for (int j = start; j <= i; j++) {
                const float *kj = k + ((size_t)j * KVH + g) * D, *vj = v + ((size_t)j * KVH + g) * D;
                float p = expf(scale * base_dot(qi, kj, D) - lse[t]);
                float ds = p * (base_dot(doi, vj, D) - rd);
                base_axpy(dqi, scale * ds, kj, D);
            }
        }
        #pragma omp for schedule(dynamic, 16)
        for (long t = 0; t < (long)N * KVH; t++) {
            int j = (int)(t / KVH), g = (int)(t % KVH), start, end;
            float *dkj = dk + (size_t)t * D, *dvj = dv + (size_t)t * D;
            memset(dkj, 0, (size_t)D * sizeof(float));
            memset(dvj, 0, (size_t)D * sizeof(float));
            if (!base_find_doc(&start, &end, cu, ndocs, j)) continue;
            const float *kj = k + (size_t)t * D, *vj = v + (size_t)t * D;
            for (int h = g * group; h < (g + 1) * group; h++) {
                for (int i = j; i < end; i++) {
                    size_t ih = (size_t)i * H + h;
                    const float *qi = q + ih * D, *doi = dout + ih * D;
                    float p = expf(scale * base_dot(qi, kj, D) - lse[ih]);
                    float ds = p * (base_dot(doi, vj, D) - rowdot[ih]);
                    base_axpy(dvj, p, doi, D);
                    base_axpy(dkj, scale * ds, qi, D);
                }
            }
        }
    }
}

// ---- problems ---------------------------------------------------------------
#define MAX_DOCS 64

typedef struct {
    const char *name;
    int H, KVH, D, N, ndocs;
    int32_t cu[MAX_DOCS + 1];
} problem;

// Documents of 100..1800 tokens, packed while they fit in N tokens.
static void pack_corpus_like(problem *p, es_rng *rng) {
    p->ndocs = 0;
    p->cu[0] = 0;
    for (;;) {
        int len = 100 + (int)(es_rng_u64(rng) % 1701), used = p->cu[p->ndocs];
        if (used + len > p->N) len = p->N - used;  // the last document is cut to fit
        if (len <= 0 || p->ndocs == MAX_DOCS) break;
        p->cu[p->ndocs + 1] = used + len;
        p->ndocs++;
    }
}

static double attention_flops(const problem *p) {
    double f = 0.0;
    for (int d = 0; d < p->ndocs; d++) {
        double L = p->cu[d + 1] - p->cu[d];
        f += 3.0 * 4.0 * p->H * p->D * L * (L + 1) / 2;  // forward once, backward twice
    }
    return f;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double max_rel(const float *a, const float *b, size_t n) {
    double num = 0.0, den = 1e-6;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
        double d = fabs((double)a[i] - b[i]);
        num = d > num ? d : num;
        den = fabs((double)b[i]) > den ? fabs((double)b[i]) : den;
    }
    return num / den;
}

static float *randn(es_rng *rng, size_t n) {
    float *x = es_xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = es_rng_normal(rng);
    return x;
}

// Times both implementations on p (median of reps); returns the largest
// relative difference between their outputs and gradients.
static double run(es_backend *be, const problem *p, int reps, es_rng *rng) {
    const int N = p->N, H = p->H, KVH = p->KVH, D = p->D;
    size_t nq = (size_t)N * H * D, nkv = (size_t)N * KVH * D;
    float *q = randn(rng, nq), *k = randn(rng, nkv), *v = randn(rng, nkv), *dout = randn(rng, nq);
    float *out[2], *lse[2], *dq[2], *dk[2], *dv[2];
    for (int m = 0; m < 2; m++) {
        out[m] = es_xmalloc(nq * sizeof(float));
        dq[m] = es_xmalloc(nq * sizeof(float));
        lse[m] = es_xmalloc((size_t)N * H * sizeof(float));
        dk[m] = es_xmalloc(nkv * sizeof(float));
        dv[m] = es_xmalloc(nkv * sizeof(float));
    }
    int L = 1;
    for (int d = 0; d < p->ndocs; d++)
        if (p->cu[d + 1] - p->cu[d] > L) L = p->cu[d + 1] - p->cu[d];
    float *scores = es_xmalloc((size_t)omp_get_max_threads() * L * sizeof(float));
    float *rowdot = es_xmalloc((size_t)N * H * sizeof(float));
    double *ms[2] = {es_xmalloc(sizeof(double) * reps), es_xmalloc(sizeof(double) * reps)};
    for (int r = 0; r <= reps; r++) {  // run 0 warms caches and threads
        for (int m = 0; m < 2; m++) {
            double t0 = es_now();
            if (m == 0) {
                base_fwd(out[0], lse[0], scores, q, k, v, p->cu, p->ndocs, N, H, KVH, D, L);
                base_bwd(dq[0], dk[0], dv[0], rowdot, dout, q, k, v, out[0], lse[0], p->cu,
                         p->ndocs, N, H, KVH, D);
            } else {
                be->attention_fwd(be, out[1], lse[1], q, k, v, p->cu, p->ndocs, N, H, KVH, D);
                be->attention_bwd(be, dq[1], dk[1], dv[1], dout, q, k, v, out[1], lse[1], p->cu,
                                  p->ndocs, N, H, KVH, D);
            }
            if (r > 0) ms[m][r - 1] = 1e3 * (es_now() - t0);
        }
    }
    double diff = max_rel(out[1], out[0], nq);
    double e[4] = {max_rel(lse[1], lse[0], (size_t)N * H), max_rel(dq[1], dq[0], nq),
                   max_rel(dk[1], dk[0], nkv), max_rel(dv[1], dv[0], nkv)};
    for (int i = 0; i < 4; i++) diff = e[i] > diff ? e[i] : diff;
    double gf = attention_flops(p) * 1e-9;
    qsort(ms[0], (size_t)reps, sizeof(double), cmp_double);
    qsort(ms[1], (size_t)reps, sizeof(double), cmp_double);
    double b = ms[0][reps / 2], n = ms[1][reps / 2];
    printf("%-34s docs %2d  baseline %8.1f ms %6.1f GFLOP/s | blocked %7.1f ms %6.1f GFLOP/s | "
           "x%.1f  max rel diff %.2g\n",
           p->name, p->ndocs, b, gf / (b * 1e-3), n, gf / (n * 1e-3), b / n, diff);
    for (int m = 0; m < 2; m++) {
        free(out[m]);
        free(lse[m]);
        free(dq[m]);
        free(dk[m]);
        free(dv[m]);
        free(ms[m]);
    }
    free(q);
    free(k);
    free(v);
    free(dout);
    free(scores);
    free(rowdot);
    return diff;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 5;
    if (reps < 1 || reps > 1000) {
        fprintf(stderr, "bench_attention: reps must be 1..1000, got '%s'\n", argv[1]);
        return 1;
    }
    es_backend *be = es_backend_cpu_create();
    if (!be) {
        fprintf(stderr, "bench_attention: %s\n", es_last_error());
        return 1;
    }
    es_rng rng;
    es_rng_seed(&rng, 1234);
    printf("fwd+bwd, median of %d, %d threads\n", reps, omp_get_max_threads());
    double worst = 0.0;
    for (int b = 0; b < 3; b++) {  // three packings of the corpus-like lengths
        problem p = {.name = "H=8 KVH=4 D=32 N=1856 (corpus)", .H = 8, .KVH = 4, .D = 32,
                     .N = 1856};
        pack_corpus_like(&p, &rng);
        double d = run(be, &p, reps, &rng);
        worst = d > worst ? d : worst;
    }
    problem big = {.name = "H=16 KVH=8 D=128 N=2048 (4x512)", .H = 16, .KVH = 8, .D = 128,
                   .N = 2048, .ndocs = 4, .cu = {0, 512, 1024, 1536, 2048}};
    double d = run(be, &big, reps, &rng);
    worst = d > worst ? d : worst;
    be->destroy(be);
    if (worst > 1e-4) {
        fprintf(stderr, "bench_attention: blocked and baseline differ by %.3g (relative)\n", worst);
        return 1;
    }
    return 0;
}
