// Configs, parameter layout, safetensors and Hugging Face checkpoint I/O:
// round trips on random data and every kind of bad input.
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "common.h"
#include "model.h"
#include "safetensors.h"
#include "test.h"

static char g_dir[64];
static es_rng g_rng;

static void path_in(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", g_dir, name); }

static int mentions(const char *a, const char *b) {
    const char *e = es_last_error();
    return strstr(e, a) && (!b || strstr(e, b));
}

static void write_text(const char *path, const char *text) {
    CHECK(es_write_atomic(path, text, strlen(text)) == ES_OK, "%s", es_last_error());
}

static void fill_random(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = es_rng_normal(&g_rng);
}

// ---- safetensors ---------------------------------------------------------------

static void test_st_round_trip(void) {
    enum { A = 3 * 5, B = 37, C = 2 * 3 * 4 };
    float a[A], b[B], c[C];
    int32_t ids[4] = {7, -3, 1 << 20, 0};
    fill_random(a, A);
    fill_random(b, B);
    fill_random(c, C);
    int64_t sa[2] = {3, 5}, sb[1] = {B}, sc[3] = {2, 3, 4}, si[1] = {4};
    char path[128];
    path_in(path, sizeof path, "rt.safetensors");
    es_st_writer *w = es_st_writer_new();
    es_st_writer_add_f32(w, "z.a", a, 2, sa, ES_ST_F32);
    es_st_writer_add_f32(w, "b", b, 1, sb, ES_ST_BF16);
    es_st_writer_add_f32(w, "c", c, 3, sc, ES_ST_F32);
    es_st_writer_add_i32(w, "ids", ids, 1, si);
    CHECK(es_st_writer_write(w, path) == ES_OK, "%s", es_last_error());
    es_st_writer_free(w);

    es_st_file f;
    CHECK(es_st_open(&f, path) == ES_OK, "%s", es_last_error());
    CHECK(f.ntensors == 4, "ntensors %d", f.ntensors);
    CHECK(f.data_off % 8 == 0, "header not padded to 8: %zu", f.data_off);
    int ia = es_st_find(&f, "z.a"), ib = es_st_find(&f, "b"), ic = es_st_find(&f, "c"),
        ii = es_st_find(&f, "ids");
    CHECK(ia >= 0 && ib >= 0 && ic >= 0 && ii >= 0 && es_st_find(&f, "nope") < 0, "find");
    if (ia < 0 || ib < 0 || ic < 0 || ii < 0) return;
    CHECK(f.tensors[ia].dtype == ES_ST_F32 && f.tensors[ib].dtype == ES_ST_BF16 &&
              f.tensors[ii].dtype == ES_ST_I32, "dtypes");
    CHECK(f.tensors[ic].ndim == 3 && f.tensors[ic].shape[2] == 4 && es_st_numel(&f.tensors[ic]) == C,
          "shape of c");
    float got[B], want[B];
    t_poison(got, A);
    es_st_read_f32(got, &f, ia);
    CHECK(memcmp(got, a, sizeof a) == 0, "f32 not bit-identical");
    t_poison(got, B);
    es_st_read_f32(got, &f, ib);
    for (int i = 0; i < B; i++) want[i] = es_bf16_to_f32(es_f32_to_bf16(b[i]));
    CHECK(memcmp(got, want, sizeof want) == 0, "bf16 not the rounded values");
    CHECK(t_rel_err(got, b, B, 1e-6) < 1.0 / 256, "bf16 rel err %g", t_rel_err(got, b, B, 1e-6));
    t_poison(got, C);
    es_st_read_f32(got, &f, ic);
    CHECK(t_rel_err(got, c, C, 1e-6) == 0, "c differs");
    t_poison(got, 4);
    es_st_read_f32(got, &f, ii);
    CHECK(got[0] == 7 && got[1] == -3 && got[2] == (float)(1 << 20) && got[3] == 0, "ids");
    es_st_close(&f);
}

// A file from a hand-written header and `data_len` bytes of data.
static void write_raw(const char *path, const char *header, uint64_t hlen_field, size_t data_len) {
    size_t h = strlen(header);
    unsigned char *buf = es_xcalloc(8 + h + data_len, 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(hlen_field >> (8 * i));
    memcpy(buf + 8, header, h);
    CHECK(es_write_atomic(path, buf, 8 + h + data_len) == ES_OK, "%s", es_last_error());
    free(buf);
}

// F16 comes only from other writers: a hand-made file with known values.
static void test_st_f16(void) {
    const char *hdr = "{\"h\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]}}";
    const uint16_t bits[4] = {0x3C00, 0xC000, 0x3555, 0x0001};  // 1, -2, ~1/3, smallest subnormal
    const float want[4] = {1.0f, -2.0f, 0.333251953125f, 5.9604644775390625e-8f};
    size_t h = strlen(hdr);
    unsigned char buf[256] = {0};
    buf[0] = (unsigned char)h;
    memcpy(buf + 8, hdr, h);
    for (int i = 0; i < 4; i++) buf[8 + h + 2 * i] = bits[i] & 0xff, buf[9 + h + 2 * i] = bits[i] >> 8;
    char path[128];
    path_in(path, sizeof path, "f16.safetensors");
    CHECK(es_write_atomic(path, buf, 8 + h + 8) == ES_OK, "%s", es_last_error());
    es_st_file f;
    CHECK(es_st_open(&f, path) == ES_OK, "%s", es_last_error());
    if (f.ntensors != 1) return;
    float got[4];
    t_poison(got, 4);
    es_st_read_f32(got, &f, 0);
    CHECK(t_rel_err(got, want, 4, 1e-30) == 0, "f16 %g %g %g %g", got[0], got[1], got[2], got[3]);
    es_st_close(&f);
}

static void expect_st_error(const char *header, int64_t hlen_field, size_t data_len,
                            const char *needle, const char *what) {
    char path[128];
    path_in(path, sizeof path, "bad.safetensors");
    write_raw(path, header, hlen_field < 0 ? strlen(header) : (uint64_t)hlen_field, data_len);
    es_st_file f;
    int rc = es_st_open(&f, path);
    CHECK(rc == ES_ERR, "%s accepted", what);
    if (rc == ES_OK) es_st_close(&f);
    else CHECK(mentions(path, needle), "%s: message '%s' lacks '%s'", what, es_last_error(), needle);
}

static void test_st_bad_input(void) {
    const char *ok = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    char path[128];
    path_in(path, sizeof path, "bad.safetensors");
    es_st_file f;
    write_raw(path, ok, strlen(ok), 8);  // the unmodified file opens
    CHECK(es_st_open(&f, path) == ES_OK, "valid file refused: %s", es_last_error());
    es_st_close(&f);

    write_raw(path, "", 0, 0);
    CHECK(truncate(path, 5) == 0, "truncate");
    CHECK(es_st_open(&f, path) == ES_ERR && mentions(path, "truncated"), "short file: %s", es_last_error());
    write_raw(path, ok, strlen(ok), 8);
    CHECK(truncate(path, 8 + (off_t)strlen(ok) + 4) == 0, "truncate");
    CHECK(es_st_open(&f, path) == ES_ERR && mentions(path, "'a'"), "truncated data: %s", es_last_error());

    expect_st_error(ok, 1000, 8, "header length", "header length beyond file");
    expect_st_error(ok, (int64_t)1 << 62, 8, "header length", "huge header length");
    expect_st_error("{\"a\":{\"dtype\":", -1, 8, "JSON", "invalid JSON");
    expect_st_error("[1,2]", -1, 8, "object", "header not an object");
    expect_st_error("{\"a\":{\"dtype\":\"Q32\",\"shape\":[2],\"data_offsets\":[0,8]}}", -1, 8, "Q32", "bad dtype");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", -1, 8, "'a'", "negative shape");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,80]}}", -1, 8, "outside", "range out of file");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", -1, 12, "need", "size mismatch");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", -1, 8, "'a'", "reversed range");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", -1, 12, "overlap", "overlap");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", -1, 16, "twice", "duplicate");
    expect_st_error("{\"__metadata__\":3}", -1, 0, "__metadata__", "bad metadata");
}

