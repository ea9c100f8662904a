// On-disk layout of a data shard (docs/shards.md), shared by reader and writer.
#pragma once
#include <stdint.h>

#define ES_SHARD_MAGIC "ESSHARD1"
#define ES_SHARD_VERSION 1u
#define ES_SHARD_HEADER_BYTES 64u
#define ES_SHARD_MAX_TOPK 1024u

typedef struct {
    char magic[8];
    uint32_t version;
    uint32_t header_bytes;
    uint32_t vocab;
    uint32_t topk;
    uint64_t fingerprint;
    uint64_t ndocs;
    uint64_t ntokens;
    uint64_t reserved[2];
} es_shard_header;

// One index entry per example.
typedef struct {
    uint64_t offset;  // first token, from the start of the tokens section
    uint32_t len;
    uint32_t cot_begin;
    uint32_t cot_end;
    uint32_t reserved;
} es_shard_entry;

_Static_assert(sizeof(es_shard_header) == ES_SHARD_HEADER_BYTES, "shard header is 64 bytes");
_Static_assert(sizeof(es_shard_entry) == 24, "shard index entry is 24 bytes");
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "shards are little-endian and mapped directly");
