// cuDNN's fused attention (the frontend's SDPA graphs) over packed documents:
// bf16 q, k, v, out in the backend's (N, heads, D) rows, lse (N, H) fp32 as
// cuDNN's softmax stats, causal within each document, GQA. Same contract as
// attention_fwd / attention_bwd in backend.h; ESSENCE_ATTN=cudnn, and the
// default where the build found cuDNN and its frontend and the runtime cuDNN
// takes ragged GQA (9.6 on).
//
// The documents are cuDNN's batch; each tensor is "ragged": a per-document
// element offset says where its rows start, so the packed rows are read and
// written in place. A small kernel turns cu_seqlens into those offsets and
// the per-document lengths on the device, so the host never reads them. A
// graph's shape is (documents, max rows per document, heads, D); the max rows
// is taken as the token count, since only the device knows the longest
// document. Both are rounded up to a bucket (64 or 96 x a power of two rows,
// 1, 2, 3, 4, 6, 8, ... documents; spare documents are empty), so that a run
// of micro-batches of varying size builds a handful of plans, each cached.
// Head dims other than 64 and 128, unaligned buffers and shapes cuDNN
// declines go to the ops that were in the table before (tc, then simple).
//
// Rows outside every document get zero output, lse 0 and zero gradients.
#include <cudnn.h>
#include <cudnn_frontend.h>
#include <stdint.h>
#include <stdio.h>

#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <unordered_map>

#include "cuda_common.cuh"

namespace fe = cudnn_frontend;

#define CUDNN_ATTN_MIN_VERSION 90600  // ragged offsets with GQA, ragged stats

#define CUDNN_CHECK(call)                                                             \
    do {                                                                              \
        cudnnStatus_t s_ = (call);                                                    \
        if (s_ != CUDNN_STATUS_SUCCESS) {                                             \
            fprintf(stderr, "essence: %s:%d: cuDNN error: %s\n", __FILE__, __LINE__,  \
                    cudnnGetErrorString(s_));                                         \
            abort();                                                                  \
        }                                                                             \
    } while (0)

// Tensor ids of the graphs' variant packs.
enum { U_Q = 1, U_K, U_V, U_O, U_STATS, U_DO, U_DQ, U_DK, U_DV, U_SEQ_Q, U_SEQ_KV, U_OFF_QO, U_OFF_KV, U_OFF_ST };

typedef std::tuple<int, int64_t, int64_t, int, int, int> plan_key;  // bwd, docs, rows, H, KVH, D

struct cudnn_plan {
    std::shared_ptr<fe::graph::Graph> graph;  // NULL: cuDNN declined this shape
    int64_t workspace;
};

struct cudnn_attn {
    cudnnHandle_t handle;
    std::map<plan_key, cudnn_plan> plans;
    // The ops in the table before these: they take what cuDNN does not.
    decltype(es_backend::attention_fwd) fwd_prev;
    decltype(es_backend::attention_bwd) bwd_prev;
};

static cudnn_attn *cudnn_of(es_backend *be) { return (cudnn_attn *)cuda_of(be)->cudnn_attn; }

// n rounded up to a bucket: lowest x 2^k or 1.5 x lowest x 2^k (64, 96,
// 128, 192, ... rows; 1, 2, 3, 4, 6, 8, ... documents).
static int64_t bucket(int64_t n, int64_t lowest) {
    for (int64_t b = lowest;; b *= 2) {
        if (b >= n) return b;
        if (b % 2 == 0 && b / 2 * 3 >= n) return b / 2 * 3;
    }
}

// seq (docs) int32: each document's length, 0 for the spare ones; off_qo,
// off_kv, off_st (docs + 1) int64: where each document's rows start in q/out,
// k/v and lse, in elements; spare documents start at the end.
__global__ void cudnn_offsets_kernel(int32_t *seq, int64_t *off_qo, int64_t *off_kv, int64_t *off_st,
                                     const int32_t *cu, int ndocs, int docs, int H, int KVH, int D) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i <= docs; i += gridDim.x * blockDim.x) {
        int64_t row = cu[i < ndocs ? i : ndocs];
        if (i < docs) seq[i] = i < ndocs ? cu[i + 1] - cu[i] : 0;
        off_qo[i] = row * H * D;
        off_kv[i] = row * KVH * D;
        off_st[i] = row * H;
    }
}

