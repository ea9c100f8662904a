// Shared pieces of the model tests and benchmarks: tiny configs, random
// values, batches on a backend and the transformers fixtures of
// tests/fixtures. Failures are reported through es_fail (never CHECK), so that
// benchmarks can use these too.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "model.h"
#include "packer.h"
#include "safetensors.h"

// ---- configs -----------------------------------------------------------------

typedef struct {
    int vocab, hidden, layers, heads, kv_heads, head_dim, ffn, max_pos;
} t_sizes;

// A config of `arch` with sizes s and its distinguishing features on, so that
// every path carries signal: qwen3 qk-norm and tied embeddings; qwen2 q/k/v
// biases; llama q/k/v and o biases; gpt2 learned positions, every bias, tied,
// kv_heads = heads and ffn = 4 * hidden.
static inline es_config t_config(es_arch arch, t_sizes s) {
    static const char *const types[] = {"qwen3", "qwen2", "llama", "gpt2"};
    es_config c;
    memset(&c, 0, sizeof c);
    c.arch = arch;
    strcpy(c.model_type, types[arch]);
    c.vocab = s.vocab;
    c.hidden = s.hidden;
    c.layers = s.layers;
    c.heads = s.heads;
    c.kv_heads = s.kv_heads;
    c.head_dim = s.head_dim;
    c.ffn = s.ffn;
    c.max_pos = s.max_pos;
    c.rope_theta = 10000.0f;
    c.norm_eps = 1e-5f;
    c.bos_id = c.eos_id = -1;
    switch (arch) {
    case ES_ARCH_QWEN3:
        c.qk_norm = 1;
        c.tied = 1;
        break;
    case ES_ARCH_QWEN2:
        c.qkv_bias = 1;
        break;
    case ES_ARCH_LLAMA:
        c.qkv_bias = c.o_bias = 1;
        break;
    case ES_ARCH_GPT2:
        c.kv_heads = c.heads;
        c.ffn = 4 * c.hidden;
        c.rope_theta = 0.0f;
        c.qkv_bias = c.o_bias = c.mlp_bias = 1;
        c.tied = 1;
        break;
    }
    return c;
}

// ---- random values -------------------------------------------------------------

static inline void t_fill_normal(float *x, size_t n, float scale, es_rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = scale * es_rng_normal(rng);
}

// A micro-batch of N tokens below V in three documents, with random targets
// and weights (0, 0.5, 1 or 2; a third unsupervised); the last token of each
// document has no target.
static inline void t_random_microbatch(es_microbatch *mb, int N, int V, es_rng *rng) {
    es_microbatch_alloc(mb, N);
    mb->n = N;
    int cuts[] = {0, N / 3, N / 3 + 5, N};
    mb->ndocs = 3;
    mb->nsup = 0;
    for (int d = 0; d <= 3; d++) mb->cu_seqlens[d] = cuts[d];
    for (int d = 0; d < 3; d++)
        for (int t = cuts[d]; t < cuts[d + 1]; t++) {
            mb->tokens[t] = (int32_t)(es_rng_u64(rng) % (uint64_t)V);
            mb->pos[t] = t - cuts[d];
            mb->src[t] = t - cuts[d];
            int last = t + 1 == cuts[d + 1];
            uint64_t u = es_rng_u64(rng) % 6;
            mb->targets[t] = last ? -1 : (int32_t)(es_rng_u64(rng) % (uint64_t)V);
            mb->weights[t] = last || u < 2 ? 0.0f : u == 5 ? 2.0f : u == 4 ? 0.5f : 1.0f;
            mb->nsup += mb->weights[t] > 0;
        }
}

// ---- device buffers -----------------------------------------------------------

// A device buffer of n values, holding host's when given; exits the test
// when the backend cannot allocate it.
static inline void *t_dev_buf(es_backend *be, const void *host, size_t n, es_dtype dt) {
    void *p = be->alloc(be, n, dt, ES_MEM_ACTS);
    if (!p) {
        fprintf(stderr, "alloc: %s\n", es_last_error());
        exit(1);
    }
    if (host) be->upload(be, p, host, n, dt);
    return p;
}

// The device side of a packed batch: N tokens and positions, ndocs + 1
// document boundaries. ES_ERR when an allocation fails; t_batch_free frees
// what was allocated either way.
static inline int t_batch_upload(es_model_batch *b, es_backend *be, const int32_t *tokens,
                                 const int32_t *pos, const int32_t *cu, int N, int ndocs) {
    *b = (es_model_batch){.N = N, .ndocs = ndocs};
    b->tokens = be->alloc(be, (size_t)N, ES_DT_I32, ES_MEM_INDEX);
    b->pos = be->alloc(be, (size_t)N, ES_DT_I32, ES_MEM_INDEX);
    b->cu_seqlens = be->alloc(be, (size_t)ndocs + 1, ES_DT_I32, ES_MEM_INDEX);
    if (!b->tokens || !b->pos || !b->cu_seqlens) return ES_ERR;
    be->upload(be, b->tokens, tokens, (size_t)N, ES_DT_I32);
    be->upload(be, b->pos, pos, (size_t)N, ES_DT_I32);
    be->upload(be, b->cu_seqlens, cu, (size_t)ndocs + 1, ES_DT_I32);
    return ES_OK;
}

