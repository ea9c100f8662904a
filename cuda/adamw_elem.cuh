// PyTorch's AdamW on one fp32 element, and the multi-tensor kernel's thread
// over its segment table: host-and-device code, so that tests/test_cuda_emul.c
// checks the kernel's own update and indexing on the CPU.
#pragma once
#include <math.h>
#include <stddef.h>

#include "hd_portable.cuh"
extern "C" {
#include "backend.h"
}

// A block of the multi-tensor kernel updates ADAMW_TILE consecutive elements,
// so its threads read coalesced and mostly stay in one segment.
#define ADAMW_THREADS 256
#define ADAMW_TILE (ADAMW_THREADS * 8)

// The new weight: p -= lr wd p, then p -= lr mhat / (sqrt(vhat) + eps), with
// the moments m, v updated in place and bc1, bc2 the bias corrections
// 1 - beta^step.
HD_INLINE float adamw_elem(float *m, float *v, float p, float g, float lr, float beta1, float beta2,
                           float eps, float wd, float bc1, float bc2) {
    float mi = beta1 * *m + (1.0f - beta1) * g;
    float vi = beta2 * *v + (1.0f - beta2) * g * g;
    *m = mi;
    *v = vi;
    p *= 1.0f - lr * wd;
    return p - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
}

// The factor on the gradients: clip / norm when clip > 0 and the norm
// sqrt(sumsq) exceeds it, else 1; formed in double as the CPU backend does.
HD_INLINE float adamw_gscale(double sumsq, float clip) {
    double norm = sqrt(sumsq);
    return clip > 0 && norm > clip ? (float)(clip / norm) : 1.0f;
}

// The segment of segs (nsegs, offsets ascending) that holds element i, or -1
// where i lies between segments.
HD_INLINE int adamw_seg_find(const es_adamw_seg *segs, int nsegs, size_t i) {
    int lo = 0, hi = nsegs - 1, s = -1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (segs[mid].offset <= i) {
            s = mid;
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    return s >= 0 && i - segs[s].offset < segs[s].count ? s : -1;
}

// Thread `thread` of block `block` of the multi-tensor AdamW kernel
// (ADAMW_THREADS a block, ADAMW_TILE elements a block) over n elements: the
// bad-step test, the clipping factor, then its elements of the tile, each with
// its segment's decay. p: the fp32 weights (master, or params themselves);
// pbf: their bf16 copy, or NULL.
HD_INLINE void adamw_thread(__nv_bfloat16 *pbf, float *p, const float *grads, float *m, float *v,
                            const es_adamw_seg *segs, int nsegs, size_t n, double sumsq, float skip,
                            const es_adamw_args *a, size_t block, int thread) {
    if (skip != 0.0f || !isfinite(sumsq)) return;  // a bad step changes nothing
    const float gscale = adamw_gscale(sumsq, a->clip);
    size_t end = (block + 1) * (size_t)ADAMW_TILE < n ? (block + 1) * (size_t)ADAMW_TILE : n;
    size_t lo = 1, hi = 0;  // the segment last found, [lo, hi)
    float wd = 0.0f;
    for (size_t i = block * (size_t)ADAMW_TILE + (size_t)thread; i < end; i += ADAMW_THREADS) {
        if (i < lo || i >= hi) {
            int s = adamw_seg_find(segs, nsegs, i);
            if (s < 0) continue;  // between tensors: not a parameter
            lo = (size_t)segs[s].offset;
            hi = lo + (size_t)segs[s].count;
            wd = segs[s].decay ? a->wd : 0.0f;
        }
        float pi = adamw_elem(m + i, v + i, p[i], grads[i] * gscale, a->lr, a->beta1, a->beta2, a->eps, wd,
                              a->bc1, a->bc2);
        p[i] = pi;
        if (pbf) pbf[i] = __float2bfloat16(pi);
    }
}
