// Model description (from a Hugging Face config.json), parameter layout,
// and the forward/backward orchestration over a backend.
#pragma once
#include <stddef.h>

#include "backend.h"

typedef enum { ES_ARCH_QWEN3 = 0, ES_ARCH_QWEN2, ES_ARCH_LLAMA, ES_ARCH_GPT2 } es_arch;

// rope_scaling / rope_parameters "rope_type"; anything else is refused.
typedef enum { ES_ROPE_DEFAULT = 0, ES_ROPE_LINEAR, ES_ROPE_LLAMA3 } es_rope_type;

// The rotary scaling of a config, as transformers reads it (doubles, as in
// Python, so that the frequencies round exactly as there). Zero for default.
typedef struct {
    es_rope_type type;
    double factor;            // linear: every frequency / factor; llama3: the long wavelengths'
    double low_freq_factor;   // llama3: wavelengths above orig_max_pos / low_freq_factor are scaled
    double high_freq_factor;  // llama3: below orig_max_pos / high_freq_factor kept; smooth between
    int orig_max_pos;         // llama3: original_max_position_embeddings
} es_rope_scaling;

typedef struct {
    es_arch arch;
    char model_type[32];  // as in config.json
    int vocab;            // vocab_size
    int hidden;           // hidden_size / n_embd
    int layers;           // num_hidden_layers / n_layer
    int heads;            // num_attention_heads / n_head
    int kv_heads;         // num_key_value_heads (== heads for gpt2)
    int head_dim;         // explicit head_dim or hidden / heads
    int ffn;              // intermediate_size (4 * hidden for gpt2 when n_inner is null)
    int max_pos;          // max_position_embeddings / n_positions
    float rope_theta;     // 0 for gpt2 (learned positions)
    es_rope_scaling rope_scaling;  // rope_scaling / rope_parameters beyond rope_theta
    float norm_eps;       // rms_norm_eps / layer_norm_epsilon
    int tied;             // tie_word_embeddings
    int qkv_bias;         // qwen2: q/k/v biases; gpt2: every linear has a bias
    int o_bias;           // gpt2 (and llama attention_bias)
    int mlp_bias;         // gpt2 (and llama mlp_bias)
    int qk_norm;          // qwen3
    int bos_id, eos_id;   // -1 when absent
    char torch_dtype[16]; // as in config.json, written back on save
} es_config;

// Parses config.json text; refuses unknown model_type and unimplemented options
// (rope scalings other than linear and llama3, sliding window, ...) with one
// line naming the key. `path` only
// names the file in messages.
int es_config_parse(es_config *cfg, const char *json, const char *path);
int es_config_load(es_config *cfg, const char *path);
// Writes a config.json that transformers loads back to the same model.
int es_config_save(const es_config *cfg, const char *path);
// Number of parameters the config describes.
long long es_config_param_count(const es_config *cfg);
// inv_freq (head_dim / 2) = the rotary frequencies of the config: theta^(-2j/D)
// and its scaling, rounded step by step in float as transformers computes them.
void es_rope_inv_freq(float *inv_freq, const es_config *cfg);

// One named parameter tensor inside the flat parameter buffer. Names are the
// Hugging Face names of the qwen3/llama family ("model.layers.3.mlp.up_proj.weight");
// gpt2 is mapped onto the same internal layout by the loader.
typedef struct {
    char name[96];
    int ndim;
    int shape[2];
    size_t offset;  // elements into the flat buffer
    size_t numel;
    int decay;      // weight decay applies (matrices, not norms or biases)
} es_param;

// Per-layer parameter index into es_layout.params (-1 when absent).
typedef struct {
    int ln1_w, ln1_b, q_w, q_b, k_w, k_b, v_w, v_b, q_norm, k_norm, o_w, o_b;
    int ln2_w, ln2_b, gate_w, up_w, up_b, down_w, down_b;
} es_layer_params;

