// Runs the CUDA kernels' host-and-device code on the CPU (tests/cuda_emul.h):
// built by the host C++ compiler, where cuda/hd_portable.cuh makes
// __host__/__device__ vanish and emulates bf16. The loops below stand for the
// kernels' thread blocks, warps and lanes; the arithmetic is the headers'.
#include "cuda_emul.h"

#include "adamw_elem.cuh"
#include "norm_rows.cuh"
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
    // rmsnorm_dw_sum_kernel: 32 slices of the rows per column, then the slices.
    for (int c = 0; c < C; c++) {
        float t = 0.0f;
        for (int y = 0; y < 32; y++) {
            float v = 0.0f;
            for (int r = y; r < warps; r += 32) v += part[(size_t)r * C + c];
            t += v;
        }
        dw[c] += t;
    }
    delete[] part;
    return 1;
}

void emul_swiglu_fwd(uint16_t *out, const uint16_t *gate, const uint16_t *up, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = emul_to_bf16(swiglu_elem(emul_from_bf16(gate[i]), emul_from_bf16(up[i])));
}

void emul_swiglu_bwd(uint16_t *dgate, uint16_t *dup, const uint16_t *dout, const uint16_t *gate,
                     const uint16_t *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float dg, du;
        swiglu_bwd_elem(&dg, &du, emul_from_bf16(dout[i]), emul_from_bf16(gate[i]), emul_from_bf16(up[i]));
        dup[i] = emul_to_bf16(du);
        dgate[i] = emul_to_bf16(dg);
    }
}

void emul_adamw(void *params, float *master, const float *grads, float *m, float *v, const es_adamw_seg *segs,
                int nsegs, size_t n, double sumsq, float skip, const es_adamw_args *a) {
    size_t blocks = (n + ADAMW_TILE - 1) / ADAMW_TILE;
    bf16 *pbf = master ? (bf16 *)params : NULL;  // bf16 is the 16-bit word of the buffer
    float *p = master ? master : (float *)params;
    for (size_t b = 0; b < blocks; b++)
        for (int t = 0; t < ADAMW_THREADS; t++) adamw_thread(pbf, p, grads, m, v, segs, nsegs, n, sumsq, skip, a, b, t);
}
