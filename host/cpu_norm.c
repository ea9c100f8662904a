// RMSNorm and LayerNorm over rows. Row statistics are summed in double; the
// weight gradients are summed per column block so no two threads share one.
#include <math.h>
#include <string.h>

#include "cpu_ops.h"

#define NORM_COLS 64  // columns per task in the weight-gradient sums

// One row: y (C) = x / rms(x) * w; returns the row's rstd.
static float rmsnorm_row(float *y, const float *x, const float *w, int C, float eps) {
    double ss = 0.0;
    for (int c = 0; c < C; c++) ss += (double)x[c] * x[c];
    float r = (float)(1.0 / sqrt(ss / C + eps));
    for (int c = 0; c < C; c++) y[c] = x[c] * r * w[c];
    return r;
}

void cpu_rmsnorm_fwd(es_backend *be, void *out_, float *rstd, const void *inp_, const void *w_,
                     int N, int C, float eps) {
    (void)be;
    float *out = out_;
    const float *inp = inp_, *w = w_;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++)
        rstd[i] = rmsnorm_row(out + (size_t)i * C, inp + (size_t)i * C, w, C, eps);
}

void cpu_add_rmsnorm_fwd(es_backend *be, void *res_, void *out_, float *rstd, const void *a_,
                         const void *b_, const void *w_, int N, int C, float eps) {
    (void)be;
    float *res = res_, *out = out_;
    const float *a = a_, *b = b_, *w = w_;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float *x = res + (size_t)i * C;
        const float *ai = a + (size_t)i * C, *bi = b + (size_t)i * C;
        for (int c = 0; c < C; c++) x[c] = ai[c] + bi[c];
        rstd[i] = rmsnorm_row(out + (size_t)i * C, x, w, C, eps);
    }
}

void cpu_rmsnorm_bwd(es_backend *be, void *dinp_, void *dw_, const void *dout_, const void *inp_,
                     const void *w_, const float *rstd, int N, int C, int accumulate) {
    (void)be;
    float *dinp = dinp_, *dw = dw_;
    const float *dout = dout_, *inp = inp_, *w = w_;
    // dx = r * (w * dy) - r^3 / C * x * sum(w * dy * x)
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C, *dy = dout + (size_t)i * C;
        float *dx = dinp + (size_t)i * C;
        float r = rstd[i];
        double dot = 0.0;
        for (int c = 0; c < C; c++) dot += (double)w[c] * dy[c] * x[c];
        float k = (float)(dot * r * r * r / C);
        if (accumulate)
            for (int c = 0; c < C; c++) dx[c] += r * w[c] * dy[c] - k * x[c];
        else
            for (int c = 0; c < C; c++) dx[c] = r * w[c] * dy[c] - k * x[c];
    }
    #pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += NORM_COLS) {
        int c1 = c0 + NORM_COLS < C ? c0 + NORM_COLS : C;
        float acc[NORM_COLS] = {0};
        for (int i = 0; i < N; i++) {
            const float *x = inp + (size_t)i * C, *dy = dout + (size_t)i * C;
            float r = rstd[i];
            for (int c = c0; c < c1; c++) acc[c - c0] += dy[c] * x[c] * r;
        }
        for (int c = c0; c < c1; c++) dw[c] += acc[c - c0];
    }
}

void cpu_layernorm_fwd(es_backend *be, void *out_, float *mean, float *rstd, const void *inp_,
                       const void *w_, const void *b_, int N, int C, float eps) {
    (void)be;
    float *out = out_;
    const float *inp = inp_, *w = w_, *b = b_;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        float *y = out + (size_t)i * C;
        double s = 0.0;
        for (int c = 0; c < C; c++) s += x[c];
        double mu = s / C, ss = 0.0;
        for (int c = 0; c < C; c++) ss += ((double)x[c] - mu) * ((double)x[c] - mu);
        float m = (float)mu, r = (float)(1.0 / sqrt(ss / C + eps));
        for (int c = 0; c < C; c++) y[c] = (x[c] - m) * r * w[c] + (b ? b[c] : 0.0f);
        mean[i] = m;
        rstd[i] = r;
    }
}

void cpu_layernorm_bwd(es_backend *be, void *dinp_, void *dw_, void *db_, const void *dout_,
                       const void *inp_, const void *w_, const float *mean, const float *rstd,
                       int N, int C, int accumulate) {
    (void)be;
    float *dinp = dinp_, *dw = dw_, *db = db_;
    const float *dout = dout_, *inp = inp_, *w = w_;
    // with g = w * dy and xhat = (x - mean) * r:
    // dx = r * (g - mean(g) - xhat * mean(g * xhat))
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C, *dy = dout + (size_t)i * C;
        float *dx = dinp + (size_t)i * C;
        float m = mean[i], r = rstd[i];
        double sg = 0.0, sgx = 0.0;
        for (int c = 0; c < C; c++) {
            double g = (double)w[c] * dy[c];
            sg += g;
            sgx += g * ((x[c] - m) * r);
        }
        float mg = (float)(sg / C), mgx = (float)(sgx / C);
        for (int c = 0; c < C; c++) {
            float v = r * (w[c] * dy[c] - mg - (x[c] - m) * r * mgx);
            dx[c] = accumulate ? dx[c] + v : v;
        }
    }
    #pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += NORM_COLS) {
        int c1 = c0 + NORM_COLS < C ? c0 + NORM_COLS : C;
        float aw[NORM_COLS] = {0}, ab[NORM_COLS] = {0};
        for (int i = 0; i < N; i++) {
            const float *x = inp + (size_t)i * C, *dy = dout + (size_t)i * C;
            float m = mean[i], r = rstd[i];
            for (int c = c0; c < c1; c++) {
                aw[c - c0] += dy[c] * (x[c] - m) * r;
                ab[c - c0] += dy[c];
            }
        }
        for (int c = c0; c < c1; c++) {
            if (dw) dw[c] += aw[c - c0];
            if (db) db[c] += ab[c - c0];
        }
    }
}