typedef struct {
    es_param *params;
    int nparams;
    size_t total;  // elements
    int wte, wpe, lnf_w, lnf_b, lm_head;  // lm_head == wte when tied
    es_layer_params *layer;
} es_layout;

int es_layout_build(es_layout *lo, const es_config *cfg);
void es_layout_free(es_layout *lo);
int es_layout_find(const es_layout *lo, const char *name);

// A packed micro-batch as the model sees it (device buffers, int32).
typedef struct {
    int N;             // tokens
    int ndocs;
    void *tokens;      // (N)
    void *pos;         // (N) positions restarting at 0 per document
    void *cu_seqlens;  // (ndocs + 1)
} es_model_batch;

// Saved activations of one layer for backward. A forward-only model keeps one
// set shared by every layer (nothing is saved for backward).
typedef struct {
    void *ln1_in;   // (N, C) residual stream entering the layer
    void *ln1_out;  // (N, C)
    float *ln1_mean, *ln1_rstd;  // (N); mean only for LayerNorm (gpt2)
    void *qkv;      // (N, (H + 2 KVH) D) the fused projection, kept for qk-norm's backward
                    // (qwen3 only, else NULL: it lives in the model's workspace)
    float *q_rstd, *k_rstd;  // (N*H), (N*KVH) (qwen3 only)
    void *q, *k, *v;  // (N, H*D), (N, KVH*D) x2: attention inputs, after norm and rope
    void *att;      // (N, H*D)
    float *lse;     // (N, H)
    void *res2;     // (N, C) residual after attention
    void *ln2_out;  // (N, C)
    float *ln2_mean, *ln2_rstd;  // (N)
    void *gate_up;    // (N, 2F) rows [gate | up]; (N, F) for gpt2: its fc output
    void *act;        // (N, F) swiglu / gelu output
} es_layer_acts;

// What a trainable model keeps for backward (activation recomputation trades
// FLOPs for memory). Gradients are the same at every level: backward reruns the
// same ops on the same inputs.
//   NONE: every activation of every layer.
//   MLP:  not the norm outputs nor the MLP intermediates (gate|up, act: 3 x N x F
//         per layer); backward recomputes them from the saved sub-block inputs
//         into one set shared by every layer.
//   FULL: only each layer's input; backward reruns the layer's forward into one
//         shared set before its backward.
typedef enum { ES_RECOMPUTE_NONE = 0, ES_RECOMPUTE_MLP, ES_RECOMPUTE_FULL } es_recompute;

// The `trainable` argument of es_model_create / es_model_load_hf: 0 for a
// forward-only model, 1 to train keeping every activation, or one of these to
// train with recomputation.
enum {
    ES_MODEL_FORWARD_ONLY = 0,
    ES_MODEL_TRAIN = 1,
    ES_MODEL_TRAIN_RECOMPUTE_MLP = 1 + ES_RECOMPUTE_MLP,
    ES_MODEL_TRAIN_RECOMPUTE_FULL = 1 + ES_RECOMPUTE_FULL,
};

// "none" | "mlp" | "full" -> the `trainable` value that trains at that level.
// ES_ERR naming the value otherwise.
int es_model_train_mode(int *trainable, const char *recompute);

// Called by es_model_backward as soon as backward writes no more into a part
// of m->grads, so that the part can be reduced across ranks while backward
// goes on: first `layer` == cfg.layers with the final norm and LM head part
// (its gradient comes from the loss, before backward), then each layer from
// the last to the first. [lo, hi) is the part's range of the flat layout. A
// non-zero return stops backward with that error.
typedef int (*es_layer_grads_fn)(void *ctx, int layer, size_t lo, size_t hi);

