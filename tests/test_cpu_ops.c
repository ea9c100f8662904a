// Every operation of the CPU backend against a naive double-precision
// reference, and every backward against central finite differences of a
// random projection L = sum(out * R) (or against an analytic reference).
#include <stdint.h>
#include <string.h>

#include "backend.h"
#include "common.h"
#include "test.h"

static es_backend *be;
static es_rng rng;

// ---- buffers: all from the backend, freed together after each test ---------
#define MAX_BUFS 256
static void *bufs[MAX_BUFS];
static int nbufs;

static void *track(void *p) {
    if (!p || nbufs == MAX_BUFS) {
        fprintf(stderr, "test_cpu_ops: allocation failed: %s\n", es_last_error());
        exit(1);
    }
    return bufs[nbufs++] = p;
}

static float *fbuf(size_t n) { return track(be->alloc(be, n, ES_DT_F32, ES_MEM_ACTS)); }
static int32_t *ibuf(size_t n) { return track(be->alloc(be, n, ES_DT_I32, ES_MEM_INDEX)); }

static float *frand(size_t n, float scale) {
    float *p = fbuf(n);
    for (size_t i = 0; i < n; i++) p[i] = scale * es_rng_normal(&rng);
    return p;
}

static float *fnan(size_t n) {
    float *p = fbuf(n);
    t_poison(p, n);
    return p;
}

static float *fcopy(const float *x, size_t n) {
    float *p = fbuf(n);
    memcpy(p, x, n * sizeof(float));
    return p;
}

static void free_all(void) {
    while (nbufs) be->free(be, bufs[--nbufs]);
    CHECK(be->mem_now_total == 0, "tally not back to 0: %zu bytes", be->mem_now_total);
}

static double proj(const float *out, const float *R, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)out[i] * R[i];
    return s;
}

// Relative error of fp32 values against a double reference, taken against
// at least `floor` where the reference is near zero.
static double rel_err_df(const float *a, const double *ref, size_t n, double floor) {
    float *r = es_xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) r[i] = (float)ref[i];
    double e = t_rel_err(a, r, n, floor);
    free(r);
    return e;
}

static double rel_err_d(const float *a, const double *ref, size_t n) { return rel_err_df(a, ref, n, 1e-6); }

static double max_abs_d(const double *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

// Central differences of f over x (n), into num (n). f reads x.
typedef double (*loss_fn)(void);
static void fd_grad(float *num, float *x, size_t n, float eps, loss_fn f) {
    for (size_t i = 0; i < n; i++) {
        float x0 = x[i];
        x[i] = x0 + eps;
        double lp = f();
        x[i] = x0 - eps;
        double lm = f();
        x[i] = x0;
        num[i] = (float)((lp - lm) / (2.0 * eps));
    }
}

#define FD_TOL 1e-2

static void check_fd(const char *what, const float *grad, float *x, size_t n, float eps, loss_fn f) {
    float *num = es_xmalloc(n * sizeof(float));
    fd_grad(num, x, n, eps, f);
    double e = t_rel_err(grad, num, n, 1e-3);
    CHECK(e < FD_TOL, "%s: gradient vs finite differences rel err %.3g", what, e);
    free(num);
}

// ---- memory -----------------------------------------------------------------
static void test_memory(void) {
    size_t now0 = be->mem_now_total;
    float *w = be->alloc(be, 100, ES_DT_COMPUTE, ES_MEM_WEIGHTS);
    float *g = be->alloc(be, 30, ES_DT_F32, ES_MEM_GRADS);
    int32_t *ix = be->alloc(be, 7, ES_DT_I32, ES_MEM_INDEX);
    CHECK(w && g && ix, "alloc failed: %s", es_last_error());
    CHECK(((uintptr_t)w % 64) == 0 && ((uintptr_t)g % 64) == 0 && ((uintptr_t)ix % 64) == 0,
          "buffers not 64-byte aligned");
    CHECK(be->mem_now[ES_MEM_WEIGHTS] == 400 && be->mem_now[ES_MEM_GRADS] == 120 &&
              be->mem_now[ES_MEM_INDEX] == 28 && be->mem_now[ES_MEM_ACTS] == 0,
          "per-kind tally %zu %zu %zu", be->mem_now[ES_MEM_WEIGHTS], be->mem_now[ES_MEM_GRADS],
          be->mem_now[ES_MEM_INDEX]);
    CHECK(be->mem_now_total == now0 + 548, "total %zu", be->mem_now_total);
    be->free(be, g);
    float *a = be->alloc(be, 10, ES_DT_COMPUTE, ES_MEM_ACTS);
    CHECK(be->mem_now_total == now0 + 468, "total after free %zu", be->mem_now_total);
    CHECK(be->mem_peak_total == now0 + 548, "peak total %zu", be->mem_peak_total);
    CHECK(be->mem_peak[ES_MEM_GRADS] == 120 && be->mem_now[ES_MEM_GRADS] == 0, "grads peak/now");

    // upload/download round trip, zero, offset
    float host[100], back[100];
    for (int i = 0; i < 100; i++) host[i] = es_rng_normal(&rng);
    be->upload(be, w, host, 100, ES_DT_COMPUTE);
    t_poison(back, 100);
    be->download(be, back, w, 100, ES_DT_COMPUTE);
    CHECK(!memcmp(host, back, sizeof host), "upload/download round trip");
    be->zero(be, be->offset(be, w, 10, ES_DT_COMPUTE), 20, ES_DT_COMPUTE);
    be->download(be, back, w, 100, ES_DT_COMPUTE);
    int ok = 1;
    for (int i = 0; i < 100; i++) ok &= (i >= 10 && i < 30) ? back[i] == 0.0f : back[i] == host[i];
    CHECK(ok, "zero at offset touched the wrong elements");
    int32_t ihost[7] = {3, -1, 7, 1 << 30, 0, 5, 2}, iback[7];
    be->upload(be, ix, ihost, 7, ES_DT_I32);
    be->download(be, iback, ix, 7, ES_DT_I32);
    CHECK(!memcmp(ihost, iback, sizeof ihost), "int32 round trip");
    be->sync(be);

    be->free(be, w);
    be->free(be, ix);
    be->free(be, a);
    be->free(be, NULL);
    CHECK(be->mem_now_total == now0, "total back to start: %zu", be->mem_now_total);
    for (int k = 0; k < ES_MEM_KINDS; k++) CHECK(be->mem_now[k] == 0, "kind %d not 0", k);
    CHECK(be->mem_peak[ES_MEM_WEIGHTS] == 400, "weights peak kept after free");
    CHECK(be->compute_is_f32 == 1 && be->peak_flops > 0, "cpu backend: fp32 compute, peak measured");
}

// ---- matmul -----------------------------------------------------------------
static struct { float *out, *inp, *w, *b, *R; int N, C, OC; } mm;

static double mm_loss(void) {
    be->matmul_fwd(be, mm.out, mm.inp, mm.w, mm.b, mm.N, mm.C, mm.OC);
    return proj(mm.out, mm.R, (size_t)mm.N * mm.OC);
}

static void matmul_ref(double *out, const float *inp, const float *w, const float *b, int N, int C,
                       int OC) {
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) {
            double s = b ? b[o] : 0.0;
            for (int c = 0; c < C; c++) s += (double)inp[i * C + c] * w[o * C + c];
            out[i * OC + o] = s;
        }
}

