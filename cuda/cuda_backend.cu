// The CUDA backend: creation, device memory with a per-kind tally, and host
// fp32 <-> device copies (bf16 for the compute type, raw for fp32/int32/fp64),
// and pinned host blocks for asynchronous uploads.
#include <stdint.h>
#include <string.h>

#include "cuda_common.cuh"
#include "es_build.h"

static size_t dt_size(es_dtype dt) { return dt == ES_DT_COMPUTE ? sizeof(bf16) : dt == ES_DT_F64 ? 8 : 4; }

static void *cuda_alloc(es_backend *be, size_t n, es_dtype dt, es_mem_kind kind) {
    cuda_ctx *c = cuda_of(be);
    if ((int)kind < 0 || kind >= ES_MEM_KINDS) {
        es_fail("cuda backend: unknown memory kind %d", (int)kind);
        return NULL;
    }
    if (n > SIZE_MAX / 8) {
        es_fail("cuda backend: allocation of %zu elements overflows", n);
        return NULL;
    }
    size_t bytes = n * dt_size(dt);
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        cudaGetLastError();  // clear the sticky-free error so later calls work
        es_fail("cuda backend: cannot allocate %zu bytes of %s: %s", bytes,
                es_mem_kind_names[kind], cudaGetErrorString(e));
        return NULL;
    }
    if (c->nrecs == c->caprecs) {
        c->caprecs = c->caprecs ? 2 * c->caprecs : 256;
        cuda_alloc_rec *r =
            (cuda_alloc_rec *)realloc(c->recs, c->caprecs * sizeof(cuda_alloc_rec));
        if (!r) {
            CUDA_CHECK(cudaFree(p));
            es_fail("cuda backend: out of host memory tracking allocations");
            return NULL;
        }
        c->recs = r;
    }
    c->recs[c->nrecs++] = (cuda_alloc_rec){p, bytes, kind};
    es_mem_tally(be, kind, bytes, +1);
    return p;
}

static void cuda_free(es_backend *be, void *p) {
    if (!p) return;
    cuda_ctx *c = cuda_of(be);
    for (size_t i = c->nrecs; i-- > 0;) {
        if (c->recs[i].ptr != p) continue;
        es_mem_tally(be, c->recs[i].kind, c->recs[i].bytes, -1);
        c->recs[i] = c->recs[--c->nrecs];
        CUDA_CHECK(cudaFree(p));
        return;
    }
    CUDA_REQUIRE(0, "cuda backend: free of a pointer it did not allocate (%p)", p);
}

