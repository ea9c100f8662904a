// Low-precision copies of matmul weights for decoding (es_backend.pack_weights):
// bf16, or int8 with one scale per row. A decode step multiplies a few rows by
// every weight once, so it is bound by the weights' bytes; these kernels read
// 2 or 1 bytes per weight, expand them to fp32 in registers and accumulate in
// fp32. Each output is one dot product whose order of operations depends on
// neither the batch nor the thread count.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "cpu_ops.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LOWP_AVX2 1
#else
#define LOWP_AVX2 0
#endif

// Products with more rows than this (prefill) keep sgemm on the fp32 weights:
// compute-bound there, sgemm is as fast at 16 rows and faster beyond
// (perf/README.md, generation against transformers).
#define LOWP_MAX_N 16
// Products smaller than this many multiply-adds (tens of microseconds) run on
// one thread: waking sleeping threads would cost more than they save.
#define LOWP_THREADED(e, N) ((size_t)(e)->OC * (size_t)(e)->C * (size_t)(N) >= ((size_t)1 << 20))

struct cpu_lowp {
    const void *w;  // the fp32 matrix this copy stands for: the lookup key
    int OC, C;
    es_wfmt fmt;
    void *q;       // (OC, C) bf16 (uint16) or int8
    float *scale;  // (OC) int8 only
};

// Index of the first entry whose key is >= w (entries sorted by key).
static int lowp_lower(const cpu_ctx *ctx, const void *w) {
    int lo = 0, hi = ctx->nlowp;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if ((const char *)ctx->lowp[mid].w < (const char *)w) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static void quantize_bf16(uint16_t *q, const float *w, size_t n) {
    for (size_t i = 0; i < n; i++) q[i] = es_f32_to_bf16(w[i]);
}

// Written to vectorise: max |w| as the largest magnitude bit pattern (finite
// floats order as their bits do), ternaries rather than fmaxf/fminf (calls,
// for their NaN rules).
static void quantize_int8(int8_t *q, float *scale, const float *w, int C) {
    uint32_t bits = 0;
    for (int c = 0; c < C; c++) {
        uint32_t u;
        memcpy(&u, &w[c], 4);
        u &= 0x7fffffffu;
        bits = u > bits ? u : bits;
    }
    float amax;
    memcpy(&amax, &bits, 4);
    *scale = amax / 127.0f;
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int c = 0; c < C; c++) {
        float x = rintf(w[c] * inv);
        q[c] = (int8_t)(int)(x > 127.0f ? 127.0f : x < -127.0f ? -127.0f : x);
    }
}

static void lowp_release(es_backend *be, struct cpu_lowp *e) {
    be->free(be, e->q);
    be->free(be, e->scale);
}

int cpu_pack_weights(es_backend *be, const void *w_, int OC, int C, es_wfmt fmt) {
    cpu_ctx *ctx = be->ctx;
    const float *w = w_;
    if (fmt != ES_WFMT_BF16 && fmt != ES_WFMT_INT8)
        return es_fail("cpu backend: no packed weights of format %d", (int)fmt);
    size_t n = (size_t)OC * C, bytes = fmt == ES_WFMT_BF16 ? 2 * n : n;
    struct cpu_lowp e = {w, OC, C, fmt, NULL, NULL};
    e.q = be->alloc(be, (bytes + 3) / 4, ES_DT_F32, ES_MEM_WEIGHTS);
    if (fmt == ES_WFMT_INT8) e.scale = be->alloc(be, (size_t)OC, ES_DT_F32, ES_MEM_WEIGHTS);
    if (!e.q || (fmt == ES_WFMT_INT8 && !e.scale)) {
        lowp_release(be, &e);
        return ES_ERR;
    }
    #pragma omp parallel for schedule(static)
    for (int o = 0; o < OC; o++) {
        const float *row = w + (size_t)o * C;
        if (fmt == ES_WFMT_BF16) quantize_bf16((uint16_t *)e.q + (size_t)o * C, row, (size_t)C);
        else quantize_int8((int8_t *)e.q + (size_t)o * C, e.scale + o, row, C);
    }
    int i = lowp_lower(ctx, w);
    if (i < ctx->nlowp && ctx->lowp[i].w == w) {  // packed again: the new copy replaces it
        lowp_release(be, &ctx->lowp[i]);
        ctx->lowp[i] = e;
        return ES_OK;
    }
    if (ctx->nlowp == ctx->cap_lowp) {
        ctx->cap_lowp = ctx->cap_lowp ? 2 * ctx->cap_lowp : 64;
        struct cpu_lowp *grown = es_xmalloc((size_t)ctx->cap_lowp * sizeof *grown);
        if (ctx->nlowp) memcpy(grown, ctx->lowp, (size_t)ctx->nlowp * sizeof *grown);
        free(ctx->lowp);
        ctx->lowp = grown;
    }
    memmove(ctx->lowp + i + 1, ctx->lowp + i, (size_t)(ctx->nlowp - i) * sizeof *ctx->lowp);
    ctx->lowp[i] = e;
    ctx->nlowp++;
    return ES_OK;
}