// A (docs, heads, rows, D) view of packed (N, heads, D) rows, ragged by off.
static std::shared_ptr<fe::graph::Tensor_attributes> packed(fe::graph::Graph &g, const char *name, int64_t uid,
                                                            int64_t docs, int64_t heads, int64_t rows, int64_t D,
                                                            std::shared_ptr<fe::graph::Tensor_attributes> off) {
    return g.tensor(fe::graph::Tensor_attributes()
                        .set_name(name)
                        .set_uid(uid)
                        .set_dim({docs, heads, rows, D})
                        .set_stride({rows * heads * D, D, heads * D, 1})
                        .set_ragged_offset(off));
}

static std::shared_ptr<fe::graph::Tensor_attributes> int_vec(fe::graph::Graph &g, const char *name, int64_t uid,
                                                             int64_t n, fe::DataType_t dt) {
    return g.tensor(fe::graph::Tensor_attributes()
                        .set_name(name)
                        .set_uid(uid)
                        .set_dim({n, 1, 1, 1})
                        .set_stride({1, 1, 1, 1})
                        .set_data_type(dt));
}

// Marks t an output with the packed layout of `packed`.
static void packed_out(std::shared_ptr<fe::graph::Tensor_attributes> t, int64_t uid, int64_t docs, int64_t heads,
                       int64_t rows, int64_t D, std::shared_ptr<fe::graph::Tensor_attributes> off) {
    t->set_output(true)
        .set_uid(uid)
        .set_dim({docs, heads, rows, D})
        .set_stride({rows * heads * D, D, heads * D, 1})
        .set_ragged_offset(off);
}

// The forward (bwd 0) or backward graph of a shape, validated and planned;
// else cuDNN's error from the step that failed.
static fe::error_t build_graph(std::shared_ptr<fe::graph::Graph> &out, cudnnHandle_t handle, const plan_key &key) {
    auto [bwd, docs, rows, H, KVH, D] = key;
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    // q's and kv's lengths are the same buffer, named twice as cuDNN wants both.
    auto seq_q = int_vec(*g, "seq_q", U_SEQ_Q, docs, fe::DataType_t::INT32);
    auto seq_kv = int_vec(*g, "seq_kv", U_SEQ_KV, docs, fe::DataType_t::INT32);
    auto off_qo = int_vec(*g, "off_qo", U_OFF_QO, docs + 1, fe::DataType_t::INT64);
    auto off_kv = int_vec(*g, "off_kv", U_OFF_KV, docs + 1, fe::DataType_t::INT64);
    auto off_st = int_vec(*g, "off_st", U_OFF_ST, docs + 1, fe::DataType_t::INT64);
    auto q = packed(*g, "q", U_Q, docs, H, rows, D, off_qo);
    auto k = packed(*g, "k", U_K, docs, KVH, rows, D, off_kv);
    auto v = packed(*g, "v", U_V, docs, KVH, rows, D, off_kv);
    const float scale = 1.0f / sqrtf((float)D);
    if (!bwd) {
        auto opt = fe::graph::SDPA_attributes()
                       .set_name("sdpa_fwd")
                       .set_generate_stats(true)
                       .set_attn_scale(scale)
                       .set_causal_mask(true)
                       .set_padding_mask(true)
                       .set_seq_len_q(seq_q)
                       .set_seq_len_kv(seq_kv);
        auto [o, stats] = g->sdpa(q, k, v, opt);
        packed_out(o, U_O, docs, H, rows, D, off_qo);
        packed_out(stats, U_STATS, docs, H, rows, 1, off_st);
        stats->set_data_type(fe::DataType_t::FLOAT);
    } else {
        auto o = packed(*g, "o", U_O, docs, H, rows, D, off_qo);
        auto dout = packed(*g, "dout", U_DO, docs, H, rows, D, off_qo);
        auto stats = packed(*g, "stats", U_STATS, docs, H, rows, 1, off_st);
        stats->set_data_type(fe::DataType_t::FLOAT);
        auto opt = fe::graph::SDPA_backward_attributes()
                       .set_name("sdpa_bwd")
                       .set_attn_scale(scale)
                       .set_causal_mask(true)
                       .set_padding_mask(true)
                       .set_seq_len_q(seq_q)
                       .set_seq_len_kv(seq_kv)
                       .set_max_total_seq_len_q(rows)
                       .set_max_total_seq_len_kv(rows);
        auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, dout, stats, opt);
        packed_out(dq, U_DQ, docs, H, rows, D, off_qo);
        packed_out(dk, U_DK, docs, KVH, rows, D, off_kv);
        packed_out(dv, U_DV, docs, KVH, rows, D, off_kv);
    }
    fe::error_t e;
    if ((e = g->validate()).is_bad() || (e = g->build_operation_graph(handle)).is_bad() ||
        (e = g->create_execution_plans({fe::HeurMode_t::A})).is_bad() || (e = g->check_support()).is_bad() ||
        (e = g->build_plans()).is_bad())
        return e;
    out = g;
    return e;
}

