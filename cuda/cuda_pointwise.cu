// Embedding lookups, activations, residual adds and gathered rows: bf16 in and
// out, fp32 math; GELU, the add and SwiGLU (over the fused gate|up rows, where
// the rows are whole vectors) read 16-byte vectors. Scattering sums use
// atomics (fp32 into the fp32 embedding gradients, bf16 into activation
// gradients), so repeated indices are safe. Each element is read before it
// is written (by the same thread), so outputs may alias inputs.
#include <stdint.h>

#include "cuda_common.cuh"
#include "hd_portable.cuh"
#include "swiglu_elem.cuh"

#define THREADS 256
#define GRID_STRIDE(i, n)                                                      \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); \
         i += (size_t)gridDim.x * blockDim.x)

__global__ void embed_fwd_kernel(bf16 *out, const int32_t *tokens, const int32_t *pos,
                                 const bf16 *wte, const bf16 *wpe, int N, int C) {
    GRID_STRIDE(t, (size_t)N * C) {
        size_t i = t / C, c = t % C;
        float e = bf(wte[(size_t)tokens[i] * C + c]);
        if (wpe) e += bf(wpe[(size_t)pos[i] * C + c]);
        out[t] = tobf(e);
    }
}

__global__ void embed_bwd_kernel(float *dwte, float *dwpe, const bf16 *dout,
                                 const int32_t *tokens, const int32_t *pos, int N, int C) {
    GRID_STRIDE(t, (size_t)N * C) {
        size_t i = t / C, c = t % C;
        float g = bf(dout[t]);
        atomicAdd(dwte + (size_t)tokens[i] * C + c, g);
        if (dwpe) atomicAdd(dwpe + (size_t)pos[i] * C + c, g);
    }
}

// One chunk of 8 outputs a thread (swiglu_elem.cuh).
__global__ void swiglu_fwd_kernel(bf16 *out, const bf16 *gu, size_t n, int F, int vec) {
    GRID_STRIDE(k, swiglu_chunks(n)) swiglu_fwd_chunk(out, gu, k, n, F, vec);
}

__global__ void swiglu_bwd_kernel(bf16 *dgu, const bf16 *dout, const bf16 *gu, size_t n, int F,
                                  int vec) {
    GRID_STRIDE(k, swiglu_chunks(n)) swiglu_bwd_chunk(dgu, dout, gu, k, n, F, vec);
}

#define GELU_K 0.7978845608028654f  // sqrt(2 / pi)
#define GELU_C 0.044715f

// The elementwise ops with 16-byte loads: out = f(x, y) on vectors of 8
// bf16, then the rest one by one.
enum { PW_ADD, PW_GELU_FWD, PW_GELU_BWD };

template <int OP>
__device__ __forceinline__ float pw_elem(float x, float y) {
    if (OP == PW_ADD) return x + y;
    float th = tanhf(GELU_K * (x + GELU_C * x * x * x));
    if (OP == PW_GELU_FWD) return 0.5f * x * (1.0f + th);
    float du = GELU_K * (1.0f + 3.0f * GELU_C * x * x);  // PW_GELU_BWD: y is dout
    return y * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du);
}

// out (n) = OP(x, y) (y unused by gelu_fwd, may be NULL): vectors [0, nv)
// through 16-byte loads, elements [8 nv, n) one by one.
template <int OP>
__global__ void pointwise_kernel(bf16 *out, const bf16 *x, const bf16 *y, size_t nv, size_t n) {
    GRID_STRIDE(i, nv) {
        bf16x8 xv = ((const bf16x8 *)x)[i], yv, o;
        if (OP != PW_GELU_FWD) yv = ((const bf16x8 *)y)[i];
#pragma unroll
        for (int j = 0; j < 8; j++)
            o.v[j] = tobf(pw_elem<OP>(bf(xv.v[j]), OP != PW_GELU_FWD ? bf(yv.v[j]) : 0.0f));
        ((bf16x8 *)out)[i] = o;
    }
    GRID_STRIDE(t, n - 8 * nv) {
        size_t i = 8 * nv + t;
        out[i] = tobf(pw_elem<OP>(bf(x[i]), OP != PW_GELU_FWD ? bf(y[i]) : 0.0f));
    }
}

__global__ void gather_rows_kernel(bf16 *out, const bf16 *inp, const int32_t *rows, int M, int C) {
    GRID_STRIDE(t, (size_t)M * C) out[t] = inp[(size_t)rows[t / C] * C + t % C];
}

__global__ void scatter_add_rows_kernel(bf16 *dinp, const bf16 *dout, const int32_t *rows, int M,
                                        int C) {
    GRID_STRIDE(t, (size_t)M * C) atomicAdd(dinp + (size_t)rows[t / C] * C + t % C, dout[t]);
}

