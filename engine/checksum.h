// CRC-32 (IEEE 802.3 polynomial, the one zlib.crc32 computes), used as the
// data shard checksum so that Python writers need nothing beyond the stdlib.
#pragma once
#include <stddef.h>
#include <stdint.h>

// Continues a CRC over n more bytes; start with crc = 0.
uint32_t es_crc32(uint32_t crc, const void *data, size_t n);
