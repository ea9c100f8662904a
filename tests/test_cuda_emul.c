// The CUDA kernels' own code, emulated on the CPU (tests/cuda_emul.cpp), against
// the CPU backend: the vectorised RMSNorm forward (plain and fused with the
// residual add) and one-pass backward lane by lane, SwiGLU forward and
// backward over fused gate|up rows, the fused QKV split with qk-norm and rope
// and its backward, AdamW. Runs in every build, without CUDA or a GPU, so
// that a change to the kernels' arithmetic or lane layout is caught in CI.
// Inputs are fresh random bf16 values each run (the seed is printed); outputs
// start as NaN, so an element the code forgets stays NaN and fails.
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

// The vectorised forward, plain and fused with the residual add, against the
// CPU backend (on the sum rounded to bf16, as the kernel stores it); the fused
// op's out and rstd must be the plain forward's of its own res bit for bit,
// which recomputation in backward relies on.
static void test_rmsnorm_fwd(int N, int C) {
    size_t n = (size_t)N * C;
    const float eps = 1e-6f;
    uint16_t *a = aligned(n * 2), *b = aligned(n * 2), *w = aligned(C * 2), *res = aligned(n * 2);
    uint16_t *out = aligned(n * 2), *out2 = aligned(n * 2);
    float *af = aligned(n * 4), *bf = aligned(n * 4), *wf = aligned(C * 4), *sum = aligned(n * 4);
    float *got = aligned(n * 4), *ref = aligned(n * 4), *rstd = aligned(N * 4), *rstd2 = aligned(N * 4);
    float *rref = aligned(N * 4);
    bf16_rand(a, af, n, 1.5f);
    bf16_rand(b, bf, n, 1.0f);
    bf16_rand(w, wf, C, 1.0f);
    bf16_poison(out, n);
    t_poison(rstd, N);
    CHECK(emul_rmsnorm_fwd(NULL, out, rstd, a, NULL, w, N, C, eps),
          "rmsnorm_fwd N=%d C=%d: the vectorised kernel should apply", N, C);
    be->rmsnorm_fwd(be, ref, rref, af, wf, N, C, eps);
    bf16_to_f32(got, out, n);
    double e = t_rel_err(got, ref, n, 1e-6), er = t_rel_err(rstd, rref, N, 1e-6);
    CHECK(e < BF16_TOL && er < F32_TOL, "rmsnorm_fwd N=%d C=%d: rel err out %.3g rstd %.3g", N, C, e, er);

    bf16_poison(res, n), bf16_poison(out, n);
    t_poison(rstd, N);
    CHECK(emul_rmsnorm_fwd(res, out, rstd, a, b, w, N, C, eps),
          "add_rmsnorm_fwd N=%d C=%d: the vectorised kernel should apply", N, C);
    be->add(be, sum, af, bf, n);
    int same = 1;
    for (size_t i = 0; i < n; i++) {
        same &= res[i] == emul_to_bf16(sum[i]);
        sum[i] = emul_from_bf16(emul_to_bf16(sum[i]));
    }
    CHECK(same, "add_rmsnorm_fwd N=%d C=%d: res is not a + b rounded to bf16", N, C);
    be->rmsnorm_fwd(be, ref, rref, sum, wf, N, C, eps);
    bf16_to_f32(got, out, n);
    e = t_rel_err(got, ref, n, 1e-6), er = t_rel_err(rstd, rref, N, 1e-6);
    CHECK(e < BF16_TOL && er < F32_TOL, "add_rmsnorm_fwd N=%d C=%d: rel err out %.3g rstd %.3g", N, C, e, er);
    bf16_poison(out2, n);
    emul_rmsnorm_fwd(NULL, out2, rstd2, res, NULL, w, N, C, eps);
    CHECK(!memcmp(out, out2, n * 2) && !memcmp(rstd, rstd2, N * 4),
          "add_rmsnorm_fwd N=%d C=%d: out, rstd differ from rmsnorm_fwd of its res", N, C);
    free(a), free(b), free(w), free(res), free(out), free(out2), free(af), free(bf), free(wf), free(sum);
    free(got), free(ref), free(rstd), free(rstd2), free(rref);
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

// Rows the vectorised kernels must leave to the scalar ones, untouched.
static void test_rmsnorm_declines(int C) {
    uint16_t row[8] = {0};
    float dw = 1.0f, r = 1.0f;
    CHECK(!emul_rmsnorm_bwd(row, &dw, row, row, row, &r, 1, C, 0, 1) && dw == 1.0f,
          "rmsnorm_bwd C=%d should take the scalar kernels", C);
    CHECK(!emul_rmsnorm_fwd(row, row, &r, row, row, row, 1, C, 1e-6f) && r == 1.0f,
          "add_rmsnorm_fwd C=%d should take the scalar kernel", C);
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

// The fused QKV split, qk-norm and rope (`norm`) and its backward on a device
// of `sms` SMs; `shift` moves the bf16 buffers one element off 16-byte
// alignment, which the vector path must leave to the element path.
static void test_qkv(int N, int H, int KVH, int D, int norm, int sms, int shift) {
    size_t nq = (size_t)N * H * D, nk = (size_t)N * KVH * D, nw = nq + 2 * nk, s = (size_t)shift;
    size_t nqr = (size_t)N * H, nkr = (size_t)N * KVH;
    int32_t *pos = aligned((size_t)N * 4);
    float *inv_freq = aligned((size_t)D / 2 * 4);
    for (int i = 0; i < N; i++) pos[i] = (int32_t)(es_rng_u64(&rng) % 40960);
    for (int j = 0; j < D / 2; j++) inv_freq[j] = powf(1e6f, -2.0f * j / D);
    // bf16 buffers (words) with their float values for the CPU backend
    uint16_t *b[9];
    size_t len[9] = {nw, D, D, nq, nk, nk, nq, nk, nk};  // qkv, qn, kn, q, k, v, dq, dk, dv
    for (int i = 0; i < 9; i++) b[i] = (uint16_t *)aligned((len[i] + s) * 2) + s;
    uint16_t *dqkv = (uint16_t *)aligned((nw + s) * 2) + s;
    float *f[9];
    for (int i = 0; i < 9; i++) f[i] = aligned(len[i] * 4);
    bf16_rand(b[0], f[0], nw, 2.0f);
    for (int i = 1; i < 3; i++) bf16_rand(b[i], f[i], D, 1.0f);
    for (int i = 6; i < 9; i++) bf16_rand(b[i], f[i], len[i], 1.0f);
    for (int i = 3; i < 6; i++) bf16_poison(b[i], len[i]);
    float *qr = aligned(nqr * 4), *kr = aligned(nkr * 4), *rq = aligned(nqr * 4), *rk = aligned(nkr * 4);
    t_poison(qr, nqr), t_poison(kr, nkr);
    float *ref = aligned(nw * 4), *got = aligned(nw * 4);
    const uint16_t *qn = norm ? b[1] : NULL, *kn = norm ? b[2] : NULL;
    const float *qnf = norm ? f[1] : NULL, *knf = norm ? f[2] : NULL;
    int ran = emul_qkv_fwd(b[3], b[4], b[5], norm ? qr : NULL, norm ? kr : NULL, b[0], qn, kn, pos, inv_freq, N, H,
                           KVH, D, 1e-6f, sms);
    CHECK(ran, "qkv D=%d: the kernels should apply", D);
    // the CPU backend's q, k, v into ref, one after another
    be->qkv_fwd(be, ref, ref + nq, ref + nq + nk, rq, rk, f[0], qnf, knf, pos, inv_freq, N, H, KVH, D, 1e-6f);
    const char *what[3] = {"q", "k", "v"};
    size_t at = 0;
    for (int i = 0; i < 3; i++) {
        bf16_to_f32(got, b[3 + i], len[3 + i]);
        double e = t_rel_err(got, ref + at, len[3 + i], 1e-6);
        CHECK(e < BF16_TOL, "qkv_fwd %s N=%d D=%d norm=%d sms=%d shift=%d: rel err %.3g", what[i], N, D, norm, sms,
              shift, e);
        at += len[3 + i];
    }
    if (norm) {
        double e = t_rel_err(qr, rq, nqr, 1e-6), ek = t_rel_err(kr, rk, nkr, 1e-6);
        CHECK(e < F32_TOL && ek < F32_TOL, "qkv_fwd rstd D=%d: rel err %.3g %.3g", D, e, ek);
    }
    // backward from the CPU's rstd
    float dn[4][256];
    for (int j = 0; j < D; j++) dn[0][j] = dn[2][j] = es_rng_normal(&rng), dn[1][j] = dn[3][j] = es_rng_normal(&rng);
    bf16_poison(dqkv, nw);
    emul_qkv_bwd(dqkv, dn[0], dn[1], b[6], b[7], b[8], b[0], qn, kn, rq, rk, pos, inv_freq, N, H, KVH, D, sms);
    be->qkv_bwd(be, ref, dn[2], dn[3], f[6], f[7], f[8], f[0], qnf, knf, rq, rk, pos, inv_freq, N, H, KVH, D);
    bf16_to_f32(got, dqkv, nw);
    double e = t_rel_err(got, ref, nw, 1e-6);
    CHECK(e < BF16_TOL, "qkv_bwd dqkv N=%d D=%d norm=%d sms=%d shift=%d: rel err %.3g", N, D, norm, sms, shift, e);
    if (norm) {
        double eq = t_rel_err(dn[0], dn[2], D, 1e-6), ek = t_rel_err(dn[1], dn[3], D, 1e-6);
        CHECK(eq < F32_TOL && ek < F32_TOL, "qkv_bwd dq_norm, dk_norm D=%d sms=%d: rel err %.3g %.3g", D, sms, eq, ek);
    }
    for (int i = 0; i < 9; i++) free(b[i] - s), free(f[i]);
    free(dqkv - s), free(pos), free(inv_freq), free(qr), free(kr), free(rq), free(rk), free(ref), free(got);
}

// A head dim the kernels refuse (elements past 256), untouched.
static void test_qkv_declines(void) {
    uint16_t w[8] = {0};
    int32_t p = 0;
    float f = 1.0f;
    CHECK(!emul_qkv_fwd(w, w, w, NULL, NULL, w, NULL, NULL, &p, &f, 1, 1, 1, 264, 1e-6f, 1),
          "qkv D=264 (not whole vectors) should be refused");
}

// A few steps of the multi-tensor AdamW on fp32 weights (no master) and on
// bf16 weights with fp32 masters, against the CPU backend's steps from the
// same state: tensors with and without decay, gaps between them, tensors that
// cross the kernel's tiles and one inside a tile; step 2 clips (the factor
// formed from the sum of squares as the kernel does); then bad steps (the
// skip count set, a non-finite norm) change nothing.
static void test_adamw(int with_master) {
    const es_adamw_seg segs[] = {{.offset = 0, .count = 2500, .decay = 1},    {.offset = 2500, .count = 3, .decay = 0},
                                 {.offset = 2510, .count = 1700, .decay = 1}, {.offset = 4210, .count = 1, .decay = 0},
                                 {.offset = 4300, .count = 2000, .decay = 0}, {.offset = 6300, .count = 50, .decay = 1}};
    const int nsegs = (int)(sizeof segs / sizeof segs[0]);
    const size_t n = 6400;  // 4 tiles of 2048; 6350.. and the gaps lie in no tensor
    float *p = aligned(n * 4), *m = aligned(n * 4), *v = aligned(n * 4), *gr = aligned(n * 4);
    float *pr = aligned(n * 4), *mr = aligned(n * 4), *vr = aligned(n * 4), *got = aligned(n * 4);
    uint16_t *pb = aligned(n * 2);
    int32_t *tab = be->alloc(be, (size_t)nsegs * ES_ADAMW_SEG_I32, ES_DT_I32, ES_MEM_INDEX);
    double *ss = be->alloc(be, 1, ES_DT_F64, ES_MEM_WORKSPACE);
    float *skip = be->alloc(be, 1, ES_DT_F32, ES_MEM_WORKSPACE);
    be->upload(be, tab, segs, (size_t)nsegs * ES_ADAMW_SEG_I32, ES_DT_I32);
    *skip = 0.0f;
    for (size_t i = 0; i < n; i++) {
        p[i] = pr[i] = es_rng_normal(&rng);
        m[i] = mr[i] = 0.0f;
        v[i] = vr[i] = 0.0f;
    }
    if (with_master) bf16_poison(pb, n);
    const float beta1 = 0.9f, beta2 = 0.95f;
    for (int step = 1; step <= 4; step++) {
        for (size_t i = 0; i < n; i++) gr[i] = 0.1f * es_rng_normal(&rng);
        be->sumsq(be, ss, gr, n);
        es_adamw_args a = {.lr = 1e-2f, .beta1 = beta1, .beta2 = beta2, .eps = 1e-8f, .wd = 0.05f,
                           .clip = step == 2 ? 0.37f * (float)sqrt(*ss) : 0.0f,  // step 2 clips
                           .bc1 = (float)(1.0 - pow(beta1, step)), .bc2 = (float)(1.0 - pow(beta2, step))};
        float sk = step == 4 ? 1.0f : 0.0f;  // step 4 is a bad one
        emul_adamw(with_master ? (void *)pb : (void *)p, with_master ? p : NULL, gr, m, v, segs, nsegs, n, *ss, sk, &a);
        if (step < 4) be->adamw(be, pr, NULL, gr, mr, vr, tab, nsegs, n, ss, skip, &a);
        if (step == 4) emul_adamw(with_master ? (void *)pb : (void *)p, with_master ? p : NULL, gr, m, v, segs, nsegs,
                                  n, NAN, 0.0f, &a);
    }
    double e = t_rel_err(p, pr, n, 1e-6), em = t_rel_err(m, mr, n, 1e-6), ev = t_rel_err(v, vr, n, 1e-12);
    CHECK(e < F32_TOL && em < F32_TOL && ev < F32_TOL, "adamw master=%d: rel err p %.3g m %.3g v %.3g", with_master,
          e, em, ev);
    int gaps = 1;  // untouched: the initial weight, zero moments (and a NaN bf16 copy)
    for (size_t i = 0; i < n; i++)
        if (i % 50 == 0 || (i >= 2503 && i < 2510) || (i >= 4211 && i < 4300) || i >= 6350) {
            int inside = 0;
            for (int k = 0; k < nsegs; k++) inside |= i >= segs[k].offset && i - segs[k].offset < segs[k].count;
            if (inside) continue;
            gaps &= p[i] == pr[i] && m[i] == 0.0f && v[i] == 0.0f && (!with_master || pb[i] == BF16_NAN);
        }
    CHECK(gaps, "adamw master=%d touched an element outside every tensor", with_master);
    if (with_master) {
        for (int k = 0; k < nsegs; k++) {  // the bf16 copy of every updated weight
            size_t o = segs[k].offset, c = segs[k].count;
            bf16_to_f32(got + o, pb + o, c);
            e = t_rel_err(got + o, pr + o, c, 1e-6);
            CHECK(e < BF16_TOL, "adamw bf16 params of tensor %d rel err %.3g", k, e);
        }
    }
    be->free(be, tab), be->free(be, ss), be->free(be, skip);
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
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) test_rmsnorm_fwd(shapes[s][0], shapes[s][1]);
    test_rmsnorm_declines(100);   // not whole 16-byte vectors
    test_rmsnorm_declines(2056);  // more than 8 vectors a lane
    test_swiglu(7, 64, 0);   // vectors
    test_swiglu(5, 200, 1);  // misaligned: elements
    test_swiglu(9, 29, 0);   // rows not whole vectors; a last partial chunk
    test_swiglu(6, 36, 0);   // whole 8-byte halves, not vectors: chunks across rows
    // Qwen3's heads (16-byte vectors, 8 lanes a head) on many SMs and few
    // (groups taking many rows), D = 64 without norm, and the element path:
    // D = 24 (half a warp a head), 72 (a warp, 2 chunks a lane), misaligned
    test_qkv(37, 16, 8, 128, 1, 132, 0);
    test_qkv(37, 16, 8, 128, 1, 1, 0);
    test_qkv(20, 8, 2, 64, 0, 3, 0);
    test_qkv(9, 6, 2, 24, 1, 2, 0);
    test_qkv(7, 2, 1, 72, 1, 1, 0);
    test_qkv(11, 4, 2, 128, 1, 2, 1);
    test_qkv_declines();
    test_adamw(0);
    test_adamw(1);
    be->destroy(be);
    TEST_DONE();
}
