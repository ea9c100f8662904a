// Hugging Face config.json <-> es_config for qwen3, qwen2, llama and gpt2.
// Anything the engine does not implement is refused by key name, so that a
// checkpoint is never trained with silently different numerics.
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "json.h"
#include "model.h"
#include "safetensors.h"

// ---- reading -----------------------------------------------------------------

typedef struct {
    const cJSON *root;
    const char *path;
} reader;

static const cJSON *item(const reader *r, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(r->root, key);
}

// A present, non-null key.
static int has(const reader *r, const char *key) {
    const cJSON *v = item(r, key);
    return v && !cJSON_IsNull(v);
}

// Positive integer; `def` <= 0 makes the key required.
static int get_size(int *out, const reader *r, const char *key, int def) {
    const cJSON *v = item(r, key);
    if (!v || cJSON_IsNull(v)) {
        if (def <= 0) return es_fail("%s: required key '%s' missing", r->path, key);
        *out = def;
        return ES_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int)v->valuedouble || v->valuedouble < 1)
        return es_fail("%s: key '%s' must be a positive integer", r->path, key);
    *out = (int)v->valuedouble;
    return ES_OK;
}

static int get_number(double *out, const reader *r, const cJSON *v, const char *key, double def) {
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return ES_OK;
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0))
        return es_fail("%s: key '%s' must be a positive number", r->path, key);
    *out = v->valuedouble;
    return ES_OK;
}

static int get_float(float *out, const reader *r, const cJSON *v, const char *key, float def) {
    double d = def;
    if (get_number(&d, r, v, key, def)) return ES_ERR;
    *out = (float)d;
    return ES_OK;
}

static int get_bool(int *out, const reader *r, const char *key, int def) {
    const cJSON *v = item(r, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return ES_OK;
    }
    if (!cJSON_IsBool(v)) return es_fail("%s: key '%s' must be true or false", r->path, key);
    *out = cJSON_IsTrue(v);
    return ES_OK;
}

// Token ids may be an int, a list (the first is used) or null (-1).
static int get_token(int *out, const reader *r, const char *key) {
    const cJSON *v = item(r, key);
    *out = -1;
    if (cJSON_IsArray(v)) v = cJSON_GetArrayItem(v, 0);
    if (!v || cJSON_IsNull(v)) return ES_OK;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble != (double)(int)v->valuedouble)
        return es_fail("%s: key '%s' must be a non-negative integer, a list of them or null",
                       r->path, key);
    *out = (int)v->valuedouble;
    return ES_OK;
}

static int get_string(char *out, size_t cap, const reader *r, const char *key, const char *def) {
    const cJSON *v = item(r, key);
    if (!v || cJSON_IsNull(v)) v = NULL;
    else if (!cJSON_IsString(v) || strlen(v->valuestring) >= cap)
        return es_fail("%s: key '%s' must be a short string", r->path, key);
    snprintf(out, cap, "%s", v ? v->valuestring : def);
    return ES_OK;
}

// Number `name` of the rope object `key` (required when def <= 0).
static int rope_number(double *out, const reader *r, const cJSON *obj, const char *key,
                       const char *name, double def) {
    char full[64];
    snprintf(full, sizeof full, "%s.%s", key, name);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if ((!v || cJSON_IsNull(v)) && def <= 0)
        return es_fail("%s: required key '%s' missing", r->path, full);
    return get_number(out, r, v, full, def);
}

// The keys of a scaled rope object: anything else (partial_rotary_factor,
// attention_factor, ...) would change the numerics, so it is refused by name.
static int rope_keys_known(const reader *r, const cJSON *obj, const char *key, const char *type) {
    static const char *const known[] = {"rope_type", "type", "rope_theta", "partial_rotary_factor",
        "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"};
    for (const cJSON *e = obj->child; e; e = e->next) {
        int k = 0, n = strcmp(type, "llama3") ? 5 : 8;
        while (k < n && strcmp(e->string, known[k])) k++;
        if (k == n)
            return es_fail("%s: key '%s.%s' is not implemented for rope_type '%s'", r->path, key,
                           e->string, type);
    }
    return ES_OK;
}

