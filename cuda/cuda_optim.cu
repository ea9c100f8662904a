// Optimizer arithmetic on fp32 state: gradient norm, AdamW. AdamW
// updates the fp32 master weights and refreshes the bf16 parameters from them.
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

// PyTorch's AdamW (adamw_elem.cuh) over n elements of g = grads * gscale.
// master NULL: params are the fp32 weights themselves.
__global__ void adamw_kernel(void *params, float *master, const float *grads, float *m, float *v,
                             size_t n, float gscale, float lr, float beta1, float beta2, float eps, float wd,
                             float bc1, float bc2) {
    float *p = master ? master : (float *)params;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float pi = adamw_elem(m + i, v + i, p[i], grads[i] * gscale, lr, beta1, beta2, eps, wd, bc1, bc2);
        p[i] = pi;
        if (master) ((bf16 *)params)[i] = tobf(pi);
    }
}

static double cuda_sumsq(es_backend *be, const float *x, size_t n) {
    cuda_ctx *c = cuda_of(be);
    double h = 0.0;
    if (!n) return h;
    CUDA_CHECK(cudaMemsetAsync(c->dsum, 0, sizeof(double), c->stream));
    // Enough blocks to fill the GPU; more would only add atomics.
    unsigned blocks = cuda_blocks(n, THREADS) < 1024 ? cuda_blocks(n, THREADS) : 1024;
    sumsq_kernel<<<blocks, THREADS, 0, c->stream>>>(c->dsum, x, n);
    LAUNCH_CHECK();
    CUDA_CHECK(cudaMemcpyAsync(&h, c->dsum, sizeof h, cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return h;
}

static void cuda_adamw(es_backend *be, void *params, float *master, const float *grads, float *m,
                       float *v, size_t n, float gscale, float lr, float beta1, float beta2,
                       float eps, float wd, int step) {
    if (!n) return;
    float bc1 = (float)(1.0 - pow(beta1, step)), bc2 = (float)(1.0 - pow(beta2, step));
    adamw_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_of(be)->stream>>>(
        params, master, grads, m, v, n, gscale, lr, beta1, beta2, eps, wd, bc1, bc2);
    LAUNCH_CHECK();
}

void cuda_fill_optim(es_backend *be) {
    be->sumsq = cuda_sumsq;
    be->adamw = cuda_adamw;
}
