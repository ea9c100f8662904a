// The backend operations table: the one interface between the engine and a
// device. The engine owns the model description and the order of operations;
// a backend owns memory and kernels. A new backend fills this table and the
// engine does not change.
//
// Buffers are opaque (void *): the CPU backend stores fp32, the CUDA backend
// bf16 weights/activations with fp32 master weights, gradients and optimizer
// state. Element counts, never byte counts, cross this interface, except in
// alloc/free. Integer index arrays (tokens, positions, document boundaries,
// row lists) are int32 buffers allocated with ES_MEM_INDEX. fp64 buffers hold
// only a step's statistics (loss sums, gradient sum of squares), so that the
// trainer reads them once, at the end of the step.
//
// Conventions: outputs first, then inputs, then sizes. N = tokens in the
// packed micro-batch, C = channels, H/KVH = query/key-value heads, D = head
// dimension. "(N, C)" means row-major N rows of C. Weight matrices are stored
// as Hugging Face nn.Linear does: (OC, C), and y = x W^T + b.
// Gradients of weights (dw, db, dwte, ...) are fp32 buffers on every backend
// and always accumulate (+=), so micro-batches add up.
// Gradients of inputs overwrite unless the op says it accumulates.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef enum {
    ES_MEM_WEIGHTS = 0,
    ES_MEM_GRADS,
    ES_MEM_OPTIM,
    ES_MEM_ACTS,
    ES_MEM_WORKSPACE,
    ES_MEM_INDEX,
    ES_MEM_KINDS
} es_mem_kind;

extern const char *const es_mem_kind_names[ES_MEM_KINDS];

// Buffer element types. Weights and activations use the backend's compute
// type (fp32 on CPU, bf16 on CUDA); grads/master/moments are fp32 everywhere.
typedef enum { ES_DT_COMPUTE = 0, ES_DT_F32, ES_DT_I32, ES_DT_F64 } es_dtype;

// One tensor of AdamW's flat buffers: elements [offset, offset + count), with
// weight decay when decay != 0. A table of them lies in an int32 buffer of
// ES_ADAMW_SEG_I32 words a record (the same bytes on host and device).
typedef struct {
    uint64_t offset, count;
    int32_t decay, pad_;
} es_adamw_seg;
#define ES_ADAMW_SEG_I32 (sizeof(es_adamw_seg) / 4)

// AdamW's scalars for one update: bc1, bc2 are the bias corrections
// 1 - beta^step; clip > 0 clips the global gradient norm to it.
typedef struct {
    float lr, beta1, beta2, eps, wd, clip, bc1, bc2;
} es_adamw_args;

// Formats of the low-precision matmul weights a backend may keep for
// decoding (pack_weights): bf16 rounded to nearest even from fp32, or int8
// with one fp32 scale per output row (max |w| / 127, rounded to nearest).
typedef enum { ES_WFMT_F32 = 0, ES_WFMT_BF16, ES_WFMT_INT8, ES_WFMTS } es_wfmt;

extern const char *const es_wfmt_names[ES_WFMTS];  // "fp32", "bf16", "int8"

typedef struct es_backend es_backend;

struct es_backend {
    const char *name;  // "cpu", "cuda"
    void *ctx;         // backend private state
    int compute_is_f32;  // weights are fp32 (no separate master copy needed)
    int host_buffers;    // buffers are host memory the engine may write through (the CPU's)
    // Dense matmul peak of the device, FLOP/s: the one figure MFU is measured
    // against by train and bench alike (es_backend_create sets it from
    // engine/peaks.c's table), and where it came from.
    double peak_flops;
    char peak_source[128];
    const char *attention;  // the attention kernels in use, for the run's plan line

