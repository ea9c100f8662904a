// The distillation loss over one chunk of student logits (M, V), replaced in
// place by their gradient: weighted cross-entropy on the targets plus
// tau^2 * KL(teacher || student) at temperature tau.
//
// One block per row. A single online pass gathers, per thread, the running
// max and sum of exp for s, s/tau and t/tau, and for the teacher also
// A = sum exp(t/tau - m) (t - s)/tau, so that
//   KL = A / l_t - lse_t + lse_st.
// The partial states merge across the block; a second pass writes the
// gradient. Row sums go to two device doubles, then into the caller's device
// sums in fp32 (loss_sums_add): nothing is read back here.
#include <stdint.h>

#include "cuda_common.cuh"

#define LOSS_THREADS 512

// Online softmax state: max m, sum l of exp(x - m), and a weighted sum a.
struct soft {
    float m, l, a;
};

__device__ __forceinline__ void soft_add(soft *s, float x, float y) {
    if (x > s->m) {
        float c = expf(s->m - x);  // 0 when m was -inf
        s->l *= c;
        s->a *= c;
        s->m = x;
    }
    float e = expf(x - s->m);
    s->l += e;
    s->a += e * y;
}

__device__ __forceinline__ soft soft_merge(soft p, soft q) {
    float m = fmaxf(p.m, q.m);
    if (m == -INFINITY) return p;
    float cp = expf(p.m - m), cq = expf(q.m - m);
    return soft{m, p.l * cp + q.l * cq, p.a * cp + q.a * cq};
}

// smem holds at least one soft per warp.
__device__ soft block_merge(soft s, soft *smem) {
    for (int o = 16; o > 0; o >>= 1) {
        soft t = {__shfl_xor_sync(0xffffffffu, s.m, o), __shfl_xor_sync(0xffffffffu, s.l, o),
                  __shfl_xor_sync(0xffffffffu, s.a, o)};
        s = soft_merge(s, t);
    }
    int warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    __syncthreads();  // smem may still be read from an earlier merge
    if (threadIdx.x % 32 == 0) smem[warp] = s;
    __syncthreads();
    soft r = smem[0];
    for (int w = 1; w < nwarps; w++) r = soft_merge(r, smem[w]);
    return r;
}

__device__ __forceinline__ float lse_of(soft s) { return s.m + logf(s.l); }

__global__ void distill_loss_kernel(double *dsum, bf16 *logits, const bf16 *tlogits,
                                    const int32_t *targets, const float *weights, int V,
                                    float alpha, float tau, float grad_scale) {
    __shared__ soft smem[LOSS_THREADS / 32];
    bf16 *s = logits + (size_t)blockIdx.x * V;
    const bf16 *t = tlogits ? tlogits + (size_t)blockIdx.x * V : NULL;
    float w = weights[blockIdx.x], itau = 1.0f / tau;
    int tgt = targets[blockIdx.x];
    // Unsupervised rows, and rows whose target is no token, carry no loss.
    if (w == 0.0f || tgt < 0 || tgt >= V) {
        for (int v = threadIdx.x; v < V; v += blockDim.x) s[v] = tobf(0.0f);
        return;
    }
    soft s1 = {-INFINITY, 0.0f, 0.0f}, st = s1, tt = s1;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float x = bf(s[v]);
        soft_add(&s1, x, 0.0f);
        if (t) {
            float y = bf(t[v]) * itau;
            soft_add(&st, x * itau, 0.0f);
            soft_add(&tt, y, y - x * itau);
        }
    }
    s1 = block_merge(s1, smem);
    float lse1 = lse_of(s1), starget = bf(s[tgt]), lse_st = 0.0f, lse_tt = 0.0f, kl = 0.0f;
    if (t) {
        st = block_merge(st, smem);
        tt = block_merge(tt, smem);
        lse_st = lse_of(st);
        lse_tt = lse_of(tt);
        kl = tt.a / tt.l - lse_tt + lse_st;
    }
    __syncthreads();  // every thread has read s[tgt] before it is overwritten
    float a = t ? alpha : 1.0f, gs = w * grad_scale, gce = gs * a, gkd = gs * (1.0f - a) * tau;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float x = bf(s[v]), g = gce * (expf(x - lse1) - (v == tgt ? 1.0f : 0.0f));
        if (t) g += gkd * (expf(x * itau - lse_st) - expf(bf(t[v]) * itau - lse_tt));
        s[v] = tobf(g);
    }
    if (threadIdx.x == 0) {
        atomicAdd(dsum, (double)w * (lse1 - starget));
        atomicAdd(dsum + 1, (double)w * tau * tau * kl);
    }
}

// sums[j] += dsum[j] in fp32, as the CPU backend adds each chunk's sum.
__global__ void loss_sums_add(double *sums, const double *dsum) {
    if (threadIdx.x < 2) sums[threadIdx.x] = (double)((float)sums[threadIdx.x] + (float)dsum[threadIdx.x]);
}

static void add_sums(cuda_ctx *c, double *sums) {
    loss_sums_add<<<1, 32, 0, c->stream>>>(sums, c->dsum);
    LAUNCH_CHECK();
}

static void cuda_distill_loss(es_backend *be, double *sums, void *logits, const void *tlogits,
                              const void *targets, const void *weights, int M, int V,
                              float alpha, float tau, float grad_scale) {
    cuda_ctx *c = cuda_of(be);
    if (M <= 0 || V <= 0) return;
    CUDA_CHECK(cudaMemsetAsync(c->dsum, 0, 2 * sizeof(double), c->stream));
    distill_loss_kernel<<<M, LOSS_THREADS, 0, c->stream>>>(
        c->dsum, (bf16 *)logits, (const bf16 *)tlogits, (const int32_t *)targets,
        (const float *)weights, V, alpha, tau, grad_scale);
    LAUNCH_CHECK();
    add_sums(c, sums);
}

