// Optimizer arithmetic on fp32 state: gradient norm, the bad-step count,
// AdamW. AdamW updates all tensors in one launch over the flat buffers,
// updating the fp32 master weights and refreshing the bf16 parameters from
// them; it reads the norm and the bad-step count on the device, so the host
// waits for neither.
#include "adamw_elem.cuh"
#include "cuda_common.cuh"

#define THREADS 256

// dsum[0] += sum x^2: each block reduces in double, then one atomic per block.
__global__ void sumsq_kernel(double *dsum, const float *x, size_t n) {
    __shared__ double part[THREADS / 32];
    double s = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        s += (double)x[i] * x[i];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < THREADS / 32; w++) s += part[w];
        atomicAdd(dsum, s);
    }
}

// One thread: the statistics are a handful of values.
__global__ void count_nonfinite_kernel(float *out, const double *x, size_t n) {
    float bad = 0.0f;
    for (size_t i = 0; i < n; i++) bad += !isfinite(x[i]);
    *out = bad;
}

__global__ void adamw_kernel(bf16 *pbf, float *p, const float *grads, float *m, float *v,
                             const es_adamw_seg *segs, int nsegs, size_t n, const double *sumsq,
                             const float *skip, es_adamw_args a) {
    adamw_thread(pbf, p, grads, m, v, segs, nsegs, n, *sumsq, *skip, &a, blockIdx.x, threadIdx.x);
}

static void cuda_sumsq(es_backend *be, double *out, const float *x, size_t n) {
    cudaStream_t st = cuda_of(be)->stream;
    CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double), st));
    if (!n) return;
    // Enough blocks to fill the GPU; more would only add atomics.
    unsigned blocks = cuda_blocks(n, THREADS) < 1024 ? cuda_blocks(n, THREADS) : 1024;
    sumsq_kernel<<<blocks, THREADS, 0, st>>>(out, x, n);
    LAUNCH_CHECK();
}

static void cuda_count_nonfinite(es_backend *be, float *out, const double *x, size_t n) {
    count_nonfinite_kernel<<<1, 1, 0, cuda_of(be)->stream>>>(out, x, n);
    LAUNCH_CHECK();
}

static void cuda_adamw(es_backend *be, void *params, float *master, const float *grads, float *m,
                       float *v, const void *segs, int nsegs, size_t n, const double *sumsq,
                       const float *skip, const es_adamw_args *a) {
    if (!n || !nsegs) return;
    size_t blocks = (n + ADAMW_TILE - 1) / ADAMW_TILE;
    CUDA_REQUIRE(blocks <= 0x7fffffffu, "cuda adamw: %zu elements too many", n);
    adamw_kernel<<<(unsigned)blocks, ADAMW_THREADS, 0, cuda_of(be)->stream>>>(
        master ? (bf16 *)params : NULL, master ? master : (float *)params, grads, m, v,
        (const es_adamw_seg *)segs, nsegs, n, sumsq, skip, *a);
    LAUNCH_CHECK();
}

void cuda_fill_optim(es_backend *be) {
    be->sumsq = cuda_sumsq;
    be->count_nonfinite = cuda_count_nonfinite;
    be->adamw = cuda_adamw;
}
