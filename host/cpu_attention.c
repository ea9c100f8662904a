// Exact causal softmax attention over packed documents (cu_seqlens), with
// grouped-query heads, as blocked matmuls. A block of ATT_BQ query rows of one
// document and head meets the document's keys up to the block's last row in
// one sgemm; the probabilities P and their gradients stay in per-thread
// scratch. Blocks start at the document's first token, so a document's
// results depend on nothing outside it. The backward recomputes P from the
// saved log-sum-exp; one task owns one (document, kv head), loops over the
// query heads of its group and accumulates that group's dk and dv, so no two
// threads write the same rows. Tasks run largest document first.
//
// The sgemms run inside the OpenMP region: the OpenMP build of OpenBLAS then
// runs each on its calling thread, so documents are spread across the cores.
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_fastmath.h"
#include "cpu_ops.h"
#include "es_build.h"

#if ES_HAVE_BLAS
#include <cblas.h>
#endif

#define ATT_BQ 64     // query rows per block
#define ATT_LANES 16  // independent accumulators, so row reductions vectorise

// x[j] = exp(x[j] - sub) for j < n; returns their sum.
static float exp_sub_sum(float *x, float sub, int n) {
    float acc[ATT_LANES] = {0};
    int j = 0;
    for (; j + ATT_LANES <= n; j += ATT_LANES)
        for (int l = 0; l < ATT_LANES; l++) acc[l] += x[j + l] = es_expf(x[j + l] - sub);
    float s = 0.0f;
    for (; j < n; j++) s += x[j] = es_expf(x[j] - sub);
    for (int l = 0; l < ATT_LANES; l++) s += acc[l];
    return s;
}

// C (M, N) = alpha * op(A) @ op(B) + beta * C on the calling thread alone
// (beta == 0 never reads C); row-major as cpu_sgemm. Without BLAS, a plain
// loop for the three shapes used here (op(B) transposed only with A as is).
static void gemm_1t(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc) {
#if ES_HAVE_BLAS
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M,
                N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#else
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        for (int n = 0; n < N; n++) c[n] = beta == 0.0f ? 0.0f : beta * c[n];
        if (tb) {  // rows of A against rows of B
            for (int n = 0; n < N; n++)
                c[n] += alpha * es_dotf(A + (size_t)i * lda, B + (size_t)n * ldb, K);
            continue;
        }
        for (int k = 0; k < K; k++) {  // c += op(A)[i][k] * row k of B
            float a = alpha * (ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]);
            const float *b = B + (size_t)k * ldb;
            for (int n = 0; n < N; n++) c[n] += a * b[n];
        }
    }
#endif
}

static int cmp_desc(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x < y) - (x > y);
}

// Scratch: the documents as (length << 32 | index), longest first, then
// `per` floats for each thread, each area 64-byte aligned. Returns the first
// thread's area; per holds nbuf (ATT_BQ, longest document) buffers.
static float *attention_scratch(const int64_t **order, size_t *per, es_backend *be,
                                const int32_t *cu, int ndocs, int nbuf) {
    int longest = 1;
    for (int d = 0; d < ndocs; d++)
        if (cu[d + 1] - cu[d] > longest) longest = cu[d + 1] - cu[d];
    size_t head = ((size_t)ndocs * 2 + 31) / 16 * 16;  // room to align what follows
    *per = ((size_t)nbuf * ATT_BQ * longest + 15) / 16 * 16;
    float *s = cpu_scratch(be, head + (size_t)omp_get_max_threads() * *per);
    int64_t *o = (int64_t *)s;
    for (int d = 0; d < ndocs; d++) {
        int len = cu[d + 1] - cu[d];
        o[d] = (int64_t)(len > 0 ? len : 0) * ((int64_t)1 << 32) + d;
    }
    qsort(o, (size_t)ndocs, sizeof *o, cmp_desc);
    *order = o;
    float *base = s + ndocs * 2;
    return base + (16 - ((uintptr_t)base / sizeof(float)) % 16) % 16;
}

