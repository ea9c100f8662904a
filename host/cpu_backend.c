// The CPU backend: its operations table, memory with a per-kind tally, and
// host <-> buffer copies (every buffer type is 4 bytes, fp32 or int32, but
// the fp64 statistics).
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "cpu_ops.h"

// Each block starts with a 64-byte header recording its size and kind, so that
// free can update the tally and the payload stays 64-byte aligned.
#define CPU_ALIGN 64

typedef struct {
    size_t bytes;
    int kind;
} cpu_block;

static size_t dt_bytes(es_dtype dt) { return dt == ES_DT_F64 ? 8 : 4; }

static void *cpu_alloc(es_backend *be, size_t n, es_dtype dt, es_mem_kind kind) {
    if (kind < 0 || kind >= ES_MEM_KINDS) {
        es_fail("cpu backend: unknown memory kind %d", (int)kind);
        return NULL;
    }
    if (n > (SIZE_MAX - 2 * CPU_ALIGN) / 8) {
        es_fail("cpu backend: allocation of %zu elements overflows", n);
        return NULL;
    }
    size_t bytes = n * dt_bytes(dt);
    size_t padded = (bytes + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
    char *base = aligned_alloc(CPU_ALIGN, CPU_ALIGN + padded);
    if (!base) {
        es_fail("cpu backend: out of memory allocating %zu bytes of %s", bytes,
                es_mem_kind_names[kind]);
        return NULL;
    }
    cpu_block *hdr = (cpu_block *)base;
    hdr->bytes = bytes;
    hdr->kind = kind;
    es_mem_tally(be, kind, bytes, +1);
    return base + CPU_ALIGN;
}

static void cpu_free(es_backend *be, void *p) {
    if (!p) return;
    char *base = (char *)p - CPU_ALIGN;
    const cpu_block *hdr = (const cpu_block *)base;
    if (((cpu_ctx *)be->ctx)->nlowp) cpu_lowp_drop(be, p, hdr->bytes);  // no stale copy outlives it
    es_mem_tally(be, hdr->kind, hdr->bytes, -1);
    free(base);
}

static void cpu_upload(es_backend *be, void *dst, const void *src, size_t n, es_dtype dt) {
    (void)be;
    if (n) memcpy(dst, src, n * dt_bytes(dt));
}

static void cpu_download(es_backend *be, void *dst, const void *src, size_t n, es_dtype dt) {
    (void)be;
    if (n) memcpy(dst, src, n * dt_bytes(dt));
}

// Threaded: gradients are zeroed every step, hundreds of MB on large models,
// and one core alone does not reach the memory's bandwidth.
static void cpu_zero(es_backend *be, void *p, size_t n, es_dtype dt) {
    (void)be;
    if (dt == ES_DT_F64) n *= 2;  // as many floats
    const size_t chunk = 1 << 16;  // floats
    const long nchunks = (long)((n + chunk - 1) / chunk);
    #pragma omp parallel for schedule(static) if (nchunks > 1)
    for (long c = 0; c < nchunks; c++) {
        size_t lo = (size_t)c * chunk, len = n - lo < chunk ? n - lo : chunk;
        memset((float *)p + lo, 0, len * 4);
    }
}

static void *cpu_offset(es_backend *be, void *p, size_t off, es_dtype dt) {
    (void)be;
    return (char *)p + off * dt_bytes(dt);
}

static void cpu_sync(es_backend *be) { (void)be; }

float *cpu_scratch(es_backend *be, size_t n) {
    cpu_ctx *ctx = be->ctx;
    if (n > ctx->scratch_n) {
        free(ctx->scratch);
        ctx->scratch = es_xmalloc(n * sizeof(float));
        ctx->scratch_n = n;
    }
    return ctx->scratch;
}

static void cpu_destroy(es_backend *be) {
    if (!be) return;
    cpu_ctx *ctx = be->ctx;
    if (ctx) {
        cpu_lowp_free(be);
        free(ctx->scratch);
    }
    free(ctx);
    free(be);
}

es_backend *es_backend_cpu_create(void) {
    es_backend *be = calloc(1, sizeof *be);
    cpu_ctx *ctx = calloc(1, sizeof *ctx);
    if (!be || !ctx) {
        free(be);
        free(ctx);
        es_fail("cpu backend: out of host memory creating the backend");
        return NULL;
    }
    be->name = "cpu";
    be->attention = "blocked sgemm";
    be->ctx = ctx;
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->upload = cpu_upload;
    be->download = cpu_download;
    // Host memory is what the CPU "device" reads: uploads are plain copies,
    // done when they return.
    es_backend_plain_staging(be);
    be->upload_async = cpu_upload;
    be->zero = cpu_zero;
    be->offset = cpu_offset;
    be->sync = cpu_sync;
    be->embed_fwd = cpu_embed_fwd;
    be->embed_bwd = cpu_embed_bwd;
    be->matmul_fwd = cpu_matmul_fwd;
    be->matmul_bwd = cpu_matmul_bwd;
    be->rmsnorm_fwd = cpu_rmsnorm_fwd;
    be->rmsnorm_bwd = cpu_rmsnorm_bwd;
    be->add_rmsnorm_fwd = cpu_add_rmsnorm_fwd;
    be->layernorm_fwd = cpu_layernorm_fwd;
    be->layernorm_bwd = cpu_layernorm_bwd;
    be->rope_fwd = cpu_rope_fwd;
    be->rope_bwd = cpu_rope_bwd;
    be->qkv_fwd = cpu_qkv_fwd;
    be->qkv_bwd = cpu_qkv_bwd;
    be->attention_fwd = cpu_attention_fwd;
    be->attention_bwd = cpu_attention_bwd;
    be->swiglu_fwd = cpu_swiglu_fwd;
    be->swiglu_bwd = cpu_swiglu_bwd;
    be->gelu_fwd = cpu_gelu_fwd;
    be->gelu_bwd = cpu_gelu_bwd;
    be->add = cpu_add;
    be->gather_rows = cpu_gather_rows;
    be->scatter_add_rows = cpu_scatter_add_rows;
    be->distill_loss = cpu_distill_loss;
    be->distill_loss_topk = cpu_distill_loss_topk;
    be->sumsq = cpu_sumsq;
    be->count_nonfinite = cpu_count_nonfinite;
    be->adamw = cpu_adamw;
    be->destroy = cpu_destroy;
    cpu_fill_comm(be);
    be->kv_append = cpu_kv_append;
    be->attention_decode = cpu_attention_decode;
    be->compute_is_f32 = 1;
    be->host_buffers = 1;
    be->pack_weights = cpu_pack_weights;
    be->peak_flops = cpu_sgemm_rate(be);
    return be;
}