    // ---- memory ---------------------------------------------------------
    // Every allocation is tallied by kind; mem_now/mem_peak are in bytes.
    void *(*alloc)(es_backend *be, size_t n, es_dtype dt, es_mem_kind kind);
    void (*free)(es_backend *be, void *p);
    // Host fp32 <-> device buffer of type dt, converting as needed.
    void (*upload)(es_backend *be, void *dst, const void *src, size_t n, es_dtype dt);
    void (*download)(es_backend *be, void *dst, const void *src, size_t n, es_dtype dt);
    // fp64 buffers (ES_DT_F64) travel as fp64, not through fp32.
    // Host memory the device reads without a staging copy (CUDA: pinned by
    // cudaHostAlloc; elsewhere malloc), for upload_async; NULL when none is left.
    void *(*host_alloc)(es_backend *be, size_t bytes);
    void (*host_free)(es_backend *be, void *h);
    // As upload for ES_DT_I32 and ES_DT_F32, only enqueued on the backend's
    // stream: src lies in a host_alloc block, which the host must not write
    // again before host_wait on that block returns.
    void (*upload_async)(es_backend *be, void *dst, const void *src, size_t n, es_dtype dt);
    // Waits until every upload_async issued so far from block h has read it.
    void (*host_wait)(es_backend *be, void *h);
    void (*zero)(es_backend *be, void *p, size_t n, es_dtype dt);
    // Pointer to element `off` of a buffer of type dt.
    void *(*offset)(es_backend *be, void *p, size_t off, es_dtype dt);
    void (*sync)(es_backend *be);
    size_t mem_now[ES_MEM_KINDS];
    size_t mem_peak[ES_MEM_KINDS];
    size_t mem_peak_total;
    size_t mem_now_total;

    // ---- embedding ------------------------------------------------------
    // out (N, C) = wte[tokens[i]] (+ wpe[pos[i]] when wpe != NULL)
    void (*embed_fwd)(es_backend *be, void *out, const void *tokens, const void *pos,
                      const void *wte, const void *wpe, int N, int C);
    // dwte[tokens[i]] += dout[i]; dwpe[pos[i]] += dout[i] (dwpe may be NULL)
    void (*embed_bwd)(es_backend *be, void *dwte, void *dwpe, const void *dout,
                      const void *tokens, const void *pos, int N, int C);

    // ---- matmul ---------------------------------------------------------
    // out (N, OC) = inp (N, C) @ w (OC, C)^T + bias (OC) (bias may be NULL)
    void (*matmul_fwd)(es_backend *be, void *out, const void *inp, const void *w,
                       const void *bias, int N, int C, int OC);
    // dinp (N, C) = dout @ w (or += when accumulate; dinp may be NULL)
    // dw (OC, C) += dout^T @ inp ; dbias (OC) += colsum(dout) (may be NULL)
    void (*matmul_bwd)(es_backend *be, void *dinp, void *dw, void *dbias, const void *dout,
                       const void *inp, const void *w, int N, int C, int OC, int accumulate);

    // ---- normalisation --------------------------------------------------
    // RMSNorm over rows: out (N, C) = inp / rms(inp) * w ; rstd (N) fp32 saved.
    void (*rmsnorm_fwd)(es_backend *be, void *out, float *rstd, const void *inp, const void *w,
                        int N, int C, float eps);
    // dinp (N, C) overwrite (or += when accumulate); dw (C) +=. Accumulating
    // into the residual stream's gradient is the backward of add_rmsnorm_fwd:
    // dres += rmsnorm_bwd(dout) in one pass, the weight gradient with it.
    void (*rmsnorm_bwd)(es_backend *be, void *dinp, void *dw, const void *dout, const void *inp,
                        const void *w, const float *rstd, int N, int C, int accumulate);
    // A residual add and the RMSNorm after it in one pass: res (N, C) = a + b,
    // out (N, C) = res / rms(res) * w, rstd (N) fp32 saved. The norm reads res
    // as stored (compute type), so out and rstd are rmsnorm_fwd's of res bit
    // for bit (recomputation relies on it). res may alias a or b.
    void (*add_rmsnorm_fwd)(es_backend *be, void *res, void *out, float *rstd, const void *a,
                            const void *b, const void *w, int N, int C, float eps);
    // LayerNorm: mean, rstd (N) fp32 saved.
    void (*layernorm_fwd)(es_backend *be, void *out, float *mean, float *rstd, const void *inp,
                          const void *w, const void *b, int N, int C, float eps);
    void (*layernorm_bwd)(es_backend *be, void *dinp, void *dw, void *db, const void *dout,
                          const void *inp, const void *w, const float *mean, const float *rstd,
                          int N, int C, int accumulate);

