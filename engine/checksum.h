// Checksums. CRC-32 (IEEE 802.3 polynomial, the one zlib.crc32 computes) is
// the data shard checksum, so that Python writers need nothing beyond the
// stdlib. CRC-32C (Castagnoli) guards checkpoint files: stronger on random
// errors and computed by the SSE4.2 crc32 instruction where the CPU has it,
// so verifying many gigabytes costs about what reading them does.
#pragma once
#include <stddef.h>
#include <stdint.h>

// Continue a CRC over n more bytes; start with crc = 0.
uint32_t es_crc32(uint32_t crc, const void *data, size_t n);
uint32_t es_crc32c(uint32_t crc, const void *data, size_t n);
// CRC-32C and size of a whole file, read in fixed-size blocks (constant
// memory whatever the file's size). ES_ERR naming the file when it cannot be
// opened or read.
int es_crc32c_file(uint32_t *crc, uint64_t *bytes, const char *path);
