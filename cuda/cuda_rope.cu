// Rotary position embedding, Hugging Face rotate_half convention: pairs
// (j, j + D/2) rotate by pos * inv_freq[j]. The angle is formed in float as
// transformers does; sincosf reduces the range exactly, so long positions
// match the CPU backend. In place is safe: a thread owns both halves of a pair.
#include <stdint.h>

#include "cuda_common.cuh"

// sign = +1 rotates forward, -1 applies the inverse rotation (the backward).
__global__ void rope_kernel(bf16 *out, const bf16 *inp, const int32_t *pos, const float *inv_freq,
                            int N, int H, int D, float sign) {
    int half = D / 2;
    size_t total = (size_t)N * H * half;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        int j = (int)(t % half);
        size_t row = t / half;  // token * H + head
        int i = (int)(row / H);
        float s, c;
        sincosf((float)pos[i] * inv_freq[j], &s, &c);
        s *= sign;
        size_t base = row * D;
        float x1 = bf(inp[base + j]), x2 = bf(inp[base + j + half]);
        out[base + j] = tobf(x1 * c - x2 * s);
        out[base + j + half] = tobf(x2 * c + x1 * s);
    }
}

static void rope(es_backend *be, void *out, const void *inp, const void *pos,
                 const float *inv_freq, int N, int H, int D, float sign) {
    size_t total = (size_t)N * H * (D / 2);
    if (!total) return;
    rope_kernel<<<cuda_blocks(total, 256), 256, 0, cuda_of(be)->stream>>>(
        (bf16 *)out, (const bf16 *)inp, (const int32_t *)pos, inv_freq, N, H, D, sign);
    LAUNCH_CHECK();
}

static void cuda_rope_fwd(es_backend *be, void *out, const void *inp, const void *pos,
                          const float *inv_freq, int N, int H, int D) {
    rope(be, out, inp, pos, inv_freq, N, H, D, 1.0f);
}

static void cuda_rope_bwd(es_backend *be, void *dinp, const void *dout, const void *pos,
                          const float *inv_freq, int N, int H, int D) {
    rope(be, dinp, dout, pos, inv_freq, N, H, D, -1.0f);
}

void cuda_fill_rope(es_backend *be) {
    be->rope_fwd = cuda_rope_fwd;
    be->rope_bwd = cuda_rope_bwd;
}