    // ---- rotary embedding (Hugging Face rotate_half convention) ---------
    // out (N, H, D) = rope(inp, pos); in place allowed. Rotates pairs (j, j + D/2)
    // by angle pos * inv_freq[j], the product formed in fp32; inv_freq (D/2) is an
    // fp32 buffer (the model's scaled frequencies, es_rope_inv_freq).
    void (*rope_fwd)(es_backend *be, void *out, const void *inp, const void *pos,
                     const float *inv_freq, int N, int H, int D);
    // dinp = rope^-1(dout); in place allowed. (The model rotates through
    // qkv_fwd/qkv_bwd, which fuse these; they are the unfused reference.)
    void (*rope_bwd)(es_backend *be, void *dinp, const void *dout, const void *pos,
                     const float *inv_freq, int N, int H, int D);

    // ---- the fused QKV projection's split, qk-norm and rope ------------
    // qkv (N, (H + 2 KVH) D): rows [q (H, D) | k (KVH, D) | v (KVH, D)], the
    // output of one matmul over the adjacent q/k/v_proj weights. In one pass:
    // q (N, H, D) = rope(rmsnorm_D(q rows) * q_norm), k (N, KVH, D) likewise
    // with k_norm, v (N, KVH, D) copied; q_rstd (N*H), k_rstd (N*KVH) fp32
    // saved. q_norm, k_norm (D) NULL (both): no norm, rstd not written.
    // Rotation and eps as rmsnorm_fwd then rope_fwd.
    void (*qkv_fwd)(es_backend *be, void *q, void *k, void *v, float *q_rstd, float *k_rstd,
                    const void *qkv, const void *q_norm, const void *k_norm, const void *pos,
                    const float *inv_freq, int N, int H, int KVH, int D, float eps);
    // dqkv (N, (H + 2 KVH) D) overwritten from the gradients of the attention
    // inputs dq (N, H, D), dk, dv (N, KVH, D): rope's inverse, then the norm's
    // backward (reading the forward's input qkv and rstd) with dq_norm,
    // dk_norm (D) fp32 +=. Without norm weights qkv, rstd and dq_norm/dk_norm
    // are not read (may be NULL).
    void (*qkv_bwd)(es_backend *be, void *dqkv, void *dq_norm, void *dk_norm, const void *dq,
                    const void *dk, const void *dv, const void *qkv, const void *q_norm,
                    const void *k_norm, const float *q_rstd, const float *k_rstd,
                    const void *pos, const float *inv_freq, int N, int H, int KVH, int D);

    // ---- attention over packed documents --------------------------------
    // q (N, H, D), k/v (N, KVH, D), out (N, H, D), lse (N, H) fp32 saved.
    // cu_seqlens (ndocs + 1) int32: document d holds tokens [cu[d], cu[d+1]).
    // Causal within each document; nothing attends across a boundary.
    // Query head h reads key/value head h / (H / KVH). Scale 1/sqrt(D).
    void (*attention_fwd)(es_backend *be, void *out, float *lse, const void *q, const void *k,
                          const void *v, const void *cu_seqlens, int ndocs, int N, int H,
                          int KVH, int D);
    // dq, dk, dv overwrite.
    void (*attention_bwd)(es_backend *be, void *dq, void *dk, void *dv, const void *dout,
                          const void *q, const void *k, const void *v, const void *out,
                          const float *lse, const void *cu_seqlens, int ndocs, int N, int H,
                          int KVH, int D);

    // ---- pointwise ------------------------------------------------------
    // SwiGLU over the fused gate|up projection: gu (N, 2F) holds rows
    // [gate (F) | up (F)]; out (N, F) = silu(gate) * up.
    void (*swiglu_fwd)(es_backend *be, void *out, const void *gu, int N, int F);
    // dgu (N, 2F) = [dgate | dup] rows, overwritten.
    void (*swiglu_bwd)(es_backend *be, void *dgu, const void *dout, const void *gu, int N, int F);
    // GELU, tanh approximation (GPT-2's gelu_new)
    void (*gelu_fwd)(es_backend *be, void *out, const void *inp, size_t n);
    void (*gelu_bwd)(es_backend *be, void *dinp, const void *dout, const void *inp, size_t n);
    // out = a + b (out may alias a or b)
    void (*add)(es_backend *be, void *out, const void *a, const void *b, size_t n);