// One rope_scaling / rope_parameters object into *s (*present = 0 when the key
// is absent or null). Its rope_theta overrides the top-level one. rope_type
// default, linear or llama3 (read as transformers' modeling_rope_utils does);
// any other type is refused naming it.
static int read_rope(es_rope_scaling *s, int *present, float *theta, const es_config *c,
                     const reader *r, const char *key) {
    memset(s, 0, sizeof *s);
    const cJSON *v = item(r, key);
    *present = v && !cJSON_IsNull(v);
    if (!*present) return ES_OK;
    if (!cJSON_IsObject(v)) return es_fail("%s: key '%s' must be an object or null", r->path, key);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(v, "rope_theta");
    if (t && get_float(theta, r, t, key, *theta)) return ES_ERR;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(v, "rope_type");
    if (!type) type = cJSON_GetObjectItemCaseSensitive(v, "type");
    const char *name = "default";
    if (type && !cJSON_IsNull(type)) {
        if (!cJSON_IsString(type))
            return es_fail("%s: key '%s.rope_type' must be a string", r->path, key);
        name = type->valuestring;
    }
    double partial;
    if (rope_number(&partial, r, v, key, "partial_rotary_factor", 1.0)) return ES_ERR;
    if (partial != 1.0)
        return es_fail("%s: key '%s.partial_rotary_factor' other than 1 is not implemented",
                       r->path, key);
    if (!strcmp(name, "default")) return ES_OK;
    int llama3 = !strcmp(name, "llama3");
    if (!llama3 && strcmp(name, "linear"))
        return es_fail("%s: key '%s': rope_type '%s' is not implemented (default, linear and "
                       "llama3 are)", r->path, key, name);
    if (rope_keys_known(r, v, key, name) || rope_number(&s->factor, r, v, key, "factor", 0))
        return ES_ERR;
    s->type = ES_ROPE_LINEAR;
    if (!llama3) return ES_OK;
    s->type = ES_ROPE_LLAMA3;
    if (rope_number(&s->low_freq_factor, r, v, key, "low_freq_factor", 0) ||
        rope_number(&s->high_freq_factor, r, v, key, "high_freq_factor", 0))
        return ES_ERR;
    if (!(s->high_freq_factor > s->low_freq_factor))
        return es_fail("%s: key '%s.high_freq_factor' must exceed low_freq_factor", r->path, key);
    // transformers prefers a top-level original_max_position_embeddings, then
    // the object's, then max_position_embeddings.
    const char *okey = "original_max_position_embeddings";
    if (has(r, okey)) return get_size(&s->orig_max_pos, r, okey, 0);
    double orig;
    if (rope_number(&orig, r, v, key, okey, c->max_pos)) return ES_ERR;
    if (orig > 1 << 30 || orig != (double)(int)orig)
        return es_fail("%s: key '%s.%s' must be a positive integer", r->path, key, okey);
    s->orig_max_pos = (int)orig;
    return ES_OK;
}

static int same_rope(const es_rope_scaling *a, const es_rope_scaling *b) {
    return a->type == b->type && a->factor == b->factor &&
           a->low_freq_factor == b->low_freq_factor && a->high_freq_factor == b->high_freq_factor &&
           a->orig_max_pos == b->orig_max_pos;
}

// rope_scaling (transformers 4) and rope_parameters (5) may both be present;
// transformers 5 then reads rope_scaling, 4 only ever did, so two objects that
// disagree are refused rather than guessed at.
static int parse_rope(es_config *c, const reader *r) {
    es_rope_scaling a, b;
    int has_a, has_b;
    if (read_rope(&a, &has_a, &c->rope_theta, c, r, "rope_scaling") ||
        read_rope(&b, &has_b, &c->rope_theta, c, r, "rope_parameters"))
        return ES_ERR;
    if (has_a && has_b && !same_rope(&a, &b))
        return es_fail("%s: keys 'rope_scaling' and 'rope_parameters' describe different "
                       "rotary embeddings", r->path);
    c->rope_scaling = has_a ? a : b;
    return ES_OK;
}

