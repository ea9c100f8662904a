#include "peaks.h"

#include <glob.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

typedef struct {
    const char *key;  // matched as a substring of the model name; more specific keys first
    double tflops;    // dense bf16, no sparsity
} gpu_peak;

static const gpu_peak gpu_peaks[] = {
    {"GH200", 989}, {"H200", 989},      {"H100 PCIe", 756}, {"H100 NVL", 835}, {"H100", 989},
    {"H800", 989},  {"B200", 2250},     {"A100", 312},      {"A800", 312},     {"L40S", 362},
    {"L40", 181},   {"RTX 4090", 165},  {"L4", 121},        {"A10G", 70},     {"A10", 125},
};

double es_gpu_peak_flops(const char *model_name) {
    for (size_t i = 0; i < sizeof gpu_peaks / sizeof gpu_peaks[0]; i++)
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
