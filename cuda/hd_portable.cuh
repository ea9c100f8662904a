// What the host-and-device headers of cuda/ (norm_rows.cuh, swiglu_elem.cuh,
// adamw_elem.cuh) need from CUDA, also for a plain host C++ compiler: there
// __host__/__device__ vanish and bf16 is a 16-bit word converted as
// cuda_bf16.h converts (round to nearest even, NaN kept), so that
// tests/test_cuda_emul.c runs the kernels' own element and lane code on a
// machine without CUDA.
#pragma once

#ifdef __CUDACC__
#include <cuda_bf16.h>
#else
#include <stdint.h>
#include <string.h>

#define __host__
#define __device__
#define __forceinline__ inline
#define __align__(n) __attribute__((aligned(n)))

typedef struct {
    uint16_t x;
} __nv_bfloat16;

inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = (uint32_t)h.x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    __nv_bfloat16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u)  // NaN stays a (quiet) NaN
        h.x = (uint16_t)((u >> 16) | 0x40);
    else
        h.x = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return h;
}
#endif

#define HD_INLINE __host__ __device__ __forceinline__

// 8 bf16 values: one 16-byte load or store.
typedef struct __align__(16) {
    __nv_bfloat16 v[8];
} bf16x8;

// Whether a buffer can be read by 16-byte vectors.
HD_INLINE int hd_aligned16(const void *p) { return (size_t)p % 16 == 0; }

// Whether every one of n buffers (NULL counts as aligned) can be.
HD_INLINE int hd_all_aligned16(const void *const *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (!hd_aligned16(bufs[i])) return 0;
    return 1;
}
