// Key/value cache ops for generation: row appends and one-query attention
// over each sequence's cached keys (bf16 cache, fp32 arithmetic). One block
// per (sequence, head): scores go to scratch, then softmax, then the
// weighted sum of values with threads over the head dimension.
#include <stdint.h>

#include "cuda_common.cuh"

#define DECODE_THREADS 128

__global__ void kv_append_kernel(bf16 *kc, bf16 *vc, const bf16 *k, const bf16 *v,
                                 const int32_t *rows, int N, int W) {
    size_t total = (size_t)N * W;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        size_t i = t / W, j = t % W, dst = (size_t)rows[i] * W + j;
        kc[dst] = k[t];
        vc[dst] = v[t];
    }
}

static void cuda_kv_append(es_backend *be, void *kcache, void *vcache, const void *k,
                           const void *v, const void *rows, int N, int W) {
    size_t total = (size_t)N * W;
    if (!total) return;
    kv_append_kernel<<<cuda_blocks(total, 256), 256, 0, cuda_of(be)->stream>>>(
        (bf16 *)kcache, (bf16 *)vcache, (const bf16 *)k, (const bf16 *)v, (const int32_t *)rows,
        N, W);
    LAUNCH_CHECK();
}

// Block-wide reduction of one value per thread (max when is_max, else sum).
__device__ float block_reduce(float x, int is_max, float *shared) {
    for (int o = 16; o > 0; o >>= 1) {
        float y = __shfl_xor_sync(0xffffffffu, x, o);
        x = is_max ? fmaxf(x, y) : x + y;
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    __syncthreads();  // shared may still be read by a previous reduction
    if (lane == 0) shared[warp] = x;
    __syncthreads();
    x = shared[0];
    for (int w = 1; w < nwarps; w++) x = is_max ? fmaxf(x, shared[w]) : x + shared[w];
    return x;
}

__global__ void attention_decode_kernel(bf16 *out, const bf16 *q, const bf16 *kc, const bf16 *vc,
                                        const int32_t *start, const int32_t *len, int H, int KVH,
                                        int D, int max_len, float *scores) {
    __shared__ float shared[DECODE_THREADS / 32];
    int t = blockIdx.x, b = t / H, g = (t % H) / (H / KVH), n = len[b];
    size_t W = (size_t)KVH * D;
    const bf16 *qi = q + (size_t)t * D;
    const bf16 *kb = kc + (size_t)start[b] * W + (size_t)g * D;
    const bf16 *vb = vc + (size_t)start[b] * W + (size_t)g * D;
    float *sc = scores + (size_t)t * max_len;
    float scale = rsqrtf((float)D), mx = -INFINITY;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const bf16 *kj = kb + (size_t)j * W;
        float s = 0.0f;
        for (int d = 0; d < D; d++) s += bf(qi[d]) * bf(kj[d]);
        sc[j] = s * scale;
        mx = fmaxf(mx, sc[j]);
    }
    mx = block_reduce(mx, 1, shared);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float p = __expf(sc[j] - mx);
        sc[j] = p;
        sum += p;
    }
    sum = block_reduce(sum, 0, shared);  // its barriers also publish sc[]
    float inv = 1.0f / sum;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < n; j++) acc += sc[j] * bf(vb[(size_t)j * W + d]);
        out[(size_t)t * D + d] = tobf(acc * inv);
    }
}

static void cuda_attention_decode(es_backend *be, void *out, const void *q, const void *kcache,
                                  const void *vcache, const void *start, const void *len, int B,
                                  int H, int KVH, int D, int max_len) {
    if (B < 1) return;
    // A bad grouping would divide by zero on the device and read another head silently.
    CUDA_REQUIRE(KVH > 0 && H % KVH == 0 && max_len > 0,
                 "cuda attention_decode: %d heads over %d kv heads, max_len %d", H, KVH, max_len);
    float *scores = (float *)cuda_scratch(be, (size_t)B * H * max_len * sizeof(float));
    attention_decode_kernel<<<B * H, DECODE_THREADS, 0, cuda_of(be)->stream>>>(
        (bf16 *)out, (const bf16 *)q, (const bf16 *)kcache, (const bf16 *)vcache,
        (const int32_t *)start, (const int32_t *)len, H, KVH, D, max_len, scores);
    LAUNCH_CHECK();
}

void cuda_fill_decode(es_backend *be) {
    be->kv_append = cuda_kv_append;
    be->attention_decode = cuda_attention_decode;
}
