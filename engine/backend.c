#include "backend.h"

#include <string.h>

#include "common.h"
#include "es_build.h"

const char *const es_mem_kind_names[ES_MEM_KINDS] = {
    "weights", "gradients", "optimizer", "activations", "workspace", "index"};

#if !ES_HAVE_CUDA
es_backend *es_backend_cuda_create(int device) {
    (void)device;
    es_fail("device cuda: this build of essence has no CUDA backend (rebuild with nvcc, "
            "cuBLASLt and cuDNN present, meson -Dcuda=enabled)");
    return NULL;
}
#endif

es_backend *es_backend_create(const char *name) {
    if (!strcmp(name, "cpu")) return es_backend_cpu_create();
    if (!strcmp(name, "cuda")) return es_backend_cuda_create(0);
    if (!strcmp(name, "auto")) {
        es_backend *be = es_backend_cuda_create(0);
        return be ? be : es_backend_cpu_create();
    }
    es_fail("device: unknown device '%s' (expected cpu, cuda or auto)", name);
    return NULL;
}