static void test_matmul_shape(int N, int C, int OC, int fd) {
    size_t nout = (size_t)N * OC;
    float *inp = frand((size_t)N * C, 1), *w = frand((size_t)OC * C, 0.5f), *b = frand(OC, 1);
    float *out = fnan(nout);
    double *ref = es_xmalloc(nout * sizeof(double));
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        t_poison(out, nout);
        be->matmul_fwd(be, out, inp, w, with_bias ? b : NULL, N, C, OC);
        matmul_ref(ref, inp, w, with_bias ? b : NULL, N, C, OC);
        double e = rel_err_d(out, ref, nout);
        CHECK(e < 1e-5, "matmul_fwd N=%d C=%d OC=%d bias=%d rel err %.3g", N, C, OC, with_bias, e);
    }
    free(ref);

    // backward: exact references in double; dw/dbias accumulate onto what is there
    float *dout = frand(nout, 1), *dinp = fnan((size_t)N * C);
    float *dw0 = frand((size_t)OC * C, 1), *db0 = frand(OC, 1);
    float *dw = fcopy(dw0, (size_t)OC * C), *db = fcopy(db0, OC);
    be->matmul_bwd(be, dinp, dw, db, dout, inp, w, N, C, OC, 0);
    double *rdi = es_xmalloc(sizeof(double) * N * C), *rdw = es_xmalloc(sizeof(double) * OC * C);
    double *rdb = es_xmalloc(sizeof(double) * OC);
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) {
            double s = 0;
            for (int o = 0; o < OC; o++) s += (double)dout[i * OC + o] * w[o * C + c];
            rdi[i * C + c] = s;
        }
    for (int o = 0; o < OC; o++) {
        double sb = db0[o];
        for (int i = 0; i < N; i++) sb += dout[i * OC + o];
        rdb[o] = sb;
        for (int c = 0; c < C; c++) {
            double s = dw0[o * C + c];
            for (int i = 0; i < N; i++) s += (double)dout[i * OC + o] * inp[i * C + c];
            rdw[o * C + c] = s;
        }
    }
    double e1 = rel_err_d(dinp, rdi, (size_t)N * C), e2 = rel_err_d(dw, rdw, (size_t)OC * C);
    double e3 = rel_err_d(db, rdb, OC);
    CHECK(e1 < 1e-5 && e2 < 1e-5 && e3 < 1e-5, "matmul_bwd N=%d C=%d OC=%d: %.3g %.3g %.3g", N, C,
          OC, e1, e2, e3);

    // accumulate = 1 adds into dinp; dinp NULL and dbias NULL are allowed
    float *dinp0 = frand((size_t)N * C, 1), *dinp2 = fcopy(dinp0, (size_t)N * C);
    be->matmul_bwd(be, dinp2, NULL, NULL, dout, inp, w, N, C, OC, 1);
    for (size_t i = 0; i < (size_t)N * C; i++) rdi[i] += dinp0[i];
    e1 = rel_err_d(dinp2, rdi, (size_t)N * C);
    CHECK(e1 < 1e-5, "matmul_bwd accumulate rel err %.3g", e1);
    float *dw3 = fcopy(dw0, (size_t)OC * C);
    be->matmul_bwd(be, NULL, dw3, NULL, dout, inp, w, N, C, OC, 0);
    e2 = rel_err_d(dw3, rdw, (size_t)OC * C);
    CHECK(e2 < 1e-5, "matmul_bwd with dinp NULL rel err %.3g", e2);
    free(rdi);
    free(rdw);
    free(rdb);

    if (fd) {  // the gradient of the projection loss, from zeroed accumulators
        mm.out = out; mm.inp = inp; mm.w = w; mm.b = b; mm.N = N; mm.C = C; mm.OC = OC;
        mm.R = frand(nout, 1);
        float *gi = fnan((size_t)N * C), *gw = fbuf((size_t)OC * C), *gb = fbuf(OC);
        be->zero(be, gw, (size_t)OC * C, ES_DT_F32);
        be->zero(be, gb, OC, ES_DT_F32);
        be->matmul_bwd(be, gi, gw, gb, mm.R, inp, w, N, C, OC, 0);
        check_fd("matmul dinp", gi, inp, (size_t)N * C, 1e-2f, mm_loss);
        check_fd("matmul dw", gw, w, (size_t)OC * C, 1e-2f, mm_loss);
        check_fd("matmul dbias", gb, b, OC, 1e-2f, mm_loss);
    }
    free_all();
}

static void test_matmul(void) {
    test_matmul_shape(5, 7, 6, 1);
    test_matmul_shape(67, 300, 130, 0);  // past the blocking sizes, odd remainders
}

// ---- rmsnorm / layernorm ---------------------------------------------------------
static struct { float *out, *mean, *rstd, *inp, *w, *b, *R; int N, C, layer; } nm;

static double norm_loss(void) {
    if (nm.layer)
        be->layernorm_fwd(be, nm.out, nm.mean, nm.rstd, nm.inp, nm.w, nm.b, nm.N, nm.C, 1e-5f);
    else
        be->rmsnorm_fwd(be, nm.out, nm.rstd, nm.inp, nm.w, nm.N, nm.C, 1e-6f);
    return proj(nm.out, nm.R, (size_t)nm.N * nm.C);
}

static void test_norm(int layer, int N, int C) {
    size_t n = (size_t)N * C;
    float *inp = frand(n, 1.5f), *w = frand(C, 1), *b = frand(C, 1);
    for (int i = 0; i < N; i++) inp[i * C] += 0.7f;  // nonzero mean
    float *out = fnan(n), *mean = fnan(N), *rstd = fnan(N);
    nm.out = out; nm.mean = mean; nm.rstd = rstd; nm.inp = inp; nm.w = w; nm.b = b;
    nm.N = N; nm.C = C; nm.layer = layer; nm.R = frand(n, 1);
    norm_loss();
    double *ref = es_xmalloc(n * sizeof(double)), *rr = es_xmalloc(N * sizeof(double));
    double *rm = es_xmalloc(N * sizeof(double));
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        double mu = 0, var = 0;
        if (layer) {
            for (int c = 0; c < C; c++) mu += x[c];
            mu /= C;
        }
        for (int c = 0; c < C; c++) var += (x[c] - mu) * (x[c] - mu);
        double r = 1.0 / sqrt(var / C + (layer ? 1e-5 : 1e-6));
        for (int c = 0; c < C; c++) ref[i * C + c] = (x[c] - mu) * r * w[c] + (layer ? b[c] : 0.0);
        rr[i] = r;
        rm[i] = mu;
    }
    const char *name = layer ? "layernorm" : "rmsnorm";
    CHECK(rel_err_d(out, ref, n) < 1e-5, "%s_fwd rel err %.3g", name, rel_err_d(out, ref, n));
    CHECK(rel_err_d(rstd, rr, N) < 1e-5, "%s rstd rel err", name);
    if (layer) CHECK(rel_err_d(mean, rm, N) < 1e-5, "%s mean rel err", name);
    free(ref);
    free(rr);
    free(rm);

    float *dinp = fnan(n), *dw0 = frand(C, 1), *db0 = frand(C, 1);
    float *dw = fcopy(dw0, C), *db = fcopy(db0, C);
    if (layer)
        be->layernorm_bwd(be, dinp, dw, db, nm.R, inp, w, mean, rstd, N, C, 0);
    else
        be->rmsnorm_bwd(be, dinp, dw, nm.R, inp, w, rstd, N, C, 0);
    for (int c = 0; c < C; c++) {
        dw[c] -= dw0[c];  // accumulated onto dw0: the difference is this call's gradient
        db[c] -= db0[c];
    }
    check_fd(layer ? "layernorm dinp" : "rmsnorm dinp", dinp, inp, n, 1e-2f, norm_loss);
    check_fd(layer ? "layernorm dw" : "rmsnorm dw", dw, w, C, 1e-2f, norm_loss);
    if (layer) check_fd("layernorm db", db, b, C, 1e-2f, norm_loss);

    // accumulate = 1 adds the same gradient onto what dinp holds
    norm_loss();  // restore mean/rstd for the unperturbed input
    float *base = frand(n, 1), *dacc = fcopy(base, n);
    float *dwx = fbuf(C), *dbx = fbuf(C);
    if (layer)
        be->layernorm_bwd(be, dacc, dwx, dbx, nm.R, inp, w, mean, rstd, N, C, 1);
    else
        be->rmsnorm_bwd(be, dacc, dwx, nm.R, inp, w, rstd, N, C, 1);
    for (size_t i = 0; i < n; i++) dacc[i] -= base[i];
    double e = t_rel_err(dacc, dinp, n, 1e-6);
    CHECK(e < 1e-5, "%s_bwd accumulate rel err %.3g", name, e);
    free_all();
}

