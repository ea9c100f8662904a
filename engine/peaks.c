#include "peaks.h"

#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common.h"

typedef struct {
    const char *key;   // matched as a substring of the model name; more specific keys first
    double tflops;     // dense bf16, no sparsity
    const char *name;  // the card's name for essence plan --device (NULL: not plannable)
    double mem_mib;    // its memory as the driver reports it (named cards)
} gpu_peak;

static const gpu_peak gpu_peaks[] = {
    {"GH200", 989, NULL, 0},
    {"H200", 989, "h200", 143771},
    {"H100 PCIe", 756, NULL, 0},
    {"H100 NVL", 835, NULL, 0},
    {"H100", 989, "h100-80g", 81559},  // SXM
    {"H800", 989, NULL, 0},
    {"B200", 2250, NULL, 0},
    {"A100-SXM4-80GB", 312, "a100-80g", 81920},
    {"A100", 312, "a100-40g", 40960},
    {"A800", 312, NULL, 0},
    {"L40S", 362, NULL, 0},
    {"L40", 181, NULL, 0},
    {"RTX 4090", 165, NULL, 0},
    {"L4", 121, NULL, 0},
    {"A10G", 70, NULL, 0},
    {"A10", 125, NULL, 0},
};
#define NPEAKS (sizeof gpu_peaks / sizeof gpu_peaks[0])

// A plan keeps this much of a GPU's memory out of reach: the CUDA context,
// cuBLASLt's handle and NCCL's buffers live there, outside the engine's tally.
#define GPU_RESERVED_BYTES (1024.0 * 1048576.0)

// MFU `essence bench` measured on a named card (perf/gpu/results/README.md),
// with the student it trained: the plan's default for a student of about
// that size on that card.
typedef struct {
    const char *device;
    long long params;
    double mfu;
    const char *what;
} mfu_record;

static const mfu_record mfu_records[] = {
    {"h200", 596049920LL, 0.224, "Qwen3-0.6B shape, 8k-token batches, 2026-11-30"},
    {"h200", 1720574976LL, 0.338, "Qwen3-1.7B shape, 8k-token batches, 2026-11-30"},
};

double es_gpu_peak_flops(const char *model_name) {
    for (size_t i = 0; i < NPEAKS; i++)
        if (strstr(model_name, gpu_peaks[i].key)) return gpu_peaks[i].tflops * 1e12;
    return 0;
}

// The GPU model the NVIDIA driver reports, when every GPU present is the same
// model (device numbering need not follow the driver's order). 0 if unknown.
static int gpu_model_name(char *name, size_t size) {
    glob_t g;
    name[0] = 0;
    if (glob("/proc/driver/nvidia/gpus/*/information", 0, NULL, &g) != 0) return 0;
    int same = 1;
    for (size_t i = 0; i < g.gl_pathc && same; i++) {
        FILE *f = fopen(g.gl_pathv[i], "r");
        if (!f) continue;
        char line[256], model[256] = "";
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "Model: %255[^\n]", model) == 1) break;
        fclose(f);
        if (!model[0]) continue;
        if (!name[0]) snprintf(name, size, "%s", model);
        else if (strcmp(name, model)) same = 0;
    }
    globfree(&g);
    return same && name[0];
}

double es_device_peak_flops(char *source, size_t size, const es_backend *be) {
    if (!strcmp(be->name, "cpu")) {
        snprintf(source, size, "measured sgemm rate");
        return be->peak_flops;
    }
    char model[200];
    if (gpu_model_name(model, sizeof model)) {
        double p = es_gpu_peak_flops(model);
        if (p > 0) {
            snprintf(source, size, "%s, dense bf16", model);
            return p;
        }
    }
    snprintf(source, size, "%s backend estimate", be->name);
    return be->peak_flops;
}

double es_rss_peak_bytes(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (double)ru.ru_maxrss * 1024.0;  // Linux reports KiB
}

// The CPU: this machine's memory, and the sgemm rate the CPU backend measures
// when it starts (the peak `essence bench` reports MFU against).
static int cpu_device(es_device *d) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return es_fail("device cpu: cannot read this machine's memory size");
    es_backend *be = es_backend_cpu_create();
    if (!be) return ES_ERR;
    d->peak_flops = be->peak_flops;
    be->destroy(be);
    d->memory = (double)pages * (double)page;
    d->compute_bytes = 4;
    snprintf(d->peak_source, sizeof d->peak_source, "this machine's sgemm rate, measured now");
    return ES_OK;
}

int es_device_named(es_device *d, const char *name) {
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    if (!strcmp(name, "cpu")) return cpu_device(d);
    for (size_t i = 0; i < NPEAKS; i++) {
        const gpu_peak *g = &gpu_peaks[i];
        if (!g->name || strcmp(g->name, name)) continue;
        d->memory = g->mem_mib * 1048576.0;
        d->reserved = GPU_RESERVED_BYTES;
        d->compute_bytes = 2;
        d->peak_flops = g->tflops * 1e12;
        d->gpu = 1;
        snprintf(d->peak_source, sizeof d->peak_source, "%s datasheet, dense bf16", name);
        return ES_OK;
    }
    char known[128] = "";
    for (size_t i = 0; i < NPEAKS; i++)
        if (gpu_peaks[i].name) snprintf(known + strlen(known), sizeof known - strlen(known), "%s, ", gpu_peaks[i].name);
    return es_fail("device: unknown device '%s' (expected %scpu)", name, known);
}

double es_device_mfu_on_record(char *what, size_t size, const char *device, long long params) {
    const mfu_record *best = NULL;
    for (size_t i = 0; i < sizeof mfu_records / sizeof mfu_records[0]; i++) {
        const mfu_record *r = &mfu_records[i];
        if (strcmp(r->device, device)) continue;
        if (!best || fabs(log((double)r->params / (double)params)) < fabs(log((double)best->params / (double)params)))
            best = r;
    }
    if (!best) return 0;
    snprintf(what, size, "measured on %s, %s", device, best->what);
    return best->mfu;
}
