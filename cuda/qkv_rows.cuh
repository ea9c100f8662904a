// Per-lane bodies of the fused QKV kernels (cuda_qkv.cu). A head row of D is
// taken by a group of G lanes (a power of two, at most a warp); lane p of the
// group holds the rope pairs (j, j + D/2) for j in its E-element chunks
// p, p + G, ... (NP of them): E = 8 as 16-byte vectors where D is a multiple
// of 16 and the buffers are aligned, else E = 1. Host-and-device code, so
// that tests/test_cuda_emul.c runs it on the CPU, lane by lane.
#pragma once
#include <math.h>

#include "hd_portable.cuh"

#ifdef __CUDA_ARCH__
#define QR_UNROLL _Pragma("unroll")
#else
#define QR_UNROLL
#endif

#define QR_THREADS 256

// One set of head rows of the fused layout (q, k or v).
typedef struct {
    int count;                  // heads a token
    int off;                    // first column in the fused row
    const __nv_bfloat16 *w;     // norm weights (D), NULL: none
    float *rstd;                // (N * count) when w
    int rope;
} qr_heads;

// G for head dim D (vec: as 16-byte vectors); 0 where the kernels do not
// apply (vectors: D <= 512; elements: D <= 256, 4 chunks a lane).
HD_INLINE int qr_group(int D, int vec) {
    if (vec ? D > 512 : D > 256) return 0;
    int chunks = vec ? D / 16 : D / 2, g = 1;
    while (g < chunks && g < 32) g *= 2;
    return g;
}

// Whether the 16-byte vectors apply: D a multiple of 16, every buffer (NULL
// allowed) 16-byte aligned.
HD_INLINE int qr_vec(int D, const void *const *bufs, int nbufs) {
    return D % 16 == 0 && hd_all_aligned16(bufs, nbufs);
}

// Blocks of QR_THREADS: a group a row up to 8 blocks an SM, enough to fill
// the chip; more would only grow backward's weight-gradient partials.
HD_INLINE int qr_blocks(int N, int heads, int G, int sms) {
    long long b = ((long long)N * heads * G + QR_THREADS - 1) / QR_THREADS;
    long long most = 8LL * sms;
    return (int)(b < 1 ? 1 : b < most ? b : most);
}

template <int E>
HD_INLINE void qr_ld(float *x, const __nv_bfloat16 *p) {
    if (E == 8) {
        bf16x8 v = *(const bf16x8 *)p;
QR_UNROLL
        for (int e = 0; e < E; e++) x[e] = __bfloat162float(v.v[e]);
    } else {
        x[0] = __bfloat162float(p[0]);
    }
}

template <int E>
HD_INLINE void qr_st(__nv_bfloat16 *p, const float *x) {
    if (E == 8) {
        bf16x8 v;
QR_UNROLL
        for (int e = 0; e < E; e++) v.v[e] = __float2bfloat16(x[e]);
        *(bf16x8 *)p = v;
    } else {
        p[0] = __float2bfloat16(x[0]);
    }
}

// Rotates (x1, x2) by p * f, the angle formed in float as transformers does;
// sign -1: the inverse.
HD_INLINE void qr_rotate(float *x1, float *x2, float p, float f, float sign) {
    float s, c;
    sincosf(p * f, &s, &c);
    s *= sign;
    float a = *x1, b = *x2;
    *x1 = a * c - b * s;
    *x2 = b * c + a * s;
}

// First column of this lane's chunk k.
HD_INLINE int qr_col(int lane, int k, int G, int E) { return (lane + k * G) * E; }

// Forward: this lane's pairs of the row at src into a, b; returns its share of
// the row's sum of squares.
template <int E, int NP>
HD_INLINE float qr_fwd_load(float (*a)[E], float (*b)[E], const __nv_bfloat16 *src, int half, int lane,
                            int G) {
    float ss = 0.0f;
QR_UNROLL
    for (int k = 0; k < NP; k++) {
        int j = qr_col(lane, k, G, E);
        if (j >= half) continue;
        qr_ld<E>(a[k], src + j);
        qr_ld<E>(b[k], src + j + half);
QR_UNROLL
        for (int e = 0; e < E; e++) ss += a[k][e] * a[k][e] + b[k][e] * b[k][e];
    }
    return ss;
}