// ---- rope ---------------------------------------------------------------------
static struct { float *out, *inp, *R, *inv_freq; int32_t *pos; int N, H, D; } rp;

static double rope_loss(void) {
    be->rope_fwd(be, rp.out, rp.inp, rp.pos, rp.inv_freq, rp.N, rp.H, rp.D);
    return proj(rp.out, rp.R, (size_t)rp.N * rp.H * rp.D);
}

// The fused residual add + RMSNorm against the unfused composition of the
// existing ops (add, then rmsnorm_fwd of the sum): equal bit for bit, which
// recomputation relies on; also with res written over a (in place).
static void test_add_rmsnorm(int N, int C) {
    size_t n = (size_t)N * C;
    float *a = frand(n, 1.5f), *b = frand(n, 1.0f), *w = frand(C, 1);
    float *res = fnan(n), *out = fnan(n), *rstd = fnan(N);
    float *rres = fnan(n), *rout = fnan(n), *rrstd = fnan(N);
    be->add_rmsnorm_fwd(be, res, out, rstd, a, b, w, N, C, 1e-6f);
    be->add(be, rres, a, b, n);
    be->rmsnorm_fwd(be, rout, rrstd, rres, w, N, C, 1e-6f);
    CHECK(!memcmp(res, rres, n * sizeof(float)) && !memcmp(out, rout, n * sizeof(float)) &&
              !memcmp(rstd, rrstd, N * sizeof(float)),
          "add_rmsnorm_fwd N=%d C=%d differs from add + rmsnorm_fwd", N, C);
    t_poison(out, n);
    t_poison(rstd, N);
    be->add_rmsnorm_fwd(be, a, out, rstd, a, b, w, N, C, 1e-6f);
    CHECK(!memcmp(a, rres, n * sizeof(float)) && !memcmp(out, rout, n * sizeof(float)) &&
              !memcmp(rstd, rrstd, N * sizeof(float)),
          "add_rmsnorm_fwd N=%d C=%d in place differs", N, C);
    free_all();
}

static void test_rope(void) {
    const int N = 6, H = 3, D = 16, half = D / 2;
    const float theta = 10000.0f;
    size_t n = (size_t)N * H * D;
    int32_t *pos = ibuf(N);
    const int32_t positions[6] = {0, 1, 7, 130, 4095, 31999};
    memcpy(pos, positions, sizeof positions);
    // The default frequencies 1 / theta^(2j/D), every third one scaled down as
    // a rope scaling does: the op must rotate by the table, not by theta.
    float *inv_freq = fbuf(half);
    double *inv_d = es_xmalloc(half * sizeof(double));
    for (int j = 0; j < half; j++) {
        inv_freq[j] = 1.0f / powf(theta, (float)(2 * j) / (float)D) / (j % 3 ? 1.0f : 4.0f);
        inv_d[j] = pow(theta, -2.0 * j / D) / (j % 3 ? 1.0 : 4.0);
    }
    float *inp = frand(n, 1), *out = fnan(n);
    be->rope_fwd(be, out, inp, pos, inv_freq, N, H, D);
    // transformers forms the angle in float: angle = pos * inv_freq
    double *ref = es_xmalloc(n * sizeof(double)), *refd = es_xmalloc(n * sizeof(double));
    for (int i = 0; i < N; i++)
        for (int j = 0; j < half; j++) {
            double a = (double)((float)pos[i] * inv_freq[j]);
            double ad = pos[i] * inv_d[j];
            for (int h = 0; h < H; h++) {
                size_t o = ((size_t)i * H + h) * D;
                double x1 = inp[o + j], x2 = inp[o + j + half];
                ref[o + j] = x1 * cos(a) - x2 * sin(a);
                ref[o + j + half] = x2 * cos(a) + x1 * sin(a);
                refd[o + j] = x1 * cos(ad) - x2 * sin(ad);
                refd[o + j + half] = x2 * cos(ad) + x1 * sin(ad);
            }
        }
    double e = rel_err_d(out, ref, n);
    CHECK(e < 2e-6, "rope_fwd vs transformers' angle rel err %.3g", e);
    // positions up to 130 round the same in float and double angles
    double ed = rel_err_d(out, refd, (size_t)4 * H * D);
    CHECK(ed < 1e-5, "rope_fwd small positions vs double angles rel err %.3g", ed);
    free(ref);
    free(refd);
    free(inv_d);

    // backward is the inverse rotation: bwd(fwd(x)) == x, in place allowed
    float *x = fcopy(out, n);
    be->rope_bwd(be, x, x, pos, inv_freq, N, H, D);
    e = t_rel_err(x, inp, n, 1e-6);
    CHECK(e < 1e-5, "rope_bwd(rope_fwd(x)) != x: rel err %.3g", e);
    float *y = fcopy(inp, n);
    be->rope_fwd(be, y, y, pos, inv_freq, N, H, D);
    CHECK(!memcmp(y, out, n * sizeof(float)), "rope_fwd in place differs from out of place");

    rp.out = out; rp.inp = inp; rp.pos = pos; rp.N = N; rp.H = H; rp.D = D; rp.R = frand(n, 1);
    rp.inv_freq = inv_freq;
    float *dinp = fnan(n);
    be->rope_bwd(be, dinp, rp.R, pos, inv_freq, N, H, D);
    check_fd("rope dinp", dinp, inp, n, 1e-2f, rope_loss);
    free_all();
}

// ---- the fused QKV split, qk-norm and rope ------------------------------------
static struct { float *q, *k, *v, *qr, *kr, *qkv, *qn, *kn, *inv_freq, *Rq, *Rk, *Rv; int32_t *pos; int N, H, KVH, D; } qk;

static double qkv_loss(void) {
    be->qkv_fwd(be, qk.q, qk.k, qk.v, qk.qr, qk.kr, qk.qkv, qk.qn, qk.kn, qk.pos, qk.inv_freq, qk.N, qk.H,
                qk.KVH, qk.D, 1e-6f);
    size_t nq = (size_t)qk.N * qk.H * qk.D, nk = (size_t)qk.N * qk.KVH * qk.D;
    return proj(qk.q, qk.Rq, nq) + proj(qk.k, qk.Rk, nk) + proj(qk.v, qk.Rv, nk);
}