static int parse_gpt2(es_config *c, const reader *r) {
    if (get_size(&c->vocab, r, "vocab_size", 0) || get_size(&c->hidden, r, "n_embd", 0) ||
        get_size(&c->layers, r, "n_layer", 0) || get_size(&c->heads, r, "n_head", 0) ||
        get_size(&c->max_pos, r, "n_positions", 0) ||
        get_size(&c->ffn, r, "n_inner", 4 * c->hidden) ||
        get_float(&c->norm_eps, r, item(r, "layer_norm_epsilon"), "layer_norm_epsilon", 1e-5f) ||
        get_bool(&c->tied, r, "tie_word_embeddings", 1))
        return ES_ERR;
    char act[32];
    if (get_string(act, sizeof act, r, "activation_function", "gelu_new")) return ES_ERR;
    if (strcmp(act, "gelu_new") && strcmp(act, "gelu_pytorch_tanh"))
        return es_fail("%s: key 'activation_function' is '%s'; only the tanh GELU (gelu_new, "
                       "gelu_pytorch_tanh) is implemented", r->path, act);
    int flag = 0;
    if (get_bool(&flag, r, "scale_attn_weights", 1)) return ES_ERR;
    if (!flag) return es_fail("%s: key 'scale_attn_weights' false is not implemented", r->path);
    if (get_bool(&flag, r, "scale_attn_by_inverse_layer_idx", 0)) return ES_ERR;
    if (flag) return es_fail("%s: key 'scale_attn_by_inverse_layer_idx' is not implemented", r->path);
    if (get_bool(&flag, r, "add_cross_attention", 0)) return ES_ERR;
    if (flag) return es_fail("%s: key 'add_cross_attention' is not implemented", r->path);
    if (c->hidden % c->heads)
        return es_fail("%s: key 'n_head' (%d) does not divide n_embd (%d)", r->path, c->heads, c->hidden);
    c->kv_heads = c->heads;
    c->head_dim = c->hidden / c->heads;
    c->rope_theta = 0;
    c->qkv_bias = c->o_bias = c->mlp_bias = 1;
    return ES_OK;
}

static int parse_rope_family(es_config *c, const reader *r) {
    if (get_size(&c->vocab, r, "vocab_size", 0) || get_size(&c->hidden, r, "hidden_size", 0) ||
        get_size(&c->layers, r, "num_hidden_layers", 0) ||
        get_size(&c->heads, r, "num_attention_heads", 0) ||
        get_size(&c->ffn, r, "intermediate_size", 0) ||
        get_size(&c->max_pos, r, "max_position_embeddings", 0) ||
        get_size(&c->kv_heads, r, "num_key_value_heads", c->heads) ||
        get_float(&c->norm_eps, r, item(r, "rms_norm_eps"), "rms_norm_eps", 1e-6f) ||
        get_bool(&c->tied, r, "tie_word_embeddings", 0))
        return ES_ERR;
    if (!has(r, "head_dim") && c->hidden % c->heads)
        return es_fail("%s: key 'num_attention_heads' (%d) does not divide hidden_size (%d)",
                       r->path, c->heads, c->hidden);
    if (get_size(&c->head_dim, r, "head_dim", c->hidden / c->heads)) return ES_ERR;
    if (c->head_dim % 2)
        return es_fail("%s: key 'head_dim' is %d; rotary embedding needs an even head dimension",
                       r->path, c->head_dim);
    if (c->heads % c->kv_heads)
        return es_fail("%s: key 'num_key_value_heads' (%d) does not divide num_attention_heads (%d)",
                       r->path, c->kv_heads, c->heads);
    c->rope_theta = 10000.0f;
    if (get_float(&c->rope_theta, r, item(r, "rope_theta"), "rope_theta", c->rope_theta) ||
        parse_rope(c, r))
        return ES_ERR;
    char act[32];
    if (get_string(act, sizeof act, r, "hidden_act", "silu")) return ES_ERR;
    if (strcmp(act, "silu"))
        return es_fail("%s: key 'hidden_act' is '%s'; only silu is implemented", r->path, act);
    int sliding = 0;
    if (get_bool(&sliding, r, "use_sliding_window", 0)) return ES_ERR;
    if (sliding)
        return es_fail("%s: key 'use_sliding_window' true is not implemented", r->path);
    const cJSON *lt = item(r, "layer_types");
    if (lt && !cJSON_IsNull(lt)) {
        if (!cJSON_IsArray(lt)) return es_fail("%s: key 'layer_types' must be a list", r->path);
        for (const cJSON *e = lt->child; e; e = e->next)
            if (!cJSON_IsString(e) || strcmp(e->valuestring, "full_attention"))
                return es_fail("%s: key 'layer_types': only full_attention layers are implemented",
                               r->path);
    }
    int attn_bias = 0, mlp_bias = 0;
    if (get_bool(&attn_bias, r, "attention_bias", 0) || get_bool(&mlp_bias, r, "mlp_bias", 0))
        return ES_ERR;
    // Llama's mlp_bias adds a gate_proj bias that the layout has no slot for.
    if (mlp_bias) return es_fail("%s: key 'mlp_bias' true is not implemented", r->path);
    c->qk_norm = c->arch == ES_ARCH_QWEN3;
    // Qwen2 always has q/k/v biases and no o bias; the others follow attention_bias.
    c->qkv_bias = c->arch == ES_ARCH_QWEN2 ? 1 : attn_bias;
    c->o_bias = c->arch == ES_ARCH_QWEN2 ? 0 : attn_bias;
    return ES_OK;
}