// ---- configs -------------------------------------------------------------------

#define QWEN3 \
    "{%s\"model_type\":\"qwen3\",\"vocab_size\":64,\"hidden_size\":32,\"intermediate_size\":48,"    \
    "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":12," \
    "\"max_position_embeddings\":128,\"rms_norm_eps\":1e-06,\"rope_theta\":1000000,"           \
    "\"tie_word_embeddings\":true,\"bos_token_id\":null,\"eos_token_id\":[5,6],\"torch_dtype\":\"bfloat16\"}"

// `extra` (",key:value...") goes first: cJSON reads the first of repeated keys.
static int parse_with(es_config *c, const char *base, const char *extra) {
    char json[2048], first[512];
    snprintf(first, sizeof first, "%s%s", *extra ? extra + 1 : "", *extra ? "," : "");
    snprintf(json, sizeof json, base, first);
    return es_config_parse(c, json, "cfg.json");
}

static void test_config_parse(void) {
    es_config c;
    CHECK(parse_with(&c, QWEN3, "") == ES_OK, "%s", es_last_error());
    CHECK(c.arch == ES_ARCH_QWEN3 && c.vocab == 64 && c.hidden == 32 && c.ffn == 48 && c.layers == 2 &&
              c.heads == 4 && c.kv_heads == 2 && c.head_dim == 12 && c.max_pos == 128, "qwen3 sizes");
    CHECK(c.qk_norm && !c.qkv_bias && !c.o_bias && !c.mlp_bias && c.tied, "qwen3 flags");
    CHECK(c.rope_theta == 1e6f && c.norm_eps == 1e-6f, "qwen3 theta %g eps %g", c.rope_theta, c.norm_eps);
    CHECK(c.bos_id == -1 && c.eos_id == 5 && !strcmp(c.torch_dtype, "bfloat16"), "qwen3 tokens/dtype");
    // transformers 5 form of the rotary settings
    CHECK(parse_with(&c, QWEN3, ",\"rope_theta\":null,\"rope_parameters\":{\"rope_theta\":5000,"
                                "\"rope_type\":\"default\"}") == ES_OK && c.rope_theta == 5000.0f,
          "rope_parameters: %s", es_last_error());

    CHECK(es_config_parse(&c, "{\"model_type\":\"qwen2\",\"vocab_size\":64,\"hidden_size\":32,"
                              "\"intermediate_size\":48,\"num_hidden_layers\":1,\"num_attention_heads\":4,"
                              "\"num_key_value_heads\":2,\"max_position_embeddings\":64}", "q2") == ES_OK,
          "qwen2: %s", es_last_error());
    CHECK(c.arch == ES_ARCH_QWEN2 && c.qkv_bias && !c.o_bias && !c.qk_norm && c.head_dim == 8 && !c.tied &&
              c.rope_theta == 10000.0f && !strcmp(c.torch_dtype, "float32"), "qwen2 fields");

    CHECK(es_config_parse(&c, "{\"model_type\":\"llama\",\"vocab_size\":64,\"hidden_size\":32,"
                              "\"intermediate_size\":48,\"num_hidden_layers\":1,\"num_attention_heads\":4,"
                              "\"max_position_embeddings\":64,\"attention_bias\":true,\"bos_token_id\":1,"
                              "\"rope_scaling\":null}", "ll") == ES_OK, "llama: %s", es_last_error());
    CHECK(c.arch == ES_ARCH_LLAMA && c.qkv_bias && c.o_bias && !c.mlp_bias && c.kv_heads == 4 &&
              c.bos_id == 1, "llama fields");

    CHECK(es_config_parse(&c, "{\"model_type\":\"gpt2\",\"vocab_size\":50257,\"n_embd\":768,\"n_layer\":12,"
                              "\"n_head\":12,\"n_positions\":1024,\"n_inner\":null,"
                              "\"activation_function\":\"gelu_pytorch_tanh\"}", "g") == ES_OK,
          "gpt2: %s", es_last_error());
    CHECK(c.arch == ES_ARCH_GPT2 && c.ffn == 3072 && c.head_dim == 64 && c.kv_heads == 12 && c.tied &&
              c.qkv_bias && c.o_bias && c.mlp_bias && c.norm_eps == 1e-5f && c.rope_theta == 0, "gpt2 fields");
    CHECK(es_config_param_count(&c) == 124439808LL, "gpt2 params %lld", es_config_param_count(&c));

    static const struct { const char *extra, *key; } bad[] = {
        {",\"model_type\":\"mistral\"", "model_type"},
        {",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}", "'yarn'"},
        {",\"rope_parameters\":{\"rope_type\":\"dynamic\",\"factor\":4}", "'dynamic'"},
        {",\"rope_parameters\":{\"rope_type\":\"llama3\",\"rope_theta\":5}", "rope_parameters.factor"},
        {",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":4,"
         "\"high_freq_factor\":1}", "rope_scaling.high_freq_factor"},
        {",\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":2,\"attention_factor\":2}",
         "rope_scaling.attention_factor"},
        {",\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":-2}", "rope_scaling.factor"},
        {",\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":2,\"partial_rotary_factor\":0.5}",
         "rope_scaling.partial_rotary_factor"},
        {",\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":2},"
         "\"rope_parameters\":{\"rope_type\":\"linear\",\"factor\":3}", "rope_parameters"},
        {",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,"
         "\"high_freq_factor\":4,\"original_max_position_embeddings\":64.5}",
         "rope_scaling.original_max_position_embeddings"},
        {",\"use_sliding_window\":true,\"sliding_window\":4096", "use_sliding_window"},
        {",\"hidden_act\":\"gelu\"", "hidden_act"},
        {",\"num_key_value_heads\":3", "num_key_value_heads"},
        {",\"head_dim\":7", "head_dim"},
        {",\"hidden_size\":0", "hidden_size"},
        {",\"num_hidden_layers\":-2", "num_hidden_layers"},
        {",\"vocab_size\":null", "vocab_size"},
        {",\"intermediate_size\":1.5", "intermediate_size"},
        {",\"layer_types\":[\"full_attention\",\"sliding_attention\"]", "layer_types"},
        {",\"tie_word_embeddings\":\"yes\"", "tie_word_embeddings"},
        {",\"quantization_config\":{}", "quantization_config"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = parse_with(&c, QWEN3, bad[i].extra);
        CHECK(rc == ES_ERR && mentions("cfg.json", bad[i].key), "'%s' gave rc %d '%s'", bad[i].extra, rc,
              es_last_error());
    }
    CHECK(es_config_parse(&c, "{\"model_type\":\"gpt2\",\"vocab_size\":5,\"n_embd\":8,\"n_layer\":1,"
                              "\"n_head\":2,\"n_positions\":8,\"activation_function\":\"relu\"}", "g") ==
                  ES_ERR && mentions("g", "activation_function"), "gpt2 relu: %s", es_last_error());
    CHECK(es_config_parse(&c, "{\"model_type\":\"gpt2\",\"vocab_size\":5,\"n_embd\":8,\"n_layer\":1,"
                              "\"n_positions\":8}", "g") == ES_ERR && mentions("g", "n_head"),
          "gpt2 missing n_head: %s", es_last_error());
    CHECK(es_config_parse(&c, "{\"model_type\":", "x.json") == ES_ERR && mentions("x.json", "JSON"), "bad JSON");
}

