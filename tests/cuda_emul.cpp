// Runs the CUDA kernels' host-and-device code on the CPU (tests/cuda_emul.h):
// built by the host C++ compiler, where cuda/hd_portable.cuh makes
// __host__/__device__ vanish and emulates bf16. The loops below stand for the
// kernels' thread blocks, warps and lanes; the arithmetic is the headers'.
#include "cuda_emul.h"

#include "adamw_elem.cuh"
#include "norm_rows.cuh"
#include "qkv_rows.cuh"
#include "swiglu_elem.cuh"

typedef __nv_bfloat16 bf16;

uint16_t emul_to_bf16(float x) { return __float2bfloat16(x).x; }

float emul_from_bf16(uint16_t h) {
    bf16 b;
    b.x = h;
    return __bfloat162float(b);
}

// __shfl_xor_sync's butterfly over the 32 lanes (cuda_common.cuh's warp_sum),
// in its order: every lane ends with the same sum.
static void warp_sum(float *v) {
    for (int o = NR_LANES / 2; o > 0; o >>= 1) {
        float t[NR_LANES];
        for (int l = 0; l < NR_LANES; l++) t[l] = v[l] + v[l ^ o];
        for (int l = 0; l < NR_LANES; l++) v[l] = t[l];
    }
}

// cuda_dw_sum (rmsnorm_dw_sum_kernel): dw (C) += the column sums of part
// (rows, C), 32 slices of the rows per column, then the slices.
static void dw_sum(float *dw, const float *part, int rows, int C) {
    for (int c = 0; c < C; c++) {
        float t = 0.0f;
        for (int y = 0; y < 32; y++) {
            float v = 0.0f;
            for (int r = y; r < rows; r += 32) v += part[(size_t)r * C + c];
            t += v;
        }
        dw[c] += t;
    }
}

// rmsnorm_fwd_vec_kernel<VPL>: one warp a row (the rows' order does not
// matter, nothing is shared between them); with b, the residual add first.
template <int VPL>
static void rmsnorm_fwd_vec(bf16 *res, bf16 *out, float *rstd, const bf16 *a, const bf16 *b, const bf16 *w,
                            int N, int C, float eps) {
    static bf16x8 x[NR_LANES][VPL], y[NR_LANES][VPL], wv[NR_LANES][VPL];
    for (int row = 0; row < N; row++) {
        size_t o = (size_t)row * C;
        float s[NR_LANES];
        for (int l = 0; l < NR_LANES; l++) {
            nr_load<VPL>(x[l], a + o, C, l);
            if (b) {
                nr_load<VPL>(y[l], b + o, C, l);
                nr_add_row<VPL>(x[l], res + o, x[l], y[l], C, l);
            }
            nr_load<VPL>(wv[l], w, C, l);
            s[l] = nr_fwd_sumsq<VPL>(x[l], C, l);
        }
        warp_sum(s);
        for (int l = 0; l < NR_LANES; l++) {
            float r = nr_rstd(s[l], C, eps);
            if (l == 0) rstd[row] = r;
            nr_fwd_row<VPL>(out + o, x[l], wv[l], r, C, l);
        }
    }
}

int emul_rmsnorm_fwd(uint16_t *res, uint16_t *out, float *rstd, const uint16_t *a, const uint16_t *b,
                     const uint16_t *w, int N, int C, float eps) {
    bf16 *rs = (bf16 *)res, *y = (bf16 *)out;
    const bf16 *x = (const bf16 *)a, *x2 = (const bf16 *)b, *wt = (const bf16 *)w;
    switch (nr_vpl(C)) {
    case 0: return 0;
    case 1: rmsnorm_fwd_vec<1>(rs, y, rstd, x, x2, wt, N, C, eps); break;
    case 2: rmsnorm_fwd_vec<2>(rs, y, rstd, x, x2, wt, N, C, eps); break;
    case 4: rmsnorm_fwd_vec<4>(rs, y, rstd, x, x2, wt, N, C, eps); break;
    default: rmsnorm_fwd_vec<8>(rs, y, rstd, x, x2, wt, N, C, eps); break;
    }
    return 1;
}