// The cached plan of a shape, built on first use; graph NULL where cuDNN
// declines it (said once, on that first use).
static const cudnn_plan &plan_for(cudnn_attn *a, const plan_key &key) {
    auto it = a->plans.find(key);
    if (it != a->plans.end()) return it->second;
    cudnn_plan p = {NULL, 0};
    std::string why;
    try {
        fe::error_t e = build_graph(p.graph, a->handle, key);
        if (e.is_good() && (e = p.graph->get_workspace_size(p.workspace)).is_bad()) p.graph = NULL;
        if (e.is_bad()) why = e.get_message();
    } catch (const std::exception &ex) {  // the frontend throws for some backend failures
        p.graph = NULL;
        why = ex.what();
    }
    if (!p.graph) {
        auto [bwd, docs, rows, H, KVH, D] = key;
        fprintf(stderr,
                "essence: cuDNN attention %s declines %lld documents x %lld rows, H=%d KVH=%d D=%d (%s); "
                "the previous kernels take it\n",
                bwd ? "backward" : "forward", (long long)docs, (long long)rows, H, KVH, D, why.c_str());
    }
    return a->plans.emplace(key, p).first->second;
}

// Scratch: the plan's workspace, then seq (docs) int32 and three offset
// vectors (docs + 1) int64, filled from cu_seqlens on the stream. Returns the
// workspace; pack gets the lengths and offsets.
static void *cudnn_scratch(es_backend *be, std::unordered_map<int64_t, void *> &pack, const cudnn_plan &p,
                           const int32_t *cu, int ndocs, int64_t docs, int H, int KVH, int D) {
    cuda_ctx *c = cuda_of(be);
    const size_t ws = es_cuda_align256((size_t)p.workspace), sb = es_cuda_align256((size_t)docs * sizeof(int32_t));
    const size_t ob = es_cuda_align256((size_t)(docs + 1) * sizeof(int64_t));
    char *scr = (char *)cuda_scratch(be, ws + sb + 3 * ob);
    int32_t *seq = (int32_t *)(scr + ws);
    int64_t *off = (int64_t *)(scr + ws + sb);
    int64_t *qo = off, *kv = (int64_t *)((char *)off + ob), *st = (int64_t *)((char *)off + 2 * ob);
    cudnn_offsets_kernel<<<(unsigned)((docs + 256) / 256), 256, 0, c->stream>>>(seq, qo, kv, st, cu, ndocs,
                                                                                 (int)docs, H, KVH, D);
    LAUNCH_CHECK();
    pack[U_SEQ_Q] = seq;
    pack[U_SEQ_KV] = seq;
    pack[U_OFF_QO] = qo;
    pack[U_OFF_KV] = kv;
    pack[U_OFF_ST] = st;
    return p.workspace ? scr : NULL;
}

static void run(cudnn_attn *a, const cudnn_plan &p, std::unordered_map<int64_t, void *> &pack, void *workspace) {
    fe::error_t e = p.graph->execute(a->handle, pack, workspace);
    CUDA_REQUIRE(e.is_good(), "cuDNN attention: %s", e.get_message().c_str());
}

