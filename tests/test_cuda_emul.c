// The CUDA kernels' own code, emulated on the CPU (tests/cuda_emul.cpp), against
// the CPU backend: the one-pass RMSNorm backward lane by lane, SwiGLU forward
// and backward over fused gate|up rows, AdamW. Runs in every build, without
// CUDA or a GPU, so that a change to the kernels' arithmetic or lane layout
// is caught in CI. Inputs are fresh random bf16 values each run (the seed is
// printed); outputs start as NaN, so an element the code forgets stays NaN
// and fails.
#include <stdint.h>
#include <time.h>

#include "backend.h"
#include "common.h"
#include "cuda_emul.h"
#include "test.h"

#define BF16_NAN 0x7fc0
#define BF16_TOL 1e-2  // bf16 outputs: 8 bits of mantissa, a few roundings
#define F32_TOL 1e-5   // fp32 outputs of the same arithmetic in another order

static es_backend *be;
static es_rng rng;

// 16-byte aligned, as the kernels' vector loads need.
static void *aligned(size_t bytes) {
    void *p = aligned_alloc(16, (bytes + 15) / 16 * 16);
    if (!p) {
        fprintf(stderr, "test_cuda_emul: out of memory\n");
        exit(1);
    }
    return p;
}

// n random values of scale s, rounded to bf16: the words in h, the same
// values as floats in f.
static void bf16_rand(uint16_t *h, float *f, size_t n, float s) {
    for (size_t i = 0; i < n; i++) {
        h[i] = emul_to_bf16(s * es_rng_normal(&rng));
        f[i] = emul_from_bf16(h[i]);
    }
}

static void bf16_poison(uint16_t *h, size_t n) {
    for (size_t i = 0; i < n; i++) h[i] = BF16_NAN;
}

static void bf16_to_f32(float *f, const uint16_t *h, size_t n) {
    for (size_t i = 0; i < n; i++) f[i] = emul_from_bf16(h[i]);
}

// N rows of C on a device of `sms` SMs, written and accumulated.
static void test_rmsnorm_bwd(int N, int C, int sms) {
    size_t n = (size_t)N * C;
    uint16_t *g = aligned(n * 2), *x = aligned(n * 2), *w = aligned(C * 2), *dx = aligned(n * 2);
    float *gf = aligned(n * 4), *xf = aligned(n * 4), *wf = aligned(C * 4), *rstd = aligned(N * 4);
    float *dxf = aligned(n * 4), *ref = aligned(n * 4), *dw = aligned(C * 4), *dwref = aligned(C * 4);
    bf16_rand(g, gf, n, 1.0f);
    bf16_rand(x, xf, n, 1.5f);
    bf16_rand(w, wf, C, 1.0f);
    for (int i = 0; i < N; i++) rstd[i] = 0.5f + es_rng_uniform(&rng);
    for (int accumulate = 0; accumulate < 2; accumulate++) {
        if (accumulate)
            bf16_rand(dx, ref, n, 1.0f);  // the gradient already there
        else
            bf16_poison(dx, n);
        for (int c = 0; c < C; c++) dw[c] = dwref[c] = es_rng_normal(&rng);
        int ran = emul_rmsnorm_bwd(dx, dw, g, x, w, rstd, N, C, accumulate, sms);
        CHECK(ran, "rmsnorm_bwd N=%d C=%d: the one-pass kernel should apply", N, C);
        be->rmsnorm_bwd(be, ref, dwref, gf, xf, wf, rstd, N, C, accumulate);
        bf16_to_f32(dxf, dx, n);
        double e = t_rel_err(dxf, ref, n, 1e-6), ew = t_rel_err(dw, dwref, C, 1e-6);
        CHECK(e < BF16_TOL, "rmsnorm_bwd N=%d C=%d sms=%d acc=%d: dx rel err %.3g", N, C, sms, accumulate, e);
        CHECK(ew < F32_TOL, "rmsnorm_bwd N=%d C=%d sms=%d acc=%d: dw rel err %.3g", N, C, sms, accumulate, ew);
    }
    free(g), free(x), free(w), free(dx), free(gf), free(xf), free(wf), free(rstd);
    free(dxf), free(ref), free(dw), free(dwref);
}

// Rows the one-pass kernel must leave to the scalar ones, untouched.
static void test_rmsnorm_bwd_declines(int C) {
    uint16_t row[8] = {0};
    float dw = 1.0f, r = 1.0f;
    CHECK(!emul_rmsnorm_bwd(row, &dw, row, row, row, &r, 1, C, 0, 1) && dw == 1.0f,
          "rmsnorm_bwd C=%d should take the scalar kernels", C);
}