// rmsnorm_bwd_vec_kernel<VPL> on `blocks` blocks of NR_THREADS: warp w takes
// rows w, w + warps, ... and leaves its weight-gradient share in row w of
// part (warps, C). Each lane's registers are its own slice of the arrays.
template <int VPL>
static void rmsnorm_bwd_vec(bf16 *dinp, float *part, const bf16 *dout, const bf16 *inp, const bf16 *w,
                            const float *rstd, int N, int C, int accumulate, int blocks) {
    const int per_block = NR_THREADS / NR_LANES, warps = blocks * per_block;
    static bf16x8 wv[NR_LANES][VPL], g[NR_LANES][VPL], x[NR_LANES][VPL];
    static float acc[NR_LANES][VPL][8];
    for (int b = 0; b < blocks; b++)
        for (int wb = 0; wb < per_block; wb++) {
            int warp = b * per_block + wb;
            for (int l = 0; l < NR_LANES; l++) {
                for (int i = 0; i < VPL; i++)
                    for (int j = 0; j < 8; j++) acc[l][i][j] = 0.0f;
                nr_load<VPL>(wv[l], w, C, l);
            }
            for (int row = warp; row < N; row += warps) {
                float s[NR_LANES];
                for (int l = 0; l < NR_LANES; l++) {
                    nr_load<VPL>(g[l], dout + (size_t)row * C, C, l);
                    nr_load<VPL>(x[l], inp + (size_t)row * C, C, l);
                    s[l] = nr_bwd_dot<VPL>(g[l], x[l], wv[l], C, l);
                }
                warp_sum(s);
                float r = rstd[row];
                for (int l = 0; l < NR_LANES; l++)
                    nr_bwd_row<VPL>(dinp + (size_t)row * C, acc[l], g[l], x[l], wv[l], r, r * r * s[l] / C, C, l,
                                    accumulate);
            }
            if (part)
                for (int l = 0; l < NR_LANES; l++) nr_store_acc<VPL>(part + (size_t)warp * C, acc[l], C, l);
        }
}

int emul_rmsnorm_bwd(uint16_t *dinp, float *dw, const uint16_t *dout, const uint16_t *inp,
                     const uint16_t *w, const float *rstd, int N, int C, int accumulate, int sms) {
    int vpl = nr_vpl(C);
    if (!vpl) return 0;
    int blocks = nr_blocks(N, sms), warps = blocks * (NR_THREADS / NR_LANES);
    // The kernel's partials live in uninitialised scratch: NaN shows a miss.
    float *part = new float[(size_t)warps * C];
    for (size_t i = 0; i < (size_t)warps * C; i++) part[i] = NAN;
    bf16 *dx = (bf16 *)dinp;
    const bf16 *g = (const bf16 *)dout, *x = (const bf16 *)inp, *wt = (const bf16 *)w;
    switch (vpl) {
    case 1: rmsnorm_bwd_vec<1>(dx, part, g, x, wt, rstd, N, C, accumulate, blocks); break;
    case 2: rmsnorm_bwd_vec<2>(dx, part, g, x, wt, rstd, N, C, accumulate, blocks); break;
    case 4: rmsnorm_bwd_vec<4>(dx, part, g, x, wt, rstd, N, C, accumulate, blocks); break;
    default: rmsnorm_bwd_vec<8>(dx, part, g, x, wt, rstd, N, C, accumulate, blocks); break;
    }
    dw_sum(dw, part, warps, C);
    delete[] part;
    return 1;
}

void emul_swiglu_fwd(uint16_t *out, const uint16_t *gu, int N, int F) {
    const void *bufs[] = {out, gu};
    int vec = swiglu_vec(F, bufs, 2);
    size_t n = (size_t)N * F;
    for (size_t k = 0; k < swiglu_chunks(n); k++) swiglu_fwd_chunk((bf16 *)out, (const bf16 *)gu, k, n, F, vec);
}

void emul_swiglu_bwd(uint16_t *dgu, const uint16_t *dout, const uint16_t *gu, int N, int F) {
    const void *bufs[] = {dgu, dout, gu};
    int vec = swiglu_vec(F, bufs, 3);
    size_t n = (size_t)N * F;
    for (size_t k = 0; k < swiglu_chunks(n); k++)
        swiglu_bwd_chunk((bf16 *)dgu, (const bf16 *)dout, (const bf16 *)gu, k, n, F, vec);
}

