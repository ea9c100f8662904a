#include "checksum.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <nmmintrin.h>
#define HAVE_HW_CRC32C 1
#endif

// Slice-by-8 tables: validating a multi-gigabyte shard should take seconds.
typedef struct {
    uint32_t t[8][256];
} crc_tables;

static crc_tables ieee, castagnoli;
static int hw_crc32c;
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void tables_fill(crc_tables *c, uint32_t poly) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t v = i;
        for (int k = 0; k < 8; k++) v = (v & 1) ? poly ^ (v >> 1) : v >> 1;
        c->t[0][i] = v;
    }
    for (int t = 1; t < 8; t++)
        for (int i = 0; i < 256; i++) c->t[t][i] = (c->t[t - 1][i] >> 8) ^ c->t[0][c->t[t - 1][i] & 0xff];
}

static void tables_init(void) {
    tables_fill(&ieee, 0xEDB88320u);
    tables_fill(&castagnoli, 0x82F63B78u);
#ifdef HAVE_HW_CRC32C
    hw_crc32c = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc_slice8(const crc_tables *c, uint32_t crc, const uint8_t *p, size_t n) {
    const uint32_t(*t)[256] = c->t;
    crc = ~crc;
    for (; n >= 8; p += 8, n -= 8) {  // little-endian host (checked in shard.c)
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + 4, 4);
        a ^= crc;
        crc = t[7][a & 0xff] ^ t[6][(a >> 8) & 0xff] ^ t[5][(a >> 16) & 0xff] ^ t[4][a >> 24] ^ t[3][b & 0xff] ^
              t[2][(b >> 8) & 0xff] ^ t[1][(b >> 16) & 0xff] ^ t[0][b >> 24];
    }
    while (n--) crc = t[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#ifdef HAVE_HW_CRC32C
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = ~crc;
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = _mm_crc32_u8(c32, *p++);
    return ~c32;
}
#endif

uint32_t es_crc32(uint32_t crc, const void *data, size_t n) {
    pthread_once(&tables_once, tables_init);
    return crc_slice8(&ieee, crc, data, n);
}

uint32_t es_crc32c(uint32_t crc, const void *data, size_t n) {
    pthread_once(&tables_once, tables_init);
#ifdef HAVE_HW_CRC32C
    if (hw_crc32c) return crc32c_hw(crc, data, n);
#endif
    return crc_slice8(&castagnoli, crc, data, n);
}

int es_crc32c_file(uint32_t *crc, uint64_t *bytes, const char *path) {
    enum { BLOCK = 1 << 20 };
    int fd = open(path, O_RDONLY);
    if (fd < 0) return es_fail("%s: cannot open: %s", path, strerror(errno));
    uint8_t *buf = es_xmalloc(BLOCK);
    *crc = 0;
    *bytes = 0;
    int r = ES_OK;
    for (;;) {
        ssize_t got = read(fd, buf, BLOCK);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) r = es_fail("%s: read failed: %s", path, strerror(errno));
        if (got <= 0) break;
        *crc = es_crc32c(*crc, buf, (size_t)got);
        *bytes += (uint64_t)got;
    }
    free(buf);
    close(fd);
    return r;
}
