// The counting backend (backend.h): the same per-kind tally as a real
// backend's alloc/free, without the memory.
#include <stdlib.h>

#include "backend.h"
#include "common.h"

// What a handle stands for: free takes it back out of the tally.
typedef struct {
    size_t bytes;
    es_mem_kind kind;
} count_block;

typedef struct {
    int compute_bytes;
} count_ctx;

static size_t elem_bytes(const es_backend *be, es_dtype dt) {
    return dt == ES_DT_COMPUTE ? (size_t)((const count_ctx *)be->ctx)->compute_bytes : dt == ES_DT_F64 ? 8 : 4;
}

static void *count_alloc(es_backend *be, size_t n, es_dtype dt, es_mem_kind kind) {
    if (kind < 0 || kind >= ES_MEM_KINDS) {
        es_fail("count backend: unknown memory kind %d", (int)kind);
        return NULL;
    }
    size_t bytes = n * elem_bytes(be, dt);
    if (n && bytes / n != elem_bytes(be, dt)) {
        es_fail("count backend: allocation of %zu elements overflows", n);
        return NULL;
    }
    count_block *b = es_xmalloc(sizeof *b);
    b->bytes = bytes;
    b->kind = kind;
    es_mem_tally(be, kind, bytes, +1);
    return b;
}

static void count_free(es_backend *be, void *p) {
    if (!p) return;
    const count_block *b = p;
    es_mem_tally(be, b->kind, b->bytes, -1);
    free(p);
}

static void count_upload(es_backend *be, void *dst, const void *src, size_t n, es_dtype dt) {
    (void)be, (void)dst, (void)src, (void)n, (void)dt;
}

// Nothing reads what it "downloaded" (only ever to upload it back to another
// handle), and writing a whole model's worth of host memory would cost seconds.
static void count_download(es_backend *be, void *dst, const void *src, size_t n, es_dtype dt) {
    (void)be, (void)dst, (void)src, (void)n, (void)dt;
}

static void count_zero(es_backend *be, void *p, size_t n, es_dtype dt) { (void)be, (void)p, (void)n, (void)dt; }

// Handles have no elements: a part of one stands for the whole.
static void *count_offset(es_backend *be, void *p, size_t off, es_dtype dt) {
    (void)be, (void)off, (void)dt;
    return p;
}

static void count_sync(es_backend *be) { (void)be; }

static void count_destroy(es_backend *be) {
    if (!be) return;
    free(be->ctx);
    free(be);
}

es_backend *es_backend_count_create(int compute_bytes) {
    es_backend *be = es_xcalloc(1, sizeof *be);
    count_ctx *ctx = es_xcalloc(1, sizeof *ctx);
    ctx->compute_bytes = compute_bytes;
    be->name = "count";
    be->ctx = ctx;
    be->compute_is_f32 = compute_bytes == 4;
    be->alloc = count_alloc;
    be->free = count_free;
    be->upload = count_upload;
    be->download = count_download;
    // Host staging is real host memory (the engine writes into it); it is no
    // device memory, so it is not tallied.
    es_backend_plain_staging(be);
    be->upload_async = count_upload;
    be->zero = count_zero;
    be->offset = count_offset;
    be->sync = count_sync;
    be->destroy = count_destroy;
    return be;
}