// group_sum's butterfly over the G lanes of a group, in its order.
static void group_sum(float *v, int G) {
    for (int o = G / 2; o > 0; o >>= 1) {
        float t[32];
        for (int l = 0; l < G; l++) t[l] = v[l] + v[l ^ o];
        for (int l = 0; l < G; l++) v[l] = t[l];
    }
}

// fwd_rows<E, G, NP> over `groups` groups of G lanes: group g takes rows g,
// g + groups, ...
template <int E, int NP>
static void qkv_fwd_rows(bf16 *dst, const bf16 *qkv, qr_heads hs, const int32_t *pos, const float *inv_freq,
                         int N, int W, int D, float eps, int G, int groups) {
    int half = D / 2, rows = N * hs.count;
    static float a[32][NP][E], b[32][NP][E];
    for (int g = 0; g < groups; g++)
        for (int r = g; r < rows; r += groups) {
            int i = r / hs.count, h = r % hs.count;
            float ss[32];
            for (int l = 0; l < G; l++)
                ss[l] = qr_fwd_load<E, NP>(a[l], b[l], qkv + (size_t)i * W + hs.off + (size_t)h * D, half, l, G);
            group_sum(ss, G);
            float rs = hs.w ? 1.0f / sqrtf(ss[0] / D + eps) : 1.0f;  // rsqrtf
            if (hs.w) hs.rstd[r] = rs;
            for (int l = 0; l < G; l++)
                qr_fwd_store<E, NP>(dst + (size_t)r * D, a[l], b[l], &hs, rs, (float)pos[i], inv_freq, half, l, G);
        }
}

// bwd_rows<E, G, NP>: each group's share of the norm weights' gradient in
// row g of part (groups, D).
template <int E, int NP>
static void qkv_bwd_rows(bf16 *dqkv, float *part, const bf16 *dy, const bf16 *qkv, qr_heads hs, const int32_t *pos,
                         const float *inv_freq, int N, int W, int D, int G, int groups) {
    int half = D / 2, rows = N * hs.count;
    static float ga[32][NP][E], gb[32][NP][E], xa[32][NP][E], xb[32][NP][E], acc[32][NP][2][E];
    for (int g = 0; g < groups; g++) {
        for (int l = 0; l < G; l++)
            for (int k = 0; k < NP; k++)
                for (int e = 0; e < E; e++) acc[l][k][0][e] = acc[l][k][1][e] = 0.0f;
        for (int r = g; r < rows; r += groups) {
            int i = r / hs.count, h = r % hs.count;
            size_t at = (size_t)i * W + hs.off + (size_t)h * D;
            float dot[32];
            for (int l = 0; l < G; l++)
                dot[l] = qr_bwd_load<E, NP>(ga[l], gb[l], xa[l], xb[l], dy + (size_t)r * D, qkv + at, &hs,
                                            (float)pos[i], inv_freq, half, l, G);
            float rs = 0.0f, kk = 0.0f;
            if (hs.w) {
                group_sum(dot, G);
                rs = hs.rstd[r];
                kk = rs * rs * dot[0] / D;
            }
            for (int l = 0; l < G; l++)
                qr_bwd_store<E, NP>(dqkv + at, acc[l], ga[l], gb[l], xa[l], xb[l], &hs, rs, kk, half, l, G);
        }
        if (hs.w)
            for (int l = 0; l < G; l++) qr_store_acc<E, NP>(part + (size_t)g * D, acc[l], half, l, G);
    }
}

// The kernels' instantiation: one chunk a lane with vectors, 4 with single
// elements once a warp takes a head.
#define QR_EMUL_DISPATCH(FN, ...)                                \
    do {                                                         \
        if (vec) FN<8, 1>(__VA_ARGS__);                          \
        else if (G == 32) FN<1, 4>(__VA_ARGS__);                 \
        else FN<1, 1>(__VA_ARGS__);                              \
    } while (0)