// meta-llama/Llama-3.2-1B's config.json as published.
#define LLAMA32_1B "tests/data/hub/meta-llama/Llama-3.2-1B/config.json"

// meta-llama/Llama-3.1-8B (and DeepSeek-R1-Distill-Llama-8B): the same rope
// scaling with factor 8, untied.
static const char LLAMA31_8B[] =
    "{\"model_type\": \"llama\", \"hidden_size\": 4096, \"intermediate_size\": 14336, "
    "\"num_hidden_layers\": 32, \"num_attention_heads\": 32, \"num_key_value_heads\": 8, "
    "\"max_position_embeddings\": 131072, \"vocab_size\": 128256, \"rms_norm_eps\": 1e-05, "
    "\"rope_theta\": 500000.0, \"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 1.0, "
    "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192, "
    "\"rope_type\": \"llama3\"}, \"tie_word_embeddings\": false, \"mlp_bias\": false, "
    "\"attention_bias\": false, \"hidden_act\": \"silu\", \"bos_token_id\": 128000, "
    "\"eos_token_id\": 128001, \"torch_dtype\": \"bfloat16\"}";

// Llama 3.x configs are read with their llama3 rope scaling, give transformers'
// frequencies bit for bit, and are written back so that they read the same.
static void test_llama3_configs(void) {
    // transformers 5.24 _compute_llama3_parameters for Llama-3.2-1B: j <= 14
    // kept, 15..17 smoothed, from 18 on divided by 32.
    static const float ref[32] = {
        1.0f, 0.663601279f, 0.440366626f, 0.292227834f, 0.193922758f, 0.128687382f,
        0.0853971019f, 0.0566696189f, 0.0376060307f, 0.0249554086f, 0.0165604409f, 0.0109895291f,
        0.00729266508f, 0.00483942125f, 0.00321144611f, 0.00129054801f, 0.000429556705f, 9.70828623e-05f,
        1.94616387e-05f, 1.29147675e-05f, 8.57025589e-06f, 5.68723226e-06f, 3.77405445e-06f, 2.50446715e-06f,
        1.66196742e-06f, 1.10288363e-06f, 7.31874934e-07f, 4.85673127e-07f, 3.22293289e-07f, 2.1387423e-07f,
        1.41927202e-07f, 9.41830649e-08f,
    };
    es_config c, back;
    int rc = es_config_load(&c, LLAMA32_1B);
    CHECK(rc == ES_OK, "Llama-3.2-1B refused: %s", es_last_error());
    if (rc) return;
    const es_rope_scaling *s = &c.rope_scaling;
    CHECK(c.tied && c.head_dim == 64 && c.rope_theta == 5e5f && s->type == ES_ROPE_LLAMA3 &&
              s->factor == 32 && s->low_freq_factor == 1 && s->high_freq_factor == 4 &&
              s->orig_max_pos == 8192, "Llama-3.2-1B fields");
    CHECK(es_config_param_count(&c) == 1235814400LL, "Llama-3.2-1B params %lld",
          es_config_param_count(&c));
    float inv[32];
    es_rope_inv_freq(inv, &c);
    int same = 0;
    for (int j = 0; j < 32; j++) same += inv[j] == ref[j];
    CHECK(same == 32, "Llama-3.2-1B frequencies: %d of 32 equal transformers'", same);

    char path[256];
    path_in(path, sizeof path, "llama3.json");
    CHECK(es_config_save(&c, path) == ES_OK && es_config_load(&back, path) == ES_OK,
          "llama3 save/load: %s", es_last_error());
    CHECK(!memcmp(&back.rope_scaling, s, sizeof *s) && back.rope_theta == c.rope_theta,
          "llama3 scaling not written back");

    CHECK(es_config_parse(&c, LLAMA31_8B, "llama-3.1-8b.json") == ES_OK, "Llama-3.1-8B refused: %s",
          es_last_error());
    CHECK(c.rope_scaling.factor == 8 && es_config_param_count(&c) == 8030261248LL,
          "Llama-3.1-8B params %lld", es_config_param_count(&c));

    // linear: every frequency divided by the factor; read back the same
    CHECK(parse_with(&c, QWEN3, ",\"rope_scaling\":{\"type\":\"linear\",\"factor\":4}") == ES_OK &&
              c.rope_scaling.type == ES_ROPE_LINEAR && c.rope_scaling.factor == 4,
          "linear: %s", es_last_error());
    es_rope_inv_freq(inv, &c);
    CHECK(inv[0] == 0.25f && inv[1] == 1.0f / powf(1e6f, 2.0f / 12.0f) / 4.0f, "linear frequencies");
    CHECK(es_config_save(&c, path) == ES_OK && es_config_load(&back, path) == ES_OK &&
              !memcmp(&back.rope_scaling, &c.rope_scaling, sizeof c.rope_scaling),
          "linear save/load: %s", es_last_error());
    // without original_max_position_embeddings transformers takes max_position_embeddings
    CHECK(parse_with(&c, QWEN3, ",\"rope_parameters\":{\"rope_type\":\"llama3\",\"factor\":2,"
                                "\"low_freq_factor\":1,\"high_freq_factor\":4}") == ES_OK &&
              c.rope_scaling.orig_max_pos == 128, "llama3 default original context: %s", es_last_error());
}

