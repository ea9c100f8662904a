// The fused QKV projection's rows split into q, k, v, with Qwen3's per-head
// RMSNorm and rope, token by token; and the backward into the fused rows. The
// arithmetic is rmsnorm's and rope's own (cpu_rms_row, cpu_rope_token,
// cpu_rmsnorm_bwd_rows), so the fused op equals their composition.
#include <stdint.h>
#include <string.h>

#include "cpu_ops.h"

// heads rows of D from src into dst, each normalised by w (rstd saved) or copied.
static void heads_fwd(float *dst, float *rstd, const float *src, const float *w, int heads, int D,
                      float eps) {
    if (!w) {
        memcpy(dst, src, (size_t)heads * D * sizeof(float));
        return;
    }
    for (int h = 0; h < heads; h++)
        rstd[h] = cpu_rms_row(dst + (size_t)h * D, src + (size_t)h * D, w, D, eps);
}

void cpu_qkv_fwd(es_backend *be, void *q_, void *k_, void *v_, float *q_rstd, float *k_rstd,
                 const void *qkv_, const void *q_norm, const void *k_norm, const void *pos_,
                 const float *inv_freq, int N, int H, int KVH, int D, float eps) {
    (void)be;
    float *q = q_, *k = k_, *v = v_;
    const float *qkv = qkv_;
    const int32_t *pos = pos_;
    size_t QD = (size_t)H * D, KD = (size_t)KVH * D, W = QD + 2 * KD;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *row = qkv + (size_t)i * W;
        float *qi = q + (size_t)i * QD, *ki = k + (size_t)i * KD;
        heads_fwd(qi, q_rstd ? q_rstd + (size_t)i * H : NULL, row, q_norm, H, D, eps);
        heads_fwd(ki, k_rstd ? k_rstd + (size_t)i * KVH : NULL, row + QD, k_norm, KVH, D, eps);
        memcpy(v + (size_t)i * KD, row + QD + KD, KD * sizeof(float));
        cpu_rope_token(qi, qi, (float)pos[i], inv_freq, H, D, 1.0f);
        cpu_rope_token(ki, ki, (float)pos[i], inv_freq, KVH, D, 1.0f);
    }
}

void cpu_qkv_bwd(es_backend *be, void *dqkv_, void *dq_norm, void *dk_norm, const void *dq_,
                 const void *dk_, const void *dv_, const void *qkv_, const void *q_norm,
                 const void *k_norm, const float *q_rstd, const float *k_rstd, const void *pos_,
                 const float *inv_freq, int N, int H, int KVH, int D) {
    (void)be;
    float *dqkv = dqkv_;
    const float *dq = dq_, *dk = dk_, *dv = dv_, *qkv = qkv_;
    const int32_t *pos = pos_;
    size_t QD = (size_t)H * D, KD = (size_t)KVH * D, W = QD + 2 * KD;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float *row = dqkv + (size_t)i * W;
        cpu_rope_token(row, dq + (size_t)i * QD, (float)pos[i], inv_freq, H, D, -1.0f);
        cpu_rope_token(row + QD, dk + (size_t)i * KD, (float)pos[i], inv_freq, KVH, D, -1.0f);
        memcpy(row + QD + KD, dv + (size_t)i * KD, KD * sizeof(float));
    }
    if (!q_norm) return;
    // the norm's backward in place over the rotated-back rows
    cpu_rmsnorm_bwd_rows(dqkv, dq_norm, dqkv, qkv, q_norm, q_rstd, N * H, D, H, W, 0);
    cpu_rmsnorm_bwd_rows(dqkv + QD, dk_norm, dqkv + QD, qkv + QD, k_norm, k_rstd, N * KVH, D, KVH,
                         W, 0);
}