// The fused op against the composition it replaces: the fused rows split
// into q, k, v, rmsnorm_fwd per head (with norm), rope_fwd; backward as
// rope_bwd, rmsnorm_bwd, and the three gradients put back side by side. The
// CPU op runs the same arithmetic, so they agree exactly; and finite
// differences of the fused op.
static void test_qkv_case(int norm) {
    const int N = 5, H = 4, KVH = 2, D = 16, QD = H * D, KD = KVH * D, W = QD + 2 * KD;
    const float eps = 1e-6f;
    size_t nq = (size_t)N * QD, nk = (size_t)N * KD, nw = (size_t)N * W;
    int32_t *pos = ibuf(N);
    const int32_t positions[5] = {0, 3, 1, 700, 2};
    memcpy(pos, positions, sizeof positions);
    float *inv_freq = fbuf(D / 2);
    for (int j = 0; j < D / 2; j++) inv_freq[j] = powf(10000.0f, -2.0f * j / D);
    float *qkv = frand(nw, 1), *qn = norm ? frand(D, 1) : NULL, *kn = norm ? frand(D, 1) : NULL;
    float *q = fnan(nq), *k = fnan(nk), *v = fnan(nk), *qr = norm ? fnan((size_t)N * H) : NULL;
    float *kr = norm ? fnan((size_t)N * KVH) : NULL;
    be->qkv_fwd(be, q, k, v, qr, kr, qkv, qn, kn, pos, inv_freq, N, H, KVH, D, eps);
    // the composition
    float *rq = fbuf(nq), *rk = fbuf(nk), *rv = fbuf(nk), *sq = fbuf(nq), *sk = fbuf(nk);
    float *rqr = fbuf((size_t)N * H), *rkr = fbuf((size_t)N * KVH);
    for (int i = 0; i < N; i++) {
        memcpy(sq + (size_t)i * QD, qkv + (size_t)i * W, QD * sizeof(float));
        memcpy(sk + (size_t)i * KD, qkv + (size_t)i * W + QD, KD * sizeof(float));
        memcpy(rv + (size_t)i * KD, qkv + (size_t)i * W + QD + KD, KD * sizeof(float));
    }
    if (norm) {
        be->rmsnorm_fwd(be, rq, rqr, sq, qn, N * H, D, eps);
        be->rmsnorm_fwd(be, rk, rkr, sk, kn, N * KVH, D, eps);
    } else {
        memcpy(rq, sq, nq * sizeof(float));
        memcpy(rk, sk, nk * sizeof(float));
    }
    be->rope_fwd(be, rq, rq, pos, inv_freq, N, H, D);
    be->rope_fwd(be, rk, rk, pos, inv_freq, N, KVH, D);
    int same = !memcmp(q, rq, nq * 4) && !memcmp(k, rk, nk * 4) && !memcmp(v, rv, nk * 4);
    if (norm) same &= !memcmp(qr, rqr, (size_t)N * H * 4) && !memcmp(kr, rkr, (size_t)N * KVH * 4);
    CHECK(same, "qkv_fwd norm=%d differs from split + rmsnorm_fwd + rope_fwd", norm);

    // backward
    float *dq = frand(nq, 1), *dk = frand(nk, 1), *dv = frand(nk, 1), *dqkv = fnan(nw);
    float *dqn = norm ? frand(D, 1) : NULL, *dkn = norm ? frand(D, 1) : NULL;
    float *dqn0 = norm ? fcopy(dqn, D) : NULL, *dkn0 = norm ? fcopy(dkn, D) : NULL;
    be->qkv_bwd(be, dqkv, dqn, dkn, dq, dk, dv, norm ? qkv : NULL, qn, kn, qr, kr, pos, inv_freq, N, H, KVH,
                D);
    float *gq = fbuf(nq), *gk = fbuf(nk), *xq = fbuf(nq), *xk = fbuf(nk), *ref = fbuf(nw);
    be->rope_bwd(be, gq, dq, pos, inv_freq, N, H, D);
    be->rope_bwd(be, gk, dk, pos, inv_freq, N, KVH, D);
    if (norm) {
        be->rmsnorm_bwd(be, xq, dqn0, gq, sq, qn, rqr, N * H, D, 0);
        be->rmsnorm_bwd(be, xk, dkn0, gk, sk, kn, rkr, N * KVH, D, 0);
    } else {
        memcpy(xq, gq, nq * 4);
        memcpy(xk, gk, nk * 4);
    }
    for (int i = 0; i < N; i++) {
        memcpy(ref + (size_t)i * W, xq + (size_t)i * QD, QD * sizeof(float));
        memcpy(ref + (size_t)i * W + QD, xk + (size_t)i * KD, KD * sizeof(float));
        memcpy(ref + (size_t)i * W + QD + KD, dv + (size_t)i * KD, KD * sizeof(float));
    }
    same = !memcmp(dqkv, ref, nw * 4);
    if (norm) same &= !memcmp(dqn, dqn0, D * 4) && !memcmp(dkn, dkn0, D * 4);
    CHECK(same, "qkv_bwd norm=%d differs from rope_bwd + rmsnorm_bwd + concatenation", norm);

    // finite differences of the fused op: the input, then the norm weights
    qk.q = q; qk.k = k; qk.v = v; qk.qr = qr; qk.kr = kr; qk.qkv = qkv; qk.qn = qn; qk.kn = kn; qk.pos = pos;
    qk.inv_freq = inv_freq; qk.N = N; qk.H = H; qk.KVH = KVH; qk.D = D; qk.Rq = dq; qk.Rk = dk; qk.Rv = dv;
    check_fd("qkv dqkv", dqkv, qkv, nw, 1e-2f, qkv_loss);
    if (norm) {
        float *gqn = fbuf(D), *gkn = fbuf(D);  // the gradients alone: from zero
        memset(gqn, 0, D * sizeof(float));
        memset(gkn, 0, D * sizeof(float));
        be->qkv_bwd(be, dqkv, gqn, gkn, dq, dk, dv, qkv, qn, kn, qr, kr, pos, inv_freq, N, H, KVH, D);
        check_fd("qkv dq_norm", gqn, qn, D, 1e-2f, qkv_loss);
        check_fd("qkv dk_norm", gkn, kn, D, 1e-2f, qkv_loss);
    }
    free_all();
}

static void test_qkv(void) {
    test_qkv_case(1);
    test_qkv_case(0);
}

// ---- attention --------------------------------------------------------------
static struct {
    float *out, *lse, *q, *k, *v, *R;
    int32_t *cu;
    int ndocs, N, H, KVH, D;
} at;

static double attn_loss(void) {
    be->attention_fwd(be, at.out, at.lse, at.q, at.k, at.v, at.cu, at.ndocs, at.N, at.H, at.KVH,
                      at.D);
    return proj(at.out, at.R, (size_t)at.N * at.H * at.D);
}

// The references hold one document's scores on the stack.
enum { REF_MAX_DOC = 512 };

static void attention_ref(double *out, double *lse, const float *q, const float *k,
                          const float *v, const int32_t *cu, int ndocs, int H, int KVH, int D) {
    double scale = 1.0 / sqrt((double)D);
    for (int d = 0; d < ndocs; d++)
        for (int i = cu[d]; i < cu[d + 1]; i++)
            for (int h = 0; h < H; h++) {
                int g = h / (H / KVH);
                const float *qi = q + ((size_t)i * H + h) * D;
                double mx = -INFINITY, sum = 0, s[REF_MAX_DOC];
                for (int j = cu[d]; j <= i; j++) {
                    double dot = 0;
                    for (int e = 0; e < D; e++) dot += (double)qi[e] * k[((size_t)j * KVH + g) * D + e];
                    s[j - cu[d]] = dot * scale;
                    if (s[j - cu[d]] > mx) mx = s[j - cu[d]];
                }
                double *o = out + ((size_t)i * H + h) * D;
                for (int e = 0; e < D; e++) o[e] = 0;
                for (int j = cu[d]; j <= i; j++) {
                    double p = exp(s[j - cu[d]] - mx);
                    sum += p;
                    for (int e = 0; e < D; e++) o[e] += p * v[((size_t)j * KVH + g) * D + e];
                }
                for (int e = 0; e < D; e++) o[e] /= sum;
                lse[(size_t)i * H + h] = mx + log(sum);
            }
}

// Analytic backward in double: dS = P (dP - rowsum(P dP)), dP = dout v^T.
static void attention_bwd_ref(double *dq, double *dk, double *dv, const float *dout, const float *q,
                              const float *k, const float *v, const int32_t *cu, int ndocs, int N,
                              int H, int KVH, int D) {
    double scale = 1.0 / sqrt((double)D);
    memset(dq, 0, sizeof(double) * N * H * D);
    memset(dk, 0, sizeof(double) * N * KVH * D);
    memset(dv, 0, sizeof(double) * N * KVH * D);
    for (int d = 0; d < ndocs; d++)
        for (int i = cu[d]; i < cu[d + 1]; i++)
            for (int h = 0; h < H; h++) {
                int g = h / (H / KVH), a = cu[d];
                const float *qi = q + ((size_t)i * H + h) * D, *doi = dout + ((size_t)i * H + h) * D;
                double p[REF_MAX_DOC], dp[REF_MAX_DOC], mx = -INFINITY, z = 0, rd = 0;
                for (int j = a; j <= i; j++) {
                    double s = 0, t = 0;
                    for (int e = 0; e < D; e++) {
                        s += (double)qi[e] * k[((size_t)j * KVH + g) * D + e];
                        t += (double)doi[e] * v[((size_t)j * KVH + g) * D + e];
                    }
                    p[j - a] = s * scale;
                    dp[j - a] = t;
                    mx = fmax(mx, p[j - a]);
                }
                for (int j = a; j <= i; j++) z += p[j - a] = exp(p[j - a] - mx);
                for (int j = a; j <= i; j++) rd += (p[j - a] /= z) * dp[j - a];
                for (int j = a; j <= i; j++) {
                    double ds = p[j - a] * (dp[j - a] - rd);
                    for (int e = 0; e < D; e++) {
                        size_t kj = ((size_t)j * KVH + g) * D + e;
                        dq[((size_t)i * H + h) * D + e] += scale * ds * k[kj];
                        dk[kj] += scale * ds * qi[e];
                        dv[kj] += p[j - a] * doi[e];
                    }
                }
            }
}

