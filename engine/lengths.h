// A length histogram: the section lengths of a corpus without its tokens,
// for planning a run whose shards are not at hand (engine/plan.c). JSON:
//   {"source": "where the lengths come from",
//    "lengths": [[count, prompt, cot, answer], ...]}
// Each row stands for `count` examples of those section lengths in tokens
// (cot counting its <think> and </think>), in row order.
#pragma once
#include <stddef.h>

#include "shard.h"

typedef struct {
    es_doc_info *docs;  // (ndocs) section boundaries, as a shard would give them
    size_t ndocs;
    size_t ntokens;
    uint32_t longest;   // the longest example's length
    char source[256];   // the file's "source", cut to fit
} es_lengths;

// Reads and checks the whole file; ES_ERR naming the file and the first bad
// row or key, with nothing kept.
int es_lengths_load(es_lengths *l, const char *path);
void es_lengths_free(es_lengths *l);