    // ---- gathered rows and the distillation classifier -----------------
    // out (M, C) = inp[rows[i]]
    void (*gather_rows)(es_backend *be, void *out, const void *inp, const void *rows, int M, int C);
    // dinp[rows[i]] += dout[i]
    void (*scatter_add_rows)(es_backend *be, void *dinp, const void *dout, const void *rows,
                             int M, int C);
    // One chunk of the distillation loss. logits (M, V) of the student are
    // replaced in place by d(loss)/d(logits) * grad_scale. For row i with
    // weight w_i (skip rows with w_i == 0):
    //   ce_i = -log softmax(logits_i)[targets[i]]
    //   kd_i = tau^2 * KL(softmax(t_i / tau) || softmax(s_i / tau)) (tlogits may be NULL)
    //   loss_i = w_i * (alpha * ce_i + (1 - alpha) * kd_i)   (alpha = 1 without teacher)
    // sums (a device fp64 buffer of 2): sums[0] += sum_i w_i ce_i and
    // sums[1] += sum_i w_i kd_i, each chunk's sum rounded to fp32 and added in
    // fp32 (the values stay fp32 numbers), so that the host reads them once a
    // step. targets and weights are device buffers (int32, fp32).
    void (*distill_loss)(es_backend *be, double *sums, void *logits, const void *tlogits,
                         const void *targets, const void *weights, int M, int V, float alpha,
                         float tau, float grad_scale);

    // ---- optimizer (fp32 state) ----------------------------------------
    // out (a device fp64 scalar) = sum of squares of n fp32 values (the
    // gradient norm's square), left on the device.
    void (*sumsq)(es_backend *be, double *out, const float *x, size_t n);
    // out (a device fp32 scalar) = how many of x (n fp64) are not finite.
    void (*count_nonfinite)(es_backend *be, float *out, const double *x, size_t n);
    // One AdamW update of all tensors at once over flat buffers of n elements:
    // params (compute type), master, grads, m, v (fp32). segs (nsegs records,
    // see es_adamw_seg, offsets ascending and disjoint) tells which elements
    // are updated and which decay (p -= lr * wd * p); elements outside every
    // segment stay untouched. The gradient is g = grads * gscale, where
    // gscale = clip / sqrt(*sumsq) when a->clip > 0 and that norm exceeds it,
    // else 1: found on the device, so the host never waits for the norm.
    // Nothing changes when *skip != 0 or *sumsq is not finite (a bad step).
    // master is NULL when params already are fp32 master weights; otherwise
    // params are refreshed from it. sumsq (fp64) and skip (fp32) are device
    // scalars.
    void (*adamw)(es_backend *be, void *params, float *master, const float *grads, float *m,
                  float *v, const void *segs, int nsegs, size_t n, const double *sumsq,
                  const float *skip, const es_adamw_args *a);

    void (*destroy)(es_backend *be);

    // ---- offline teacher (top-k) distillation loss ----------------------
    // As distill_loss, with the teacher given as its K most likely next tokens
    // per row: tids (M, K) int32, distinct ids in [0, V), and their
    // log-probabilities tlogp (M, K) fp32 at temperature 1. The remaining mass
    // r_i = 1 - sum_j exp(tlogp_ij) is one more bucket, matched against the
    // student's mass outside those ids, q_rest:
    //   kd_i = sum_j p_ij (tlogp_ij - log q_i[tids_ij]) + r_i (log r_i - log q_rest_i)
    // which is the full forward KL once K == V. No temperature: a stored
    // top-k list carries none. Rows whose first id is < 0 have no teacher
    // entry and carry only the cross-entropy (at weight alpha). May be NULL
    // on a backend that lacks it.
    void (*distill_loss_topk)(es_backend *be, double *sums, void *logits, const void *tids,
                              const void *tlogp, const void *targets, const void *weights, int M,
                              int V, int K, float alpha, float grad_scale);

    // ---- generation with a key/value cache -------------------------------
    // A cache is one buffer per layer for keys and one for values, rows of
    // W = KVH * D in the compute dtype; each sequence owns a contiguous block
    // of rows. kcache[rows[i]] = k[i], vcache[rows[i]] = v[i]; k, v (N, W).
    void (*kv_append)(es_backend *be, void *kcache, void *vcache, const void *k, const void *v,
                      const void *rows, int N, int W);
    // One query per sequence against its cached keys: q, out (B, H, D); row i
    // attends to cache rows [start[i], start[i] + len[i]) of kcache/vcache
    // (rows of KVH * D), len[i] >= 1, with the grouping and scale of
    // attention_fwd. start, len (B) int32; max_len bounds every len[i].
    void (*attention_decode)(es_backend *be, void *out, const void *q, const void *kcache,
                             const void *vcache, const void *start, const void *len, int B,
                             int H, int KVH, int D, int max_len);

