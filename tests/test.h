// Minimal test harness: CHECK records failures and the test exits non-zero.
#pragma once
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_failures = 0, t_checks = 0;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        t_checks++;                                                        \
        if (!(cond)) {                                                     \
            t_failures++;                                                  \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
        }                                                                  \
    } while (0)

// Relative error of a vs b over n values: max|a-b| / max(max|b|, floor).
// NaN anywhere gives +inf, so a NaN never passes.
static inline double t_rel_err(const float *a, const float *b, size_t n, double floor) {
    double num = 0, den = floor;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > num) num = d;
        if (fabs((double)b[i]) > den) den = fabs((double)b[i]);
    }
    return num / den;
}

// Fills a buffer with NaN so that an op which forgets to write shows up.
static inline void t_poison(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = NAN;
}

// Bytes a backend still counts outside its own workspace (which it keeps
// until destroyed): what a test forgot to free.
#define T_MEM_HELD(be) ((be)->mem_now_total - (be)->mem_now[ES_MEM_WORKSPACE])

#define TEST_DONE()                                                        \
    do {                                                                   \
        printf("%d checks, %d failed\n", t_checks, t_failures);          \
        return t_failures ? 1 : 0;                                         \
    } while (0)

// Exit status of a GPU test whose backend could not be created (why: the
// error): 77, meson's "skipped", when the machine has no usable GPU; 1 for any
// other failure, and also for no GPU under ESSENCE_REQUIRE_GPU=1 (set by
// tests/gpu/run.sh, which runs where a GPU must be).
static inline int t_no_backend_status(const char *why) {
    const char *require = getenv("ESSENCE_REQUIRE_GPU");
    if (!strstr(why, "no usable GPU") || (require && strcmp(require, "") && strcmp(require, "0"))) return 1;
    fprintf(stderr, "skipped: no usable GPU on this machine\n");
    return 77;
}