static void test_presets(void) {
    static const struct { const char *file; long long params; } presets[] = {
        {"configs/models/qwen3-0.6b.json", 596049920LL},
        {"configs/models/qwen3-1.7b.json", 1720574976LL},
        {"configs/models/gpt2-124m.json", 124439808LL},
        {"configs/models/qwen3-teacher-small.json", -1},
        {"configs/models/qwen3-student-tiny.json", -1},
    };
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        es_config c;
        CHECK(es_config_load(&c, presets[i].file) == ES_OK, "%s", es_last_error());
        long long n = es_config_param_count(&c);
        CHECK(n > 0 && (presets[i].params < 0 || n == presets[i].params), "%s: %lld params", presets[i].file, n);
    }
    es_config c;
    CHECK(es_config_load(&c, "configs/models/qwen3-student-tiny.json") == ES_OK && c.head_dim == 64 &&
              c.heads * c.head_dim != c.hidden && c.tied && c.vocab == 4096, "student preset");
}

// The config.json files of the hub, taken as published (tests/data/hub/ORG/NAME),
// give the parameter counts their publishers state. Each count is derived
// from the config (V vocabulary, C hidden, L layers, H and KVH heads of D, F
// intermediate): embedding V*C, once more for an untied LM head; per layer
// q and o 2*C*H*D, k and v 2*C*KVH*D, MLP 3*C*F, two norms 2*C, qwen3's
// q/k norms 2*D, qwen2's q/k/v biases H*D + 2*KVH*D; the final norm C.
static void test_published_configs(void) {
    static const struct { const char *repo; long long params; const char *how; } hub[] = {
        // 155,582,464 embedding + 28 x 15,730,944 + 1,024: "0.6B" on the model card
        {"Qwen/Qwen3-0.6B", 596049920LL, "tied"},
        // 311,164,928 embedding + 28 x 50,336,000 + 2,048. The hub shows 2,031,739,904
        // = this + 151,936 x 2,048: its safetensors stores the tied head a second time
        {"Qwen/Qwen3-1.7B", 1720574976LL, "tied"},
        // 388,956,160 embedding + 36 x 100,930,816 + 2,560: "4.0B" (4,022,468,096 on the hub)
        {"Qwen/Qwen3-4B", 4022468096LL, "tied"},
        // 2 x 622,329,856 embedding and head + 36 x 192,946,432 + 4,096: "8.2B"
        {"Qwen/Qwen3-8B", 8190735360LL, "untied"},
        // 136,134,656 embedding + 24 x 14,912,384 (1,152 of it q/k/v biases) + 896: "0.49B"
        {"Qwen/Qwen2.5-0.5B", 494032768LL, "tied"},
        // 262,668,288 embedding + 16 x 60,821,504 + 2,048: "1.23B"
        {"meta-llama/Llama-3.2-1B", 1235814400LL, "tied"},
    };
    for (size_t i = 0; i < sizeof hub / sizeof hub[0]; i++) {
        char path[256];
        snprintf(path, sizeof path, "tests/data/hub/%s/config.json", hub[i].repo);
        es_config c;
        int rc = es_config_load(&c, path);
        CHECK(rc == ES_OK, "%s refused: %s", hub[i].repo, es_last_error());
        if (rc) continue;
        CHECK(c.tied == !strcmp(hub[i].how, "tied"), "%s: tie_word_embeddings", hub[i].repo);
        CHECK(es_config_param_count(&c) == hub[i].params, "%s: %lld parameters, published %lld", hub[i].repo,
              es_config_param_count(&c), hub[i].params);
    }
}

