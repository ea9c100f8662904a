#include "backend.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "es_build.h"
#include "peaks.h"

const char *const es_wfmt_names[ES_WFMTS] = {"fp32", "bf16", "int8"};

const char *const es_mem_kind_names[ES_MEM_KINDS] = {
    "weights", "gradients", "optimizer", "activations", "workspace", "index"};

void es_mem_tally(es_backend *be, es_mem_kind kind, size_t bytes, int sign) {
    if (sign > 0) {
        be->mem_now[kind] += bytes;
        be->mem_now_total += bytes;
        if (be->mem_now[kind] > be->mem_peak[kind]) be->mem_peak[kind] = be->mem_now[kind];
        if (be->mem_now_total > be->mem_peak_total) be->mem_peak_total = be->mem_now_total;
    } else {
        be->mem_now[kind] -= bytes;
        be->mem_now_total -= bytes;
    }
}

static void *plain_host_alloc(es_backend *be, size_t bytes) {
    (void)be;
    return malloc(bytes ? bytes : 1);
}

static void plain_host_free(es_backend *be, void *h) {
    (void)be;
    free(h);
}

static void plain_host_wait(es_backend *be, void *h) { (void)be, (void)h; }

void es_backend_plain_staging(es_backend *be) {
    be->host_alloc = plain_host_alloc;
    be->host_free = plain_host_free;
    be->host_wait = plain_host_wait;
}

#if !ES_HAVE_CUDA
es_backend *es_backend_cuda_create(int device) {
    (void)device;
    es_fail("device cuda: this build of essence has no CUDA backend (rebuild with nvcc, "
            "cuBLASLt and cuDNN present, meson -Dcuda=enabled)");
    return NULL;
}
#endif

// One GPU per rank: a rank takes the GPU of its index among the ranks of its node.
static int local_rank(void) {
    const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"};
    for (int i = 0; i < 3; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v);
    }
    return 0;
}

static es_backend *create(const char *name) {
    if (!strcmp(name, "cpu")) return es_backend_cpu_create();
    if (!strcmp(name, "cuda")) return es_backend_cuda_create(local_rank());
    if (!strcmp(name, "auto")) {
        es_backend *be = es_backend_cuda_create(local_rank());
        return be ? be : es_backend_cpu_create();
    }
    es_fail("device: unknown device '%s' (expected cpu, cuda or auto)", name);
    return NULL;
}

es_backend *es_backend_create(const char *name) {
    es_backend *be = create(name);
    if (be) be->peak_flops = es_device_peak_flops(be->peak_source, sizeof be->peak_source, be);
    return be;
}