    // ---- low-precision weights for decoding (optional) --------------------
    // From now on, matmul_fwd with this weight w (OC, C) and few rows (the
    // decode steps; the backend sets the bound, larger products keep w) reads
    // a copy of w in fmt (not ES_WFMT_F32) instead: a decode step reads every
    // weight once, so its time is the weights' bytes. w must not change
    // afterwards; the copy lives until w's buffer is freed. NULL on a backend
    // without it; ES_ERR when out of memory.
    int (*pack_weights)(es_backend *be, const void *w, int OC, int C, es_wfmt fmt);

    // ---- collectives across data-parallel ranks -------------------------
    // NULL on a backend without them; a single rank never calls them.
    // Setup: comm_id fills ES_COMM_ID_BYTES on rank 0 (NCCL's unique id;
    // nothing on a backend that talks MPI itself), the engine broadcasts them,
    // and every rank passes them to comm_init. ES_ERR with the reason on failure
    // (a lost peer included); a lost peer never hangs a call.
    int (*comm_id)(es_backend *be, void *id);
    int (*comm_init)(es_backend *be, const void *id, int rank, int nranks);
    // g (n) fp32 summed over ranks, in place. May be only enqueued (CUDA: on
    // the communication stream, after the compute issued so far) so that
    // per-layer buckets overlap the rest of backward; comm_wait orders later
    // compute and host reads after every collective issued.
    int (*grad_allreduce)(es_backend *be, float *g, size_t n);
    // ZeRO-1: rank r owns part [lo, hi) of n elements (es_shard_range). g (n)
    // fp32: each rank's own part ends up holding the sum over ranks; the other
    // parts are left undefined.
    int (*grad_reduce_scatter)(es_backend *be, float *g, size_t n);
    // x (n) of type dt: each rank's own part copied to every rank.
    int (*param_allgather)(es_backend *be, void *x, size_t n, es_dtype dt);
    int (*comm_wait)(es_backend *be);
};

// Every backend's tally: adds (sign > 0) or takes back (sign < 0) `bytes`
// of `kind` in be->mem_now, keeping the peaks.
void es_mem_tally(es_backend *be, es_mem_kind kind, size_t bytes, int sign);
// Sets host_alloc, host_free and host_wait for a backend whose uploads are
// done when they return: staging is plain malloc'd host memory, untallied.
void es_backend_plain_staging(es_backend *be);

#define ES_COMM_ID_BYTES 128

// The part [*lo, *hi) of n elements that rank r of nranks owns under ZeRO-1:
// contiguous, in rank order, sizes differing by at most one.
static inline void es_shard_range(size_t *lo, size_t *hi, size_t n, int r, int nranks) {
    *lo = n / (size_t)nranks * (size_t)r + (n % (size_t)nranks < (size_t)r ? n % (size_t)nranks : (size_t)r);
    *hi = *lo + n / (size_t)nranks + ((size_t)r < n % (size_t)nranks ? 1 : 0);
}

// Backends compiled into this build.
es_backend *es_backend_cpu_create(void);
// Returns NULL and records the reason when CUDA is not built or no GPU exists.
es_backend *es_backend_cuda_create(int device);
// A backend that allocates no device memory: each alloc is only tallied, by
// kind, at compute_bytes per compute element (4: fp32 as on the CPU, 2: bf16
// as on CUDA), and returns a handle that nothing may read through. The planner
// sizes a run through the engine's own allocation calls on it. Only the memory
// ops are set; upload, upload_async, download, zero and sync do nothing, and
// host_alloc is plain (untallied) host memory.
es_backend *es_backend_count_create(int compute_bytes);
// "cpu", "cuda" or "auto"; NULL with a recorded error when unavailable. Sets
// peak_flops and peak_source from engine/peaks.c.
es_backend *es_backend_create(const char *name);