static void cudnn_attention_fwd(es_backend *be, void *out, float *lse, const void *q, const void *k, const void *v,
                                const void *cu_seqlens, int ndocs, int N, int H, int KVH, int D) {
    cudnn_attn *a = cudnn_of(be);
    const void *bufs[] = {out, q, k, v};
    if (N <= 0 || H <= 0) return;
    cuda_attn_check_shape(N, H, KVH);
    const plan_key key(0, bucket(ndocs, 1), bucket(N, 64), H, KVH, D);
    const cudnn_plan *p = ndocs > 0 && cuda_attn_tc_takes(D, bufs, 4) ? &plan_for(a, key) : NULL;
    if (!p || !p->graph) {
        a->fwd_prev(be, out, lse, q, k, v, cu_seqlens, ndocs, N, H, KVH, D);
        return;
    }
    cuda_ctx *c = cuda_of(be);
    const int32_t *cu = (const int32_t *)cu_seqlens;
    std::unordered_map<int64_t, void *> pack = {
        {U_Q, (void *)q}, {U_K, (void *)k}, {U_V, (void *)v}, {U_O, out}, {U_STATS, lse}};
    void *ws = cudnn_scratch(be, pack, *p, cu, ndocs, std::get<1>(key), H, KVH, D);
    cuda_zero_outside_docs(c->stream, (bf16 *)out, cu, ndocs, N, H * D);
    cuda_zero_outside_docs(c->stream, lse, cu, ndocs, N, H);
    run(a, *p, pack, ws);
}

static void cudnn_attention_bwd(es_backend *be, void *dq, void *dk, void *dv, const void *dout, const void *q,
                                const void *k, const void *v, const void *out, const float *lse,
                                const void *cu_seqlens, int ndocs, int N, int H, int KVH, int D) {
    cudnn_attn *a = cudnn_of(be);
    const void *bufs[] = {dq, dk, dv, dout, q, k, v, out};
    if (N <= 0 || H <= 0) return;
    cuda_attn_check_shape(N, H, KVH);
    const plan_key key(1, bucket(ndocs, 1), bucket(N, 64), H, KVH, D);
    const cudnn_plan *p = ndocs > 0 && cuda_attn_tc_takes(D, bufs, 8) ? &plan_for(a, key) : NULL;
    if (!p || !p->graph) {
        a->bwd_prev(be, dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, ndocs, N, H, KVH, D);
        return;
    }
    cuda_ctx *c = cuda_of(be);
    const int32_t *cu = (const int32_t *)cu_seqlens;
    std::unordered_map<int64_t, void *> pack = {{U_Q, (void *)q},     {U_K, (void *)k},      {U_V, (void *)v},
                                                {U_O, (void *)out},   {U_DO, (void *)dout},  {U_STATS, (void *)lse},
                                                {U_DQ, dq},           {U_DK, dk},            {U_DV, dv}};
    void *ws = cudnn_scratch(be, pack, *p, cu, ndocs, std::get<1>(key), H, KVH, D);
    cuda_zero_outside_docs(c->stream, (bf16 *)dq, cu, ndocs, N, H * D);
    cuda_zero_outside_docs(c->stream, (bf16 *)dk, cu, ndocs, N, KVH * D);
    cuda_zero_outside_docs(c->stream, (bf16 *)dv, cu, ndocs, N, KVH * D);
    run(a, *p, pack, ws);
}

int cuda_fill_attention_cudnn(es_backend *be) {
    cuda_ctx *c = cuda_of(be);
    size_t version = cudnnGetVersion();
    if (version < CUDNN_ATTN_MIN_VERSION)
        return es_fail("cuDNN %zu.%zu.%zu is older than 9.6, which ragged GQA attention needs", version / 10000,
                       version / 100 % 100, version % 100);
    int major = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, c->device));
    if (major < 9) return es_fail("cuDNN's ragged attention needs compute capability 9.0 or newer (this GPU: %d.x)", major);
    cudnnHandle_t handle;
    cudnnStatus_t s = cudnnCreate(&handle);
    if (s != CUDNN_STATUS_SUCCESS) return es_fail("cannot start cuDNN: %s", cudnnGetErrorString(s));
    CUDNN_CHECK(cudnnSetStream(handle, c->stream));
    cudnn_attn *a = new cudnn_attn();
    a->handle = handle;
    a->fwd_prev = be->attention_fwd;
    a->bwd_prev = be->attention_bwd;
    c->cudnn_attn = a;
    be->attention_fwd = cudnn_attention_fwd;
    be->attention_bwd = cudnn_attention_bwd;
    be->attention = "cudnn (fused SDPA; tc, then simple, for what it declines)";
    return ES_OK;
}

void cuda_attention_cudnn_destroy(es_backend *be) {
    cuda_ctx *c = cuda_of(be);
    cudnn_attn *a = (cudnn_attn *)c->cudnn_attn;
    if (!a) return;
    a->plans.clear();  // the plans before the handle they were built on
    CUDNN_CHECK(cudnnDestroy(a->handle));
    delete a;
    c->cudnn_attn = NULL;
}