static void test_layout(void) {
    es_config c;
    CHECK(parse_with(&c, QWEN3, ",\"tie_word_embeddings\":false") == ES_OK, "%s", es_last_error());
    es_layout lo;
    CHECK(es_layout_build(&lo, &c) == ES_OK, "%s", es_last_error());
    size_t off = 0;
    for (int i = 0; i < lo.nparams; i++) {
        CHECK(lo.params[i].offset == off, "param %s not contiguous", lo.params[i].name);
        CHECK(lo.params[i].decay == (lo.params[i].ndim == 2), "decay of %s", lo.params[i].name);
        off += lo.params[i].numel;
    }
    CHECK(off == lo.total, "total");
    int q = es_layout_find(&lo, "model.layers.1.self_attn.q_proj.weight");
    CHECK(q == lo.layer[1].q_w && lo.params[q].shape[0] == 48 && lo.params[q].shape[1] == 32, "q_proj");
    int o = lo.layer[0].o_w;
    CHECK(lo.params[o].shape[0] == 32 && lo.params[o].shape[1] == 48, "o_proj (C, H*D)");
    CHECK(lo.layer[0].q_norm >= 0 && lo.params[lo.layer[0].q_norm].numel == 12 && lo.layer[0].q_b < 0, "qk norm");
    CHECK(lo.lm_head != lo.wte && es_layout_find(&lo, "lm_head.weight") == lo.lm_head, "untied head");
    CHECK(es_layout_find(&lo, "nope") == -1 && lo.wpe == -1, "find");
    es_layout_free(&lo);
}

// ---- checkpoints ---------------------------------------------------------------

static const char *ARCH_CONFIGS[] = {
    QWEN3,
    "{\"model_type\":\"qwen2\",\"vocab_size\":40,\"hidden_size\":16,\"intermediate_size\":24,"
    "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"max_position_embeddings\":64,"
    "\"tie_word_embeddings\":false}",
    "{\"model_type\":\"llama\",\"vocab_size\":40,\"hidden_size\":16,\"intermediate_size\":24,"
    "\"num_hidden_layers\":2,\"num_attention_heads\":2,\"max_position_embeddings\":64,\"attention_bias\":true}",
    "{\"model_type\":\"gpt2\",\"vocab_size\":40,\"n_embd\":16,\"n_layer\":2,\"n_head\":2,\"n_positions\":32}",
};

static float *download_params(const es_model *m) {
    float *h = es_xmalloc(m->layout.total * sizeof *h);
    t_poison(h, m->layout.total);
    m->be->download(m->be, h, m->params, m->layout.total, ES_DT_COMPUTE);
    return h;
}

// Saves a random model of `json` into dir and returns it (caller frees).
static int make_checkpoint(es_model *m, es_backend *be, const char *json, const char *dir, int bf16) {
    memset(m, 0, sizeof *m);
    es_config c;
    char text[2048];
    snprintf(text, sizeof text, json, "");
    if (es_config_parse(&c, text, "cfg") || es_model_create(m, &c, be, 8, 0)) return ES_ERR;
    es_model_init_random(m, es_rng_u64(&g_rng));
    // Random norms and biases too, so that a swapped or dropped one shows.
    float *h = download_params(m);
    fill_random(h, m->layout.total);
    be->upload(be, m->params, h, m->layout.total, ES_DT_COMPUTE);
    free(h);
    return es_model_save_hf(m, dir, bf16);
}