typedef struct {
    es_config cfg;
    es_layout layout;
    es_backend *be;
    void *params;  // compute dtype, layout.total elements
    float *inv_freq;  // (head_dim / 2) fp32: rotary frequencies (NULL for gpt2)
    float *grads;  // fp32, NULL for a forward-only (teacher) model
    int max_tokens;  // activation capacity
    es_recompute recompute;
    es_layer_acts *acts;  // (layers); with recompute, dropped fields point into one shared set
    void *final_in;   // (N, C) residual stream before the final norm
    void *hidden;     // (N, C) output of the final norm: the LM head input
    float *lnf_mean, *lnf_rstd;
    void *work;       // temporaries of a layer's forward and backward (model.c's work_size)
    void *dres;       // (N, C) gradient of the residual stream (NULL when forward-only)
    void **owned;     // every device buffer the model allocated, freed together
    int nowned, cap_owned;
    es_layer_grads_fn on_layer_grads;  // NULL: not called
    void *hook_ctx;
} es_model;

// Allocates parameters (uninitialised), grads when `trainable` (0, or an
// ES_MODEL_TRAIN* value choosing the recompute level), and activations for
// micro-batches of up to max_tokens tokens.
int es_model_create(es_model *m, const es_config *cfg, es_backend *be, int max_tokens,
                    int trainable);
// A forward-only model over src's parameters (not copied, not freed with the
// view), with its own activations for up to max_tokens tokens: evaluation at
// full length costs one layer's activations, not a training step's.
int es_model_create_view(es_model *view, const es_model *src, int max_tokens);
void es_model_free(es_model *m);
// Random initialisation (normal 0.02, norms 1, biases 0) from a seed.
void es_model_init_random(es_model *m, unsigned long long seed);
// Forward up to the final norm: fills m->hidden (N, C). ES_ERR when the batch
// does not fit (N outside 1..max_tokens, ndocs outside 1..N).
int es_model_forward(es_model *m, const es_model_batch *b);
// One layer's attention over N tokens: reads a->q, a->k, a->v (after qk-norm
// and rope), writes a->att (and a->lse where backward needs it).
typedef void (*es_attention_step)(const void *ctx, es_model *m, es_layer_acts *a, int layer,
                                  int N);
// es_model_forward of N tokens (device int32) at positions pos with the
// caller's attention step: es_model_forward's attends causally within each
// packed document, generation's against a key/value cache. No checks.
void es_model_forward_with(es_model *m, const void *tokens, const void *pos, int N,
                           es_attention_step attend, const void *ctx);
// Backward from dhidden (N, C) (gradient w.r.t. m->hidden) of the batch just run
// forward; accumulates into m->grads. ES_ERR for a forward-only model or a bad batch.
int es_model_backward(es_model *m, const es_model_batch *b, const void *dhidden);
// The range [*lo, *hi) of the flat layout that holds layer `layer`'s
// parameters; layer -1 is the embeddings (and learned positions), layer
// cfg.layers the final norm and the untied LM head.
void es_model_layer_range(size_t *lo, size_t *hi, const es_model *m, int layer);
// LM head weight (V, C) in the compute dtype, and its fp32 gradient (NULL if frozen).
const void *es_model_lm_head(const es_model *m);
// A weight matrix as a layer's forward multiplies by it: (OC, C).
typedef struct {
    const void *w;
    int OC, C;
} es_matmul_weight;
#define ES_LAYER_MATMULS 7
// The matrices layer l's forward multiplies by, as its matmuls see them (one
// fused q|k|v and one gate|up matrix outside gpt2), into out; returns how many.
int es_model_layer_matmuls(es_matmul_weight out[ES_LAYER_MATMULS], const es_model *m, int layer);
float *es_model_lm_head_grad(es_model *m);

// Hugging Face directories: config.json + model.safetensors or
// model.safetensors.index.json shards; bf16/fp16/fp32 tensors. `trainable` as
// for es_model_create.
int es_model_load_hf(es_model *m, const char *dir, es_backend *be, int max_tokens,
                     int trainable);
// Writes config.json + model.safetensors (fp32, or bf16 when bf16 != 0) atomically.
int es_model_save_hf(const es_model *m, const char *dir, int bf16);