static cudaStream_t st(es_backend *be) { return cuda_of(be)->stream; }

static void cuda_embed_fwd(es_backend *be, void *out, const void *tokens, const void *pos,
                           const void *wte, const void *wpe, int N, int C) {
    size_t n = (size_t)N * C;
    if (!n) return;
    embed_fwd_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, st(be)>>>(
        (bf16 *)out, (const int32_t *)tokens, (const int32_t *)pos, (const bf16 *)wte,
        (const bf16 *)wpe, N, C);
    LAUNCH_CHECK();
}

static void cuda_embed_bwd(es_backend *be, void *dwte, void *dwpe, const void *dout,
                           const void *tokens, const void *pos, int N, int C) {
    size_t n = (size_t)N * C;
    if (!n) return;
    embed_bwd_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, st(be)>>>(
        (float *)dwte, (float *)dwpe, (const bf16 *)dout, (const int32_t *)tokens,
        (const int32_t *)pos, N, C);
    LAUNCH_CHECK();
}

static void cuda_swiglu_fwd(es_backend *be, void *out, const void *gu, int N, int F) {
    size_t n = (size_t)N * F;
    if (!n) return;
    const void *bufs[] = {out, gu};
    int vec = swiglu_vec(F, bufs, 2);
    swiglu_fwd_kernel<<<cuda_blocks(swiglu_chunks(n), THREADS), THREADS, 0, st(be)>>>(
        (bf16 *)out, (const bf16 *)gu, n, F, vec);
    LAUNCH_CHECK();
}

static void cuda_swiglu_bwd(es_backend *be, void *dgu, const void *dout, const void *gu, int N,
                            int F) {
    size_t n = (size_t)N * F;
    if (!n) return;
    const void *bufs[] = {dgu, dout, gu};
    int vec = swiglu_vec(F, bufs, 3);
    swiglu_bwd_kernel<<<cuda_blocks(swiglu_chunks(n), THREADS), THREADS, 0, st(be)>>>(
        (bf16 *)dgu, (const bf16 *)dout, (const bf16 *)gu, n, F, vec);
    LAUNCH_CHECK();
}

// Launches pointwise_kernel<OP> over n elements, by vectors where every buffer
// is 16-byte aligned (element by element otherwise).
template <int OP>
static void pointwise(es_backend *be, void *out, const void *x, const void *y, size_t n) {
    if (!n) return;
    int vec = hd_aligned16(out) && hd_aligned16(x) && (!y || hd_aligned16(y));
    size_t nv = vec ? n / 8 : 0, tail = n - 8 * nv;
    pointwise_kernel<OP><<<cuda_blocks(nv > tail ? nv : tail, THREADS), THREADS, 0, st(be)>>>(
        (bf16 *)out, (const bf16 *)x, (const bf16 *)y, nv, n);
    LAUNCH_CHECK();
}

static void cuda_gelu_fwd(es_backend *be, void *out, const void *inp, size_t n) {
    pointwise<PW_GELU_FWD>(be, out, inp, NULL, n);
}

static void cuda_gelu_bwd(es_backend *be, void *dinp, const void *dout, const void *inp,
                          size_t n) {
    pointwise<PW_GELU_BWD>(be, dinp, inp, dout, n);
}

static void cuda_add(es_backend *be, void *out, const void *a, const void *b, size_t n) {
    pointwise<PW_ADD>(be, out, a, b, n);
}

static void cuda_gather_rows(es_backend *be, void *out, const void *inp, const void *rows, int M,
                             int C) {
    size_t n = (size_t)M * C;
    if (!n) return;
    gather_rows_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, st(be)>>>(
        (bf16 *)out, (const bf16 *)inp, (const int32_t *)rows, M, C);
    LAUNCH_CHECK();
}

static void cuda_scatter_add_rows(es_backend *be, void *dinp, const void *dout, const void *rows,
                                  int M, int C) {
    size_t n = (size_t)M * C;
    if (!n) return;
    scatter_add_rows_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, st(be)>>>(
        (bf16 *)dinp, (const bf16 *)dout, (const int32_t *)rows, M, C);
    LAUNCH_CHECK();
}

void cuda_fill_pointwise(es_backend *be) {
    be->embed_fwd = cuda_embed_fwd;
    be->embed_bwd = cuda_embed_bwd;
    be->swiglu_fwd = cuda_swiglu_fwd;
    be->swiglu_bwd = cuda_swiglu_bwd;
    be->gelu_fwd = cuda_gelu_fwd;
    be->gelu_bwd = cuda_gelu_bwd;
    be->add = cuda_add;
    be->gather_rows = cuda_gather_rows;
    be->scatter_add_rows = cuda_scatter_add_rows;
}
