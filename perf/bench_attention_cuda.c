// Times the CUDA backend's attention, every path of this build
// (ES_ATTENTION_PATHS: cudnn where built, tc, simple; one backend each under
// ESSENCE_ATTN), forward and backward, on 4 documents of 2048 tokens with
// H=16, KVH=8, D=128 (Qwen3-4B/8B heads). Prints the median of several runs
// in ms and TFLOP/s, counting 4 H D L(L+1)/2 FLOPs per document forward and
// twice that backward (as bench_attention does), and the largest relative
// difference between each path's outputs and the simple kernels'; exits
// non-zero when one disagrees beyond bf16 tolerance.
//   bench_attention_cuda [reps]
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "common.h"
#include "es_build.h"

#define NDOCS 4
#define L 2048
#define H 16
#define KVH 8
#define D 128
#define N (NDOCS * L)
#define MAX_REPS 64
#define MAX_PATHS 4

// One backend's buffers: inputs, forward outputs, backward outputs.
typedef struct {
    es_backend *be;
    void *q, *k, *v, *out, *dout, *dq, *dk, *dv, *cu;
    float *lse;
} run;

static void *alloc_or_die(es_backend *be, size_t n, es_dtype dt, es_mem_kind kind) {
    void *p = be->alloc(be, n, dt, kind);
    if (!p) es_die("%s", es_last_error());
    return p;
}

static void setup(run *r, const char *attn, const float *hq, const float *hk, const float *hv,
                  const float *hdo, const int32_t *cu) {
    setenv("ESSENCE_ATTN", attn, 1);
    es_backend *be = r->be = es_backend_cuda_create(0);
    if (!be) es_die("%s", es_last_error());
    size_t nq = (size_t)N * H * D, nk = (size_t)N * KVH * D;
    r->q = alloc_or_die(be, nq, ES_DT_COMPUTE, ES_MEM_ACTS);
    r->k = alloc_or_die(be, nk, ES_DT_COMPUTE, ES_MEM_ACTS);
    r->v = alloc_or_die(be, nk, ES_DT_COMPUTE, ES_MEM_ACTS);
    r->out = alloc_or_die(be, nq, ES_DT_COMPUTE, ES_MEM_ACTS);
    r->dout = alloc_or_die(be, nq, ES_DT_COMPUTE, ES_MEM_ACTS);
    r->dq = alloc_or_die(be, nq, ES_DT_COMPUTE, ES_MEM_ACTS);
    r->dk = alloc_or_die(be, nk, ES_DT_COMPUTE, ES_MEM_ACTS);
    r->dv = alloc_or_die(be, nk, ES_DT_COMPUTE, ES_MEM_ACTS);
    r->lse = alloc_or_die(be, (size_t)N * H, ES_DT_F32, ES_MEM_ACTS);
    r->cu = alloc_or_die(be, NDOCS + 1, ES_DT_I32, ES_MEM_INDEX);
    be->upload(be, r->q, hq, nq, ES_DT_COMPUTE);
    be->upload(be, r->k, hk, nk, ES_DT_COMPUTE);
    be->upload(be, r->v, hv, nk, ES_DT_COMPUTE);
    be->upload(be, r->dout, hdo, nq, ES_DT_COMPUTE);
    be->upload(be, r->cu, cu, NDOCS + 1, ES_DT_I32);
}

static void fwd(run *r) {
    r->be->attention_fwd(r->be, r->out, r->lse, r->q, r->k, r->v, r->cu, NDOCS, N, H, KVH, D);
}