static void test_save_load(es_backend *be) {
    for (int a = 0; a < 4; a++) {
        for (int bf16 = 0; bf16 < 2; bf16++) {
            char dir[128];
            path_in(dir, sizeof dir, "ckpt");
            es_model m, back;
            CHECK(make_checkpoint(&m, be, ARCH_CONFIGS[a], dir, bf16) == ES_OK, "arch %d save: %s", a,
                  es_last_error());
            CHECK(es_model_load_hf(&back, dir, be, 8, 1) == ES_OK, "arch %d load: %s", a, es_last_error());
            if (back.params) {
                CHECK(back.cfg.arch == m.cfg.arch && back.layout.total == m.layout.total &&
                          back.cfg.tied == m.cfg.tied && back.cfg.head_dim == m.cfg.head_dim &&
                          back.cfg.kv_heads == m.cfg.kv_heads && back.cfg.ffn == m.cfg.ffn &&
                          back.cfg.max_pos == m.cfg.max_pos && back.cfg.rope_theta == m.cfg.rope_theta &&
                          back.cfg.norm_eps == m.cfg.norm_eps && back.cfg.eos_id == m.cfg.eos_id &&
                          back.cfg.qkv_bias == m.cfg.qkv_bias && back.cfg.o_bias == m.cfg.o_bias,
                      "arch %d config differs", a);
                CHECK(!strcmp(back.cfg.torch_dtype, bf16 ? "bfloat16" : "float32"), "dtype %s",
                      back.cfg.torch_dtype);
                float *x = download_params(&m), *y = download_params(&back);
                if (bf16) {
                    for (size_t i = 0; i < m.layout.total; i++) x[i] = es_bf16_to_f32(es_f32_to_bf16(x[i]));
                }
                CHECK(memcmp(x, y, m.layout.total * sizeof *x) == 0, "arch %d bf16 %d not bit-identical", a, bf16);
                free(x);
                free(y);
                es_model_free(&back);
            }
            es_model_free(&m);
        }
    }
}

// GPT-2 on disk is Conv1D (in, out) with q/k/v fused: check the actual bytes.
static void test_gpt2_layout_on_disk(es_backend *be) {
    char dir[128], path[160];
    path_in(dir, sizeof dir, "gpt2");
    es_model m;
    CHECK(make_checkpoint(&m, be, ARCH_CONFIGS[3], dir, 0) == ES_OK, "%s", es_last_error());
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    es_st_file f;
    CHECK(es_st_open(&f, path) == ES_OK, "%s", es_last_error());
    int i = es_st_find(&f, "transformer.h.1.attn.c_attn.weight");
    CHECK(i >= 0 && f.tensors[i].shape[0] == 16 && f.tensors[i].shape[1] == 48, "c_attn shape");
    CHECK(es_st_find(&f, "lm_head.weight") < 0 && es_st_find(&f, "transformer.wpe.weight") >= 0, "names");
    if (i >= 0) {
        float w[16 * 48], *p = download_params(&m);
        es_st_read_f32(w, &f, i);
        const es_layer_params *lp = &m.layout.layer[1];
        const float *q = p + m.layout.params[lp->q_w].offset, *v = p + m.layout.params[lp->v_w].offset;
        int bad = 0;
        for (int o = 0; o < 16; o++)
            for (int c = 0; c < 16; c++)
                bad += w[c * 48 + o] != q[o * 16 + c] || w[c * 48 + 32 + o] != v[o * 16 + c];
        CHECK(bad == 0, "%d c_attn entries misplaced", bad);
        free(p);
    }
    es_st_close(&f);
    es_model_free(&m);
}

// Rewrites dir/model.safetensors with tensor `drop` left out, `extra` added,
// or `reshape` given a wrong shape.
static void rewrite_weights(const char *dir, const char *drop, const char *extra, const char *reshape) {
    char path[160];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    es_st_file f;
    if (es_st_open(&f, path)) { CHECK(0, "%s", es_last_error()); return; }
    es_st_writer *w = es_st_writer_new();
    float **bufs = es_xcalloc((size_t)f.ntensors, sizeof *bufs);
    static float one[4] = {1, 2, 3, 4};
    for (int i = 0; i < f.ntensors; i++) {
        es_st_tensor *t = &f.tensors[i];
        if (drop && !strcmp(t->name, drop)) continue;
        bufs[i] = es_xmalloc(es_st_numel(t) * sizeof(float));
        es_st_read_f32(bufs[i], &f, i);
        int64_t shape[4] = {t->shape[0], t->shape[1], t->shape[2], t->shape[3]};
        int ndim = t->ndim;
        if (reshape && !strcmp(t->name, reshape) && ndim == 2) shape[0] = t->shape[1], shape[1] = t->shape[0];
        if (reshape && !strcmp(t->name, reshape) && ndim == 1) shape[1] = 1, ndim = 2;
        es_st_writer_add_f32(w, t->name, bufs[i], ndim, shape, ES_ST_F32);
    }
    int64_t s4[1] = {4};
    if (extra) es_st_writer_add_f32(w, extra, one, 1, s4, ES_ST_F32);
    CHECK(es_st_writer_write(w, path) == ES_OK, "%s", es_last_error());
    es_st_writer_free(w);
    for (int i = 0; i < f.ntensors; i++) free(bufs[i]);
    free(bufs);
    es_st_close(&f);
}

static void expect_load_error(es_backend *be, const char *dir, const char *n1, const char *n2, const char *what) {
    es_model m;
    int rc = es_model_load_hf(&m, dir, be, 8, 0);
    CHECK(rc == ES_ERR, "%s accepted", what);
    if (rc == ES_OK) es_model_free(&m);
    else CHECK(mentions(n1, n2), "%s: message '%s' lacks '%s' / '%s'", what, es_last_error(), n1, n2 ? n2 : "");
}