static void test_attention_case(const int *lens, int ndocs, int H, int KVH, int D, int fd) {
    int N = 0;
    int32_t *cu = ibuf(ndocs + 1);
    cu[0] = 0;
    for (int d = 0; d < ndocs; d++) cu[d + 1] = N += lens[d];
    size_t nq = (size_t)N * H * D, nkv = (size_t)N * KVH * D;
    float *q = frand(nq, 1), *k = frand(nkv, 1), *v = frand(nkv, 1);
    float *out = fnan(nq), *lse = fnan((size_t)N * H);
    at.out = out; at.lse = lse; at.q = q; at.k = k; at.v = v; at.cu = cu; at.ndocs = ndocs;
    at.N = N; at.H = H; at.KVH = KVH; at.D = D; at.R = frand(nq, 1);
    attn_loss();
    double *ro = es_xmalloc(nq * sizeof(double)), *rl = es_xmalloc((size_t)N * H * sizeof(double));
    attention_ref(ro, rl, q, k, v, cu, ndocs, H, KVH, D);
    double e1 = rel_err_d(out, ro, nq), e2 = rel_err_d(lse, rl, (size_t)N * H);
    CHECK(e1 < 1e-5 && e2 < 1e-5, "attention_fwd N=%d H=%d KVH=%d D=%d: out %.3g lse %.3g", N, H,
          KVH, D, e1, e2);
    free(ro);
    free(rl);

    float *dq = fnan(nq), *dk = fnan(nkv), *dv = fnan(nkv);
    be->attention_bwd(be, dq, dk, dv, at.R, q, k, v, out, lse, cu, ndocs, N, H, KVH, D);
    double *rq = es_xmalloc(nq * sizeof(double)), *rk = es_xmalloc(nkv * sizeof(double));
    double *rv = es_xmalloc(nkv * sizeof(double));
    attention_bwd_ref(rq, rk, rv, at.R, q, k, v, cu, ndocs, N, H, KVH, D);
    // dq and dk are exactly zero where every document is one token long, so
    // their errors are taken against the gradients' scale (dv's), not 1e-6.
    const double gfloor = max_abs_d(rv, nkv) > 1e-6 ? max_abs_d(rv, nkv) : 1e-6;
    e1 = rel_err_df(dq, rq, nq, gfloor);
    e2 = rel_err_df(dk, rk, nkv, gfloor);
    double e3 = rel_err_d(dv, rv, nkv);
    CHECK(e1 < 1e-5 && e2 < 1e-5 && e3 < 1e-5, "attention_bwd N=%d: dq %.3g dk %.3g dv %.3g", N, e1,
          e2, e3);
    free(rq);
    free(rk);
    free(rv);
    if (fd) {
        check_fd("attention dq", dq, q, nq, 1e-2f, attn_loss);
        check_fd("attention dk", dk, k, nkv, 1e-2f, attn_loss);
        check_fd("attention dv", dv, v, nkv, 1e-2f, attn_loss);
    }

    // documents are isolated: changing one token of document 0 leaves the
    // outputs and gradients of every other document bit-identical
    if (ndocs > 1) {
        attn_loss();
        float *out0 = fcopy(out, nq), *lse0 = fcopy(lse, (size_t)N * H);
        be->attention_bwd(be, dq, dk, dv, at.R, q, k, v, out, lse, cu, ndocs, N, H, KVH, D);
        float *dq0 = fcopy(dq, nq), *dk0 = fcopy(dk, nkv);
        int t = cu[1] - 1;  // last token of document 0
        for (int e = 0; e < H * D; e++) q[(size_t)t * H * D + e] += 0.5f;
        for (int e = 0; e < KVH * D; e++) {
            k[(size_t)t * KVH * D + e] -= 0.3f;
            v[(size_t)t * KVH * D + e] += 0.7f;
        }
        attn_loss();
        be->attention_bwd(be, dq, dk, dv, at.R, q, k, v, out, lse, cu, ndocs, N, H, KVH, D);
        size_t a = (size_t)cu[1];
        CHECK(!memcmp(out + a * H * D, out0 + a * H * D, (nq - a * H * D) * sizeof(float)) &&
                  !memcmp(lse + a * H, lse0 + a * H, ((size_t)N * H - a * H) * sizeof(float)),
              "attention: a change in document 0 altered other documents' outputs");
        CHECK(!memcmp(dq + a * H * D, dq0 + a * H * D, (nq - a * H * D) * sizeof(float)) &&
                  !memcmp(dk + a * KVH * D, dk0 + a * KVH * D, (nkv - a * KVH * D) * sizeof(float)),
              "attention: a change in document 0 altered other documents' gradients");
        CHECK(memcmp(out, out0, a * H * D * sizeof(float)) != 0, "document 0 output did not change");
    }
    free_all();
}

static void test_attention(void) {
    const int packed[4] = {5, 1, 7, 3};  // one document of length 1
    test_attention_case(packed, 4, 4, 2, 8, 1);
    const int one[1] = {1};
    test_attention_case(one, 1, 2, 1, 4, 1);
    const int mha[3] = {3, 1, 4};
    test_attention_case(mha, 3, 2, 2, 20, 1);  // D not a multiple of the vector width
    const int longer[2] = {60, 33};
    test_attention_case(longer, 2, 4, 1, 32, 0);
    const int blocks[3] = {200, 130, 1};  // several query blocks per document, and a diagonal block cut short
    test_attention_case(blocks, 3, 4, 2, 16, 0);
}

// ---- pointwise ------------------------------------------------------------------
static void test_embed(void) {
    const int N = 9, C = 70, V = 5, P = 6;
    float *wte = frand((size_t)V * C, 1), *wpe = frand((size_t)P * C, 1), *out = fnan((size_t)N * C);
    int32_t *tok = ibuf(N), *pos = ibuf(N);
    for (int i = 0; i < N; i++) {
        tok[i] = (int32_t)(es_rng_u64(&rng) % V);
        pos[i] = i % P;
    }
    tok[1] = tok[4] = tok[7];  // repeated tokens must accumulate
    for (int with_pe = 0; with_pe < 2; with_pe++) {
        t_poison(out, (size_t)N * C);
        be->embed_fwd(be, out, tok, pos, wte, with_pe ? wpe : NULL, N, C);
        int ok = 1;
        for (int i = 0; i < N; i++)
            for (int c = 0; c < C; c++)
                ok &= out[i * C + c] ==
                      wte[tok[i] * C + c] + (with_pe ? wpe[pos[i] * C + c] : 0.0f);
        CHECK(ok, "embed_fwd with_pe=%d", with_pe);
    }
    float *dout = frand((size_t)N * C, 1), *dwte0 = frand((size_t)V * C, 1), *dwpe0 = frand((size_t)P * C, 1);
    float *dwte = fcopy(dwte0, (size_t)V * C), *dwpe = fcopy(dwpe0, (size_t)P * C);
    be->embed_bwd(be, dwte, dwpe, dout, tok, pos, N, C);
    double *rw = es_xmalloc(sizeof(double) * V * C), *rp2 = es_xmalloc(sizeof(double) * P * C);
    for (int i = 0; i < V * C; i++) rw[i] = dwte0[i];
    for (int i = 0; i < P * C; i++) rp2[i] = dwpe0[i];
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) {
            rw[tok[i] * C + c] += dout[i * C + c];
            rp2[pos[i] * C + c] += dout[i * C + c];
        }
    CHECK(rel_err_d(dwte, rw, (size_t)V * C) < 1e-6 && rel_err_d(dwpe, rp2, (size_t)P * C) < 1e-6,
          "embed_bwd accumulation");
    float *dwte2 = fcopy(dwte0, (size_t)V * C);
    be->embed_bwd(be, dwte2, NULL, dout, tok, pos, N, C);
    CHECK(rel_err_d(dwte2, rw, (size_t)V * C) < 1e-6, "embed_bwd without wpe");
    free(rw);
    free(rp2);
    free_all();
}