// ---- offline teacher given as top-k (id, log-probability) entries ----------
// With q the student softmax, p the listed teacher probabilities and r the
// teacher's remaining mass, the KD gradient is q_v - p_v on the listed ids and
// q_v (1 - r / q_rest) elsewhere. The student's mass outside the listed ids,
// q_rest, is a difference of sums, so those sums are kept in double.

__device__ double block_sum(double x, double *smem) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    __syncthreads();  // smem may still be read from an earlier sum
    if (threadIdx.x % 32 == 0) smem[threadIdx.x / 32] = x;
    __syncthreads();
    double r = 0.0;
    for (int w = 0; w < (int)blockDim.x / 32; w++) r += smem[w];
    return r;
}

// qk (M, K) fp32 scratch: the student's q on the listed ids, kept because the
// first gradient pass overwrites their logits.
__global__ void distill_loss_topk_kernel(double *dsum, float *qk, bf16 *logits,
                                         const int32_t *tids, const float *tlogp,
                                         const int32_t *targets, const float *weights, int V,
                                         int K, float alpha, float grad_scale) {
    __shared__ double smem[2 * LOSS_THREADS / 32];  // also holds one soft per warp
    bf16 *s = logits + (size_t)blockIdx.x * V;
    const int32_t *ids = tids + (size_t)blockIdx.x * K;
    const float *lp = tlogp + (size_t)blockIdx.x * K;
    float *q = qk + (size_t)blockIdx.x * K;
    float w = weights[blockIdx.x];
    int tgt = targets[blockIdx.x];
    if (w == 0.0f || tgt < 0 || tgt >= V) {
        for (int v = threadIdx.x; v < V; v += blockDim.x) s[v] = tobf(0.0f);
        return;
    }
    soft m1 = {-INFINITY, 0.0f, 0.0f};
    for (int v = threadIdx.x; v < V; v += blockDim.x) soft_add(&m1, bf(s[v]), 0.0f);
    float smax = block_merge(m1, (soft *)smem).m;
    double se = 0.0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) se += exp((double)(bf(s[v]) - smax));
    se = block_sum(se, smem);
    double lse = smax + log(se), ce = lse - bf(s[tgt]);
    int has_teacher = K > 0 && ids[0] >= 0;
    double listed_t = 0.0, listed_e = 0.0, kd = 0.0;
    if (has_teacher)
        for (int j = threadIdx.x; j < K; j += blockDim.x) {
            double x = bf(s[ids[j]]), p = exp((double)lp[j]);
            listed_t += p;
            listed_e += exp(x - smax);
            q[j] = (float)exp(x - lse);
            kd += p * ((double)lp[j] - (x - lse));
        }
    listed_t = block_sum(listed_t, smem);
    listed_e = block_sum(listed_e, smem);
    kd = block_sum(kd, smem);
    double rest_t = 0.0, rest_s = 1.0;
    if (has_teacher) {
        rest_t = listed_t < 1.0 ? 1.0 - listed_t : 0.0;
        rest_s = fmax((se - listed_e) / se, 1e-30);
        if (rest_t > 0.0) kd += rest_t * (log(rest_t) - log(rest_s));
    }
    float a = has_teacher ? alpha : 1.0f, gs = w * grad_scale, gce = gs * a;
    float gkd = has_teacher ? gs * (1.0f - a) : 0.0f;
    float gall = gce + gkd * (float)(1.0 - rest_t / rest_s);
    __syncthreads();  // every thread has read the logits it needs
    for (int v = threadIdx.x; v < V; v += blockDim.x)
        s[v] = tobf(gall * (float)exp((double)bf(s[v]) - lse) - (v == tgt ? gce : 0.0f));
    __syncthreads();  // the listed ids are overwritten last
    if (has_teacher)
        for (int j = threadIdx.x; j < K; j += blockDim.x)
            s[ids[j]] = tobf(gce * q[j] + gkd * (q[j] - expf(lp[j])) - (ids[j] == tgt ? gce : 0.0f));
    if (threadIdx.x == 0) {
        atomicAdd(dsum, (double)w * ce);
        atomicAdd(dsum + 1, (double)w * kd);
    }
}

static void cuda_distill_loss_topk(es_backend *be, double *sums, void *logits, const void *tids,
                                   const void *tlogp, const void *targets, const void *weights,
                                   int M, int V, int K, float alpha, float grad_scale) {
    cuda_ctx *c = cuda_of(be);
    if (M <= 0 || V <= 0) return;
    float *qk = (float *)cuda_scratch(be, (size_t)M * (K > 0 ? K : 1) * sizeof(float));
    CUDA_CHECK(cudaMemsetAsync(c->dsum, 0, 2 * sizeof(double), c->stream));
    distill_loss_topk_kernel<<<M, LOSS_THREADS, 0, c->stream>>>(
        c->dsum, qk, (bf16 *)logits, (const int32_t *)tids, (const float *)tlogp,
        (const int32_t *)targets, (const float *)weights, V, K, alpha, grad_scale);
    LAUNCH_CHECK();
    add_sums(c, sums);
}

void cuda_fill_loss(es_backend *be) {
    be->distill_loss = cuda_distill_loss;
    be->distill_loss_topk = cuda_distill_loss_topk;
}