static void cuda_upload(es_backend *be, void *dst, const void *src, size_t n, es_dtype dt) {
    cuda_ctx *c = cuda_of(be);
    if (!n) return;
    if (dt != ES_DT_COMPUTE) {
        CUDA_CHECK(cudaMemcpyAsync(dst, src, n * dt_size(dt), cudaMemcpyHostToDevice, c->stream));
        CUDA_CHECK(cudaStreamSynchronize(c->stream));
        return;
    }
    uint16_t *h = (uint16_t *)es_xmalloc(n * sizeof(uint16_t));
    const float *f = (const float *)src;
    for (size_t i = 0; i < n; i++) h[i] = es_f32_to_bf16(f[i]);
    CUDA_CHECK(cudaMemcpyAsync(dst, h, n * sizeof(uint16_t), cudaMemcpyHostToDevice, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    free(h);
}

static void cuda_download(es_backend *be, void *dst, const void *src, size_t n, es_dtype dt) {
    cuda_ctx *c = cuda_of(be);
    if (!n) return;
    if (dt != ES_DT_COMPUTE) {
        CUDA_CHECK(cudaMemcpyAsync(dst, src, n * dt_size(dt), cudaMemcpyDeviceToHost, c->stream));
        CUDA_CHECK(cudaStreamSynchronize(c->stream));
        return;
    }
    uint16_t *h = (uint16_t *)es_xmalloc(n * sizeof(uint16_t));
    CUDA_CHECK(cudaMemcpyAsync(h, src, n * sizeof(uint16_t), cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    float *f = (float *)dst;
    for (size_t i = 0; i < n; i++) f[i] = es_bf16_to_f32(h[i]);
    free(h);
}

// Pinned, so that a copy from it is asynchronous; each block keeps an event
// recorded after its last upload, for host_wait. Few blocks live at once.
static void *cuda_host_alloc(es_backend *be, size_t bytes) {
    cuda_ctx *c = cuda_of(be);
    cuda_host_rec r = {NULL, bytes, NULL};
    cudaError_t e = cudaHostAlloc(&r.ptr, bytes ? bytes : 1, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        cudaGetLastError();
        es_fail("cuda backend: cannot pin %zu bytes of host memory: %s", bytes, cudaGetErrorString(e));
        return NULL;
    }
    CUDA_CHECK(cudaEventCreateWithFlags(&r.read, cudaEventDisableTiming));
    cuda_host_rec *recs = (cuda_host_rec *)realloc(c->hrecs, (c->nhrecs + 1) * sizeof *recs);
    if (!recs) {
        CUDA_CHECK(cudaEventDestroy(r.read));
        CUDA_CHECK(cudaFreeHost(r.ptr));
        es_fail("cuda backend: out of host memory tracking pinned blocks");
        return NULL;
    }
    c->hrecs = recs;
    c->hrecs[c->nhrecs++] = r;
    return r.ptr;
}

// The pinned block that holds p.
static cuda_host_rec *host_rec_of(cuda_ctx *c, const void *p) {
    for (size_t i = 0; i < c->nhrecs; i++) {
        const char *b = (const char *)c->hrecs[i].ptr;
        if ((const char *)p >= b && (const char *)p < b + (c->hrecs[i].bytes ? c->hrecs[i].bytes : 1))
            return &c->hrecs[i];
    }
    CUDA_REQUIRE(0, "cuda backend: %p is not in a host_alloc block", p);
    return NULL;
}

static void host_rec_release(cuda_host_rec *r) {
    CUDA_CHECK(cudaEventSynchronize(r->read));  // no copy may still read it
    CUDA_CHECK(cudaEventDestroy(r->read));
    CUDA_CHECK(cudaFreeHost(r->ptr));
}

static void cuda_host_free(es_backend *be, void *h) {
    if (!h) return;
    cuda_ctx *c = cuda_of(be);
    cuda_host_rec *r = host_rec_of(c, h);
    host_rec_release(r);
    *r = c->hrecs[--c->nhrecs];
}

static void cuda_upload_async(es_backend *be, void *dst, const void *src, size_t n, es_dtype dt) {
    cuda_ctx *c = cuda_of(be);
    CUDA_REQUIRE(dt == ES_DT_I32 || dt == ES_DT_F32, "cuda upload_async: only int32 and fp32 buffers");
    if (!n) return;
    cuda_host_rec *r = host_rec_of(c, src);
    CUDA_CHECK(cudaMemcpyAsync(dst, src, n * 4, cudaMemcpyHostToDevice, c->stream));
    CUDA_CHECK(cudaEventRecord(r->read, c->stream));
}

static void cuda_host_wait(es_backend *be, void *h) {
    CUDA_CHECK(cudaEventSynchronize(host_rec_of(cuda_of(be), h)->read));
}

static void cuda_zero(es_backend *be, void *p, size_t n, es_dtype dt) {
    if (n) CUDA_CHECK(cudaMemsetAsync(p, 0, n * dt_size(dt), cuda_of(be)->stream));
}

static void *cuda_offset(es_backend *be, void *p, size_t off, es_dtype dt) {
    (void)be;
    return (char *)p + off * dt_size(dt);
}

static void cuda_sync(es_backend *be) { CUDA_CHECK(cudaStreamSynchronize(cuda_of(be)->stream)); }

void *cuda_scratch(es_backend *be, size_t bytes) {
    cuda_ctx *c = cuda_of(be);
    if (bytes > c->scratch_bytes) {
        if (c->scratch) {
            // Earlier kernels may still read the old block.
            CUDA_CHECK(cudaStreamSynchronize(c->stream));
            CUDA_CHECK(cudaFree(c->scratch));
            es_mem_tally(be, ES_MEM_WORKSPACE, c->scratch_bytes, -1);
        }
        CUDA_CHECK(cudaMalloc(&c->scratch, bytes));
        c->scratch_bytes = bytes;
        es_mem_tally(be, ES_MEM_WORKSPACE, bytes, +1);
    }
    return c->scratch;
}

static void cuda_destroy(es_backend *be) {
    if (!be) return;
    cuda_ctx *c = cuda_of(be);
    if (c) {
        CUDA_CHECK(cudaStreamSynchronize(c->stream));
        cuda_comm_destroy(be);
        for (size_t i = 0; i < c->nrecs; i++) CUDA_CHECK(cudaFree(c->recs[i].ptr));
        free(c->recs);
        for (size_t i = 0; i < c->nhrecs; i++) host_rec_release(&c->hrecs[i]);
        free(c->hrecs);
        if (c->scratch) CUDA_CHECK(cudaFree(c->scratch));
        CUDA_CHECK(cudaFree(c->dsum));
        CUDA_CHECK(cudaFree(c->lt_workspace));
        cuda_matmul_destroy(be);
#if ES_HAVE_CUDNN_SDPA
        cuda_attention_cudnn_destroy(be);
#endif
        CUBLAS_CHECK(cublasLtDestroy(c->lt));
        CUDA_CHECK(cudaStreamDestroy(c->stream));
        free(c);
    }
    free(be);
}

// Device setup that can fail for ordinary reasons (no GPU, no driver, out of
// memory) is reported, not aborted on, so that "auto" can fall back to the CPU.
static int cuda_ctx_init(cuda_ctx *c, double *peak_flops, int device) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        cudaGetLastError();
        return es_fail("device cuda: no usable GPU (%s)",
                       e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    }
    if (device < 0 || device >= count)
        return es_fail("device cuda: GPU %d does not exist (%d present)", device, count);
    c->device = device;
    if ((e = cudaSetDevice(device)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaMalloc(&c->lt_workspace, ES_CUDA_LT_WORKSPACE_BYTES)) != cudaSuccess ||
        (e = cudaMalloc((void **)&c->dsum, 4 * sizeof(double))) != cudaSuccess)
        return es_fail("device cuda: cannot set up GPU %d: %s", device, cudaGetErrorString(e));
    c->lt_workspace_bytes = ES_CUDA_LT_WORKSPACE_BYTES;
    int sms = 0, khz = 0, major = 0;
    if ((e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, device)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device)) !=
            cudaSuccess)
        return es_fail("device cuda: cannot query GPU %d: %s", device, cudaGetErrorString(e));
    // Dense bf16 tensor-core FLOPs per SM per clock: 4096 on Hopper (989
    // TFLOP/s on an H100 SXM), 2048 on Ampere A100, 1024 a rough figure elsewhere.
    *peak_flops = (double)sms * khz * 1e3 * (major >= 9 ? 4096 : major == 8 ? 2048 : 1024);
    cublasStatus_t s = cublasLtCreate(&c->lt);
    if (s != CUBLAS_STATUS_SUCCESS)
        return es_fail("device cuda: cannot start cuBLASLt: %s", cublasLtGetStatusString(s));
    return ES_OK;
}

// The attention ESSENCE_ATTN names, each over the ones before it for what it
// does not take: simple, tc over simple, cudnn over tc. Unset, the first of
// ES_ATTENTION_PATHS (cudnn where the build has it, else tc); a default cudnn
// that the runtime cannot run falls back to tc with one line saying why.
static int cuda_fill_attention_path(es_backend *be) {
    const char *sel = getenv("ESSENCE_ATTN");
    int named = sel && *sel;
    if (named && strcmp(sel, "simple") && strcmp(sel, "tc") && (!ES_HAVE_CUDNN_SDPA || strcmp(sel, "cudnn")))
        return es_fail("ESSENCE_ATTN: unknown attention kernel '%s' (this build: %s; the first is the default)",
                       sel, ES_ATTENTION_PATHS);
    if (named && !strcmp(sel, "simple")) return ES_OK;
    if (cuda_fill_attention_tc(be) != ES_OK) return ES_ERR;
    if (!ES_HAVE_CUDNN_SDPA || (named && !strcmp(sel, "tc"))) return ES_OK;
#if ES_HAVE_CUDNN_SDPA
    if (cuda_fill_attention_cudnn(be) == ES_OK) return ES_OK;
    if (named) return es_fail("ESSENCE_ATTN=cudnn: %s", es_last_error());
    fprintf(stderr, "essence: attention: tc, not cudnn: %s\n", es_last_error());
#endif
    return ES_OK;
}

extern "C" es_backend *es_backend_cuda_create(int device) {
    es_backend *be = (es_backend *)calloc(1, sizeof *be);
    cuda_ctx *c = (cuda_ctx *)calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        es_fail("cuda backend: out of host memory creating the backend");
        return NULL;
    }
    if (cuda_ctx_init(c, &be->peak_flops, device) != ES_OK) {
        // Release what was set up; each handle is only freed if it was made.
        if (c->lt) cublasLtDestroy(c->lt);
        if (c->dsum) cudaFree(c->dsum);
        if (c->lt_workspace) cudaFree(c->lt_workspace);
        if (c->stream) cudaStreamDestroy(c->stream);
        cudaGetLastError();
        free(c);
        free(be);
        return NULL;
    }
    be->name = "cuda";
    be->ctx = c;
    be->alloc = cuda_alloc;
    be->free = cuda_free;
    be->upload = cuda_upload;
    be->download = cuda_download;
    be->host_alloc = cuda_host_alloc;
    be->host_free = cuda_host_free;
    be->upload_async = cuda_upload_async;
    be->host_wait = cuda_host_wait;
    be->zero = cuda_zero;
    be->offset = cuda_offset;
    be->sync = cuda_sync;
    be->destroy = cuda_destroy;
    es_mem_tally(be, ES_MEM_WORKSPACE, ES_CUDA_HELD_BYTES, +1);
    cuda_fill_matmul(be);
    cuda_fill_norm(be);
    cuda_fill_rope(be);
    cuda_fill_qkv(be);
    cuda_fill_attention(be);
    cuda_fill_pointwise(be);
    cuda_fill_loss(be);
    cuda_fill_optim(be);
    cuda_fill_decode(be);
    cuda_fill_comm(be);
    if (cuda_fill_attention_path(be) != ES_OK) {
        cuda_destroy(be);
        return NULL;
    }
    return be;
}
