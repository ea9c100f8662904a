// Tokenizer identity: a fingerprint of a model directory's tokenizer.json,
// stored in every data shard so that a model never trains on tokens of
// another tokenizer. Definition in docs/shards.md; tools/tokenizer_fingerprint.py
// computes the same value.
#pragma once
#include <stdint.h>

// FNV-1a 64 over the (id, token) pairs of the vocabulary and added tokens,
// sorted by id; *vocab_out is the largest id plus one.
int es_tokenizer_fingerprint(uint64_t *out, uint32_t *vocab_out, const char *model_dir);