static struct { float *out, *a, *R; size_t n; int N, F, gelu; } pw;

static double pw_loss(void) {
    if (pw.gelu)
        be->gelu_fwd(be, pw.out, pw.a, pw.n);
    else
        be->swiglu_fwd(be, pw.out, pw.a, pw.N, pw.F);
    return proj(pw.out, pw.R, pw.n);
}

// SwiGLU over fused gate|up rows against the unfused formula on the split
// halves g, u (double references); GELU on g.
static void test_activations(void) {
    const int N = 7, F = 29;
    const size_t n = (size_t)N * F;
    float *gu = fbuf(2 * n), *g = fbuf(n), *u = fbuf(n), *out = fnan(n);
    for (size_t e = 0; e < n; e++) {
        size_t at = e / F * 2 * F + e % F;
        gu[at] = g[e] = 2.0f * es_rng_normal(&rng);
        gu[at + F] = u[e] = es_rng_normal(&rng);
    }
    gu[0] = g[0] = -30.0f;  // far tails stay finite
    gu[1] = g[1] = 30.0f;
    double *ref = es_xmalloc(n * sizeof(double));
    be->swiglu_fwd(be, out, gu, N, F);
    for (size_t i = 0; i < n; i++) ref[i] = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
    CHECK(rel_err_d(out, ref, n) < 1e-6, "swiglu_fwd rel err %.3g", rel_err_d(out, ref, n));
    const double k = sqrt(2.0 / M_PI);
    t_poison(out, n);
    be->gelu_fwd(be, out, g, n);
    for (size_t i = 0; i < n; i++) {
        double x = g[i];
        ref[i] = 0.5 * x * (1.0 + tanh(k * (x + 0.044715 * x * x * x)));
    }
    CHECK(rel_err_d(out, ref, n) < 1e-6, "gelu_fwd rel err %.3g", rel_err_d(out, ref, n));

    pw.out = out; pw.a = gu; pw.n = n; pw.N = N; pw.F = F; pw.R = frand(n, 1);
    float *dgu = fnan(2 * n), *dg = fbuf(n), *du = fbuf(n);
    // analytic double references for the derivatives as well
    be->swiglu_bwd(be, dgu, pw.R, gu, N, F);
    for (size_t e = 0; e < n; e++) {
        size_t at = e / F * 2 * F + e % F;
        dg[e] = dgu[at];
        du[e] = dgu[at + F];
    }
    double *rg = es_xmalloc(n * sizeof(double)), *ru = es_xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        double x = g[i], s = 1.0 / (1.0 + exp(-x));
        rg[i] = pw.R[i] * u[i] * (s + x * s * (1 - s));
        ru[i] = pw.R[i] * x * s;
    }
    CHECK(rel_err_d(dg, rg, n) < 1e-5 && rel_err_d(du, ru, n) < 1e-5, "swiglu_bwd vs analytic");
    pw.gelu = 0;
    check_fd("swiglu dgate|dup", dgu, gu, 2 * n, 1e-3f, pw_loss);
    t_poison(dg, n);
    pw.a = g;
    be->gelu_bwd(be, dg, pw.R, g, n);
    for (size_t i = 0; i < n; i++) {
        double x = g[i], t = tanh(k * (x + 0.044715 * x * x * x));
        rg[i] = pw.R[i] * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x));
    }
    CHECK(rel_err_d(dg, rg, n) < 1e-5, "gelu_bwd vs analytic %.3g", rel_err_d(dg, rg, n));
    pw.gelu = 1;
    check_fd("gelu dinp", dg, g, n, 1e-3f, pw_loss);
    free(ref);
    free(rg);
    free(ru);

    // add, also in place
    float *a = frand(n, 1), *b = frand(n, 1), *s = fnan(n);
    be->add(be, s, a, b, n);
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= s[i] == a[i] + b[i];
    be->add(be, a, a, b, n);
    CHECK(ok && !memcmp(a, s, n * sizeof(float)), "add (and in place)");
    free_all();
}

static void test_rows(void) {
    const int R = 8, M = 6, C = 130;
    float *inp = frand((size_t)R * C, 1), *out = fnan((size_t)M * C);
    int32_t *rows = ibuf(M);
    const int32_t sel[6] = {7, 0, 3, 3, 5, 0};  // repeats must add up in the scatter
    memcpy(rows, sel, sizeof sel);
    be->gather_rows(be, out, inp, rows, M, C);
    int ok = 1;
    for (int i = 0; i < M; i++) ok &= !memcmp(out + i * C, inp + sel[i] * C, C * sizeof(float));
    CHECK(ok, "gather_rows");
    float *base = frand((size_t)R * C, 1), *d = fcopy(base, (size_t)R * C), *dout = frand((size_t)M * C, 1);
    be->scatter_add_rows(be, d, dout, rows, M, C);
    double *ref = es_xmalloc(sizeof(double) * R * C);
    for (int i = 0; i < R * C; i++) ref[i] = base[i];
    for (int i = 0; i < M; i++)
        for (int c = 0; c < C; c++) ref[sel[i] * C + c] += dout[i * C + c];
    CHECK(rel_err_d(d, ref, (size_t)R * C) < 1e-6, "scatter_add_rows");
    free(ref);
    free_all();
}

// ---- distillation loss ------------------------------------------------------------
static struct { float *s, *t, *w, *scratch; int32_t *tgt; int M, V; float alpha, tau; } dl;

static double loss_only(void) {
    double sums[2] = {0, 0};
    memcpy(dl.scratch, dl.s, sizeof(float) * dl.M * dl.V);
    be->distill_loss(be, sums, dl.scratch, dl.t, dl.tgt, dl.w, dl.M, dl.V, dl.alpha, dl.tau, 1.0f);
    float a = dl.t ? dl.alpha : 1.0f;
    return (double)a * sums[0] + (1.0 - a) * sums[1];
}

// Double reference: sums and d(loss)/d(logits) * gs.
static void distill_ref(double sums[2], double *grad, const float *s, const float *t,
                        const int32_t *tgt, const float *w, int M, int V, double alpha, double tau,
                        double gs) {
    double a = t ? alpha : 1.0;
    sums[0] = sums[1] = 0;
    for (int r = 0; r < M; r++) {
        const float *sr = s + (size_t)r * V, *tr = t ? t + (size_t)r * V : NULL;
        double *gr = grad + (size_t)r * V;
        if (w[r] == 0) {
            for (int v = 0; v < V; v++) gr[v] = 0;
            continue;
        }
        double mx = -INFINITY, z = 0;
        for (int v = 0; v < V; v++) mx = fmax(mx, sr[v]);
        for (int v = 0; v < V; v++) z += exp(sr[v] - mx);
        double lse = mx + log(z);
        sums[0] += w[r] * (lse - sr[tgt[r]]);
        for (int v = 0; v < V; v++) gr[v] = w[r] * gs * a * (exp(sr[v] - lse) - (v == tgt[r]));
        if (!tr) continue;
        double ms = -INFINITY, mt = -INFINITY, zs = 0, zt = 0, kl = 0;
        for (int v = 0; v < V; v++) {
            ms = fmax(ms, sr[v] / tau);
            mt = fmax(mt, tr[v] / tau);
        }
        for (int v = 0; v < V; v++) {
            zs += exp(sr[v] / tau - ms);
            zt += exp(tr[v] / tau - mt);
        }
        for (int v = 0; v < V; v++) {
            double lq = sr[v] / tau - ms - log(zs), lp = tr[v] / tau - mt - log(zt);
            kl += exp(lp) * (lp - lq);
            gr[v] += w[r] * gs * (1 - a) * tau * (exp(lq) - exp(lp));
        }
        sums[1] += w[r] * tau * tau * kl;
    }
}

