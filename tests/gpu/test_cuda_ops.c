// Every op of the CUDA backend against the CPU backend. Both get the same
// random inputs, rounded to bf16 first so that only the CUDA backend's own
// rounding separates them; outputs start as NaN (or random where the op
// accumulates); results must agree to bf16 tolerance. Prints a table.
//
// Usage: test_cuda_ops [device]   (default cuda; "cpu" checks this test itself
// against a second CPU backend, where every error is ~0)
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "es_build.h"
#include "common.h"
#include "model.h"
#include "test.h"

#define TOL 2e-2   // bf16 outputs: ~3 significant digits, plus fp32-vs-double sums
#define FLOOR 1e-3 // relative errors of near-zero references are taken against this

static es_backend *cpu, *gpu;
static es_rng rng;

// The same buffer on both backends.
typedef struct {
    void *c, *g;
    size_t n;
    es_dtype dt;
} buf;

static buf mk(size_t n, es_dtype dt, es_mem_kind kind) {
    buf b = {cpu->alloc(cpu, n, dt, kind), gpu->alloc(gpu, n, dt, kind), n, dt};
    if (!b.c || !b.g) {
        fprintf(stderr, "test_cuda_ops: %s\n", es_last_error());
        exit(1);
    }
    return b;
}

static void drop(buf b) {
    cpu->free(cpu, b.c);
    gpu->free(gpu, b.g);
}

// Uploads host values to both; compute-type values are rounded to bf16 first.
static void put(buf b, float *h) {
    if (b.dt == ES_DT_COMPUTE)
        for (size_t i = 0; i < b.n; i++) h[i] = es_bf16_to_f32(es_f32_to_bf16(h[i]));
    cpu->upload(cpu, b.c, h, b.n, b.dt);
    gpu->upload(gpu, b.g, h, b.n, b.dt);
}

static buf rnd(size_t n, float scale, es_dtype dt, es_mem_kind kind) {
    buf b = mk(n, dt, kind);
    float *h = es_xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = scale * es_rng_normal(&rng);
    put(b, h);
    free(h);
    return b;
}

static buf nan_buf(size_t n, es_dtype dt, es_mem_kind kind) {
    buf b = mk(n, dt, kind);
    float *h = es_xmalloc(n * sizeof(float));
    t_poison(h, n);
    put(b, h);
    free(h);
    return b;
}

// b from element k on (not to be dropped).
static buf shifted(buf b, size_t k) {
    buf s = {cpu->offset(cpu, b.c, k, b.dt), gpu->offset(gpu, b.g, k, b.dt), b.n - k, b.dt};
    return s;
}

static buf ints(const int32_t *v, size_t n) {
    buf b = mk(n, ES_DT_I32, ES_MEM_INDEX);
    cpu->upload(cpu, b.c, v, n, ES_DT_I32);
    gpu->upload(gpu, b.g, v, n, ES_DT_I32);
    return b;
}

static buf rand_ints(size_t n, int hi) {
    int32_t *v = es_xmalloc(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) v[i] = (int32_t)(es_rng_u64(&rng) % (uint64_t)hi);
    buf b = ints(v, n);
    free(v);
    return b;
}

// fp64 values (a step's statistics) on both.
static buf f64s(const double *v, size_t n) {
    buf b = mk(n, ES_DT_F64, ES_MEM_WORKSPACE);
    cpu->upload(cpu, b.c, v, n, ES_DT_F64);
    gpu->upload(gpu, b.g, v, n, ES_DT_F64);
    return b;
}

// Relative error of the fp64 buffer's values, GPU against CPU.
static double f64_err(buf b) {
    double *hc = es_xmalloc(b.n * 8), *hg = es_xmalloc(b.n * 8), e = 0;
    cpu->download(cpu, hc, b.c, b.n, ES_DT_F64);
    gpu->download(gpu, hg, b.g, b.n, ES_DT_F64);
    for (size_t i = 0; i < b.n; i++) {
        double d = fabs(hg[i] - hc[i]) / fmax(fabs(hc[i]), FLOOR);
        e = isnan(d) || d > e ? (isnan(d) ? INFINITY : d) : e;
    }
    free(hc);
    free(hg);
    return e;
}

static float *host_of(es_backend *be, const void *p, size_t n, es_dtype dt) {
    float *h = es_xmalloc(n * sizeof(float));
    be->download(be, h, p, n, dt);
    return h;
}

// Table rows, printed at the end.
#define MAX_ROWS 256
static struct {
    char name[48];
    double err;
} rows[MAX_ROWS];
static int nrows;

static void report(const char *name, double err) {
    CHECK(err <= TOL, "%s: rel err %.3g > %.3g", name, err, TOL);
    if (nrows < MAX_ROWS) {
        snprintf(rows[nrows].name, sizeof rows[nrows].name, "%s", name);
        rows[nrows++].err = err;
    }
}

static void compare(const char *name, buf b) {
    gpu->sync(gpu);
    float *hc = host_of(cpu, b.c, b.n, b.dt), *hg = host_of(gpu, b.g, b.n, b.dt);
    report(name, t_rel_err(hg, hc, b.n, FLOOR));
    free(hc);
    free(hg);
}

static void test_embed(void) {
    int N = 256, C = 192, V = 1000, P = 512;
    buf tok = rand_ints(N, V), pos = rand_ints(N, P);
    buf wte = rnd((size_t)V * C, 1.0f, ES_DT_COMPUTE, ES_MEM_WEIGHTS);
    buf wpe = rnd((size_t)P * C, 1.0f, ES_DT_COMPUTE, ES_MEM_WEIGHTS);
    buf out = nan_buf((size_t)N * C, ES_DT_COMPUTE, ES_MEM_ACTS);
    cpu->embed_fwd(cpu, out.c, tok.c, pos.c, wte.c, wpe.c, N, C);
    gpu->embed_fwd(gpu, out.g, tok.g, pos.g, wte.g, wpe.g, N, C);
    compare("embed_fwd", out);
    buf dwte = rnd((size_t)V * C, 1.0f, ES_DT_F32, ES_MEM_GRADS);
    buf dwpe = rnd((size_t)P * C, 1.0f, ES_DT_F32, ES_MEM_GRADS);
    cpu->embed_bwd(cpu, dwte.c, dwpe.c, out.c, tok.c, pos.c, N, C);
    gpu->embed_bwd(gpu, dwte.g, dwpe.g, out.g, tok.g, pos.g, N, C);
    compare("embed_bwd dwte", dwte);
    compare("embed_bwd dwpe", dwpe);
    buf b[] = {tok, pos, wte, wpe, out, dwte, dwpe};
    for (size_t i = 0; i < sizeof b / sizeof *b; i++) drop(b[i]);
}

