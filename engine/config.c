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

static int get_float(float *out, const reader *r, const cJSON *v, const char *key, float def) {
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return ES_OK;
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0))
        return es_fail("%s: key '%s' must be a positive number", r->path, key);
    *out = (float)v->valuedouble;
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

// rope_scaling / rope_parameters: null or the plain "default" rotation only.
static int check_rope(float *theta, const reader *r, const char *key) {
    const cJSON *v = item(r, key);
    if (!v || cJSON_IsNull(v)) return ES_OK;
    if (!cJSON_IsObject(v)) return es_fail("%s: key '%s' must be an object or null", r->path, key);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(v, "rope_type");
    if (!type) type = cJSON_GetObjectItemCaseSensitive(v, "type");
    if (type && !cJSON_IsNull(type) && !(cJSON_IsString(type) && !strcmp(type->valuestring, "default")))
        return es_fail("%s: key '%s': only the default rotary embedding is implemented "
                       "(no scaled variants)", r->path, key);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(v, "rope_theta");
    if (t) return get_float(theta, r, t, key, *theta);
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
        check_rope(&c->rope_theta, r, "rope_scaling") ||
        check_rope(&c->rope_theta, r, "rope_parameters"))
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
    // Both spellings: transformers 5 reads rope_parameters, older readers rope_theta.
    add_float(o, "rope_theta", c->rope_theta);
    cJSON *rp = cJSON_AddObjectToObject(o, "rope_parameters");
    add_float(rp, "rope_theta", c->rope_theta);
    cJSON_AddStringToObject(rp, "rope_type", "default");
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