// Forward: normalised by rs and w (when hs.w), rotated (when hs.rope), into
// out (D).
template <int E, int NP>
HD_INLINE void qr_fwd_store(__nv_bfloat16 *out, float (*a)[E], float (*b)[E], const qr_heads *hs, float rs,
                            float p, const float *inv_freq, int half, int lane, int G) {
QR_UNROLL
    for (int k = 0; k < NP; k++) {
        int j = qr_col(lane, k, G, E);
        if (j >= half) continue;
QR_UNROLL
        for (int e = 0; e < E; e++) {
            if (hs->w) {
                a[k][e] *= rs * __bfloat162float(hs->w[j + e]);
                b[k][e] *= rs * __bfloat162float(hs->w[j + e + half]);
            }
            if (hs->rope) qr_rotate(&a[k][e], &b[k][e], p, inv_freq[j + e], 1.0f);
        }
        qr_st<E>(out + j, a[k]);
        qr_st<E>(out + j + half, b[k]);
    }
}

// Backward: this lane's pairs of dy (D) rotated back into ga, gb and (when
// hs.w) of the forward's input x into xa, xb; returns its share of sum w g x.
template <int E, int NP>
HD_INLINE float qr_bwd_load(float (*ga)[E], float (*gb)[E], float (*xa)[E], float (*xb)[E],
                            const __nv_bfloat16 *dy, const __nv_bfloat16 *x, const qr_heads *hs, float p,
                            const float *inv_freq, int half, int lane, int G) {
    float dot = 0.0f;
QR_UNROLL
    for (int k = 0; k < NP; k++) {
        int j = qr_col(lane, k, G, E);
        if (j >= half) continue;
        qr_ld<E>(ga[k], dy + j);
        qr_ld<E>(gb[k], dy + j + half);
        if (hs->rope) {
QR_UNROLL
            for (int e = 0; e < E; e++) qr_rotate(&ga[k][e], &gb[k][e], p, inv_freq[j + e], -1.0f);
        }
        if (!hs->w) continue;
        qr_ld<E>(xa[k], x + j);
        qr_ld<E>(xb[k], x + j + half);
QR_UNROLL
        for (int e = 0; e < E; e++)
            dot += __bfloat162float(hs->w[j + e]) * ga[k][e] * xa[k][e] +
                   __bfloat162float(hs->w[j + e + half]) * gb[k][e] * xb[k][e];
    }
    return dot;
}

// Backward: dx (D) = rs (w g - x kk) when hs.w (acc += g x rs, the norm
// weights' gradient), else the rotated-back g.
template <int E, int NP>
HD_INLINE void qr_bwd_store(__nv_bfloat16 *dx, float (*acc)[2][E], float (*ga)[E], float (*gb)[E],
                            float (*xa)[E], float (*xb)[E], const qr_heads *hs, float rs, float kk, int half,
                            int lane, int G) {
QR_UNROLL
    for (int k = 0; k < NP; k++) {
        int j = qr_col(lane, k, G, E);
        if (j >= half) continue;
        if (hs->w) {
QR_UNROLL
            for (int e = 0; e < E; e++) {
                acc[k][0][e] += ga[k][e] * xa[k][e] * rs;
                acc[k][1][e] += gb[k][e] * xb[k][e] * rs;
                ga[k][e] = rs * (__bfloat162float(hs->w[j + e]) * ga[k][e] - xa[k][e] * kk);
                gb[k][e] = rs * (__bfloat162float(hs->w[j + e + half]) * gb[k][e] - xb[k][e] * kk);
            }
        }
        qr_st<E>(dx + j, ga[k]);
        qr_st<E>(dx + j + half, gb[k]);
    }
}

// This lane's columns of acc into part (D).
template <int E, int NP>
HD_INLINE void qr_store_acc(float *part, float (*acc)[2][E], int half, int lane, int G) {
QR_UNROLL
    for (int k = 0; k < NP; k++) {
        int j = qr_col(lane, k, G, E);
        if (j >= half) continue;
QR_UNROLL
        for (int e = 0; e < E; e++) {
            part[j + e] = acc[k][0][e];
            part[j + e + half] = acc[k][1][e];
        }
    }
}