// Rows outside every document attend to nothing: zero them (count per row).
static void zero_outside(float *x, const int32_t *cu, int ndocs, int N, size_t row) {
    int lo = ndocs > 0 ? cu[0] : N, hi = ndocs > 0 ? cu[ndocs] : N;
    memset(x, 0, (size_t)lo * row * sizeof(float));
    memset(x + (size_t)hi * row, 0, (size_t)(N - hi) * row * sizeof(float));
}

// One document (n rows from token a) and query head h of group g.
static void fwd_doc_head(float *out, float *lse, float *S, const float *q, const float *k,
                         const float *v, int a, int n, int h, int g, int H, int KVH, int D,
                         float scale) {
    const int ldq = H * D, ldk = KVH * D;
    const float *Q = q + ((size_t)a * H + h) * D, *K = k + ((size_t)a * KVH + g) * D;
    const float *V = v + ((size_t)a * KVH + g) * D;
    float *O = out + ((size_t)a * H + h) * D;
    for (int i0 = 0; i0 < n; i0 += ATT_BQ) {
        int bq = n - i0 < ATT_BQ ? n - i0 : ATT_BQ, w = i0 + bq;  // keys [0, w)
        float inv[ATT_BQ];
        // S (bq, w) = scale * Q_blk K[0:w]^T
        gemm_1t(0, 1, bq, w, D, scale, Q + (size_t)i0 * ldq, ldq, K, ldk, 0.0f, S, w);
        for (int r = 0; r < bq; r++) {
            float *row = S + (size_t)r * w;
            int i = i0 + r;  // keys 0..i are visible
            float mx = es_maxf(row, i + 1), sum = exp_sub_sum(row, mx, i + 1);
            memset(row + i + 1, 0, (size_t)(w - i - 1) * sizeof(float));
            inv[r] = 1.0f / sum;
            lse[(size_t)(a + i) * H + h] = mx + logf(sum);
        }
        // O_blk (bq, D) = P V[0:w], then the softmax denominators
        float *Ob = O + (size_t)i0 * ldq;
        gemm_1t(0, 0, bq, D, w, 1.0f, S, w, V, ldk, 0.0f, Ob, ldq);
        for (int r = 0; r < bq; r++)
            for (int d = 0; d < D; d++) Ob[(size_t)r * ldq + d] *= inv[r];
    }
}

void cpu_attention_fwd(es_backend *be, void *out_, float *lse, const void *q_, const void *k_,
                       const void *v_, const void *cu_seqlens, int ndocs, int N, int H, int KVH,
                       int D) {
    float *out = out_;
    const float *q = q_, *k = k_, *v = v_;
    const int32_t *cu = cu_seqlens;
    const float scale = 1.0f / sqrtf((float)D);
    const int group = H / KVH;
    const int64_t *order;
    size_t per;
    float *scratch = attention_scratch(&order, &per, be, cu, ndocs, 1);
    zero_outside(out, cu, ndocs, N, (size_t)H * D);
    zero_outside(lse, cu, ndocs, N, (size_t)H);
    #pragma omp parallel
    {
        float *S = scratch + (size_t)omp_get_thread_num() * per;  // (ATT_BQ, longest)
        #pragma omp for schedule(dynamic, 1)
        for (long t = 0; t < (long)ndocs * H; t++) {
            int d = (int)(order[t / H] & 0xffffffff), h = (int)(t % H);
            if (cu[d + 1] > cu[d])
                fwd_doc_head(out, lse, S, q, k, v, cu[d], cu[d + 1] - cu[d], h, h / group, H,
                             KVH, D, scale);
        }
    }
}