static void test_distill_case(int teacher, float alpha, float tau, float offset) {
    const int M = 5, V = 13;
    size_t n = (size_t)M * V;
    float *s = frand(n, 2), *t = frand(n, 3), *w = fbuf(M), *g = fbuf(n);
    for (size_t i = 0; i < n; i++) {  // large logits must not overflow
        s[i] += offset;
        t[i] += offset;
    }
    int32_t *tgt = ibuf(M);
    const float weights[5] = {1.0f, 0.0f, 0.5f, 2.0f, 1.0f};
    memcpy(w, weights, sizeof weights);
    for (int r = 0; r < M; r++) tgt[r] = (int32_t)(es_rng_u64(&rng) % V);
    memcpy(g, s, n * sizeof(float));
    double sums[2] = {0.25, -1.0};  // sums accumulate
    const float gs = 0.37f;
    be->distill_loss(be, sums, g, teacher ? t : NULL, tgt, w, M, V, alpha, tau, gs);
    double rs[2], *rg = es_xmalloc(n * sizeof(double));
    distill_ref(rs, rg, s, teacher ? t : NULL, tgt, w, M, V, alpha, tau, gs);
    double e = rel_err_d(g, rg, n);
    CHECK(e < 1e-5, "distill_loss grad teacher=%d alpha=%g tau=%g rel err %.3g", teacher, alpha,
          tau, e);
    CHECK(fabs(sums[0] - 0.25 - rs[0]) < 1e-5 * fmax(1, fabs(rs[0])) + 1e-3 * (offset != 0),
          "ce sum %g vs %g", sums[0] - 0.25, rs[0]);
    CHECK(fabs(sums[1] + 1.0 - rs[1]) < 1e-5 * fmax(1, fabs(rs[1])) + 1e-3 * (offset != 0),
          "kd sum %g vs %g", sums[1] + 1.0, rs[1]);
    int zero = 1;
    for (int v = 0; v < V; v++) zero &= g[V + v] == 0.0f;
    CHECK(zero, "row with weight 0 must have zero gradient");
    if (offset == 0.0f) {  // finite differences of the loss itself
        dl.s = s; dl.t = teacher ? t : NULL; dl.w = w; dl.tgt = tgt; dl.M = M; dl.V = V;
        dl.alpha = alpha; dl.tau = tau; dl.scratch = fbuf(n);
        for (size_t i = 0; i < n; i++) g[i] /= gs;
        check_fd("distill_loss dlogits", g, s, n, 1e-2f, loss_only);
    }
    free(rg);
    free_all();
}

static void test_distill(void) {
    test_distill_case(1, 0.5f, 1.0f, 0.0f);
    test_distill_case(1, 0.3f, 2.0f, 0.0f);
    test_distill_case(1, 0.0f, 0.7f, 0.0f);
    test_distill_case(0, 0.3f, 2.0f, 0.0f);  // without a teacher alpha is 1
    test_distill_case(1, 0.5f, 1.0f, 3000.0f);
}

// ---- optimizer ----------------------------------------------------------------
static double *dbuf(size_t n) { return track(be->alloc(be, n, ES_DT_F64, ES_MEM_WORKSPACE)); }

// AdamW's scalars at `step`, as engine/optim.c forms them.
static es_adamw_args adamw_args(float lr, float wd, float clip, int step) {
    return (es_adamw_args){.lr = lr, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .wd = wd, .clip = clip,
                           .bc1 = (float)(1.0 - pow(0.9f, step)), .bc2 = (float)(1.0 - pow(0.95f, step))};
}

// A segment table of nsegs records in an int32 buffer.
static void *seg_table(const es_adamw_seg *segs, int nsegs) {
    int32_t *t = ibuf((size_t)(nsegs ? nsegs : 1) * ES_ADAMW_SEG_I32);
    be->upload(be, t, segs, (size_t)nsegs * ES_ADAMW_SEG_I32, ES_DT_I32);
    return t;
}

static void test_sumsq(void) {
    const size_t n = 1001;
    float *x = frand(n, 3);
    double ref = 0;
    for (size_t i = 0; i < n; i++) ref += (double)x[i] * x[i];
    double *ss = dbuf(1);
    *ss = NAN;  // overwritten, not added to
    be->sumsq(be, ss, x, n);
    CHECK(fabs(*ss - ref) < 1e-9 * ref, "sumsq %.17g vs %.17g", *ss, ref);
    double vals[5] = {1.0, -2.5, 0.0, 3e300, 7.0};
    double *d = dbuf(5);
    float *cnt = fbuf(1);
    be->upload(be, d, vals, 5, ES_DT_F64);
    be->count_nonfinite(be, cnt, d, 5);
    CHECK(*cnt == 0.0f, "count_nonfinite of finite values: %g", *cnt);
    vals[1] = NAN;
    vals[3] = -INFINITY;
    be->upload(be, d, vals, 5, ES_DT_F64);
    be->count_nonfinite(be, cnt, d, 5);
    CHECK(*cnt == 2.0f, "count_nonfinite: %g, want 2", *cnt);
    free_all();
}

static void test_adamw_by_hand(void) {
    // one step by hand: p=1, g=0.5, lr=0.1, wd=0.1, betas (0.9, 0.999), eps=1e-8, step 1:
    // m = 0.05, v = 0.00025, mhat = 0.5, vhat = 0.25, update = 0.5 / (0.5 + 1e-8)
    // p = 1 - 0.1 * 0.1 * 1 - 0.1 * 0.99999998 = 0.890000002
    float *p = fbuf(2), *gr = fbuf(2), *m = fbuf(2), *v = fbuf(2), *skip = fbuf(1);
    double *ss = dbuf(1);
    p[0] = 1.0f; p[1] = -2.0f;
    gr[0] = 0.5f; gr[1] = -0.25f;
    *ss = 0.5 * 0.5 + 0.25 * 0.25;
    *skip = 0.0f;
    be->zero(be, m, 2, ES_DT_F32);
    be->zero(be, v, 2, ES_DT_F32);
    es_adamw_seg seg = {.offset = 0, .count = 2, .decay = 1};
    es_adamw_args a = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .wd = 0.1f, .clip = 0.0f,
                       .bc1 = (float)(1.0 - pow(0.9f, 1)), .bc2 = (float)(1.0 - pow(0.999f, 1))};
    be->adamw(be, p, NULL, gr, m, v, seg_table(&seg, 1), 1, 2, ss, skip, &a);
    // p1 = -2 + 0.1 * 0.1 * 2 - 0.1 * (-1) = -1.88
    CHECK(fabs(p[0] - 0.890000002) < 1e-6 && fabs(p[1] + 1.88) < 1e-6, "adamw step 1: %.9g %.9g",
          p[0], p[1]);
    // 1 - beta rounds in fp32, so the moments match to about 1e-5 relative
    CHECK(fabs(m[0] - 0.05) < 1e-6 && fabs(v[0] - 0.00025) < 1e-4 * 0.00025, "adamw moments %g %g",
          m[0], v[0]);
    free_all();
}

