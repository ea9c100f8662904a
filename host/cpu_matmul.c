// Matrix multiplies: OpenBLAS sgemm when built with it, else a blocked
// OpenMP loop over packed panels of op(B). BLAS keeps its own threads: split
// across OpenMP threads, OpenBLAS (pthreads) serialises the calls. Run with
// OMP_WAIT_POLICY=passive so idle OpenMP threads do not spin against them.
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "cpu_ops.h"
#include "es_build.h"

#if ES_HAVE_BLAS
#include <cblas.h>
#endif

#define MM_BIAS_COLS 64  // columns per task in the bias gradient

#if !ES_HAVE_BLAS
// Rows of C per task and depth of one packed panel of op(B).
#define MM_BLOCK_M 32
#define MM_BLOCK_K 256

static void sgemm_fallback(es_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                           const float *A, int lda, const float *B, int ldb, float beta, float *C,
                           int ldc) {
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        if (beta == 0.0f)
            memset(c, 0, (size_t)N * sizeof(float));
        else if (beta != 1.0f)
            for (int n = 0; n < N; n++) c[n] *= beta;
    }
    float *panel = cpu_scratch(be, (size_t)MM_BLOCK_K * (size_t)(N > 0 ? N : 1));  // (kb, N)
    for (int k0 = 0; k0 < K; k0 += MM_BLOCK_K) {
        int kb = K - k0 < MM_BLOCK_K ? K - k0 : MM_BLOCK_K;
        #pragma omp parallel
        {
            // panel[kk][n] = op(B)[k0 + kk][n], contiguous so the inner loop vectorises
            #pragma omp for schedule(static)
            for (int kk = 0; kk < kb; kk++) {
                float *row = panel + (size_t)kk * N;
                if (tb)
                    for (int n = 0; n < N; n++) row[n] = B[(size_t)n * ldb + k0 + kk];
                else
                    memcpy(row, B + (size_t)(k0 + kk) * ldb, (size_t)N * sizeof(float));
            }
            #pragma omp for schedule(static)
            for (int i0 = 0; i0 < M; i0 += MM_BLOCK_M) {
                int i1 = i0 + MM_BLOCK_M < M ? i0 + MM_BLOCK_M : M;
                for (int i = i0; i < i1; i++) {
                    float *c = C + (size_t)i * ldc;
                    for (int kk = 0; kk < kb; kk++) {
                        int k = k0 + kk;
                        float a = alpha * (ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]);
                        const float *b = panel + (size_t)kk * N;
                        for (int n = 0; n < N; n++) c[n] += a * b[n];
                    }
                }
            }
        }
    }
}
#endif

void cpu_sgemm(es_backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
#if ES_HAVE_BLAS
    (void)be;
    if (K <= 0) {  // BLAS requires lda >= 1 even when nothing is read
        for (int i = 0; i < M; i++)
            for (int n = 0; n < N; n++)
                C[(size_t)i * ldc + n] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + n];
        return;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M,
                N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#else
    sgemm_fallback(be, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

void cpu_matmul_fwd(es_backend *be, void *out_, const void *inp, const void *w, const void *bias_,
                    int N, int C, int OC) {
    float *out = out_;
    const float *bias = bias_;
    if (cpu_lowp_matmul(be, out, inp, w, bias, N, C, OC)) return;
    float beta = 0.0f;
    if (bias) {  // start from the bias rows and let sgemm add the product; serial,
                 // so no OpenMP threads are left spinning while BLAS runs
        for (int i = 0; i < N; i++) memcpy(out + (size_t)i * OC, bias, (size_t)OC * sizeof(float));
        beta = 1.0f;
    }
    // out (N, OC) = inp (N, C) @ w (OC, C)^T
    cpu_sgemm(be, 0, 1, N, OC, C, 1.0f, inp, C, w, C, beta, out, OC);
}

void cpu_matmul_bwd(es_backend *be, void *dinp, void *dw, void *dbias_, const void *dout_,
                    const void *inp, const void *w, int N, int C, int OC, int accumulate) {
    const float *dout = dout_;
    // dinp (N, C) = dout (N, OC) @ w (OC, C)
    if (dinp) cpu_sgemm(be, 0, 0, N, C, OC, 1.0f, dout, OC, w, C, accumulate ? 1.0f : 0.0f, dinp, C);
    // dw (OC, C) += dout^T (OC, N) @ inp (N, C)
    if (dw) cpu_sgemm(be, 1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dw, C);
    float *dbias = dbias_;
    if (dbias) {
        // columns split across threads; each thread walks all rows of its columns
        #pragma omp parallel for schedule(static)
        for (int o0 = 0; o0 < OC; o0 += MM_BIAS_COLS) {
            int o1 = o0 + MM_BIAS_COLS < OC ? o0 + MM_BIAS_COLS : OC;
            float acc[MM_BIAS_COLS] = {0};
            for (int i = 0; i < N; i++) {
                const float *r = dout + (size_t)i * OC;
                for (int o = o0; o < o1; o++) acc[o - o0] += r[o];
            }
            for (int o = o0; o < o1; o++) dbias[o] += acc[o - o0];
        }
    }
}

double cpu_sgemm_rate(es_backend *be) {
    enum { S = 1024, REPS = 5 };  // ~10 ms each: long enough to see the sustained rate
    float *a = es_xmalloc(sizeof(float) * S * S), *b = es_xmalloc(sizeof(float) * S * S);
    float *c = es_xmalloc(sizeof(float) * S * S);
    for (int i = 0; i < S * S; i++) {
        a[i] = (float)(i % 7) * 0.1f;
        b[i] = (float)(i % 5) * 0.1f;
    }
    double best = 0.0;
    for (int r = 0; r <= REPS; r++) {  // the first run warms up threads and caches
        double t0 = es_now();
        cpu_sgemm(be, 0, 1, S, S, S, 1.0f, a, S, b, S, 0.0f, c, S);
        double dt = es_now() - t0;
        if (r > 0 && dt > 0.0 && 2.0 * S * S * S / dt > best) best = 2.0 * S * S * S / dt;
    }
    free(a);
    free(b);
    free(c);
    return best;
}