// One document (n rows from token a) and kv head g: dq of the group's query
// heads, and dk, dv of head g over the document, which this call owns.
static void bwd_doc_group(float *dq, float *dk, float *dv, float *P, float *dS, const float *dout,
                          const float *q, const float *k, const float *v, const float *out,
                          const float *lse, int a, int n, int g, int H, int KVH, int D, float scale) {
    const int ldq = H * D, ldk = KVH * D, group = H / KVH;
    const float *K = k + ((size_t)a * KVH + g) * D, *V = v + ((size_t)a * KVH + g) * D;
    float *dK = dk + ((size_t)a * KVH + g) * D, *dV = dv + ((size_t)a * KVH + g) * D;
    for (int j = 0; j < n; j++) {
        memset(dK + (size_t)j * ldk, 0, (size_t)D * sizeof(float));
        memset(dV + (size_t)j * ldk, 0, (size_t)D * sizeof(float));
    }
    for (int h = g * group; h < (g + 1) * group; h++) {
        const size_t off = ((size_t)a * H + h) * D;
        const float *Q = q + off, *dO = dout + off, *O = out + off;
        for (int i0 = 0; i0 < n; i0 += ATT_BQ) {
            int bq = n - i0 < ATT_BQ ? n - i0 : ATT_BQ, w = i0 + bq;  // keys [0, w)
            const float *Qb = Q + (size_t)i0 * ldq, *dOb = dO + (size_t)i0 * ldq;
            // P (bq, w) = exp(scale * Q_blk K^T - lse); dP (bq, w) = dO_blk V^T
            gemm_1t(0, 1, bq, w, D, scale, Qb, ldq, K, ldk, 0.0f, P, w);
            gemm_1t(0, 1, bq, w, D, 1.0f, dOb, ldq, V, ldk, 0.0f, dS, w);
            for (int r = 0; r < bq; r++) {
                int i = i0 + r;  // keys 0..i are visible
                float *p = P + (size_t)r * w, *ds = dS + (size_t)r * w;
                float l = lse[(size_t)(a + i) * H + h];
                float rd = es_dotf(dOb + (size_t)r * ldq, O + (size_t)(i0 + r) * ldq, D);
                // dS = P (dP - rowsum(dO O)), with the score scale folded in
                for (int j = 0; j <= i; j++) {
                    p[j] = es_expf(p[j] - l);
                    ds[j] = p[j] * (ds[j] - rd) * scale;
                }
                memset(p + i + 1, 0, (size_t)(w - i - 1) * sizeof(float));
                memset(ds + i + 1, 0, (size_t)(w - i - 1) * sizeof(float));
            }
            // dQ_blk = dS K ; dK[0:w] += dS^T Q_blk ; dV[0:w] += P^T dO_blk
            gemm_1t(0, 0, bq, D, w, 1.0f, dS, w, K, ldk, 0.0f, dq + off + (size_t)i0 * ldq, ldq);
            gemm_1t(1, 0, w, D, bq, 1.0f, dS, w, Qb, ldq, 1.0f, dK, ldk);
            gemm_1t(1, 0, w, D, bq, 1.0f, P, w, dOb, ldq, 1.0f, dV, ldk);
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
    const int64_t *order;
    size_t per;
    float *scratch = attention_scratch(&order, &per, be, cu, ndocs, 2);
    zero_outside(dq, cu, ndocs, N, (size_t)H * D);
    zero_outside(dk, cu, ndocs, N, (size_t)KVH * D);
    zero_outside(dv, cu, ndocs, N, (size_t)KVH * D);
    #pragma omp parallel
    {
        float *P = scratch + (size_t)omp_get_thread_num() * per;  // (ATT_BQ, longest) twice
        float *dS = P + per / 2;
        #pragma omp for schedule(dynamic, 1)
        for (long t = 0; t < (long)ndocs * KVH; t++) {
            int d = (int)(order[t / KVH] & 0xffffffff), g = (int)(t % KVH);
            if (cu[d + 1] > cu[d])
                bwd_doc_group(dq, dk, dv, P, dS, dout, q, k, v, out, lse, cu[d],
                              cu[d + 1] - cu[d], g, H, KVH, D, scale);
        }
    }
}