// Several steps with fp32 master weights against a double reference; step 2
// clips (the norm found from *sumsq inside the op), step 3 has wd = 0.
static void test_adamw_master(void) {
    const size_t n = 1001;
    float *pp = fnan(n), *master = frand(n, 1), *g2 = fbuf(n), *m2 = fbuf(n), *v2 = fbuf(n), *skip = fbuf(1);
    double *ss = dbuf(1);
    *skip = 0.0f;
    be->zero(be, m2, n, ES_DT_F32);
    be->zero(be, v2, n, ES_DT_F32);
    es_adamw_seg seg = {.offset = 0, .count = n, .decay = 1};
    void *segs = seg_table(&seg, 1);
    double *rp = es_xmalloc(n * sizeof(double)), *rm = es_xmalloc(n * sizeof(double));
    double *rv = es_xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        rp[i] = master[i];
        rm[i] = rv[i] = 0;
    }
    for (int step = 1; step <= 3; step++) {
        for (size_t i = 0; i < n; i++) g2[i] = es_rng_normal(&rng);
        be->sumsq(be, ss, g2, n);
        double norm = sqrt(*ss);
        float wd = step == 3 ? 0.0f : 0.05f;
        float clip = step == 2 ? (float)(0.37 * norm) : 0.0f;  // step 2 clips to 0.37 of the norm
        es_adamw_args a = adamw_args(1e-2f, wd, clip, step);
        be->adamw(be, pp, master, g2, m2, v2, segs, 1, n, ss, skip, &a);
        double gs = step == 2 ? clip / norm : 1.0;
        for (size_t i = 0; i < n; i++) {
            double g = (double)g2[i] * gs;
            rm[i] = 0.9 * rm[i] + 0.1 * g;
            rv[i] = 0.95 * rv[i] + 0.05 * g * g;
            double mh = rm[i] / (1 - pow(0.9, step)), vh = rv[i] / (1 - pow(0.95, step));
            rp[i] = rp[i] * (1 - 1e-2 * wd) - 1e-2 * mh / (sqrt(vh) + 1e-8);
        }
    }
    double e = rel_err_d(master, rp, n);
    CHECK(e < 1e-5, "adamw master after 3 steps rel err %.3g", e);
    CHECK(!memcmp(pp, master, n * sizeof(float)), "adamw params not refreshed from master");
    free(rp);
    free(rm);
    free(rv);
    free_all();
}

// The old per-tensor op, in the test's own words: one tensor of n elements,
// g = grads * gscale, decay wd, bias corrections for `step`.
static void adamw_old(float *p, float *m, float *v, const float *g, size_t n, float gscale, float lr, float wd,
                      int step) {
    const float b1 = 0.9f, b2 = 0.95f, eps = 1e-8f;
    const float bc1 = (float)(1.0 - pow(b1, step)), bc2 = (float)(1.0 - pow(b2, step));
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * gscale;
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        p[i] = p[i] * (1.0f - lr * wd) - lr * (m[i] / bc1) / (sqrtf(v[i] / bc2) + eps);
    }
}

// The multi-tensor update over a table of tensors (decay and none, gaps
// between them that it must leave alone) against (a) the old per-tensor
// update with the clip scale formed on the host, (b) the op called once per
// tensor, bit for bit; then a bad step (skip set, or a non-finite norm)
// changes nothing.
static void test_adamw_multi(void) {
    const es_adamw_seg tab[] = {{.offset = 0, .count = 300, .decay = 1},   {.offset = 300, .count = 7, .decay = 0},
                                {.offset = 310, .count = 129, .decay = 1}, {.offset = 439, .count = 1, .decay = 0},
                                {.offset = 500, .count = 200, .decay = 0}, {.offset = 700, .count = 64, .decay = 1}};
    const int nt = (int)(sizeof tab / sizeof tab[0]);
    const size_t n = 770;  // 764..769 and the gaps lie outside every tensor
    float *p = frand(n, 1), *g = fbuf(n), *m = fbuf(n), *v = fbuf(n), *skip = fbuf(1);
    float *p1 = fcopy(p, n), *m1 = fbuf(n), *v1 = fbuf(n);  // per-tensor op calls
    float *pr = fcopy(p, n), *mr = fbuf(n), *vr = fbuf(n);  // old semantics
    double *ss = dbuf(1);
    be->zero(be, m, n, ES_DT_F32), be->zero(be, v, n, ES_DT_F32);
    be->zero(be, m1, n, ES_DT_F32), be->zero(be, v1, n, ES_DT_F32);
    be->zero(be, mr, n, ES_DT_F32), be->zero(be, vr, n, ES_DT_F32);
    *skip = 0.0f;
    void *segs = seg_table(tab, nt);
    void *one[6];
    for (int k = 0; k < nt; k++) {
        es_adamw_seg s = tab[k];
        s.offset = 0;  // the tensor's own buffers
        one[k] = seg_table(&s, 1);
    }
    const float lr = 1e-2f, wd = 0.1f;
    for (int step = 1; step <= 3; step++) {
        for (size_t i = 0; i < n; i++) g[i] = es_rng_normal(&rng);
        be->sumsq(be, ss, g, n);
        float clip = step == 2 ? 1.0f : 0.0f;  // the norm is about 27: step 2 clips
        es_adamw_args a = adamw_args(lr, wd, clip, step);
        be->adamw(be, p, NULL, g, m, v, segs, nt, n, ss, skip, &a);
        double norm = sqrt(*ss);
        float gs = clip > 0 && norm > clip ? (float)(clip / norm) : 1.0f;
        for (int k = 0; k < nt; k++) {
            size_t o = tab[k].offset, c = tab[k].count;
            be->adamw(be, p1 + o, NULL, g + o, m1 + o, v1 + o, one[k], 1, c, ss, skip, &a);
            adamw_old(pr + o, mr + o, vr + o, g + o, c, gs, lr, tab[k].decay ? wd : 0.0f, step);
        }
    }
    CHECK(!memcmp(p, p1, n * 4) && !memcmp(m, m1, n * 4) && !memcmp(v, v1, n * 4),
          "multi-tensor adamw differs from per-tensor calls");
    double e = t_rel_err(p, pr, n, 1e-6), em = t_rel_err(m, mr, n, 1e-6), ev = t_rel_err(v, vr, n, 1e-12);
    CHECK(e < 1e-6 && em < 1e-6 && ev < 1e-6, "multi-tensor adamw vs old per-tensor: rel err p %.3g m %.3g v %.3g",
          e, em, ev);
    // elements in no tensor keep their value and zero moments
    const size_t gaps[] = {307, 309, 440, 499, 764, 769};
    int kept = 1;
    for (size_t k = 0; k < sizeof gaps / sizeof gaps[0]; k++)
        kept &= p[gaps[k]] == pr[gaps[k]] && m[gaps[k]] == 0.0f && v[gaps[k]] == 0.0f;
    CHECK(kept, "multi-tensor adamw touched an element outside every tensor");
    // bad steps: the skip count, then a non-finite norm
    float *pk = fcopy(p, n), *mk = fcopy(m, n), *vk = fcopy(v, n);
    es_adamw_args a = adamw_args(lr, wd, 1.0f, 4);
    *skip = 1.0f;
    be->adamw(be, p, NULL, g, m, v, segs, nt, n, ss, skip, &a);
    *skip = 0.0f;
    *ss = INFINITY;
    be->adamw(be, p, NULL, g, m, v, segs, nt, n, ss, skip, &a);
    *ss = NAN;
    be->adamw(be, p, NULL, g, m, v, segs, nt, n, ss, skip, &a);
    CHECK(!memcmp(p, pk, n * 4) && !memcmp(m, mk, n * 4) && !memcmp(v, vk, n * 4), "a bad step changed the state");
    free_all();
}

static void test_optim(void) {
    test_sumsq();
    test_adamw_by_hand();
    test_adamw_master();
    test_adamw_multi();
}

int main(void) {
    be = es_backend_cpu_create();
    if (!be) {
        fprintf(stderr, "test_cpu_ops: %s\n", es_last_error());
        return 1;
    }
    es_rng_seed(&rng, 1234);
    test_memory();
    test_matmul();
    test_norm(0, 4, 9);
    test_norm(0, 3, 150);  // more columns than one weight-gradient block
    test_norm(1, 4, 9);
    test_norm(1, 3, 150);
    test_rope();
    test_attention();
    test_embed();
    test_activations();
    test_rows();
    test_distill();
    test_optim();
    // last, so that the tests above draw the random inputs they always drew
    test_add_rmsnorm(4, 9);
    test_add_rmsnorm(37, 150);
    test_qkv();
    be->destroy(be);
    TEST_DONE();
}