static void bwd(run *r) {
    r->be->attention_bwd(r->be, r->dq, r->dk, r->dv, r->dout, r->q, r->k, r->v, r->out, r->lse,
                         r->cu, NDOCS, N, H, KVH, D);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// Median seconds of reps calls of op after one warm-up.
static double time_op(run *r, void (*op)(run *), int reps) {
    double t[MAX_REPS];
    op(r);
    r->be->sync(r->be);
    for (int i = 0; i < reps; i++) {
        double t0 = es_now();
        op(r);
        r->be->sync(r->be);
        t[i] = es_now() - t0;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    return t[reps / 2];
}

// max |a - b| / max |b| over n values of the two runs' buffers.
static double rel_diff(run *a, void *pa, run *b, void *pb, size_t n, es_dtype dt) {
    float *x = es_xmalloc(n * sizeof(float)), *y = es_xmalloc(n * sizeof(float));
    a->be->download(a->be, x, pa, n, dt);
    b->be->download(b->be, y, pb, n, dt);
    double num = 0.0, den = 1e-6;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i]) || !isfinite(y[i])) {
            num = INFINITY;
            break;
        }
        num = fmax(num, fabs((double)x[i] - y[i]));
        den = fmax(den, fabs((double)y[i]));
    }
    free(x);
    free(y);
    return num / den;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 5;
    if (reps < 1 || reps > MAX_REPS) es_die("bench_attention_cuda: reps must be 1..%d", MAX_REPS);
    size_t nq = (size_t)N * H * D, nk = (size_t)N * KVH * D;
    float *hq = es_xmalloc(nq * sizeof(float)), *hdo = es_xmalloc(nq * sizeof(float));
    float *hk = es_xmalloc(nk * sizeof(float)), *hv = es_xmalloc(nk * sizeof(float));
    es_rng rng;
    es_rng_seed(&rng, 7);
    for (size_t i = 0; i < nq; i++) hq[i] = es_rng_normal(&rng), hdo[i] = es_rng_normal(&rng);
    for (size_t i = 0; i < nk; i++) hk[i] = es_rng_normal(&rng), hv[i] = es_rng_normal(&rng);
    int32_t cu[NDOCS + 1];
    for (int d = 0; d <= NDOCS; d++) cu[d] = d * L;

    // The paths this build has; simple (the reference) is the last.
    char paths[64];
    const char *names[MAX_PATHS];
    int npaths = 0;
    snprintf(paths, sizeof paths, "%s", ES_ATTENTION_PATHS);
    for (char *t = strtok(paths, " "); t && npaths < MAX_PATHS; t = strtok(NULL, " ")) names[npaths++] = t;
    if (npaths < 2 || strcmp(names[npaths - 1], "simple"))
        es_die("bench_attention_cuda: attention paths '%s' do not end in simple", ES_ATTENTION_PATHS);
    run runs[MAX_PATHS];
    for (int i = 0; i < npaths; i++) setup(&runs[i], names[i], hq, hk, hv, hdo, cu);
    unsetenv("ESSENCE_ATTN");
    free(hq);
    free(hk);
    free(hv);
    free(hdo);

    double flops = 4.0 * H * D * ((double)L * (L + 1) / 2) * NDOCS;
    printf("attention N=%d (%d docs x %d), H=%d, KVH=%d, D=%d, median of %d\n", N, NDOCS, L, H,
           KVH, D, reps);
    printf("%-8s %10s %10s %10s %10s\n", "kernel", "fwd ms", "fwd TF/s", "bwd ms", "bwd TF/s");
    for (int i = 0; i < npaths; i++) {
        double tf = time_op(&runs[i], fwd, reps), tb = time_op(&runs[i], bwd, reps);
        printf("%-8s %10.2f %10.1f %10.2f %10.1f\n", names[i], tf * 1e3, flops / tf / 1e12,
               tb * 1e3, 2 * flops / tb / 1e12);
    }
    // Every run now holds outputs of the same inputs (the backward read each one's own forward).
    const char *what[] = {"out", "lse", "dq", "dk", "dv"};
    size_t n[] = {nq, (size_t)N * H, nq, nk, nk};
    run *ref = &runs[npaths - 1];
    void *rb[] = {ref->out, ref->lse, ref->dq, ref->dk, ref->dv};
    double worst = 0.0;
    for (int p = 0; p + 1 < npaths; p++) {
        void *b[] = {runs[p].out, runs[p].lse, runs[p].dq, runs[p].dk, runs[p].dv};
        printf("%s vs simple, max rel diff:", names[p]);
        for (int i = 0; i < 5; i++) {
            double e = rel_diff(&runs[p], b[i], ref, rb[i], n[i], i == 1 ? ES_DT_F32 : ES_DT_COMPUTE);
            printf(" %s %.2e", what[i], e);
            worst = fmax(worst, e);
        }
        printf("\n");
    }
    for (int i = 0; i < npaths; i++) runs[i].be->destroy(runs[i].be);
    if (!(worst <= 2e-2)) {
        fprintf(stderr, "bench_attention_cuda: kernels disagree (%.2e > 2e-2)\n", worst);
        return 1;
    }
    return 0;
}
