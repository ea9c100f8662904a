// Embedding lookups, activations, residual adds and gathered rows. The
// scattering backward ops split columns across threads, so repeated indices
// never race and sums come out in a fixed order. Activations use the
// vectorised exp of cpu_fastmath.h (libm's is a call per element).
#include <stdint.h>
#include <string.h>

#include "cpu_fastmath.h"
#include "cpu_ops.h"

#define SCATTER_COLS 64  // columns per task in scattering sums

void cpu_embed_fwd(es_backend *be, void *out_, const void *tokens_, const void *pos_,
                   const void *wte_, const void *wpe_, int N, int C) {
    (void)be;
    float *out = out_;
    const float *wte = wte_, *wpe = wpe_;
    const int32_t *tokens = tokens_, *pos = pos_;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float *o = out + (size_t)i * C;
        const float *e = wte + (size_t)tokens[i] * C;
        if (wpe) {
            const float *p = wpe + (size_t)pos[i] * C;
            for (int c = 0; c < C; c++) o[c] = e[c] + p[c];
        } else {
            memcpy(o, e, (size_t)C * sizeof(float));
        }
    }
}

// dst[rows[i]] += src[i] over (M, C), column blocks in parallel.
static void scatter_add(float *dst, const float *src, const int32_t *rows, int M, int C) {
    #pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += SCATTER_COLS) {
        int c1 = c0 + SCATTER_COLS < C ? c0 + SCATTER_COLS : C;
        for (int i = 0; i < M; i++) {
            float *d = dst + (size_t)rows[i] * C;
            const float *s = src + (size_t)i * C;
            for (int c = c0; c < c1; c++) d[c] += s[c];
        }
    }
}

void cpu_embed_bwd(es_backend *be, void *dwte, void *dwpe, const void *dout, const void *tokens,
                   const void *pos, int N, int C) {
    (void)be;
    scatter_add(dwte, dout, tokens, N, C);
    if (dwpe) scatter_add(dwpe, dout, pos, N, C);
}

void cpu_swiglu_fwd(es_backend *be, void *out_, const void *gu_, int N, int F) {
    (void)be;
    float *out = out_;
    const float *gu = gu_;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *gate = gu + (size_t)i * 2 * F, *up = gate + F;
        float *o = out + (size_t)i * F;
        for (int c = 0; c < F; c++) {
            float g = gate[c];
            o[c] = g / (1.0f + es_expf(-g)) * up[c];
        }
    }
}

void cpu_swiglu_bwd(es_backend *be, void *dgu_, const void *dout_, const void *gu_, int N, int F) {
    (void)be;
    float *dgu = dgu_;
    const float *dout = dout_, *gu = gu_;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *gate = gu + (size_t)i * 2 * F, *up = gate + F, *dy = dout + (size_t)i * F;
        float *dgate = dgu + (size_t)i * 2 * F, *dup = dgate + F;
        for (int c = 0; c < F; c++) {
            float g = gate[c], s = 1.0f / (1.0f + es_expf(-g));
            dup[c] = dy[c] * g * s;
            dgate[c] = dy[c] * up[c] * s * (1.0f + g * (1.0f - s));
        }
    }
}

#define GELU_K 0.7978845608028654f  // sqrt(2 / pi)
#define GELU_C 0.044715f

void cpu_gelu_fwd(es_backend *be, void *out_, const void *inp_, size_t n) {
    (void)be;
    float *out = out_;
    const float *inp = inp_;
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + es_tanhf(GELU_K * (x + GELU_C * x * x * x)));
    }
}

void cpu_gelu_bwd(es_backend *be, void *dinp_, const void *dout_, const void *inp_, size_t n) {
    (void)be;
    float *dinp = dinp_;
    const float *dout = dout_, *inp = inp_;
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i], u = GELU_K * (x + GELU_C * x * x * x), th = es_tanhf(u);
        float du = GELU_K * (1.0f + 3.0f * GELU_C * x * x);
        float g = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
        dinp[i] = dout[i] * g;
    }
}

void cpu_add(es_backend *be, void *out_, const void *a_, const void *b_, size_t n) {
    (void)be;
    float *out = out_;
    const float *a = a_, *b = b_;
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void cpu_gather_rows(es_backend *be, void *out_, const void *inp_, const void *rows_, int M, int C) {
    (void)be;
    float *out = out_;
    const float *inp = inp_;
    const int32_t *rows = rows_;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++)
        memcpy(out + (size_t)i * C, inp + (size_t)rows[i] * C, (size_t)C * sizeof(float));
}

void cpu_scatter_add_rows(es_backend *be, void *dinp, const void *dout, const void *rows, int M,
                          int C) {
    (void)be;
    scatter_add(dinp, dout, rows, M, C);
}