void cpu_lowp_drop(es_backend *be, const void *p, size_t bytes) {
    cpu_ctx *ctx = be->ctx;
    int i = lowp_lower(ctx, p), j = i;
    while (j < ctx->nlowp && (const char *)ctx->lowp[j].w < (const char *)p + bytes)
        lowp_release(be, &ctx->lowp[j++]);
    memmove(ctx->lowp + i, ctx->lowp + j, (size_t)(ctx->nlowp - j) * sizeof *ctx->lowp);
    ctx->nlowp -= j - i;
}

void cpu_lowp_free(es_backend *be) {
    cpu_ctx *ctx = be->ctx;
    for (int i = 0; i < ctx->nlowp; i++) lowp_release(be, &ctx->lowp[i]);
    free(ctx->lowp);
    ctx->lowp = NULL;
    ctx->nlowp = ctx->cap_lowp = 0;
}

// Weight c of a packed row, as fp32 (before the int8 row scale).
static inline float lowp_at(es_wfmt fmt, const void *row, int c) {
    return fmt == ES_WFMT_BF16 ? es_bf16_to_f32(((const uint16_t *)row)[c])
                                  : (float)((const int8_t *)row)[c];
}

static inline const void *lowp_row(const struct cpu_lowp *e, int o) {
    return e->fmt == ES_WFMT_BF16 ? (const void *)((const uint16_t *)e->q + (size_t)o * e->C)
                                  : (const void *)((const int8_t *)e->q + (size_t)o * e->C);
}

#if LOWP_AVX2
#define AI static inline __attribute__((always_inline))
#define KR 4  // rows per task

AI __m256 load8(es_wfmt fmt, const void *row, int c) {
    if (fmt == ES_WFMT_BF16) {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + c));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    __m128i b = _mm_loadl_epi64((const __m128i *)((const int8_t *)row + c));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}

AI float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// y[r * kn + j] = row r . x[j] over C, for kr rows and kn inputs (constants
// once inlined: kr x kn accumulators, kr expanded weights and kn inputs stay
// in the 16 ymm registers). Every dot product takes the same steps whatever
// the block, so an output depends on neither the batch nor the threads.
AI void dot_block(float *y, es_wfmt fmt, const void *const *rows, const float *const *x, int C,
                  const int kr, const int kn) {
    __m256 s[4][4];
    for (int r = 0; r < kr; r++)
        for (int j = 0; j < kn; j++) s[r][j] = _mm256_setzero_ps();
    int c = 0;
    for (; c + 8 <= C; c += 8) {
        __m256 w[4], v[4];
        for (int r = 0; r < kr; r++) w[r] = load8(fmt, rows[r], c);
        for (int j = 0; j < kn; j++) v[j] = _mm256_loadu_ps(x[j] + c);
        for (int r = 0; r < kr; r++)
            for (int j = 0; j < kn; j++) s[r][j] = _mm256_fmadd_ps(w[r], v[j], s[r][j]);
    }
    for (int r = 0; r < kr; r++)
        for (int j = 0; j < kn; j++) {
            float acc = hsum8(s[r][j]);
            for (int t = c; t < C; t++) acc = fmaf(lowp_at(fmt, rows[r], t), x[j][t], acc);
            y[r * kn + j] = acc;
        }
}

