// Peaks for performance reports: the device's dense matmul rate that MFU is
// measured against, and the process's memory high-water mark.
#pragma once
#include <stddef.h>

#include "backend.h"

// Dense bf16 tensor-core FLOP/s of a GPU model named like "NVIDIA H100 80GB
// HBM3" (the first entry of a known table whose key the name contains), or 0.
double es_gpu_peak_flops(const char *model_name);

// The peak MFU is measured against, and where it came from: the CPU
// backend's sgemm rate measured at start-up; on a GPU the known table for the
// model the driver reports, else the backend's SM-count x clock estimate.
// `source` receives a short description.
double es_device_peak_flops(char *source, size_t size, const es_backend *be);

// Peak resident set size of this process, bytes.
double es_rss_peak_bytes(void);

// A device a run may be planned for (essence plan --device).
typedef struct {
    char name[32];          // h100-80g, h200, a100-40g, a100-80g or cpu
    double memory;          // bytes per device
    double reserved;        // bytes of it the plan keeps for what the engine does not tally
    int compute_bytes;      // bytes per weight and activation: 2 (bf16, GPUs) or 4 (fp32, cpu)
    int gpu;                // 1: the CUDA backend's layout and workspace; 0: the CPU backend's
    double peak_flops;      // dense matmul FLOP/s
    char peak_source[128];  // where the peak comes from
} es_device;

// The named device from the peak table above (cpu: this machine's memory and
// measured sgemm rate). ES_ERR naming the known devices otherwise.
int es_device_named(es_device *d, const char *name);

// The MFU `essence bench` measured on `device` for the student nearest in
// parameter count (log scale), or 0 when none is on record; `what` says which.
double es_device_mfu_on_record(char *what, size_t size, const char *device, long long params);