static void test_load_bad_input(es_backend *be) {
    char dir[128], file[160];
    path_in(dir, sizeof dir, "bad");
    snprintf(file, sizeof file, "%s/model.safetensors", dir);
    const char *untied = ARCH_CONFIGS[1];
    es_model m;
    CHECK(make_checkpoint(&m, be, untied, dir, 0) == ES_OK, "%s", es_last_error());
    es_model_free(&m);

    rewrite_weights(dir, "model.layers.1.mlp.up_proj.weight", NULL, NULL);
    expect_load_error(be, dir, file, "'model.layers.1.mlp.up_proj.weight' missing", "missing tensor");
    CHECK(make_checkpoint(&m, be, untied, dir, 0) == ES_OK, "%s", es_last_error());
    es_model_free(&m);
    rewrite_weights(dir, "lm_head.weight", NULL, NULL);
    expect_load_error(be, dir, file, "'lm_head.weight' missing", "untied without lm_head");
    CHECK(make_checkpoint(&m, be, untied, dir, 0) == ES_OK, "%s", es_last_error());
    es_model_free(&m);
    rewrite_weights(dir, NULL, NULL, "model.layers.0.self_attn.k_proj.weight");
    expect_load_error(be, dir, file, "has shape [16,8], expected [8,16]", "wrong shape");
    CHECK(make_checkpoint(&m, be, untied, dir, 0) == ES_OK, "%s", es_last_error());
    es_model_free(&m);
    rewrite_weights(dir, NULL, NULL, "model.norm.weight");
    expect_load_error(be, dir, file, "'model.norm.weight' has shape [16,1]", "wrong rank");
    CHECK(make_checkpoint(&m, be, untied, dir, 0) == ES_OK, "%s", es_last_error());
    es_model_free(&m);
    rewrite_weights(dir, NULL, "model.layers.0.mlp.extra.weight", NULL);
    expect_load_error(be, dir, file, "'model.layers.0.mlp.extra.weight'", "unknown tensor");

    // Known buffers are skipped; a tied model ignores a stored lm_head.
    CHECK(make_checkpoint(&m, be, ARCH_CONFIGS[2], dir, 0) == ES_OK, "%s", es_last_error());
    es_model_free(&m);
    rewrite_weights(dir, NULL, "model.layers.0.self_attn.rotary_emb.inv_freq", NULL);
    CHECK(es_model_load_hf(&m, dir, be, 8, 0) == ES_OK, "inv_freq refused: %s", es_last_error());
    es_model_free(&m);
    CHECK(make_checkpoint(&m, be, ARCH_CONFIGS[0], dir, 0) == ES_OK, "%s", es_last_error());
    es_model_free(&m);
    rewrite_weights(dir, NULL, "lm_head.weight", NULL);
    CHECK(es_model_load_hf(&m, dir, be, 8, 0) == ES_OK, "tied lm_head refused: %s", es_last_error());
    es_model_free(&m);
    CHECK(make_checkpoint(&m, be, ARCH_CONFIGS[3], dir, 0) == ES_OK, "%s", es_last_error());
    es_model_free(&m);
    rewrite_weights(dir, NULL, "transformer.h.0.attn.bias", NULL);
    CHECK(es_model_load_hf(&m, dir, be, 8, 0) == ES_OK, "gpt2 attn.bias refused: %s", es_last_error());
    es_model_free(&m);
    rewrite_weights(dir, "transformer.h.1.mlp.c_fc.weight", NULL, NULL);
    expect_load_error(be, dir, "/model.safetensors", "'transformer.h.1.mlp.c_fc.weight' missing", "gpt2 missing");

    // A corrupt weights file and a corrupt config are reported, never crash.
    CHECK(make_checkpoint(&m, be, untied, dir, 0) == ES_OK, "%s", es_last_error());
    es_model_free(&m);
    CHECK(truncate(file, 200) == 0, "truncate");
    expect_load_error(be, dir, file, NULL, "truncated weights");
    char cfg[160];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    write_text(cfg, "{\"model_type\":\"qwen3\"");
    expect_load_error(be, dir, cfg, NULL, "broken config");
    CHECK(unlink(file) == 0, "unlink");
    CHECK(make_checkpoint(&m, be, untied, dir, 0) == ES_OK, "%s", es_last_error());
    es_model_free(&m);
    CHECK(unlink(file) == 0, "unlink");
    expect_load_error(be, dir, dir, "model.safetensors", "no weights");
}