int es_config_parse(es_config *cfg, const char *json, const char *path) {
    memset(cfg, 0, sizeof *cfg);
    cJSON *root = es_json_parse(json, strlen(json));
    if (!root) return es_fail("%s: not valid JSON", path);
    reader r = {root, path};
    int rc = ES_ERR;
    if (!cJSON_IsObject(root)) {
        es_fail("%s: not a JSON object", path);
        goto done;
    }
    if (get_string(cfg->model_type, sizeof cfg->model_type, &r, "model_type", "")) goto done;
    static const char *const types[] = {"qwen3", "qwen2", "llama", "gpt2"};
    int k = 0;
    while (k < 4 && strcmp(cfg->model_type, types[k])) k++;
    if (k == 4) {
        es_fail("%s: key 'model_type' is '%s'; supported: qwen3, qwen2, llama, gpt2", path,
                cfg->model_type);
        goto done;
    }
    cfg->arch = (es_arch)k;
    if (has(&r, "quantization_config")) {
        es_fail("%s: key 'quantization_config': quantized checkpoints are not supported", path);
        goto done;
    }
    if (cfg->arch == ES_ARCH_GPT2 ? parse_gpt2(cfg, &r) : parse_rope_family(cfg, &r)) goto done;
    if (get_token(&cfg->bos_id, &r, "bos_token_id") || get_token(&cfg->eos_id, &r, "eos_token_id"))
        goto done;
    if (cfg->bos_id >= cfg->vocab || cfg->eos_id >= cfg->vocab) {
        int bad_bos = cfg->bos_id >= cfg->vocab;
        es_fail("%s: key '%s' is %d, outside the vocabulary (vocab_size %d)", path,
                bad_bos ? "bos_token_id" : "eos_token_id", bad_bos ? cfg->bos_id : cfg->eos_id, cfg->vocab);
        goto done;
    }
    const char *dtype_key = has(&r, "dtype") ? "dtype" : "torch_dtype";
    if (get_string(cfg->torch_dtype, sizeof cfg->torch_dtype, &r, dtype_key, "float32")) goto done;
    rc = ES_OK;
done:
    cJSON_Delete(root);
    return rc;
}

int es_config_load(es_config *cfg, const char *path) {
    char *text;
    if (es_read_file(&text, NULL, path)) return ES_ERR;
    int rc = es_config_parse(cfg, text, path);
    free(text);
    return rc;
}

// ---- writing -----------------------------------------------------------------

// Shortest decimal that reads back as the same float (1e-06, not 9.99999997e-07).
static void add_float(cJSON *o, const char *key, float v) {
    char buf[32];
    if (v == (float)(long long)v && v < 1e15f && v > -1e15f) {  // 1000000, not 1e+06
        snprintf(buf, sizeof buf, "%lld", (long long)v);
        cJSON_AddRawToObject(o, key, buf);
        return;
    }
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    cJSON_AddRawToObject(o, key, buf);
}

static void add_token(cJSON *o, const char *key, int id) {
    if (id >= 0) cJSON_AddNumberToObject(o, key, id);
    else cJSON_AddNullToObject(o, key);
}

static void add_arch(cJSON *o, const char *name) {
    cJSON *a = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(a, cJSON_CreateString(name));
}

