// The offline teacher: runs a teacher model forward over every example of a
// set of shards at full length and stores, for every token position, its
// top-k next-token log-probabilities in a new shard (docs/shards.md), so a
// student can be distilled later without the teacher in memory.
#pragma once
#include "backend.h"

typedef struct {
    const char *model_dir;      // Hugging Face directory of the teacher
    const char *const *shards;  // (nshards) input shards, read as one dataset
    int nshards;
    const char *out;            // the shard written: the same examples plus top-k
    int k;                      // entries per token, 1..1024 and at most the shards' vocabulary
    int batch_tokens;           // tokens per forward pass (raised to the longest example)
    int chunk_rows;             // LM head rows per chunk (0: as many as 2^24 logits allow)
    int progress;               // print examples/s and ETA to stderr on long runs
} es_teacher_opts;

// Refuses a teacher whose vocabulary is smaller than the shards', or whose
// tokenizer (model_dir/tokenizer.json, when present) has another fingerprint.
int es_teacher_run(es_backend *be, const es_teacher_opts *o);