// Outputs [n0, n0 + kn) x rows[0, kr) of the block at row o0 (rows past OC
// repeat the last one and are not stored). fmaf spelled out, so that no
// block's inlined copy contracts differently from another's.
AI void store_block(float *out, const float *y, const struct cpu_lowp *e, const float *bias,
                    int n0, int o0, const int kr, const int kn) {
    for (int r = 0; r < kr && o0 + r < e->OC; r++)
        for (int j = 0; j < kn; j++) {
            float b = bias ? bias[o0 + r] : 0.0f, v = y[r * kn + j];
            out[(size_t)(n0 + j) * e->OC + o0 + r] =
                e->fmt == ES_WFMT_INT8 ? fmaf(v, e->scale[o0 + r], b) : v + b;
        }
}

// Rows and inputs taken together: 2 x 4 for groups of four inputs (fewest
// weight expansions per FMA), and for the 1 to 3 left 4 x 1, 4 x 2, 2 x 3.
AI void block(float *out, const float *inp, const struct cpu_lowp *e, const float *bias, int n0,
              int o0, const void *const *rows, es_wfmt fmt, const int kr, const int kn) {
    const float *x[4];
    float y[16];
    for (int j = 0; j < kn; j++) x[j] = inp + (size_t)(n0 + j) * e->C;
    for (int r0 = 0; r0 < KR; r0 += kr) {
        dot_block(y, fmt, rows + r0, x, e->C, kr, kn);
        store_block(out, y, e, bias, n0, o0 + r0, kr, kn);
    }
}

AI void rows_block(float *out, const float *inp, const struct cpu_lowp *e, const float *bias,
                   int N, int o0, es_wfmt fmt) {
    const void *rows[KR];
    for (int r = 0; r < KR; r++) rows[r] = lowp_row(e, o0 + r < e->OC ? o0 + r : e->OC - 1);
    int n0 = 0;
    for (; n0 + 4 <= N; n0 += 4) block(out, inp, e, bias, n0, o0, rows, fmt, 2, 4);
    switch (N - n0) {
    case 1: block(out, inp, e, bias, n0, o0, rows, fmt, 4, 1); break;
    case 2: block(out, inp, e, bias, n0, o0, rows, fmt, 4, 2); break;
    case 3: block(out, inp, e, bias, n0, o0, rows, fmt, 2, 3); break;
    }
}

static void lowp_matmul(float *out, const float *inp, const struct cpu_lowp *e, const float *bias,
                        int N) {
    int blocks = (e->OC + KR - 1) / KR;
    #pragma omp parallel for schedule(static) if (LOWP_THREADED(e, N))
    for (int b = 0; b < blocks; b++) {
        if (e->fmt == ES_WFMT_BF16) rows_block(out, inp, e, bias, N, b * KR, ES_WFMT_BF16);
        else rows_block(out, inp, e, bias, N, b * KR, ES_WFMT_INT8);
    }
}
#else
// Portable: one row at a time, in order.
static void lowp_matmul(float *out, const float *inp, const struct cpu_lowp *e, const float *bias,
                        int N) {
    const int C = e->C, OC = e->OC;
    #pragma omp parallel for schedule(static) if (LOWP_THREADED(e, N))
    for (int o = 0; o < OC; o++) {
        const void *row = lowp_row(e, o);
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C;
            float y = 0.0f;
            for (int c = 0; c < C; c++) y += lowp_at(e->fmt, row, c) * x[c];
            if (e->fmt == ES_WFMT_INT8) y *= e->scale[o];
            out[(size_t)n * OC + o] = y + (bias ? bias[o] : 0.0f);
        }
    }
}
#endif

int cpu_lowp_matmul(es_backend *be, float *out, const float *inp, const void *w, const float *bias,
                    int N, int C, int OC) {
    const cpu_ctx *ctx = be->ctx;
    if (N > LOWP_MAX_N || !ctx->nlowp) return 0;
    int i = lowp_lower(ctx, w);
    if (i == ctx->nlowp || ctx->lowp[i].w != w || ctx->lowp[i].OC != OC || ctx->lowp[i].C != C)
        return 0;
    lowp_matmul(out, inp, &ctx->lowp[i], bias, N);
    return 1;
}
