// Matmuls through cuBLASLt: bf16 inputs, fp32 accumulation, bias epilogue;
// weight gradients land in fp32 buffers with beta = 1 so micro-batches add up.
//
// Row-major (R, K) is column-major (K, R), so every row-major product here is
// issued as its column-major transpose: out^T = w * inp^T and so on.
#include <stdint.h>
#include <string.h>

#include "cuda_common.cuh"

// Largest power of two (up to 256) dividing the address: cuBLASLt's heuristic
// otherwise assumes 256-byte alignment, which offset pointers need not have.
static uint32_t align_of(const void *p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;
    while (al > 1 && (a % al)) al >>= 1;
    return al;
}

// One matmul shape's cuBLASLt descriptors and the algorithm the heuristic
// chose for it. A training step issues a few dozen distinct shapes thousands
// of times: building the descriptors and asking the heuristic once per shape
// takes that host work out of every call.
typedef struct {
    int m, n, k, ta, tb, lda, ldb, bias;
    cudaDataType_t dtype_d;
    uint32_t align[3];  // of A, B, D: the heuristic's choice depends on them
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulAlgo_t algo;
} lt_plan;

// Far more than the shapes of one model's step (forward, backward, LM-head
// chunks and their tail); when full, the oldest plan is replaced.
#define LT_PLANS 128

struct cuda_lt_plans {
    lt_plan plan[LT_PLANS];
    int n, next;
};

static void plan_destroy(lt_plan *p) {
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->la));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->lb));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->ld));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(p->op));
}

void cuda_matmul_destroy(es_backend *be) {
    cuda_lt_plans *ps = cuda_of(be)->lt_plans;
    if (!ps) return;
    for (int i = 0; i < ps->n; i++) plan_destroy(&ps->plan[i]);
    free(ps);
    cuda_of(be)->lt_plans = NULL;
}

// Descriptors for the key in *p (its fields up to `align` set), and the heuristic's algorithm.
static void plan_build(cuda_ctx *c, lt_plan *p) {
    cublasOperation_t opa = p->ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = p->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    if (p->bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType_t bt = CUDA_R_16BF;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
    }
    // Stored shapes: a transposed operand is stored with its dims swapped.
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->la, CUDA_R_16BF, p->ta ? p->k : p->m, p->ta ? p->m : p->k, p->lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_16BF, p->tb ? p->n : p->k, p->tb ? p->k : p->n, p->ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->ld, p->dtype_d, p->m, p->n, p->m));

    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &c->lt_workspace_bytes, sizeof c->lt_workspace_bytes));
    const cublasLtMatmulPreferenceAttributes_t which[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    const uint32_t al[4] = {p->align[0], p->align[1], p->align[2], p->align[2]};
    for (int i = 0; i < 4; i++)
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, which[i], &al[i], sizeof al[i]));
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->la, p->lb, p->ld, p->ld, pref, 1, &res, &found));
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    CUDA_REQUIRE(found > 0, "cuda matmul: cuBLASLt has no algorithm for m=%d n=%d k=%d", p->m, p->n, p->k);
    p->algo = res.algo;
}

static int plan_matches(const lt_plan *a, const lt_plan *b) {
    return a->m == b->m && a->n == b->n && a->k == b->k && a->ta == b->ta && a->tb == b->tb &&
           a->lda == b->lda && a->ldb == b->ldb && a->bias == b->bias && a->dtype_d == b->dtype_d &&
           a->align[0] == b->align[0] && a->align[1] == b->align[1] && a->align[2] == b->align[2];
}

static lt_plan *plan_for(cuda_ctx *c, const lt_plan *key) {
    if (!c->lt_plans) {
        c->lt_plans = (cuda_lt_plans *)calloc(1, sizeof *c->lt_plans);
        CUDA_REQUIRE(c->lt_plans, "cuda matmul: out of host memory for the plan cache");
    }
    cuda_lt_plans *ps = c->lt_plans;
    for (int i = 0; i < ps->n; i++)
        if (plan_matches(&ps->plan[i], key)) return &ps->plan[i];
    lt_plan *p;
    if (ps->n < LT_PLANS) {
        p = &ps->plan[ps->n++];
    } else {
        p = &ps->plan[ps->next];
        ps->next = (ps->next + 1) % LT_PLANS;
        plan_destroy(p);
    }
    *p = *key;
    plan_build(c, p);
    return p;
}

