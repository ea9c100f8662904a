#include "common.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static _Thread_local char g_err[1024];

int es_fail(const char *fmt, ...) {
    // Formatted aside first: an argument may be es_last_error() itself (a
    // message wrapped with context), and vsnprintf must not read what it writes.
    char msg[sizeof g_err];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memcpy(g_err, msg, sizeof g_err);
    return ES_ERR;
}

const char *es_last_error(void) { return g_err; }

void es_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("essence: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

void *es_xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) es_die("out of host memory allocating %zu bytes", bytes);
    return p;
}

void *es_xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) es_die("out of host memory allocating %zu x %zu bytes", n, size);
    return p;
}

int es_read_file(char **out, size_t *out_len, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return es_fail("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return es_fail("%s: not a regular file", path);
    }
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return es_fail("%s: cannot seek", path); }
    long n = ftell(f);
    if (n < 0) { fclose(f); return es_fail("%s: cannot tell size", path); }
    rewind(f);
    char *buf = es_xmalloc((size_t)n + 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        return es_fail("%s: short read", path);
    }
    fclose(f);
    buf[n] = 0;
    *out = buf;
    if (out_len) *out_len = (size_t)n;
    return ES_OK;
}

int es_mkdir_p(const char *path) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return es_fail("%s: path too long", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return es_fail("%s: cannot create: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return es_fail("%s: cannot create: %s", buf, strerror(errno));
    return ES_OK;
}

double es_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void es_rng_seed(es_rng *r, uint64_t seed) {
    // splitmix64 scramble so that small seeds give well-mixed states
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    r->s = z ? z : 0x2545F4914F6CDD1Dull;
}

uint64_t es_rng_u64(es_rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1Dull;
}

float es_rng_uniform(es_rng *r) { return (float)(es_rng_u64(r) >> 40) / 16777216.0f; }

float es_rng_normal(es_rng *r) {
    float u1 = es_rng_uniform(r), u2 = es_rng_uniform(r);
    if (u1 < 1e-12f) u1 = 1e-12f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
}

float es_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, u;
    if (exp == 0) {
        if (mant == 0) {
            u = sign;
        } else {  // subnormal: renormalise
            exp = 127 - 15 + 1;
            while (!(mant & 0x400u)) { mant <<= 1; exp--; }
            u = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (mant << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}