static void save_gpt2(cJSON *o, const es_config *c) {
    add_arch(o, "GPT2LMHeadModel");
    cJSON_AddStringToObject(o, "model_type", "gpt2");
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab);
    cJSON_AddNumberToObject(o, "n_embd", c->hidden);
    cJSON_AddNumberToObject(o, "n_layer", c->layers);
    cJSON_AddNumberToObject(o, "n_head", c->heads);
    cJSON_AddNumberToObject(o, "n_inner", c->ffn);
    cJSON_AddNumberToObject(o, "n_positions", c->max_pos);
    cJSON_AddNumberToObject(o, "n_ctx", c->max_pos);
    add_float(o, "layer_norm_epsilon", c->norm_eps);
    cJSON_AddStringToObject(o, "activation_function", "gelu_new");
}

static void add_rope(cJSON *o, const es_config *c) {
    static const char *const types[] = {"default", "linear", "llama3"};
    const es_rope_scaling *s = &c->rope_scaling;
    add_float(o, "rope_theta", c->rope_theta);
    cJSON_AddStringToObject(o, "rope_type", types[s->type]);
    if (s->type == ES_ROPE_DEFAULT) return;
    cJSON_AddNumberToObject(o, "factor", s->factor);
    if (s->type != ES_ROPE_LLAMA3) return;
    cJSON_AddNumberToObject(o, "low_freq_factor", s->low_freq_factor);
    cJSON_AddNumberToObject(o, "high_freq_factor", s->high_freq_factor);
    cJSON_AddNumberToObject(o, "original_max_position_embeddings", s->orig_max_pos);
}

static void save_rope_family(cJSON *o, const es_config *c) {
    static const char *const archs[] = {"Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM"};
    add_arch(o, archs[c->arch]);
    cJSON_AddStringToObject(o, "model_type", c->model_type);
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab);
    cJSON_AddNumberToObject(o, "hidden_size", c->hidden);
    cJSON_AddNumberToObject(o, "intermediate_size", c->ffn);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", c->heads);
    cJSON_AddNumberToObject(o, "num_key_value_heads", c->kv_heads);
    cJSON_AddNumberToObject(o, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_pos);
    add_float(o, "rms_norm_eps", c->norm_eps);
    // Both spellings: transformers 5 reads rope_parameters, older readers rope_theta
    // and rope_scaling.
    add_float(o, "rope_theta", c->rope_theta);
    add_rope(cJSON_AddObjectToObject(o, "rope_parameters"), c);
    if (c->rope_scaling.type != ES_ROPE_DEFAULT) add_rope(cJSON_AddObjectToObject(o, "rope_scaling"), c);
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    if (c->arch != ES_ARCH_QWEN2) cJSON_AddBoolToObject(o, "attention_bias", c->o_bias);
    if (c->arch == ES_ARCH_LLAMA) cJSON_AddBoolToObject(o, "mlp_bias", 0);
    if (c->arch != ES_ARCH_LLAMA) {
        cJSON_AddBoolToObject(o, "use_sliding_window", 0);
        cJSON_AddNullToObject(o, "sliding_window");
        cJSON_AddNumberToObject(o, "max_window_layers", c->layers);
    }
}

int es_config_save(const es_config *cfg, const char *path) {
    cJSON *o = cJSON_CreateObject();
    if (cfg->arch == ES_ARCH_GPT2) save_gpt2(o, cfg);
    else save_rope_family(o, cfg);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", cfg->tied);
    add_token(o, "bos_token_id", cfg->bos_id);
    add_token(o, "eos_token_id", cfg->eos_id);
    const char *dt = cfg->torch_dtype[0] ? cfg->torch_dtype : "float32";
    cJSON_AddStringToObject(o, "torch_dtype", dt);
    cJSON_AddStringToObject(o, "dtype", dt);
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    if (!text) return es_fail("%s: cannot format the configuration", path);
    int rc = es_write_atomic(path, text, strlen(text));
    cJSON_free(text);
    return rc;
}

long long es_config_param_count(const es_config *cfg) {
    es_layout lo;
    if (es_layout_build(&lo, cfg)) return -1;
    long long n = (long long)lo.total;
    es_layout_free(&lo);
    return n;
}