static void test_matmul(void) {
    int N = 203, C = 320, OC = 384;  // odd N: unaligned column-major leading dims
    buf inp = rnd((size_t)N * C, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf w = rnd((size_t)OC * C, 0.05f, ES_DT_COMPUTE, ES_MEM_WEIGHTS);
    buf bias = rnd(OC, 1.0f, ES_DT_COMPUTE, ES_MEM_WEIGHTS);
    buf out = nan_buf((size_t)N * OC, ES_DT_COMPUTE, ES_MEM_ACTS);
    cpu->matmul_fwd(cpu, out.c, inp.c, w.c, bias.c, N, C, OC);
    gpu->matmul_fwd(gpu, out.g, inp.g, w.g, bias.g, N, C, OC);
    compare("matmul_fwd bias", out);
    drop(out);
    out = nan_buf((size_t)N * OC, ES_DT_COMPUTE, ES_MEM_ACTS);
    cpu->matmul_fwd(cpu, out.c, inp.c, w.c, NULL, N, C, OC);
    gpu->matmul_fwd(gpu, out.g, inp.g, w.g, NULL, N, C, OC);
    compare("matmul_fwd", out);

    buf dout = rnd((size_t)N * OC, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf dinp = nan_buf((size_t)N * C, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf dw = rnd((size_t)OC * C, 1.0f, ES_DT_F32, ES_MEM_GRADS);
    buf db = rnd(OC, 1.0f, ES_DT_F32, ES_MEM_GRADS);
    cpu->matmul_bwd(cpu, dinp.c, dw.c, db.c, dout.c, inp.c, w.c, N, C, OC, 0);
    gpu->matmul_bwd(gpu, dinp.g, dw.g, db.g, dout.g, inp.g, w.g, N, C, OC, 0);
    compare("matmul_bwd dinp", dinp);
    compare("matmul_bwd dw", dw);
    compare("matmul_bwd dbias", db);
    drop(dinp);
    dinp = rnd((size_t)N * C, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    cpu->matmul_bwd(cpu, dinp.c, dw.c, NULL, dout.c, inp.c, w.c, N, C, OC, 1);
    gpu->matmul_bwd(gpu, dinp.g, dw.g, NULL, dout.g, inp.g, w.g, N, C, OC, 1);
    compare("matmul_bwd dinp +=", dinp);
    compare("matmul_bwd dw +=", dw);
    buf b[] = {inp, w, bias, out, dout, dinp, dw, db};
    for (size_t i = 0; i < sizeof b / sizeof *b; i++) drop(b[i]);
}

static void test_rmsnorm(int N, int C, const char *tag) {
    char name[48];
    buf inp = rnd((size_t)N * C, 2.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf w = rnd(C, 1.0f, ES_DT_COMPUTE, ES_MEM_WEIGHTS);
    buf out = nan_buf((size_t)N * C, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf rstd = nan_buf(N, ES_DT_F32, ES_MEM_ACTS);
    cpu->rmsnorm_fwd(cpu, out.c, rstd.c, inp.c, w.c, N, C, 1e-6f);
    gpu->rmsnorm_fwd(gpu, out.g, rstd.g, inp.g, w.g, N, C, 1e-6f);
    snprintf(name, sizeof name, "%s fwd", tag);
    compare(name, out);
    snprintf(name, sizeof name, "%s fwd rstd", tag);
    compare(name, rstd);
    buf dout = rnd((size_t)N * C, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf dinp = nan_buf((size_t)N * C, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf dw = rnd(C, 1.0f, ES_DT_F32, ES_MEM_GRADS);
    cpu->rmsnorm_bwd(cpu, dinp.c, dw.c, dout.c, inp.c, w.c, rstd.c, N, C, 0);
    gpu->rmsnorm_bwd(gpu, dinp.g, dw.g, dout.g, inp.g, w.g, rstd.g, N, C, 0);
    snprintf(name, sizeof name, "%s bwd dinp", tag);
    compare(name, dinp);
    snprintf(name, sizeof name, "%s bwd dw", tag);
    compare(name, dw);
    cpu->rmsnorm_bwd(cpu, dinp.c, dw.c, dout.c, inp.c, w.c, rstd.c, N, C, 1);
    gpu->rmsnorm_bwd(gpu, dinp.g, dw.g, dout.g, inp.g, w.g, rstd.g, N, C, 1);
    snprintf(name, sizeof name, "%s bwd dinp +=", tag);
    compare(name, dinp);
    buf b[] = {inp, w, out, rstd, dout, dinp, dw};
    for (size_t i = 0; i < sizeof b / sizeof *b; i++) drop(b[i]);
}

// The residual add fused with RMSNorm, written and in place (res over a);
// on the GPU its out and rstd must also be rmsnorm_fwd's of its own res bit
// for bit, as recomputation in backward assumes.
static void test_add_rmsnorm(int N, int C, const char *tag) {
    char name[48];
    size_t n = (size_t)N * C;
    buf a = rnd(n, 2.0f, ES_DT_COMPUTE, ES_MEM_ACTS), b = rnd(n, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf w = rnd(C, 1.0f, ES_DT_COMPUTE, ES_MEM_WEIGHTS);
    buf res = nan_buf(n, ES_DT_COMPUTE, ES_MEM_ACTS), out = nan_buf(n, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf rstd = nan_buf(N, ES_DT_F32, ES_MEM_ACTS);
    for (int inplace = 0; inplace < 2; inplace++) {
        buf r = inplace ? a : res;
        cpu->add_rmsnorm_fwd(cpu, r.c, out.c, rstd.c, a.c, b.c, w.c, N, C, 1e-6f);
        gpu->add_rmsnorm_fwd(gpu, r.g, out.g, rstd.g, a.g, b.g, w.g, N, C, 1e-6f);
        snprintf(name, sizeof name, "%s%s res", tag, inplace ? " in place" : "");
        compare(name, r);
        snprintf(name, sizeof name, "%s%s out", tag, inplace ? " in place" : "");
        compare(name, out);
        snprintf(name, sizeof name, "%s%s rstd", tag, inplace ? " in place" : "");
        compare(name, rstd);
        buf out2 = nan_buf(n, ES_DT_COMPUTE, ES_MEM_ACTS), rstd2 = nan_buf(N, ES_DT_F32, ES_MEM_ACTS);
        gpu->rmsnorm_fwd(gpu, out2.g, rstd2.g, r.g, w.g, N, C, 1e-6f);
        gpu->sync(gpu);
        float *o1 = host_of(gpu, out.g, n, ES_DT_COMPUTE), *o2 = host_of(gpu, out2.g, n, ES_DT_COMPUTE);
        float *r1 = host_of(gpu, rstd.g, N, ES_DT_F32), *r2 = host_of(gpu, rstd2.g, N, ES_DT_F32);
        CHECK(!memcmp(o1, o2, n * sizeof(float)) && !memcmp(r1, r2, N * sizeof(float)),
              "%s: out, rstd differ from rmsnorm_fwd of res", tag);
        free(o1), free(o2), free(r1), free(r2);
        drop(out2), drop(rstd2);
    }
    buf x[] = {a, b, w, res, out, rstd};
    for (size_t i = 0; i < sizeof x / sizeof *x; i++) drop(x[i]);
}

static void test_layernorm(void) {
    int N = 301, C = 768;
    buf inp = rnd((size_t)N * C, 2.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf w = rnd(C, 1.0f, ES_DT_COMPUTE, ES_MEM_WEIGHTS);
    buf bias = rnd(C, 1.0f, ES_DT_COMPUTE, ES_MEM_WEIGHTS);
    buf out = nan_buf((size_t)N * C, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf mean = nan_buf(N, ES_DT_F32, ES_MEM_ACTS), rstd = nan_buf(N, ES_DT_F32, ES_MEM_ACTS);
    cpu->layernorm_fwd(cpu, out.c, mean.c, rstd.c, inp.c, w.c, bias.c, N, C, 1e-5f);
    gpu->layernorm_fwd(gpu, out.g, mean.g, rstd.g, inp.g, w.g, bias.g, N, C, 1e-5f);
    compare("layernorm_fwd", out);
    compare("layernorm_fwd mean", mean);
    compare("layernorm_fwd rstd", rstd);
    buf dout = rnd((size_t)N * C, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf dinp = nan_buf((size_t)N * C, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf dw = rnd(C, 1.0f, ES_DT_F32, ES_MEM_GRADS), db = rnd(C, 1.0f, ES_DT_F32, ES_MEM_GRADS);
    cpu->layernorm_bwd(cpu, dinp.c, dw.c, db.c, dout.c, inp.c, w.c, mean.c, rstd.c, N, C, 0);
    gpu->layernorm_bwd(gpu, dinp.g, dw.g, db.g, dout.g, inp.g, w.g, mean.g, rstd.g, N, C, 0);
    compare("layernorm_bwd dinp", dinp);
    compare("layernorm_bwd dw", dw);
    compare("layernorm_bwd db", db);
    buf b[] = {inp, w, bias, out, mean, rstd, dout, dinp, dw, db};
    for (size_t i = 0; i < sizeof b / sizeof *b; i++) drop(b[i]);
}

// The frequencies of a Llama 3.1 8B config (llama3 scaling: kept, smoothed and
// divided wavelengths), as the model hands them to the rope ops.
static void test_rope(void) {
    int N = 256, H = 8, D = 128;
    size_t n = (size_t)N * H * D;
    es_config c = {.head_dim = D, .rope_theta = 5e5f,
                   .rope_scaling = {ES_ROPE_LLAMA3, 8.0, 1.0, 4.0, 8192}};
    float host[64];
    es_rope_inv_freq(host, &c);
    buf inv_freq = mk(D / 2, ES_DT_F32, ES_MEM_WEIGHTS);
    put(inv_freq, host);
    buf pos = rand_ints(N, 131072);
    buf inp = rnd(n, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf out = nan_buf(n, ES_DT_COMPUTE, ES_MEM_ACTS);
    cpu->rope_fwd(cpu, out.c, inp.c, pos.c, inv_freq.c, N, H, D);
    gpu->rope_fwd(gpu, out.g, inp.g, pos.g, inv_freq.g, N, H, D);
    compare("rope_fwd", out);
    // In place, the way the model applies the backward.
    cpu->rope_bwd(cpu, out.c, out.c, pos.c, inv_freq.c, N, H, D);
    gpu->rope_bwd(gpu, out.g, out.g, pos.g, inv_freq.g, N, H, D);
    compare("rope_bwd in place", out);
    buf b[] = {pos, inp, out, inv_freq};
    for (size_t i = 0; i < 4; i++) drop(b[i]);
}

// Documents cu (ndocs + 1) packed into N rows; rows past the last document
// belong to none.
static void test_attention(const int32_t *cu, int ndocs, int N, int H, int KVH, int D,
                           const char *tag) {
    char name[48];
    buf cus = ints(cu, (size_t)ndocs + 1);
    buf q = rnd((size_t)N * H * D, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf k = rnd((size_t)N * KVH * D, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf v = rnd((size_t)N * KVH * D, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf out = nan_buf((size_t)N * H * D, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf lse = nan_buf((size_t)N * H, ES_DT_F32, ES_MEM_ACTS);
    cpu->attention_fwd(cpu, out.c, lse.c, q.c, k.c, v.c, cus.c, ndocs, N, H, KVH, D);
    gpu->attention_fwd(gpu, out.g, lse.g, q.g, k.g, v.g, cus.g, ndocs, N, H, KVH, D);
    snprintf(name, sizeof name, "attention_fwd %s", tag);
    compare(name, out);
    snprintf(name, sizeof name, "attention_fwd lse %s", tag);
    compare(name, lse);
    // The backward reads the forward's out and lse: give both backends the CPU's.
    float *h = host_of(cpu, out.c, out.n, out.dt);
    put(out, h);
    free(h);
    h = host_of(cpu, lse.c, lse.n, lse.dt);
    put(lse, h);
    free(h);
    buf dout = rnd((size_t)N * H * D, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf dq = nan_buf(q.n, ES_DT_COMPUTE, ES_MEM_ACTS), dk = nan_buf(k.n, ES_DT_COMPUTE, ES_MEM_ACTS),
        dv = nan_buf(v.n, ES_DT_COMPUTE, ES_MEM_ACTS);
    cpu->attention_bwd(cpu, dq.c, dk.c, dv.c, dout.c, q.c, k.c, v.c, out.c, lse.c, cus.c, ndocs, N,
                       H, KVH, D);
    gpu->attention_bwd(gpu, dq.g, dk.g, dv.g, dout.g, q.g, k.g, v.g, out.g, lse.g, cus.g, ndocs, N,
                       H, KVH, D);
    snprintf(name, sizeof name, "attention_bwd dq %s", tag);
    compare(name, dq);
    snprintf(name, sizeof name, "attention_bwd dk %s", tag);
    compare(name, dk);
    snprintf(name, sizeof name, "attention_bwd dv %s", tag);
    compare(name, dv);
    buf b[] = {cus, q, k, v, out, lse, dout, dq, dk, dv};
    for (size_t i = 0; i < sizeof b / sizeof *b; i++) drop(b[i]);
}

static void test_pointwise(void) {
    size_t n = 100003;
    buf a = rnd(n, 2.0f, ES_DT_COMPUTE, ES_MEM_ACTS), b = rnd(n, 2.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf dout = rnd(n, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf o1 = nan_buf(n, ES_DT_COMPUTE, ES_MEM_ACTS), o2 = nan_buf(n, ES_DT_COMPUTE, ES_MEM_ACTS);
    cpu->gelu_fwd(cpu, o1.c, a.c, n);
    gpu->gelu_fwd(gpu, o1.g, a.g, n);
    compare("gelu_fwd", o1);
    drop(o1);
    o1 = nan_buf(n, ES_DT_COMPUTE, ES_MEM_ACTS);
    cpu->gelu_bwd(cpu, o1.c, dout.c, a.c, n);
    gpu->gelu_bwd(gpu, o1.g, dout.g, a.g, n);
    compare("gelu_bwd", o1);
    drop(o1);
    o1 = nan_buf(n, ES_DT_COMPUTE, ES_MEM_ACTS);
    cpu->add(cpu, o1.c, a.c, b.c, n);
    gpu->add(gpu, o1.g, a.g, b.g, n);
    compare("add", o1);
    // one element in: buffers off 16-byte alignment take the scalar path
    buf a1 = shifted(a, 1), b1 = shifted(b, 1), d1 = shifted(dout, 1), s1 = shifted(o2, 1);
    cpu->add(cpu, s1.c, a1.c, b1.c, s1.n);
    gpu->add(gpu, s1.g, a1.g, b1.g, s1.n);
    compare("add unaligned", s1);
    cpu->gelu_fwd(cpu, s1.c, a1.c, s1.n);
    gpu->gelu_fwd(gpu, s1.g, a1.g, s1.n);
    compare("gelu_fwd unaligned", s1);
    cpu->gelu_bwd(cpu, s1.c, d1.c, a1.c, s1.n);
    gpu->gelu_bwd(gpu, s1.g, d1.g, a1.g, s1.n);
    compare("gelu_bwd unaligned", s1);
    buf x[] = {a, b, dout, o1, o2};
    for (size_t i = 0; i < 5; i++) drop(x[i]);
}

// b's elements from `off` on, on both backends.
static buf view(buf b, size_t off) {
    buf v = {cpu->offset(cpu, b.c, off, b.dt), gpu->offset(gpu, b.g, off, b.dt), b.n - off, b.dt};
    return v;
}

// SwiGLU over fused gate|up rows (N, 2F); `shift` moves every buffer one
// element off 16-byte alignment, which the vector path must leave alone.
static void test_swiglu(int N, int F, int shift, const char *tag) {
    char name[48];
    size_t n = (size_t)N * F, s = (size_t)shift;
    buf gub = rnd(2 * n + s, 2.0f, ES_DT_COMPUTE, ES_MEM_ACTS), doutb = rnd(n + s, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf outb = nan_buf(n + s, ES_DT_COMPUTE, ES_MEM_ACTS), dgub = nan_buf(2 * n + s, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf gu = view(gub, s), dout = view(doutb, s), out = view(outb, s), dgu = view(dgub, s);
    cpu->swiglu_fwd(cpu, out.c, gu.c, N, F);
    gpu->swiglu_fwd(gpu, out.g, gu.g, N, F);
    snprintf(name, sizeof name, "swiglu_fwd %s", tag);
    compare(name, out);
    cpu->swiglu_bwd(cpu, dgu.c, dout.c, gu.c, N, F);
    gpu->swiglu_bwd(gpu, dgu.g, dout.g, gu.g, N, F);
    snprintf(name, sizeof name, "swiglu_bwd %s", tag);
    compare(name, dgu);
    buf x[] = {gub, doutb, outb, dgub};
    for (size_t i = 0; i < 4; i++) drop(x[i]);
}

// The fused QKV rows (N, (H + 2 KVH) D) split, normalised (`norm`) and
// rotated, and back, with a Qwen3 config's frequencies.
static void test_qkv(int N, int H, int KVH, int D, int norm, const char *tag) {
    char name[64];
    size_t nq = (size_t)N * H * D, nk = (size_t)N * KVH * D, nw = nq + 2 * nk;
    es_config c = {.head_dim = D, .rope_theta = 1e6f};
    float host[256];
    es_rope_inv_freq(host, &c);
    buf inv_freq = mk(D / 2, ES_DT_F32, ES_MEM_WEIGHTS);
    put(inv_freq, host);
    buf pos = rand_ints(N, 40960), qkv = rnd(nw, 2.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf qn = rnd(D, 1.0f, ES_DT_COMPUTE, ES_MEM_WEIGHTS), kn = rnd(D, 1.0f, ES_DT_COMPUTE, ES_MEM_WEIGHTS);
    buf q = nan_buf(nq, ES_DT_COMPUTE, ES_MEM_ACTS), k = nan_buf(nk, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf v = nan_buf(nk, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf qr = nan_buf((size_t)N * H, ES_DT_F32, ES_MEM_ACTS), kr = nan_buf((size_t)N * KVH, ES_DT_F32, ES_MEM_ACTS);
    cpu->qkv_fwd(cpu, q.c, k.c, v.c, norm ? qr.c : NULL, norm ? kr.c : NULL, qkv.c, norm ? qn.c : NULL,
                 norm ? kn.c : NULL, pos.c, inv_freq.c, N, H, KVH, D, 1e-6f);
    gpu->qkv_fwd(gpu, q.g, k.g, v.g, norm ? qr.g : NULL, norm ? kr.g : NULL, qkv.g, norm ? qn.g : NULL,
                 norm ? kn.g : NULL, pos.g, inv_freq.g, N, H, KVH, D, 1e-6f);
    const char *what[] = {"q", "k", "v", "q_rstd", "k_rstd"};
    buf outs[] = {q, k, v, qr, kr};
    for (int i = 0; i < (norm ? 5 : 3); i++) {
        snprintf(name, sizeof name, "qkv_fwd %s %s", what[i], tag);
        compare(name, outs[i]);
    }
    if (norm) {  // the backward reads the forward's rstd: give both the CPU's
        for (int i = 3; i < 5; i++) {
            float *h = host_of(cpu, outs[i].c, outs[i].n, outs[i].dt);
            put(outs[i], h);
            free(h);
        }
    }
    buf dq = rnd(nq, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS), dk = rnd(nk, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf dv = rnd(nk, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS), dqkv = nan_buf(nw, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf dqn = rnd(D, 1.0f, ES_DT_F32, ES_MEM_GRADS), dkn = rnd(D, 1.0f, ES_DT_F32, ES_MEM_GRADS);
    cpu->qkv_bwd(cpu, dqkv.c, dqn.c, dkn.c, dq.c, dk.c, dv.c, qkv.c, norm ? qn.c : NULL, norm ? kn.c : NULL,
                 qr.c, kr.c, pos.c, inv_freq.c, N, H, KVH, D);
    gpu->qkv_bwd(gpu, dqkv.g, dqn.g, dkn.g, dq.g, dk.g, dv.g, qkv.g, norm ? qn.g : NULL, norm ? kn.g : NULL,
                 qr.g, kr.g, pos.g, inv_freq.g, N, H, KVH, D);
    snprintf(name, sizeof name, "qkv_bwd dqkv %s", tag);
    compare(name, dqkv);
    if (norm) {
        snprintf(name, sizeof name, "qkv_bwd dq_norm %s", tag);
        compare(name, dqn);
        snprintf(name, sizeof name, "qkv_bwd dk_norm %s", tag);
        compare(name, dkn);
    }
    buf x[] = {inv_freq, pos, qkv, qn, kn, q, k, v, qr, kr, dq, dk, dv, dqkv, dqn, dkn};
    for (size_t i = 0; i < sizeof x / sizeof *x; i++) drop(x[i]);
}

static void test_rows(void) {
    int N = 300, C = 256, M = 50;
    int32_t r[50];
    for (int i = 0; i < M; i++) r[i] = (int32_t)(es_rng_u64(&rng) % (uint64_t)N);
    r[M - 1] = r[0];  // a repeated row must add twice
    buf rows = ints(r, M);
    buf inp = rnd((size_t)N * C, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf out = nan_buf((size_t)M * C, ES_DT_COMPUTE, ES_MEM_ACTS);
    cpu->gather_rows(cpu, out.c, inp.c, rows.c, M, C);
    gpu->gather_rows(gpu, out.g, inp.g, rows.g, M, C);
    compare("gather_rows", out);
    cpu->scatter_add_rows(cpu, inp.c, out.c, rows.c, M, C);
    gpu->scatter_add_rows(gpu, inp.g, out.g, rows.g, M, C);
    compare("scatter_add_rows", inp);
    drop(rows);
    drop(inp);
    drop(out);
}

static void test_loss(int M, int V, int teacher, const char *tag) {
    int32_t *tg = es_xmalloc(M * sizeof(int32_t));
    float *wh = es_xmalloc(M * sizeof(float));
    for (int i = 0; i < M; i++) {
        tg[i] = (int32_t)(es_rng_u64(&rng) % (uint64_t)V);
        wh[i] = i % 5 == 3 ? 0.0f : 0.5f + es_rng_uniform(&rng);
    }
    tg[M - 1] = -1;  // a row with no target carries no loss
    buf targets = ints(tg, M), weights = mk(M, ES_DT_F32, ES_MEM_ACTS);
    put(weights, wh);
    buf logits = rnd((size_t)M * V, 3.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf tl = teacher ? rnd((size_t)M * V, 3.0f, ES_DT_COMPUTE, ES_MEM_ACTS) : (buf){0};
    // device sums that accumulate, a slot between two neighbours that must stay
    const double init[4] = {-7.0, 0.25, 0.5, 11.0};
    buf sums = f64s(init, 4);
    cpu->distill_loss(cpu, (double *)sums.c + 1, logits.c, tl.c, targets.c, weights.c, M, V, 0.5f, 2.0f, 0.1f);
    gpu->distill_loss(gpu, (double *)sums.g + 1, logits.g, tl.g, targets.g, weights.g, M, V, 0.5f, 2.0f, 0.1f);
    char name[48];
    snprintf(name, sizeof name, "distill_loss grad %s", tag);
    compare(name, logits);
    snprintf(name, sizeof name, "distill_loss sums %s", tag);
    report(name, f64_err(sums));
    double hs[4];
    gpu->download(gpu, hs, sums.g, 4, ES_DT_F64);
    CHECK(hs[0] == -7.0 && hs[3] == 11.0 && hs[1] == (float)hs[1] && hs[2] == (float)hs[2] && hs[1] > 0.25,
          "distill_loss %s: device sums %.17g %.17g (neighbours %g %g)", tag, hs[1], hs[2], hs[0], hs[3]);
    drop(sums);
    drop(targets);
    drop(weights);
    drop(logits);
    if (teacher) drop(tl);
    free(tg);
    free(wh);
}

// Top-k teacher: K distinct ids per row; one row without a teacher entry.
static void test_loss_topk(int M, int V, int K) {
    int32_t *tg = es_xmalloc(M * sizeof(int32_t)), *ids = es_xmalloc((size_t)M * K * sizeof(int32_t));
    float *wh = es_xmalloc(M * sizeof(float)), *lp = es_xmalloc((size_t)M * K * sizeof(float));
    for (int i = 0; i < M; i++) {
        tg[i] = (int32_t)(es_rng_u64(&rng) % (uint64_t)V);
        wh[i] = i % 5 == 3 ? 0.0f : 0.5f + es_rng_uniform(&rng);
        int32_t first = (int32_t)(es_rng_u64(&rng) % (uint64_t)V);
        float mass = 0.5f + 0.45f * es_rng_uniform(&rng), z = 0.0f;
        for (int j = 0; j < K; j++) {  // consecutive ids are distinct; include the target
            ids[(size_t)i * K + j] = j == 0 ? tg[i] : (first + j) % V == tg[i] ? (first + K) % V
                                                                              : (first + j) % V;
            lp[(size_t)i * K + j] = es_rng_uniform(&rng) + 0.01f;
            z += lp[(size_t)i * K + j];
        }
        for (int j = 0; j < K; j++) lp[(size_t)i * K + j] = logf(mass * lp[(size_t)i * K + j] / z);
    }
    ids[0] = -1;  // row 0 has no teacher entry
    buf targets = ints(tg, M), tids = ints(ids, (size_t)M * K);
    buf weights = mk(M, ES_DT_F32, ES_MEM_ACTS), tlogp = mk((size_t)M * K, ES_DT_F32, ES_MEM_ACTS);
    put(weights, wh);
    put(tlogp, lp);
    buf logits = rnd((size_t)M * V, 3.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    const double zero[2] = {0, 0};
    buf sums = f64s(zero, 2);
    CHECK(gpu->distill_loss_topk != NULL, "cuda backend lacks distill_loss_topk");
    cpu->distill_loss_topk(cpu, sums.c, logits.c, tids.c, tlogp.c, targets.c, weights.c, M, V, K, 0.5f,
                           0.1f);
    gpu->distill_loss_topk(gpu, sums.g, logits.g, tids.g, tlogp.g, targets.g, weights.g, M, V, K, 0.5f,
                           0.1f);
    compare("distill_loss_topk grad", logits);
    report("distill_loss_topk sums", f64_err(sums));
    buf b[] = {targets, tids, weights, tlogp, logits, sums};
    for (size_t i = 0; i < 6; i++) drop(b[i]);
    free(tg);
    free(ids);
    free(wh);
    free(lp);
}

// The gradient's sum of squares into a device scalar (poisoned first), the
// count of non-finite statistics, and the multi-tensor AdamW over a table of
// tensors with gaps (fp32 masters, bf16 params poisoned): step 2 clips, on
// the device, from the sum of squares; step 4 is skipped by the count, step 5
// by a NaN norm, and neither may change anything.
static void test_optim(void) {
    size_t n = 1000003;
    buf g = rnd(n, 1.0f, ES_DT_F32, ES_MEM_GRADS);
    const double poison[1] = {NAN};
    buf ss = f64s(poison, 1);
    cpu->sumsq(cpu, ss.c, g.c, n);
    gpu->sumsq(gpu, ss.g, g.g, n);
    report("sumsq", f64_err(ss));
    const double stats[5] = {1.0, NAN, 2.0, -INFINITY, 3.0};
    buf st = f64s(stats, 5), cnt = nan_buf(1, ES_DT_F32, ES_MEM_WORKSPACE);
    cpu->count_nonfinite(cpu, cnt.c, st.c, 5);
    gpu->count_nonfinite(gpu, cnt.g, st.g, 5);
    compare("count_nonfinite", cnt);
    float hc;
    gpu->download(gpu, &hc, cnt.g, 1, ES_DT_F32);
    CHECK(hc == 2.0f, "count_nonfinite: %g, want 2", hc);
    // tensors: gaps between them, one of a single element, one crossing many tiles
    const es_adamw_seg segs[] = {{.offset = 0, .count = 400000, .decay = 1},     {.offset = 400000, .count = 1, .decay = 0},
                                 {.offset = 400100, .count = 4097, .decay = 1},  {.offset = 404197, .count = 2048, .decay = 0},
                                 {.offset = 410000, .count = 589000, .decay = 1}};
    const int nsegs = (int)(sizeof segs / sizeof segs[0]);
    buf tab = mk((size_t)nsegs * ES_ADAMW_SEG_I32, ES_DT_I32, ES_MEM_INDEX);
    cpu->upload(cpu, tab.c, segs, tab.n, ES_DT_I32);
    gpu->upload(gpu, tab.g, segs, tab.n, ES_DT_I32);
    buf master = rnd(n, 1.0f, ES_DT_F32, ES_MEM_OPTIM);
    // params: NaN where the update must write, 7 in the gaps it must leave alone
    buf params = mk(n, ES_DT_COMPUTE, ES_MEM_WEIGHTS);
    float *hp = es_xmalloc(n * sizeof *hp);
    for (size_t i = 0; i < n; i++) hp[i] = 7.0f;
    for (int k = 0; k < nsegs; k++) t_poison(hp + segs[k].offset, segs[k].count);
    put(params, hp);
    free(hp);
    buf m = rnd(n, 0.1f, ES_DT_F32, ES_MEM_OPTIM), v = mk(n, ES_DT_F32, ES_MEM_OPTIM);
    buf skip = mk(1, ES_DT_F32, ES_MEM_WORKSPACE);
    cpu->zero(cpu, v.c, n, ES_DT_F32);
    gpu->zero(gpu, v.g, n, ES_DT_F32);
    double norm;
    cpu->download(cpu, &norm, ss.c, 1, ES_DT_F64);
    norm = sqrt(norm);
    float *keep = NULL;
    for (int step = 1; step <= 5; step++) {
        float one = step == 4 ? 1.0f : 0.0f;
        put(skip, &one);
        if (step == 5) {  // a NaN norm
            cpu->upload(cpu, ss.c, poison, 1, ES_DT_F64);
            gpu->upload(gpu, ss.g, poison, 1, ES_DT_F64);
        }
        if (step == 4) keep = host_of(gpu, master.g, n, ES_DT_F32);
        es_adamw_args a = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .wd = 0.05f,
                           .clip = step == 2 ? (float)(0.37 * norm) : 0.0f,  // step 2 clips
                           .bc1 = (float)(1.0 - pow(0.9f, step)), .bc2 = (float)(1.0 - pow(0.95f, step))};
        cpu->adamw(cpu, params.c, master.c, g.c, m.c, v.c, tab.c, nsegs, n, ss.c, skip.c, &a);
        gpu->adamw(gpu, params.g, master.g, g.g, m.g, v.g, tab.g, nsegs, n, ss.g, skip.g, &a);
    }
    compare("adamw params", params);
    compare("adamw master", master);
    compare("adamw m", m);
    compare("adamw v", v);
    float *after = host_of(gpu, master.g, n, ES_DT_F32);
    CHECK(!memcmp(keep, after, n * sizeof(float)), "adamw: a skipped step changed the master weights");
    free(keep);
    free(after);
    buf b[] = {g, ss, st, cnt, tab, master, params, m, v, skip};
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) drop(b[i]);
}

// Asynchronous uploads from a pinned block: what arrives is what the block
// held at the call, once host_wait says the device has read it, even when the
// host writes the block right after.
static void test_upload_async(void) {
    const size_t n = 1 << 20;
    int32_t *h = gpu->host_alloc(gpu, n * sizeof *h);
    CHECK(h != NULL, "host_alloc: %s", es_last_error());
    if (!h) return;
    int32_t *want = es_xmalloc(n * sizeof *want), *got = es_xmalloc(n * sizeof *got);
    void *d = gpu->alloc(gpu, n, ES_DT_I32, ES_MEM_INDEX);
    for (size_t i = 0; i < n; i++) h[i] = want[i] = (int32_t)es_rng_u64(&rng);
    gpu->upload_async(gpu, d, h, n, ES_DT_I32);
    gpu->host_wait(gpu, h);
    for (size_t i = 0; i < n; i++) h[i] = -1;
    gpu->download(gpu, got, d, n, ES_DT_I32);
    CHECK(!memcmp(got, want, n * sizeof *got), "upload_async: the device did not get the block's values");
    gpu->free(gpu, d);
    gpu->host_free(gpu, h);
    free(want);
    free(got);
}

// Generation ops on B sequences of different lengths, each owning a block of
// cache rows with spare rows after it: a prefill appends all but the last key
// of every sequence (rows in shuffled order), a decode step appends the last
// one, then one query per sequence attends to its rows. The cache starts as
// NaN, so a row written in the wrong place or read past len shows up.
static void test_decode(int H, int KVH, int D, const char *shape) {
    enum { B = 6, SPARE = 5 };
    static const int32_t lens[B] = {1, 37, 64, 65, 300, 129};
    int32_t start[B], max_len = 0, rows_total = 0, nprefill = 0;
    for (int b = 0; b < B; b++) {
        start[b] = rows_total;
        rows_total += lens[b] + SPARE;
        nprefill += lens[b] - 1;
        if (lens[b] > max_len) max_len = lens[b];
    }
    int W = KVH * D;
    char name[48];
    int32_t *rows = es_xmalloc((size_t)nprefill * sizeof(int32_t)), last[B];
    int n = 0;
    for (int b = 0; b < B; b++) {
        for (int j = 0; j < lens[b] - 1; j++) rows[n++] = start[b] + j;
        last[b] = start[b] + lens[b] - 1;
    }
    for (int i = nprefill - 1; i > 0; i--) {  // the op must not rely on row order
        int j = (int)(es_rng_u64(&rng) % (uint64_t)(i + 1));
        int32_t t = rows[i];
        rows[i] = rows[j];
        rows[j] = t;
    }
    buf kc = nan_buf((size_t)rows_total * W, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf vc = nan_buf((size_t)rows_total * W, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf prow = ints(rows, (size_t)nprefill), drow = ints(last, B);
    buf pk = rnd((size_t)nprefill * W, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf pv = rnd((size_t)nprefill * W, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf dk = rnd((size_t)B * W, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf dv = rnd((size_t)B * W, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    cpu->kv_append(cpu, kc.c, vc.c, pk.c, pv.c, prow.c, nprefill, W);
    gpu->kv_append(gpu, kc.g, vc.g, pk.g, pv.g, prow.g, nprefill, W);
    cpu->kv_append(cpu, kc.c, vc.c, dk.c, dv.c, drow.c, B, W);
    gpu->kv_append(gpu, kc.g, vc.g, dk.g, dv.g, drow.g, B, W);
    gpu->sync(gpu);

    // Written rows must match; the spare rows must still be NaN.
    buf cache[2] = {kc, vc};
    for (int c = 0; c < 2; c++) {
        float *hc = host_of(cpu, cache[c].c, cache[c].n, cache[c].dt);
        float *hg = host_of(gpu, cache[c].g, cache[c].n, cache[c].dt);
        size_t used = 0, spare_written = 0;
        for (int b = 0; b < B; b++) {
            size_t lo = (size_t)start[b] * W, nused = (size_t)lens[b] * W;
            memmove(hc + used, hc + lo, nused * sizeof(float));
            for (size_t i = lo + nused; i < lo + nused + (size_t)SPARE * W; i++)
                spare_written += !isnan(hg[i]);
            memmove(hg + used, hg + lo, nused * sizeof(float));
            used += nused;
        }
        CHECK(spare_written == 0, "kv_append %s: %zu values written outside the appended rows",
              shape, spare_written);
        snprintf(name, sizeof name, "kv_append %s %s", c ? "v" : "k", shape);
        report(name, t_rel_err(hg, hc, used, FLOOR));
        free(hc);
        free(hg);
    }

    buf st = ints(start, B), ln = ints(lens, B);
    buf q = rnd((size_t)B * H * D, 1.0f, ES_DT_COMPUTE, ES_MEM_ACTS);
    buf out = nan_buf((size_t)B * H * D, ES_DT_COMPUTE, ES_MEM_ACTS);
    cpu->attention_decode(cpu, out.c, q.c, kc.c, vc.c, st.c, ln.c, B, H, KVH, D, max_len);
    gpu->attention_decode(gpu, out.g, q.g, kc.g, vc.g, st.g, ln.g, B, H, KVH, D, max_len);
    snprintf(name, sizeof name, "attention_decode %s", shape);
    compare(name, out);
    buf all[] = {kc, vc, prow, drow, pk, pv, dk, dv, st, ln, q, out};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) drop(all[i]);
    free(rows);
}

// Attention on the backend in `gpu`, `kernel` naming it in the table: three
// documents with 10 trailing rows, and documents of 1, 63, 64, 65 and 300
// tokens (one row, and either side of the tensor-core kernels' 64-row tiles)
// with 7 trailing rows.
static void test_attention_kernel(const char *kernel) {
    static const int32_t three[] = {0, 97, 130, 300}, five[] = {0, 1, 64, 128, 193, 493};
    static const struct {
        const int32_t *cu;
        int ndocs, N, H, KVH, D;
        const char *shape;
    } cases[] = {
        {three, 3, 310, 8, 2, 128, "GQA D=128"},
        {three, 3, 310, 4, 4, 64, "MHA D=64"},
        {five, 5, 500, 8, 2, 128, "docs GQA D=128"},
        {five, 5, 500, 6, 3, 64, "docs GQA D=64"},
        {five, 5, 500, 4, 2, 32, "docs D=32"},
    };
    char tag[32];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(tag, sizeof tag, "%s %s", cases[i].shape, kernel);
        test_attention(cases[i].cu, cases[i].ndocs, cases[i].N, cases[i].H, cases[i].KVH,
                       cases[i].D, tag);
    }
}

// The attention cases again on a CUDA backend made with ESSENCE_ATTN=path,
// for each path of this build past simple (tc, cudnn where built; D=32 falls
// back to simple, and cudnn to tc for shapes it declines); the first backend
// was made with ESSENCE_ATTN=simple. An unknown ESSENCE_ATTN is refused at
// creation, and unset it gives the first path, the default.
static void test_attention_paths(void) {
    setenv("ESSENCE_ATTN", "bogus", 1);
    es_backend *bad = es_backend_cuda_create(0);
    CHECK(!bad && strstr(es_last_error(), "ESSENCE_ATTN"), "ESSENCE_ATTN=bogus accepted: %s",
          bad ? "backend made" : es_last_error());
    if (bad) bad->destroy(bad);
    char paths[64];
    snprintf(paths, sizeof paths, "%s", ES_ATTENTION_PATHS);
    for (char *path = strtok(paths, " "); path; path = strtok(NULL, " ")) {
        if (!strcmp(path, "simple")) continue;
        setenv("ESSENCE_ATTN", path, 1);
        es_backend *alt = es_backend_cuda_create(0), *def = gpu;
        unsetenv("ESSENCE_ATTN");
        if (!alt) {
            CHECK(0, "cuda backend with ESSENCE_ATTN=%s: %s", path, es_last_error());
            continue;
        }
        CHECK(alt->attention_fwd != def->attention_fwd && alt->attention_bwd != def->attention_bwd &&
                  !strncmp(alt->attention, path, strlen(path)),
              "ESSENCE_ATTN=%s gave the attention '%s'", path, alt->attention);
        if (path == paths) {  // the default: the same path without ESSENCE_ATTN
            es_backend *d = es_backend_cuda_create(0);
            CHECK(d && !strncmp(d->attention, path, strlen(path)), "the default attention is '%s', not %s",
                  d ? d->attention : es_last_error(), path);
            if (d) d->destroy(d);
        }
        gpu = alt;
        test_attention_kernel(path);
        gpu = def;
        for (int k = 0; k < ES_MEM_KINDS; k++)
            if (k != ES_MEM_WORKSPACE)
                CHECK(alt->mem_now[k] == 0, "cuda %s tally: %zu bytes of %s still counted", path,
                      alt->mem_now[k], es_mem_kind_names[k]);
        alt->destroy(alt);
    }
}

int main(int argc, char **argv) {
    const char *device = argc > 1 ? argv[1] : "cuda";
    cpu = es_backend_cpu_create();
    setenv("ESSENCE_ATTN", "simple", 1);  // the first CUDA backend has the simple attention
    gpu = es_backend_create(device);
    unsetenv("ESSENCE_ATTN");
    if (!cpu || !gpu) {
        fprintf(stderr, "test_cuda_ops: %s backend: %s\n", cpu ? device : "cpu", es_last_error());
        if (cpu) cpu->destroy(cpu);
        return t_no_backend_status(es_last_error());
    }
    es_rng_seed(&rng, 20240611);
    size_t base = gpu->mem_now_total;

    test_embed();
    test_matmul();
    test_rmsnorm(301, 1024, "rmsnorm");
    test_rmsnorm(301 * 16, 128, "rmsnorm qk C=128");
    // the one-pass kernel's widest rows (8 vectors a lane), and the scalar
    // kernels it leaves rows of other widths to
    test_rmsnorm(257, 2048, "rmsnorm C=2048");
    test_rmsnorm(67, 100, "rmsnorm C=100 (scalar path)");
    test_add_rmsnorm(301, 1024, "add_rmsnorm");
    test_add_rmsnorm(257, 2048, "add_rmsnorm C=2048");
    test_add_rmsnorm(67, 100, "add_rmsnorm C=100 (scalar)");
    test_add_rmsnorm(19, 2056, "add_rmsnorm C=2056 (scalar)");
    test_layernorm();
    test_rope();
    // Qwen3-0.6B's heads (16-byte vectors, 8 lanes a head), Llama's D = 64
    // without norm, and head dims the element path takes (not whole vector
    // pairs: D = 24, a half-warp a head; D = 72, a warp and 2 chunks a lane; D = 8)
    test_qkv(300, 16, 8, 128, 1, "D=128 norm");
    test_qkv(257, 8, 2, 64, 0, "D=64");
    test_qkv(97, 6, 2, 24, 1, "D=24 norm (elements)");
    test_qkv(41, 2, 1, 72, 1, "D=72 norm (elements)");
    test_qkv(33, 4, 4, 8, 1, "D=8 norm (elements)");
    test_attention_kernel("simple");
    if (!strcmp(gpu->name, "cuda")) test_attention_paths();
    test_decode(8, 2, 64, "GQA D=64");
    test_decode(16, 4, 128, "GQA D=128");
    test_decode(4, 4, 128, "MHA D=128");
    test_pointwise();
    test_swiglu(301, 1024, 0, "F=1024 (vectors)");
    test_swiglu(257, 129, 0, "F=129 (elements)");
    test_swiglu(65, 96, 1, "F=96 misaligned (elements)");
    test_rows();
    test_loss(12, 5003, 1, "KD V=5003");
    test_loss(6, 151936, 1, "KD V=151936");
    test_loss(12, 5003, 0, "CE only");
    test_loss_topk(12, 5003, 64);
    test_optim();
    test_upload_async();

    // Everything allocated above was freed; only op scratch remains.
    for (int k = 0; k < ES_MEM_KINDS; k++)
        if (k != ES_MEM_WORKSPACE)
            CHECK(gpu->mem_now[k] == 0, "cuda tally: %zu bytes of %s still counted", gpu->mem_now[k],
                  es_mem_kind_names[k]);
    CHECK(gpu->mem_now_total == gpu->mem_now[ES_MEM_WORKSPACE], "cuda tally: total disagrees");
    CHECK(gpu->mem_peak[ES_MEM_ACTS] > 0 && gpu->mem_peak_total > base, "cuda peak not tallied");

    printf("%-32s %10s  %s\n", "op", "rel err", "pass");
    for (int i = 0; i < nrows; i++)
        printf("%-32s %10.2e  %s\n", rows[i].name, rows[i].err, rows[i].err <= TOL ? "ok" : "FAIL");
    gpu->destroy(gpu);
    cpu->destroy(cpu);
    TEST_DONE();
}
