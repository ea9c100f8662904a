// Matmuls through cuBLASLt: bf16 inputs, fp32 accumulation, bias epilogue;
// weight gradients land in fp32 buffers with beta = 1 so micro-batches add up.
//
// Row-major (R, K) is column-major (K, R), so every row-major product here is
// issued as its column-major transpose: out^T = w * inp^T and so on.
#include <stdint.h>

#include "cuda_common.cuh"

// Largest power of two (up to 256) dividing the address: cuBLASLt's heuristic
// otherwise assumes 256-byte alignment, which offset pointers need not have.
static uint32_t align_of(const void *p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;
    while (al > 1 && (a % al)) al >>= 1;
    return al;
}

// D (m, n) col-major, ld m = alpha * op(A) op(B) + beta * D, op(A) (m, k), op(B) (k, n).
// A/B bf16; D bf16 or fp32; bias (m) bf16 added by the epilogue when given.
static void lt_matmul(cuda_ctx *c, void *D, cudaDataType_t dtype_d, const void *A, int ta,
                      int lda, const void *B, int tb, int ldb, const void *bias, int m, int n,
                      int k, float beta) {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    if (bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType_t bt = CUDA_R_16BF;
        CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                    sizeof bias));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt,
                                                    sizeof bt));
    }
    // Stored shapes: a transposed operand is stored with its dims swapped.
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, ta ? k : m, ta ? m : k, lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, tb ? n : k, tb ? k : n, ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld, dtype_d, m, n, m));

    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &c->lt_workspace_bytes,
        sizeof c->lt_workspace_bytes));
    uint32_t al[4] = {align_of(A), align_of(B), align_of(D), align_of(D)};
    const cublasLtMatmulPreferenceAttributes_t which[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; i++)
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, which[i], &al[i], sizeof al[i]));

    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    CUBLAS_CHECK(
        cublasLtMatmulAlgoGetHeuristic(c->lt, op, la, lb, ld, ld, pref, 1, &res, &found));
    CUDA_REQUIRE(found > 0, "cuda matmul: cuBLASLt has no algorithm for m=%d n=%d k=%d", m, n, k);
    float alpha = 1.0f;
    CUBLAS_CHECK(cublasLtMatmul(c->lt, op, &alpha, A, la, B, lb, &beta, D, ld, D, ld, &res.algo,
                                c->lt_workspace, c->lt_workspace_bytes, c->stream));
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(la));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lb));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(ld));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(op));
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
