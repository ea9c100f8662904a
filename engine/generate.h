// Autoregressive generation with a key/value cache: a fixed number of
// sequence slots, each owning max_len cache rows in every layer. Prefill runs
// prompts packed (no attention across prompts) and fills their slots; decode
// runs one token per slot. Both return the next-token logits on the host.
#pragma once
#include <stdint.h>

#include "common.h"
#include "model.h"

typedef struct {
    es_model *model;  // forward-only; its activations serve as work buffers
    int slots, max_len;
    void **kcache, **vcache;  // (layers) of (slots * max_len, KVH * D)
    int *len;                 // (slots) tokens cached per slot (host)
    // Device work buffers: index arrays of up to model->max_tokens entries,
    // gathered last rows (slots, C) and their logits (slots, V).
    void *d_tokens, *d_pos, *d_rows, *d_cu, *d_last, *d_start, *d_len;
    void *last, *logits;
    int32_t *h_idx;  // host staging for index arrays (max_tokens + 1)
} es_gen;

// Allocates the cache for `slots` sequences of up to max_len tokens. The model
// must have been created with max_tokens >= slots (its prefill capacity).
int es_gen_create(es_gen *g, es_model *m, int slots, int max_len);
void es_gen_free(es_gen *g);
// Decode steps read the model's matmul weights (every layer's projections and
// the LM head) in fmt from now on, through the backend's pack_weights (which
// sets how many rows count as a decode step: on the CPU 16, so a prefill of
// at most 16 tokens reads them too; longer prefills, and the embedding, keep
// the model's own weights). ES_WFMT_F32 changes nothing. ES_ERR when the
// backend has no such copies.
int es_gen_weights(es_gen *g, es_wfmt fmt);
// fmt from its name ("fp32", "bf16", "int8"); ES_ERR naming the value.
int es_wfmt_parse(es_wfmt *fmt, const char *name);

// Runs n prompts (ids[i] of lens[i] tokens) into the empty slots slot[i],
// packed into one forward of sum(lens) <= model->max_tokens tokens.
// logits (n, V) host fp32: the next-token logits after each prompt.
int es_gen_prefill(es_gen *g, float *logits, const int *slot, const int32_t *const *ids,
                   const int *lens, int n);
// Appends token[i] to slot[i] (n distinct slots, each holding >= 1 token and
// < max_len) and returns the next-token logits (n, V).
int es_gen_decode(es_gen *g, float *logits, const int *slot, const int32_t *token, int n);

// Next token from logits (V): argmax when temperature <= 0, otherwise a draw
// from softmax(logits / temperature) restricted to the smallest set of most
// likely tokens whose mass reaches top_p. work holds 2 * V floats.
int es_sample(const float *logits, int V, float temperature, float top_p, es_rng *rng,
              float *work);

// ---- sampling many sequences (engine/generate_run.c) ----------------------

typedef struct {
    int n;              // samples per request
    int max_new;        // new tokens per sample, at most
    float temperature;  // <= 0: greedy
    float top_p;        // nucleus mass in (0, 1]
    uint64_t seed;      // each (request, sample) draws from its own stream
    const int32_t *stop;  // generation ends after emitting one of these
    int nstop;
} es_gen_params;

typedef struct {
    const int32_t *ids;
    int len;
} es_gen_request;

// Called once per finished sample with its new tokens (a stop token included
// as the last one) and whether it ended at a stop token. Non-zero aborts.
typedef int (*es_gen_emit)(void *user, int req, int sample, const int32_t *ids, int n,
                           int finished);

// Generates p->n samples for each request with continuous batching: a slot
// freed by a finished sample takes the next waiting one. A sample also ends
// when its slot's cache (g->max_len) is full. Results do not depend on the
// number of slots, up to floating-point rounding.
int es_generate(es_gen *g, const es_gen_request *reqs, int nreq, const es_gen_params *p,
                es_gen_emit emit, void *user);
