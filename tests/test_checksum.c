// CRC-32 and CRC-32C against bit-at-a-time references: known vectors, every
// length and alignment up to a few blocks, continuation across splits, and
// whole files read in blocks.
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../engine/checksum.h"
#include "../engine/common.h"
#include "test.h"

static uint32_t ref_crc(uint32_t poly, const uint8_t *p, size_t n) {
    uint32_t c = ~0u;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c & 1) ? poly ^ (c >> 1) : c >> 1;
    }
    return ~c;
}

static void test_vectors(void) {
    const char *s = "123456789";
    CHECK(es_crc32(0, s, 9) == 0xCBF43926u, "crc32 check value %08x", es_crc32(0, s, 9));
    CHECK(es_crc32c(0, s, 9) == 0xE3069283u, "crc32c check value %08x", es_crc32c(0, s, 9));
    CHECK(es_crc32c(0, s, 0) == 0, "empty input");
}

static void test_against_reference(es_rng *r) {
    enum { N = 300 };
    uint8_t buf[N + 8];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)es_rng_u64(r);
    for (size_t off = 0; off < 8; off++)
        for (size_t n = 0; n <= N; n++) {
            uint32_t want = ref_crc(0x82F63B78u, buf + off, n);
            size_t cut = n ? (size_t)(es_rng_u64(r) % (n + 1)) : 0;
            uint32_t split = es_crc32c(es_crc32c(0, buf + off, cut), buf + off + cut, n - cut);
            CHECK(es_crc32c(0, buf + off, n) == want, "crc32c off %zu n %zu", off, n);
            CHECK(split == want, "crc32c continued at %zu of %zu", cut, n);
            CHECK(es_crc32(0, buf + off, n) == ref_crc(0xEDB88320u, buf + off, n), "crc32 off %zu n %zu", off, n);
        }
}

static void test_file(es_rng *r) {
    char path[] = "/tmp/essence-test-checksum-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0) return;
    size_t n = (3u << 20) + 12345;  // several read blocks and a partial one
    uint8_t *buf = es_xmalloc(n);
    for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)es_rng_u64(r);
    CHECK(write(fd, buf, n) == (ssize_t)n, "write");
    close(fd);
    uint32_t crc;
    uint64_t bytes;
    CHECK(es_crc32c_file(&crc, &bytes, path) == ES_OK, "%s", es_last_error());
    CHECK(bytes == n && crc == es_crc32c(0, buf, n), "file: %llu bytes, crc %08x", (unsigned long long)bytes, crc);
    unlink(path);
    CHECK(es_crc32c_file(&crc, &bytes, path) == ES_ERR, "a missing file is an error");
    CHECK(strstr(es_last_error(), path) != NULL, "the error names the file: %s", es_last_error());
    free(buf);
}

int main(void) {
    es_rng r;
    es_rng_seed(&r, 7);
    test_vectors();
    test_against_reference(&r);
    test_file(&r);
    TEST_DONE();
}