// D (m, n) col-major, ld m = alpha * op(A) op(B) + beta * D, op(A) (m, k), op(B) (k, n).
// A/B bf16; D bf16 or fp32; bias (m) bf16 added by the epilogue when given.
static void lt_matmul(cuda_ctx *c, void *D, cudaDataType_t dtype_d, const void *A, int ta,
                      int lda, const void *B, int tb, int ldb, const void *bias, int m, int n,
                      int k, float beta) {
    lt_plan key;
    memset(&key, 0, sizeof key);
    key.m = m;
    key.n = n;
    key.k = k;
    key.ta = ta;
    key.tb = tb;
    key.lda = lda;
    key.ldb = ldb;
    key.bias = bias != NULL;
    key.dtype_d = dtype_d;
    key.align[0] = align_of(A);
    key.align[1] = align_of(B);
    key.align[2] = align_of(D);
    lt_plan *p = plan_for(c, &key);
    // The bias differs from layer to layer; the rest of the descriptor does not.
    if (bias)
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    float alpha = 1.0f;
    CUBLAS_CHECK(cublasLtMatmul(c->lt, p->op, &alpha, A, p->la, B, p->lb, &beta, D, p->ld, D, p->ld, &p->algo,
                                c->lt_workspace, c->lt_workspace_bytes, c->stream));
}

// out (N, OC) += bias (OC), for a bias the epilogue cannot read.
__global__ void add_bias_kernel(bf16 *out, const bf16 *bias, int N, int OC) {
    size_t n = (size_t)N * OC;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = tobf(bf(out[i]) + bf(bias[i % OC]));
}

static void cuda_matmul_fwd(es_backend *be, void *out, const void *inp, const void *w,
                            const void *bias, int N, int C, int OC) {
    cuda_ctx *c = cuda_of(be);
    if (N <= 0 || OC <= 0) return;
    // The alignment preferences do not cover the epilogue's bias, and its
    // kernels may read it 16 bytes at a time: a bias at an offset into the
    // parameters that is less aligned is added separately.
    int fused = bias && align_of(bias) >= 16;
    // out^T (OC, N) = w (C, OC)^T-stored-as-col-major^T . inp^T (C, N)
    lt_matmul(c, out, CUDA_R_16BF, w, 1, C, inp, 0, C, fused ? bias : NULL, OC, N, C, 0.0f);
    if (bias && !fused) {
        add_bias_kernel<<<cuda_blocks((size_t)N * OC, 256), 256, 0, c->stream>>>(
            (bf16 *)out, (const bf16 *)bias, N, OC);
        LAUNCH_CHECK();
    }
}

// dbias (OC) += column sums of dout (N, OC); rows split across grid.y, fp32 atomics.
#define COLSUM_ROWS 64
__global__ void colsum_kernel(float *dbias, const bf16 *dout, int N, int OC) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= OC) return;
    int r0 = blockIdx.y * COLSUM_ROWS, r1 = min(N, r0 + COLSUM_ROWS);
    float s = 0.0f;
    for (int r = r0; r < r1; r++) s += bf(dout[(size_t)r * OC + col]);
    atomicAdd(dbias + col, s);
}

static void cuda_matmul_bwd(es_backend *be, void *dinp, void *dw, void *dbias, const void *dout,
                            const void *inp, const void *w, int N, int C, int OC, int accumulate) {
    cuda_ctx *c = cuda_of(be);
    if (N <= 0 || OC <= 0 || C <= 0) return;
    // dinp^T (C, N) = w^T-as-stored (C, OC) . dout^T (OC, N)
    if (dinp)
        lt_matmul(c, dinp, CUDA_R_16BF, w, 0, C, dout, 0, OC, NULL, C, N, OC,
                  accumulate ? 1.0f : 0.0f);
    // dw^T (C, OC) += inp^T (C, N) . dout (N, OC); NULL as on the CPU backend
    if (dw) lt_matmul(c, dw, CUDA_R_32F, inp, 0, C, dout, 1, OC, NULL, C, OC, N, 1.0f);
    if (dbias) {
        dim3 grid((OC + 255) / 256, (N + COLSUM_ROWS - 1) / COLSUM_ROWS);
        colsum_kernel<<<grid, 256, 0, c->stream>>>((float *)dbias, (const bf16 *)dout, N, OC);
        LAUNCH_CHECK();
    }
}

void cuda_fill_matmul(es_backend *be) {
    be->matmul_fwd = cuda_matmul_fwd;
    be->matmul_bwd = cuda_matmul_bwd;
}