int emul_qkv_fwd(uint16_t *q, uint16_t *k, uint16_t *v, float *q_rstd, float *k_rstd, const uint16_t *qkv,
                 const uint16_t *q_norm, const uint16_t *k_norm, const int32_t *pos, const float *inv_freq, int N,
                 int H, int KVH, int D, float eps, int sms) {
    const void *bufs[] = {q, k, v, qkv, q_norm, k_norm};
    int vec = qr_vec(D, bufs, 6), G = qr_group(D, vec);
    if (!G) return 0;
    int groups = qr_blocks(N, H, G, sms) * QR_THREADS / G, W = (H + 2 * KVH) * D;
    const bf16 *x = (const bf16 *)qkv, *qn = (const bf16 *)q_norm, *kn = (const bf16 *)k_norm;
    QR_EMUL_DISPATCH(qkv_fwd_rows, (bf16 *)q, x, qr_heads{H, 0, qn, q_rstd, 1}, pos, inv_freq, N, W, D, eps, G,
                     groups);
    QR_EMUL_DISPATCH(qkv_fwd_rows, (bf16 *)k, x, qr_heads{KVH, H * D, kn, k_rstd, 1}, pos, inv_freq, N, W, D, eps,
                     G, groups);
    QR_EMUL_DISPATCH(qkv_fwd_rows, (bf16 *)v, x, qr_heads{KVH, (H + KVH) * D, NULL, NULL, 0}, pos, inv_freq, N, W,
                     D, eps, G, groups);
    return 1;
}

int emul_qkv_bwd(uint16_t *dqkv, float *dq_norm, float *dk_norm, const uint16_t *dq, const uint16_t *dk,
                 const uint16_t *dv, const uint16_t *qkv, const uint16_t *q_norm, const uint16_t *k_norm,
                 const float *q_rstd, const float *k_rstd, const int32_t *pos, const float *inv_freq, int N, int H,
                 int KVH, int D, int sms) {
    const void *bufs[] = {dqkv, dq, dk, dv, qkv, q_norm, k_norm};
    int vec = qr_vec(D, bufs, 7), G = qr_group(D, vec);
    if (!G) return 0;
    int groups = qr_blocks(N, H, G, sms) * QR_THREADS / G, W = (H + 2 * KVH) * D;
    // The partials live in uninitialised scratch: NaN shows a miss.
    float *part = new float[2 * (size_t)groups * D];
    for (size_t i = 0; i < 2 * (size_t)groups * D; i++) part[i] = NAN;
    bf16 *out = (bf16 *)dqkv;
    const bf16 *x = (const bf16 *)qkv, *qn = (const bf16 *)q_norm, *kn = (const bf16 *)k_norm;
    QR_EMUL_DISPATCH(qkv_bwd_rows, out, part, (const bf16 *)dq, x, qr_heads{H, 0, qn, (float *)q_rstd, 1}, pos,
                     inv_freq, N, W, D, G, groups);
    QR_EMUL_DISPATCH(qkv_bwd_rows, out, part + (size_t)groups * D, (const bf16 *)dk, x,
                     qr_heads{KVH, H * D, kn, (float *)k_rstd, 1}, pos, inv_freq, N, W, D, G, groups);
    QR_EMUL_DISPATCH(qkv_bwd_rows, out, (float *)NULL, (const bf16 *)dv, x,
                     qr_heads{KVH, (H + KVH) * D, NULL, NULL, 0}, pos, inv_freq, N, W, D, G, groups);
    if (q_norm) {
        dw_sum(dq_norm, part, groups, D);
        dw_sum(dk_norm, part + (size_t)groups * D, groups, D);
    }
    delete[] part;
    return 1;
}

void emul_adamw(void *params, float *master, const float *grads, float *m, float *v, const es_adamw_seg *segs,
                int nsegs, size_t n, double sumsq, float skip, const es_adamw_args *a) {
    size_t blocks = (n + ADAMW_TILE - 1) / ADAMW_TILE;
    bf16 *pbf = master ? (bf16 *)params : NULL;  // bf16 is the 16-bit word of the buffer
    float *p = master ? master : (float *)params;
    for (size_t b = 0; b < blocks; b++)
        for (int t = 0; t < ADAMW_THREADS; t++) adamw_thread(pbf, p, grads, m, v, segs, nsegs, n, sumsq, skip, a, b, t);
}
