// SwiGLU's arithmetic on one element, fp32: host-and-device code, so that
// tests/test_cuda_emul.c checks the kernels' own formulas on the CPU.
#pragma once
#include <math.h>

#include "hd_portable.cuh"

HD_INLINE float swiglu_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// out = silu(g) u
HD_INLINE float swiglu_elem(float g, float u) { return g * swiglu_sigmoid(g) * u; }

// dup = dy silu(g); dgate = dy u silu'(g)
HD_INLINE void swiglu_bwd_elem(float *dgate, float *dup, float dy, float g, float u) {
    float s = swiglu_sigmoid(g);
    *dup = dy * g * s;
    *dgate = dy * u * s * (1.0f + g * (1.0f - s));
}

// The fused op over gu (N, 2F), rows [gate | up], in chunks of 8 outputs of
// out (N, F): chunk k is outputs [8k, 8k + 8) of n = N F. Where `vec` (F a
// multiple of 8, buffers 16-byte aligned) a chunk lies in one row and moves
// as 16-byte vectors; otherwise, and for the last chunk when n is not whole
// chunks, element by element.
HD_INLINE int swiglu_vec(int F, const void *const *bufs, int nbufs) {
    return F % 8 == 0 && hd_all_aligned16(bufs, nbufs);
}

HD_INLINE size_t swiglu_chunks(size_t n) { return (n + 7) / 8; }

// Where output e of out (N, F) finds its gate in gu (N, 2F); up is F further.
HD_INLINE size_t swiglu_gate_at(size_t e, int F) { return e / F * 2 * F + e % F; }

HD_INLINE void swiglu_fwd_chunk(__nv_bfloat16 *out, const __nv_bfloat16 *gu, size_t k, size_t n,
                                int F, int vec) {
    size_t e0 = 8 * k, g0 = swiglu_gate_at(e0, F);
    if (vec && e0 + 8 <= n) {
        bf16x8 g = *(const bf16x8 *)(gu + g0), u = *(const bf16x8 *)(gu + g0 + F), o;
        for (int j = 0; j < 8; j++)
            o.v[j] = __float2bfloat16(swiglu_elem(__bfloat162float(g.v[j]), __bfloat162float(u.v[j])));
        *(bf16x8 *)(out + e0) = o;
        return;
    }
    for (size_t e = e0; e < e0 + 8 && e < n; e++) {
        size_t g = swiglu_gate_at(e, F);
        out[e] = __float2bfloat16(swiglu_elem(__bfloat162float(gu[g]), __bfloat162float(gu[g + F])));
    }
}

// dgu (N, 2F) = [dgate | dup] rows for chunk k of dout (N, F).
HD_INLINE void swiglu_bwd_chunk(__nv_bfloat16 *dgu, const __nv_bfloat16 *dout,
                                const __nv_bfloat16 *gu, size_t k, size_t n, int F, int vec) {
    size_t e0 = 8 * k, g0 = swiglu_gate_at(e0, F);
    float dg, du;
    if (vec && e0 + 8 <= n) {
        bf16x8 g = *(const bf16x8 *)(gu + g0), u = *(const bf16x8 *)(gu + g0 + F);
        bf16x8 dy = *(const bf16x8 *)(dout + e0), og, ou;
        for (int j = 0; j < 8; j++) {
            swiglu_bwd_elem(&dg, &du, __bfloat162float(dy.v[j]), __bfloat162float(g.v[j]),
                            __bfloat162float(u.v[j]));
            og.v[j] = __float2bfloat16(dg);
            ou.v[j] = __float2bfloat16(du);
        }
        *(bf16x8 *)(dgu + g0) = og;
        *(bf16x8 *)(dgu + g0 + F) = ou;
        return;
    }
    for (size_t e = e0; e < e0 + 8 && e < n; e++) {
        size_t g = swiglu_gate_at(e, F);
        swiglu_bwd_elem(&dg, &du, __bfloat162float(dout[e]), __bfloat162float(gu[g]),
                        __bfloat162float(gu[g + F]));
        dgu[g] = __float2bfloat16(dg);
        dgu[g + F] = __float2bfloat16(du);
    }
}
