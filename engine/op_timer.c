#include "op_timer.h"

#include <string.h>

#include "common.h"

#define ES_OP_TIMER_NAME(op) #op,
const char *const es_op_names[ES_OP_COUNT] = {ES_OP_TIMER_OPS(ES_OP_TIMER_NAME)};
#undef ES_OP_TIMER_NAME

// The wrappers receive only the backend: the attached timer is found here.
static es_op_timer *g_timer;

static double op_begin(es_backend *be) {
    g_timer->orig.sync(be);
    return es_now();
}

static void op_end(es_backend *be, es_op_id op, double t0, double flops) {
    g_timer->orig.sync(be);
    g_timer->seconds[op] += es_now() - t0;
    g_timer->calls[op]++;
    g_timer->flops[op] += flops;
}

// TIMED(op, flops, call args...) runs the original op between op_begin and op_end.
#define TIMED(op, fl, ...)                       \
    do {                                         \
        double t0_ = op_begin(be);               \
        g_timer->orig.op(be, __VA_ARGS__);       \
        op_end(be, ES_OP_##op, t0_, (fl));       \
    } while (0)

static void w_upload(es_backend *be, void *dst, const void *src, size_t n, es_dtype dt) {
    TIMED(upload, 0, dst, src, n, dt);
}
static void w_upload_async(es_backend *be, void *dst, const void *src, size_t n, es_dtype dt) {
    TIMED(upload_async, 0, dst, src, n, dt);
}
static void w_download(es_backend *be, void *dst, const void *src, size_t n, es_dtype dt) {
    TIMED(download, 0, dst, src, n, dt);
}
static void w_zero(es_backend *be, void *p, size_t n, es_dtype dt) { TIMED(zero, 0, p, n, dt); }
static void w_embed_fwd(es_backend *be, void *out, const void *tokens, const void *pos, const void *wte,
                        const void *wpe, int N, int C) {
    TIMED(embed_fwd, 0, out, tokens, pos, wte, wpe, N, C);
}
static void w_embed_bwd(es_backend *be, void *dwte, void *dwpe, const void *dout, const void *tokens,
                        const void *pos, int N, int C) {
    TIMED(embed_bwd, 0, dwte, dwpe, dout, tokens, pos, N, C);
}
static void w_matmul_fwd(es_backend *be, void *out, const void *inp, const void *w, const void *bias, int N,
                         int C, int OC) {
    TIMED(matmul_fwd, 2.0 * N * C * OC, out, inp, w, bias, N, C, OC);
}
static void w_matmul_bwd(es_backend *be, void *dinp, void *dw, void *dbias, const void *dout, const void *inp,
                         const void *w, int N, int C, int OC, int accumulate) {
    double fl = 2.0 * N * C * OC * ((dinp != NULL) + (dw != NULL));
    TIMED(matmul_bwd, fl, dinp, dw, dbias, dout, inp, w, N, C, OC, accumulate);
}
static void w_rmsnorm_fwd(es_backend *be, void *out, float *rstd, const void *inp, const void *w, int N, int C,
                          float eps) {
    TIMED(rmsnorm_fwd, 0, out, rstd, inp, w, N, C, eps);
}
static void w_rmsnorm_bwd(es_backend *be, void *dinp, void *dw, const void *dout, const void *inp, const void *w,
                          const float *rstd, int N, int C, int accumulate) {
    TIMED(rmsnorm_bwd, 0, dinp, dw, dout, inp, w, rstd, N, C, accumulate);
}
static void w_add_rmsnorm_fwd(es_backend *be, void *res, void *out, float *rstd, const void *a, const void *b,
                              const void *w, int N, int C, float eps) {
    TIMED(add_rmsnorm_fwd, 0, res, out, rstd, a, b, w, N, C, eps);
}
static void w_layernorm_fwd(es_backend *be, void *out, float *mean, float *rstd, const void *inp, const void *w,
                            const void *b, int N, int C, float eps) {
    TIMED(layernorm_fwd, 0, out, mean, rstd, inp, w, b, N, C, eps);
}
static void w_layernorm_bwd(es_backend *be, void *dinp, void *dw, void *db, const void *dout, const void *inp,
                            const void *w, const float *mean, const float *rstd, int N, int C, int accumulate) {
    TIMED(layernorm_bwd, 0, dinp, dw, db, dout, inp, w, mean, rstd, N, C, accumulate);
}
static void w_rope_fwd(es_backend *be, void *out, const void *inp, const void *pos, const float *inv_freq,
                       int N, int H, int D) {
    TIMED(rope_fwd, 0, out, inp, pos, inv_freq, N, H, D);
}
static void w_rope_bwd(es_backend *be, void *dinp, const void *dout, const void *pos, const float *inv_freq,
                       int N, int H, int D) {
    TIMED(rope_bwd, 0, dinp, dout, pos, inv_freq, N, H, D);
}
static void w_qkv_fwd(es_backend *be, void *q, void *k, void *v, float *q_rstd, float *k_rstd, const void *qkv,
                      const void *q_norm, const void *k_norm, const void *pos, const float *inv_freq, int N, int H,
                      int KVH, int D, float eps) {
    TIMED(qkv_fwd, 0, q, k, v, q_rstd, k_rstd, qkv, q_norm, k_norm, pos, inv_freq, N, H, KVH, D, eps);
}
static void w_qkv_bwd(es_backend *be, void *dqkv, void *dq_norm, void *dk_norm, const void *dq, const void *dk,
                      const void *dv, const void *qkv, const void *q_norm, const void *k_norm, const float *q_rstd,
                      const float *k_rstd, const void *pos, const float *inv_freq, int N, int H, int KVH, int D) {
    TIMED(qkv_bwd, 0, dqkv, dq_norm, dk_norm, dq, dk, dv, qkv, q_norm, k_norm, q_rstd, k_rstd, pos, inv_freq, N, H,
          KVH, D);
}
static void w_attention_fwd(es_backend *be, void *out, float *lse, const void *q, const void *k, const void *v,
                            const void *cu, int ndocs, int N, int H, int KVH, int D) {
    TIMED(attention_fwd, 0, out, lse, q, k, v, cu, ndocs, N, H, KVH, D);
}
static void w_attention_bwd(es_backend *be, void *dq, void *dk, void *dv, const void *dout, const void *q,
                            const void *k, const void *v, const void *out, const float *lse, const void *cu,
                            int ndocs, int N, int H, int KVH, int D) {
    TIMED(attention_bwd, 0, dq, dk, dv, dout, q, k, v, out, lse, cu, ndocs, N, H, KVH, D);
}
static void w_swiglu_fwd(es_backend *be, void *out, const void *gu, int N, int F) {
    TIMED(swiglu_fwd, 0, out, gu, N, F);
}
static void w_swiglu_bwd(es_backend *be, void *dgu, const void *dout, const void *gu, int N, int F) {
    TIMED(swiglu_bwd, 0, dgu, dout, gu, N, F);
}
static void w_gelu_fwd(es_backend *be, void *out, const void *inp, size_t n) { TIMED(gelu_fwd, 0, out, inp, n); }
static void w_gelu_bwd(es_backend *be, void *dinp, const void *dout, const void *inp, size_t n) {
    TIMED(gelu_bwd, 0, dinp, dout, inp, n);
}
static void w_add(es_backend *be, void *out, const void *a, const void *b, size_t n) { TIMED(add, 0, out, a, b, n); }
static void w_gather_rows(es_backend *be, void *out, const void *inp, const void *rows, int M, int C) {
    TIMED(gather_rows, 0, out, inp, rows, M, C);
}
static void w_scatter_add_rows(es_backend *be, void *dinp, const void *dout, const void *rows, int M, int C) {
    TIMED(scatter_add_rows, 0, dinp, dout, rows, M, C);
}
static void w_distill_loss(es_backend *be, double *sums, void *logits, const void *tlogits, const void *targets,
                           const void *weights, int M, int V, float alpha, float tau, float grad_scale) {
    TIMED(distill_loss, 0, sums, logits, tlogits, targets, weights, M, V, alpha, tau, grad_scale);
}
static void w_distill_loss_topk(es_backend *be, double *sums, void *logits, const void *tids, const void *tlogp,
                                const void *targets, const void *weights, int M, int V, int K, float alpha,
                                float grad_scale) {
    TIMED(distill_loss_topk, 0, sums, logits, tids, tlogp, targets, weights, M, V, K, alpha, grad_scale);
}
static void w_sumsq(es_backend *be, double *out, const float *x, size_t n) { TIMED(sumsq, 0, out, x, n); }
static void w_count_nonfinite(es_backend *be, float *out, const double *x, size_t n) {
    TIMED(count_nonfinite, 0, out, x, n);
}
static void w_adamw(es_backend *be, void *params, float *master, const float *grads, float *m, float *v,
                    const void *segs, int nsegs, size_t n, const double *sumsq, const float *skip,
                    const es_adamw_args *a) {
    TIMED(adamw, 0, params, master, grads, m, v, segs, nsegs, n, sumsq, skip, a);
}

int es_op_timer_attach(es_op_timer *t, es_backend *be) {
    if (g_timer) return es_fail("op timer: another timer is attached to backend %s", g_timer->be->name);
    memset(t, 0, sizeof *t);
    t->be = be;
    t->orig = *be;
    g_timer = t;
    // an op the backend lacks (NULL) stays NULL
#define ES_OP_TIMER_WRAP(op) \
    if (be->op) be->op = w_##op;
    ES_OP_TIMER_OPS(ES_OP_TIMER_WRAP)
#undef ES_OP_TIMER_WRAP
    return ES_OK;
}

void es_op_timer_detach(es_op_timer *t) {
    if (g_timer != t) return;
#define ES_OP_TIMER_RESTORE(op) t->be->op = t->orig.op;
    ES_OP_TIMER_OPS(ES_OP_TIMER_RESTORE)
#undef ES_OP_TIMER_RESTORE
    g_timer = NULL;
}

void es_op_timer_reset(es_op_timer *t) {
    memset(t->seconds, 0, sizeof t->seconds);
    memset(t->calls, 0, sizeof t->calls);
    memset(t->flops, 0, sizeof t->flops);
}

double es_op_timer_total(const es_op_timer *t) {
    double s = 0;
    for (int i = 0; i < ES_OP_COUNT; i++) s += t->seconds[i];
    return s;
}