static inline void t_batch_free(es_backend *be, es_model_batch *b) {
    be->free(be, b->tokens);
    be->free(be, b->pos);
    be->free(be, b->cu_seqlens);
    b->tokens = b->pos = b->cu_seqlens = NULL;
}

// ---- transformers fixtures (tools/make_fixtures.py) ---------------------------

// The fixture models, each a directory tests/fixtures/<name>.
#define T_FIXTURE_CASES \
    {"qwen3_tied", "qwen3_untied", "qwen2", "llama", "gpt2", "llama3_rope", "llama_linear"}

// Tensor `name` of io as fp32 if it holds n elements: a fresh array, or NULL
// (es_fail says why).
static inline float *t_read_tensor(const es_st_file *io, const char *name, size_t n) {
    int i = es_st_find(io, name);
    if (i < 0) {
        es_fail("%s: tensor '%s' missing", io->path, name);
        return NULL;
    }
    size_t numel = es_st_numel(&io->tensors[i]);
    if (numel != n) {
        es_fail("%s: '%s' has %zu elements, expected %zu", io->path, name, numel, n);
        return NULL;
    }
    float *x = es_xmalloc(n * sizeof *x);
    es_st_read_f32(x, io, i);
    return x;
}

// The packed batch of a fixture, on the host.
typedef struct {
    int N, ndocs, count;  // tokens, documents, supervised tokens
    int32_t *tokens, *pos, *cu, *targets;  // ignored targets become 0 with weight 0
    float *weights, loss;
} t_fixture_batch;

static inline void t_fixture_batch_free(t_fixture_batch *fb) {
    free(fb->tokens);
    free(fb->pos);
    free(fb->cu);
    free(fb->targets);
    free(fb->weights);
    memset(fb, 0, sizeof *fb);
}

// Reads the batch of a fixture's io.safetensors; ES_ERR (es_fail) when a
// tensor is missing or has the wrong size, or nothing is supervised.
static inline int t_fixture_batch_read(t_fixture_batch *fb, const es_st_file *io) {
    memset(fb, 0, sizeof *fb);
    int ti = es_st_find(io, "tokens"), ci = es_st_find(io, "cu_seqlens");
    if (ti < 0 || ci < 0) return es_fail("%s: tokens or cu_seqlens missing", io->path);
    fb->N = (int)es_st_numel(&io->tensors[ti]);
    fb->ndocs = (int)es_st_numel(&io->tensors[ci]) - 1;
    if (fb->N < 1 || fb->ndocs < 1) return es_fail("%s: empty batch", io->path);
    float *tok = t_read_tensor(io, "tokens", (size_t)fb->N),
          *pos = t_read_tensor(io, "position_ids", (size_t)fb->N),
          *cu = t_read_tensor(io, "cu_seqlens", (size_t)fb->ndocs + 1),
          *tgt = t_read_tensor(io, "targets", (size_t)fb->N),
          *loss = t_read_tensor(io, "loss", 1);
    int ok = tok && pos && cu && tgt && loss;
    if (ok) {
        fb->tokens = es_xmalloc((size_t)fb->N * sizeof *fb->tokens);
        fb->pos = es_xmalloc((size_t)fb->N * sizeof *fb->pos);
        fb->targets = es_xmalloc((size_t)fb->N * sizeof *fb->targets);
        fb->weights = es_xmalloc((size_t)fb->N * sizeof *fb->weights);
        fb->cu = es_xmalloc((size_t)(fb->ndocs + 1) * sizeof *fb->cu);
        for (int i = 0; i < fb->N; i++) {
            fb->tokens[i] = (int32_t)tok[i];
            fb->pos[i] = (int32_t)pos[i];
            int valid = tgt[i] >= 0;
            fb->targets[i] = valid ? (int32_t)tgt[i] : 0;
            fb->weights[i] = valid ? 1.0f : 0.0f;
            fb->count += valid;
        }
        for (int d = 0; d <= fb->ndocs; d++) fb->cu[d] = (int32_t)cu[d];
        fb->loss = loss[0];
    }
    if (ok && !fb->count) {
        es_fail("%s: no supervised token", io->path);
        ok = 0;
    }
    free(tok);
    free(pos);
    free(cu);
    free(tgt);
    free(loss);
    if (!ok) t_fixture_batch_free(fb);
    return ok ? ES_OK : ES_ERR;
}

// Writes the model directory of fixture `name` into dir (size bytes), opens
// its io.safetensors (the reference batch and outputs) into io and reads the
// batch into fb. ES_ERR (es_fail) leaves nothing open.
static inline int t_fixture_open(es_st_file *io, t_fixture_batch *fb, char *dir, size_t size,
                                 const char *name) {
    char path[512];
    snprintf(dir, size, "tests/fixtures/%s", name);
    snprintf(path, sizeof path, "%s/io.safetensors", dir);
    if (es_st_open(io, path)) return ES_ERR;
    if (t_fixture_batch_read(fb, io) == ES_OK) return ES_OK;
    es_st_close(io);
    return ES_ERR;
}