// Tensors larger than one load chunk (2^18 elements) are read into place by
// several threads: the values arrive whole, and of several non-finite values
// the first is the one named.
static void test_load_large(es_backend *be) {
    const char *json = "{\"model_type\":\"qwen2\",\"vocab_size\":40000,\"hidden_size\":16,"
                       "\"intermediate_size\":24,\"num_hidden_layers\":1,\"num_attention_heads\":4,"
                       "\"num_key_value_heads\":2,\"max_position_embeddings\":64,"
                       "\"tie_word_embeddings\":false}";
    int threads = omp_get_max_threads();
    omp_set_num_threads(4);
    char dir[128], file[160];
    path_in(dir, sizeof dir, "large");
    snprintf(file, sizeof file, "%s/model.safetensors", dir);
    for (int bf16 = 0; bf16 < 2; bf16++) {
        es_model m, back;
        CHECK(make_checkpoint(&m, be, json, dir, bf16) == ES_OK, "%s", es_last_error());
        CHECK(es_model_load_hf(&back, dir, be, 8, 0) == ES_OK, "large load: %s", es_last_error());
        if (back.params) {
            float *x = download_params(&m), *y = download_params(&back);
            for (size_t i = 0; bf16 && i < m.layout.total; i++) x[i] = es_bf16_to_f32(es_f32_to_bf16(x[i]));
            CHECK(!memcmp(x, y, m.layout.total * sizeof *x), "large model (bf16 %d) not bit-identical", bf16);
            free(x);
            free(y);
            es_model_free(&back);
        }
        es_model_free(&m);
    }
    es_st_file f;
    if (es_st_open(&f, file)) {
        CHECK(0, "%s", es_last_error());
        omp_set_num_threads(threads);
        return;
    }
    es_st_writer *w = es_st_writer_new();
    float **bufs = es_xcalloc((size_t)f.ntensors, sizeof *bufs);
    for (int i = 0; i < f.ntensors; i++) {
        es_st_tensor *t = &f.tensors[i];
        bufs[i] = es_xmalloc(es_st_numel(t) * sizeof(float));
        es_st_read_f32(bufs[i], &f, i);
        if (!strcmp(t->name, "lm_head.weight")) {  // 640000 elements: chunks 0, 1, 2
            bufs[i][600001] = INFINITY;
            bufs[i][300007] = NAN;
        }
        es_st_writer_add_f32(w, t->name, bufs[i], t->ndim, t->shape, ES_ST_F32);
    }
    CHECK(es_st_writer_write(w, file) == ES_OK, "%s", es_last_error());
    es_st_writer_free(w);
    for (int i = 0; i < f.ntensors; i++) free(bufs[i]);
    free(bufs);
    es_st_close(&f);
    expect_load_error(be, dir, file, "'lm_head.weight' holds a non-finite value (NaN or Inf) at element 300007",
                      "non-finite weights");
    omp_set_num_threads(threads);
}

// Two shards and an index, as transformers writes large models.
static void test_sharded(es_backend *be) {
    char dir[128], path[200];
    path_in(dir, sizeof dir, "sharded");
    es_model m, back;
    CHECK(make_checkpoint(&m, be, ARCH_CONFIGS[2], dir, 0) == ES_OK, "%s", es_last_error());
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    es_st_file f;
    CHECK(es_st_open(&f, path) == ES_OK, "%s", es_last_error());
    es_st_writer *w[2] = {es_st_writer_new(), es_st_writer_new()};
    float **bufs = es_xcalloc((size_t)f.ntensors, sizeof *bufs);
    char index[8192];
    int n = snprintf(index, sizeof index, "{\"metadata\":{},\"weight_map\":{");
    for (int i = 0; i < f.ntensors; i++) {
        es_st_tensor *t = &f.tensors[i];
        bufs[i] = es_xmalloc(es_st_numel(t) * sizeof(float));
        es_st_read_f32(bufs[i], &f, i);
        es_st_writer_add_f32(w[i % 2], t->name, bufs[i], t->ndim, t->shape, ES_ST_F32);
        n += snprintf(index + n, sizeof index - (size_t)n, "%s\"%s\":\"model-0000%d-of-00002.safetensors\"",
                      i ? "," : "", t->name, i % 2 + 1);
    }
    snprintf(index + n, sizeof index - (size_t)n, "}}");
    for (int s = 0; s < 2; s++) {
        snprintf(path, sizeof path, "%s/model-0000%d-of-00002.safetensors", dir, s + 1);
        CHECK(es_st_writer_write(w[s], path) == ES_OK, "%s", es_last_error());
        es_st_writer_free(w[s]);
    }
    for (int i = 0; i < f.ntensors; i++) free(bufs[i]);
    free(bufs);
    es_st_close(&f);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(unlink(path) == 0, "unlink");
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    write_text(path, index);
    CHECK(es_model_load_hf(&back, dir, be, 8, 0) == ES_OK, "sharded: %s", es_last_error());
    if (back.params) {
        float *x = download_params(&m), *y = download_params(&back);
        CHECK(memcmp(x, y, m.layout.total * sizeof *x) == 0, "sharded load differs");
        free(x);
        free(y);
        es_model_free(&back);
    }
    // An index naming a file outside the directory is refused.
    write_text(path, "{\"weight_map\":{\"model.norm.weight\":\"../x.safetensors\"}}");
    expect_load_error(be, dir, path, "model.norm.weight", "index escaping the directory");

    // Saving over it replaces the weights and keeps other files (a tokenizer).
    char tok[200];
    snprintf(tok, sizeof tok, "%s/tokenizer.json", dir);
    write_text(tok, "{}");
    CHECK(es_model_save_hf(&m, dir, 0) == ES_OK, "save over: %s", es_last_error());
    CHECK(access(tok, F_OK) == 0, "tokenizer.json lost");
    CHECK(access(path, F_OK) != 0, "stale index kept");
    CHECK(es_model_load_hf(&back, dir, be, 8, 0) == ES_OK, "after save over: %s", es_last_error());
    if (back.params) es_model_free(&back);
    es_model_free(&m);
}

static void remove_tree(const char *dir) {
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "cleanup");
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/es_hf_io_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    es_rng_seed(&g_rng, (uint64_t)getpid() ^ (uint64_t)(es_now() * 1e6));
    test_st_round_trip();
    test_st_f16();
    test_st_bad_input();
    test_config_parse();
    test_llama3_configs();
    test_presets();
    test_published_configs();
    test_layout();
    es_backend *be = es_backend_cpu_create();
    CHECK(be != NULL, "cpu backend: %s", es_last_error());
    if (be) {
        test_save_load(be);
        test_gpt2_layout_on_disk(be);
        test_load_bad_input(be);
        test_load_large(be);
        test_sharded(be);
        be->destroy(be);
    }
    remove_tree(g_dir);
    TEST_DONE();
}
