// Rotary position embedding, Hugging Face rotate_half convention: pairs
// (j, j + D/2) rotate by pos * inv_freq[j]. The angle is formed in float
// exactly as transformers does (float inv_freq, float product) so that long
// positions round the same way; only cos/sin are taken in double.
#include <math.h>
#include <stdint.h>

#include "cpu_ops.h"

void cpu_rope_token(float *out, const float *inp, float p, const float *inv_freq, int H, int D,
                    float sign) {
    int half = D / 2;
    for (int j = 0; j < half; j++) {
        double angle = (double)(p * inv_freq[j]);
        float c = (float)cos(angle), s = sign * (float)sin(angle);
        for (int h = 0; h < H; h++) {
            size_t base = (size_t)h * D;
            float x1 = inp[base + j], x2 = inp[base + j + half];
            out[base + j] = x1 * c - x2 * s;
            out[base + j + half] = x2 * c + x1 * s;
        }
    }
}

static void rope_apply(float *out, const float *inp, const int32_t *pos, const float *inv_freq,
                       int N, int H, int D, float sign) {
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        size_t o = (size_t)i * H * D;
        cpu_rope_token(out + o, inp + o, (float)pos[i], inv_freq, H, D, sign);
    }
}

void cpu_rope_fwd(es_backend *be, void *out, const void *inp, const void *pos,
                  const float *inv_freq, int N, int H, int D) {
    (void)be;
    rope_apply(out, inp, pos, inv_freq, N, H, D, 1.0f);
}

void cpu_rope_bwd(es_backend *be, void *dinp, const void *dout, const void *pos,
                  const float *inv_freq, int N, int H, int D) {
    (void)be;
    rope_apply(dinp, dout, pos, inv_freq, N, H, D, -1.0f);
}