// The fused op over N rows of F: with 16-byte vectors (F a multiple of 8),
// element by element otherwise, and, with `shift`, on buffers one element off
// 16-byte alignment, which must take the element path.
static void test_swiglu(int N, int F, int shift) {
    size_t n = (size_t)N * F, s = (size_t)shift;
    uint16_t *gub = aligned((2 * n + s) * 2), *dyb = aligned((n + s) * 2);
    uint16_t *outb = aligned((n + s) * 2), *dgub = aligned((2 * n + s) * 2);
    uint16_t *gu = gub + s, *dy = dyb + s, *out = outb + s, *dgu = dgub + s;
    float *guf = aligned(2 * n * 4), *dyf = aligned(n * 4), *got = aligned(2 * n * 4);
    float *ref = aligned(2 * n * 4);
    bf16_rand(gu, guf, 2 * n, 3.0f);  // both tails of the sigmoid
    bf16_rand(dy, dyf, n, 1.0f);
    bf16_poison(out, n), bf16_poison(dgu, 2 * n);
    emul_swiglu_fwd(out, gu, N, F);
    emul_swiglu_bwd(dgu, dy, gu, N, F);
    be->swiglu_fwd(be, ref, guf, N, F);
    bf16_to_f32(got, out, n);
    double e = t_rel_err(got, ref, n, 1e-6);
    CHECK(e < BF16_TOL, "swiglu_fwd N=%d F=%d shift=%d rel err %.3g", N, F, shift, e);
    be->swiglu_bwd(be, ref, dyf, guf, N, F);
    bf16_to_f32(got, dgu, 2 * n);
    e = t_rel_err(got, ref, 2 * n, 1e-6);
    CHECK(e < BF16_TOL, "swiglu_bwd N=%d F=%d shift=%d rel err %.3g", N, F, shift, e);
    free(gub), free(dyb), free(outb), free(dgub), free(guf), free(dyf), free(got), free(ref);
}

// A few steps of AdamW on fp32 weights (no master) and on bf16 weights with
// fp32 masters, against the CPU backend's steps from the same state.
static void test_adamw(size_t n, int with_master) {
    float *p = aligned(n * 4), *m = aligned(n * 4), *v = aligned(n * 4), *gr = aligned(n * 4);
    float *pr = aligned(n * 4), *mr = aligned(n * 4), *vr = aligned(n * 4), *got = aligned(n * 4);
    uint16_t *pb = aligned(n * 2);
    for (size_t i = 0; i < n; i++) {
        p[i] = pr[i] = es_rng_normal(&rng);
        m[i] = mr[i] = 0.0f;
        v[i] = vr[i] = 0.0f;
    }
    const float lr = 1e-2f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, wd = 0.05f;
    for (int step = 1; step <= 3; step++) {
        for (size_t i = 0; i < n; i++) gr[i] = 0.1f * es_rng_normal(&rng);
        float bc1 = (float)(1.0 - pow(beta1, step)), bc2 = (float)(1.0 - pow(beta2, step));
        float gs = step == 2 ? 0.37f : 1.0f;  // step 2 clips
        if (with_master) {
            bf16_poison(pb, n);
            emul_adamw(pb, p, gr, m, v, n, gs, lr, beta1, beta2, eps, wd, bc1, bc2);
        } else {
            emul_adamw(p, NULL, gr, m, v, n, gs, lr, beta1, beta2, eps, wd, bc1, bc2);
        }
        be->adamw(be, pr, NULL, gr, mr, vr, n, gs, lr, beta1, beta2, eps, wd, step);
    }
    double e = t_rel_err(p, pr, n, 1e-6), em = t_rel_err(m, mr, n, 1e-6), ev = t_rel_err(v, vr, n, 1e-12);
    CHECK(e < F32_TOL && em < F32_TOL && ev < F32_TOL, "adamw n=%zu master=%d: rel err p %.3g m %.3g v %.3g", n,
          with_master, e, em, ev);
    if (with_master) {
        bf16_to_f32(got, pb, n);
        e = t_rel_err(got, pr, n, 1e-6);
        CHECK(e < BF16_TOL, "adamw bf16 params n=%zu rel err %.3g", n, e);
    }
    free(p), free(m), free(v), free(gr), free(pr), free(mr), free(vr), free(got), free(pb);
}

int main(void) {
    be = es_backend_cpu_create();
    if (!be) {
        fprintf(stderr, "test_cuda_emul: %s\n", es_last_error());
        return 1;
    }
    uint64_t seed = (uint64_t)time(NULL);
    printf("seed %llu\n", (unsigned long long)seed);
    es_rng_seed(&rng, seed);
    // Each VPL (1, 2, 4, 8 vectors a lane), rows that leave lanes idle (136,
    // 1000), more warps than rows and more rows than warps (3 SMs: 24 warps).
    int shapes[][2] = {{5, 128}, {37, 136}, {100, 512}, {9, 1000}, {64, 1024}, {33, 2048}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        test_rmsnorm_bwd(shapes[s][0], shapes[s][1], 132);
        test_rmsnorm_bwd(shapes[s][0], shapes[s][1], 3);
    }
    test_rmsnorm_bwd_declines(100);   // not whole 16-byte vectors
    test_rmsnorm_bwd_declines(2056);  // more than 8 vectors a lane
    test_swiglu(7, 64, 0);   // vectors
    test_swiglu(5, 200, 1);  // misaligned: elements
    test_swiglu(9, 29, 0);   // rows not whole vectors; a last partial chunk
    test_swiglu(6, 36, 0);   // whole 8-byte halves, not vectors: chunks across rows
    test_adamw(1000, 0);
    test_adamw(1000, 1);
    be->destroy(be);
    TEST_DONE();
}
