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
