// Shared helpers: error reporting, allocation, small math.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

// Library code never exits: it records one line describing the problem
// (naming the file and the cause) and returns ES_ERR. The CLI prints it.
#define ES_OK 0
#define ES_ERR (-1)

// Records the message (printf-style) and returns ES_ERR. An argument may be
// es_last_error(), to wrap the last message with context.
int es_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// The last recorded message ("" if none).
const char *es_last_error(void);
// Prints "essence: <msg>" to stderr and exits 1; for the CLI only.
void es_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

// Allocation that dies on out-of-memory (host bookkeeping only).
void *es_xmalloc(size_t bytes);
void *es_xcalloc(size_t n, size_t size);

// Reads a whole file into a NUL-terminated buffer; ES_ERR on failure.
int es_read_file(char **out, size_t *out_len, const char *path);

// Writes `len` bytes to `path` atomically (tmp file, fsync, rename, fsync
// dir): readers see the old file or the new one, never a part. '-', a device
// or a FIFO is written straight through (engine/out_file.h).
int es_write_atomic(const char *path, const void *data, size_t len);

// Creates a directory and its missing parents (like mkdir -p).
int es_mkdir_p(const char *path);

// Wall clock in seconds (monotonic).
double es_now(void);

// Deterministic RNG (xorshift64*), used everywhere randomness must be
// reproducible from a seed and resumable from a checkpoint.
typedef struct { uint64_t s; } es_rng;
void es_rng_seed(es_rng *r, uint64_t seed);
uint64_t es_rng_u64(es_rng *r);
float es_rng_uniform(es_rng *r);   // [0, 1)
float es_rng_normal(es_rng *r);    // N(0, 1)

// bf16/fp16 <-> fp32 conversion (round-to-nearest-even for bf16). The bf16
// ones are inline: loops over every weight call them, and vectorise then.
static inline float es_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t es_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // keep NaN a NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
float es_f16_to_f32(uint16_t h);
