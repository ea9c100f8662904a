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

typedef struct es_shard es_shard;

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
// Example i: its section info and a pointer to its len tokens.
const uint32_t *es_dataset_doc(const es_dataset *ds, size_t i, es_doc_info *info);
// Teacher top-k for example i (NULL when the shard has none): ids (len, k)
// and log-probabilities (len, k) for each token position.
int es_dataset_topk(const es_dataset *ds, size_t i, const uint32_t **ids, const float **logp);
