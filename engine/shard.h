// Binary shards of tokenized reasoning traces (format: docs/shards.md).
// The engine memory-maps them and validates them fully before use.
#pragma once
#include <stddef.h>
#include <stdint.h>

// Section boundaries of one example, in tokens from its start:
//   prompt = [0, cot_begin), CoT = [cot_begin, cot_end) (the <think> and
//   </think> tokens included), answer = [cot_end, len).
typedef struct {
    uint32_t len;
    uint32_t cot_begin;
    uint32_t cot_end;
} es_doc_info;

// One shard file, mapped and validated.
typedef struct es_shard es_shard;
int es_shard_open(es_shard **out, const char *path);
void es_shard_close(es_shard *s);

// What es_shard_write stores. The writer validates the file it wrote with
// the reader before moving it into place, so it never leaves a bad shard.
typedef struct {
    uint32_t vocab;
    uint64_t fingerprint;
    const es_doc_info *docs;   // (ndocs)
    size_t ndocs;
    const uint32_t *tokens;    // (ntokens) the examples back to back
    size_t ntokens;
    uint32_t topk;             // teacher entries per token, 0 when absent
    const uint32_t *topk_ids;  // (ntokens, topk)
    const float *topk_logp;    // (ntokens, topk)
} es_shard_content;

// Writes a shard atomically (a temporary file renamed over path).
int es_shard_write(const char *path, const es_shard_content *c);

// A set of shards read as one list of examples.
typedef struct {
    es_shard **shards;
    int nshards;
    size_t ndocs;
    size_t ntokens;
    uint32_t vocab;
    uint64_t fingerprint;  // tokenizer fingerprint shared by every shard
    int topk;              // teacher top-k entries per token (0 when absent)
    size_t *first_doc;     // (nshards + 1) global index of each shard's first doc
} es_dataset;

// Opens and validates every shard; refuses a vocabulary or tokenizer
// fingerprint that differs from the expected one (0 = do not check), naming both.
int es_dataset_open(es_dataset *ds, const char *const *paths, int npaths, uint32_t vocab,
                    uint64_t fingerprint);
void es_dataset_close(es_dataset *ds);
// Example i: its section info and a pointer to its len tokens (NULL when i
// is out of range).
const uint32_t *es_dataset_doc(const es_dataset *ds, size_t i, es_doc_info *info);
// Teacher top-k for example i (NULL when the shard has none): ids (len, k)
// and log-probabilities (len, k) for each token position. ES_ERR when i is
// out of range.
int es_dataset_topk(const es_dataset *ds, size_t i, const uint32_t **ids, const float **logp);
