// The CPU backend's kernels (fp32, OpenMP) and its private state. The table in
// cpu_backend.c points at these; their signatures are those of es_backend.
#pragma once
#include <stddef.h>

#include "backend.h"

typedef struct {
    float *scratch;  // grow-only workspace, so hot paths do not allocate
    size_t scratch_n;
    struct cpu_lowp *lowp;  // packed decode weights, sorted by their fp32 matrix (cpu_lowp.c)
    int nlowp, cap_lowp;
} cpu_ctx;

// At least n floats of the backend's scratch buffer (contents undefined).
float *cpu_scratch(es_backend *be, size_t n);

// C (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C, row-major;
// op transposes when ta/tb is set. BLAS when built with it.
void cpu_sgemm(es_backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc);

// Measured sgemm rate in FLOP/s (a few milliseconds of square products).
double cpu_sgemm_rate(es_backend *be);

// es_backend.pack_weights. cpu_lowp_drop releases the packed copies of the
// matrices inside [p, p + bytes) (a buffer being freed), cpu_lowp_free all.
int cpu_pack_weights(es_backend *be, const void *w, int OC, int C, es_wfmt fmt);
void cpu_lowp_drop(es_backend *be, const void *p, size_t bytes);
void cpu_lowp_free(es_backend *be);
// out (N, OC) = inp (N, C) @ w^T + bias from w's packed copy, when w has one
// and N is a decode-sized batch: returns 1; otherwise 0 and nothing is done.
int cpu_lowp_matmul(es_backend *be, float *out, const float *inp, const void *w, const float *bias,
                    int N, int C, int OC);

void cpu_matmul_fwd(es_backend *be, void *out, const void *inp, const void *w, const void *bias,
                    int N, int C, int OC);
void cpu_matmul_bwd(es_backend *be, void *dinp, void *dw, void *dbias, const void *dout,
                    const void *inp, const void *w, int N, int C, int OC, int accumulate);

void cpu_rmsnorm_fwd(es_backend *be, void *out, float *rstd, const void *inp, const void *w, int N,
                     int C, float eps);
void cpu_rmsnorm_bwd(es_backend *be, void *dinp, void *dw, const void *dout, const void *inp,
                     const void *w, const float *rstd, int N, int C, int accumulate);
// One row of RMSNorm: y (C) = x / rms(x) * w; returns the row's rstd.
float cpu_rms_row(float *y, const float *x, const float *w, int C, float eps);
// rmsnorm_bwd over N rows of C that come in groups of `per` rows, groups `gs`
// floats apart (per = 1, gs = C: contiguous rows), alike in dinp, dout and
// inp. dinp may be dout.
void cpu_rmsnorm_bwd_rows(float *dinp, float *dw, const float *dout, const float *inp,
                          const float *w, const float *rstd, int N, int C, int per, size_t gs,
                          int accumulate);
void cpu_add_rmsnorm_fwd(es_backend *be, void *res, void *out, float *rstd, const void *a,
                         const void *b, const void *w, int N, int C, float eps);
void cpu_layernorm_fwd(es_backend *be, void *out, float *mean, float *rstd, const void *inp,
                       const void *w, const void *b, int N, int C, float eps);
void cpu_layernorm_bwd(es_backend *be, void *dinp, void *dw, void *db, const void *dout,
                       const void *inp, const void *w, const float *mean, const float *rstd, int N,
                       int C, int accumulate);

void cpu_rope_fwd(es_backend *be, void *out, const void *inp, const void *pos,
                  const float *inv_freq, int N, int H, int D);
void cpu_rope_bwd(es_backend *be, void *dinp, const void *dout, const void *pos,
                  const float *inv_freq, int N, int H, int D);
// The rotation of one token's H heads of D at position p (sign -1: the
// inverse); in place allowed.
void cpu_rope_token(float *out, const float *inp, float p, const float *inv_freq, int H, int D,
                    float sign);
void cpu_qkv_fwd(es_backend *be, void *q, void *k, void *v, float *q_rstd, float *k_rstd,
                 const void *qkv, const void *q_norm, const void *k_norm, const void *pos,
                 const float *inv_freq, int N, int H, int KVH, int D, float eps);
void cpu_qkv_bwd(es_backend *be, void *dqkv, void *dq_norm, void *dk_norm, const void *dq,
                 const void *dk, const void *dv, const void *qkv, const void *q_norm,
                 const void *k_norm, const float *q_rstd, const float *k_rstd, const void *pos,
                 const float *inv_freq, int N, int H, int KVH, int D);

void cpu_attention_fwd(es_backend *be, void *out, float *lse, const void *q, const void *k,
                       const void *v, const void *cu_seqlens, int ndocs, int N, int H, int KVH,
                       int D);
void cpu_attention_bwd(es_backend *be, void *dq, void *dk, void *dv, const void *dout,
                       const void *q, const void *k, const void *v, const void *out,
                       const float *lse, const void *cu_seqlens, int ndocs, int N, int H, int KVH,
                       int D);

void cpu_embed_fwd(es_backend *be, void *out, const void *tokens, const void *pos, const void *wte,
                   const void *wpe, int N, int C);
void cpu_embed_bwd(es_backend *be, void *dwte, void *dwpe, const void *dout, const void *tokens,
                   const void *pos, int N, int C);
void cpu_swiglu_fwd(es_backend *be, void *out, const void *gu, int N, int F);
void cpu_swiglu_bwd(es_backend *be, void *dgu, const void *dout, const void *gu, int N, int F);
void cpu_gelu_fwd(es_backend *be, void *out, const void *inp, size_t n);
void cpu_gelu_bwd(es_backend *be, void *dinp, const void *dout, const void *inp, size_t n);
void cpu_add(es_backend *be, void *out, const void *a, const void *b, size_t n);
void cpu_gather_rows(es_backend *be, void *out, const void *inp, const void *rows, int M, int C);
void cpu_scatter_add_rows(es_backend *be, void *dinp, const void *dout, const void *rows, int M,
                          int C);

void cpu_distill_loss(es_backend *be, double *sums, void *logits, const void *tlogits,
                      const void *targets, const void *weights, int M, int V, float alpha,
                      float tau, float grad_scale);
void cpu_distill_loss_topk(es_backend *be, double *sums, void *logits, const void *tids,
                           const void *tlogp, const void *targets, const void *weights, int M,
                           int V, int K, float alpha, float grad_scale);

void cpu_sumsq(es_backend *be, double *out, const float *x, size_t n);
void cpu_count_nonfinite(es_backend *be, float *out, const double *x, size_t n);
void cpu_adamw(es_backend *be, void *params, float *master, const float *grads, float *m, float *v,
               const void *segs, int nsegs, size_t n, const double *sumsq, const float *skip,
               const es_adamw_args *a);

// Fills the collectives (MPI) of the table; leaves them NULL without MPI.
void cpu_fill_comm(es_backend *be);

void cpu_kv_append(es_backend *be, void *kcache, void *vcache, const void *k, const void *v,
                   const void *rows, int N, int W);
void cpu_attention_decode(es_backend *be, void *out, const void *q, const void *kcache,
                          const void *vcache, const void *start, const void *len, int B, int H,
                          int KVH, int D, int max_len);
