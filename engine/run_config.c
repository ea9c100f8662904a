#include "run_config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "json.h"
#include "packer.h"

typedef enum { F_STR, F_INT, F_FLOAT, F_BOOL, F_U64, F_LIST } field_type;

typedef struct {
    const char *key;
    field_type type;
    size_t off;
    size_t size;        // bytes of the string field / list element
    const char *def;    // default, as text
    const char *allowed;  // "a|b|c" for enumerated strings, or NULL
    double lo, hi;      // numeric range (inclusive)
    const char *doc;
} field;

#define OFF(f) offsetof(es_run_config, f), sizeof(((es_run_config *)0)->f)
#define LISTOFF(f) offsetof(es_run_config, f), sizeof(((es_run_config *)0)->f[0])

static const field fields[] = {
    {"student.path", F_STR, OFF(student_path), "", NULL, 0, 0, "Hugging Face directory of the student to start from"},
    {"student.preset", F_STR, OFF(student_preset), "", NULL, 0, 0, "config.json of a student to initialise randomly (when student.path is empty)"},
    {"teacher.path", F_STR, OFF(teacher_path), "", NULL, 0, 0, "Hugging Face directory of the online teacher (empty: no KD term)"},
    {"teacher.preset", F_STR, OFF(teacher_preset), "", NULL, 0, 0, "or a config.json for a random-weight teacher of that shape (cost measurements only)"},
    {"tokenizer", F_STR, OFF(tokenizer), "", NULL, 0, 0, "directory with tokenizer.json; shards must carry its fingerprint (default: student.path)"},
    {"data.train", F_LIST, LISTOFF(train), "", NULL, 0, 0, "training shards (list of paths)"},
    {"data.val", F_LIST, LISTOFF(val), "", NULL, 0, 0, "validation shards (list of paths)"},
    {"trunc.lsp", F_FLOAT, OFF(lsp), "1.0", NULL, 1e-6, 1, "lead-span proportion r: the fraction of each sequence kept"},
    {"trunc.mode", F_STR, OFF(trunc_mode), "seq", "seq|cot", 0, 0, "seq: r of the whole sequence; cot: whole prompt + r of the CoT"},
    {"trunc.window", F_STR, OFF(trunc_window), "lead", "lead|middle|tail", 0, 0, "where the kept window sits (position ablation)"},
    {"trunc.drop_answer", F_BOOL, OFF(drop_answer), "false", NULL, 0, 0, "keep everything up to </think> and drop the answer"},
    {"trunc.label_mask", F_FLOAT, OFF(label_mask), "0", NULL, 0, 1, "control: keep every token but mask this fraction of labels"},
    {"supervise", F_STR, OFF(supervise), "promptcotAns", NULL, 0, 0, "sections that carry loss: ans, promptAns, cot, cotAns, promptCot, promptcotAns, or weights \"wp,wc,wa\""},
    {"loss.alpha", F_FLOAT, OFF(alpha), "0.5", NULL, 0, 1, "weight of cross-entropy; 1 - alpha goes to the KD term"},
    {"loss.tau", F_FLOAT, OFF(tau), "1.0", NULL, 1e-3, 100, "distillation temperature"},
    {"loss.chunk_rows", F_INT, OFF(chunk_rows), "0", NULL, 0, 1 << 20, "supervised rows per LM-head chunk; 0: as many as 1.5 GiB of logits hold (at least 256)"},
    {"optim.lr", F_FLOAT, OFF(lr), "4e-6", NULL, 0, 10, "peak learning rate"},
    {"optim.min_lr_ratio", F_FLOAT, OFF(min_lr_ratio), "0", NULL, 0, 1, "final learning rate as a fraction of the peak"},
    {"optim.weight_decay", F_FLOAT, OFF(wd), "0.05", NULL, 0, 10, "decoupled weight decay (not on norms and biases)"},
    {"optim.beta1", F_FLOAT, OFF(beta1), "0.9", NULL, 0, 0.999999, "AdamW beta1"},
    {"optim.beta2", F_FLOAT, OFF(beta2), "0.999", NULL, 0, 0.999999, "AdamW beta2"},
    {"optim.eps", F_FLOAT, OFF(eps), "1e-8", NULL, 0, 1, "AdamW epsilon"},
    {"optim.clip", F_FLOAT, OFF(clip), "1.0", NULL, 0, 1e9, "global gradient-norm clip (0 = off)"},
    {"optim.schedule", F_STR, OFF(schedule), "onecycle", "constant|cosine|linear|onecycle", 0, 0, "learning-rate schedule"},
    {"optim.warmup", F_FLOAT, OFF(warmup), "0.1", NULL, 0, 1, "warm-up as a fraction of the steps"},
    {"batch.capacity", F_INT, OFF(capacity), "0", NULL, 0, 1 << 24, "tokens per micro-batch (0: the longest kept document, rounded up to 64)"},
    {"batch.capacity_factor", F_FLOAT, OFF(capacity_factor), "1", NULL, 1, 1024, "with capacity 0: micro-batches of this many times the longest kept document (memory still follows r)"},
    {"batch.step_examples", F_INT, OFF(step_examples), "32", NULL, 0, 1 << 24, "examples per optimizer step (micro-batches are accumulated)"},
    {"batch.step_tokens", F_INT, OFF(step_tokens), "0", NULL, 0, 1 << 30, "or kept tokens per optimizer step (0: use step_examples)"},
    {"batch.shuffle_window", F_INT, OFF(shuffle_window), "1024", NULL, 1, 1 << 30, "documents per best-fit packing window"},
    {"run.epochs", F_INT, OFF(epochs), "1", NULL, 1, 1 << 20, "passes over the training data"},
    {"run.steps", F_INT, OFF(steps), "0", NULL, 0, 1 << 30, "optimizer steps (0: as many as the epochs give)"},
    {"run.val_every", F_INT, OFF(val_every), "0", NULL, 0, 1 << 30, "validate every N steps (0: at the end only)"},
    {"run.log_every", F_INT, OFF(log_every), "1", NULL, 1, 1 << 30, "progress line every N steps"},
    {"run.ckpt_every", F_INT, OFF(ckpt_every), "0", NULL, 0, 1 << 30, "checkpoint every N steps (0: at the end only)"},
    {"run.keep", F_INT, OFF(keep), "2", NULL, 1, 1000, "checkpoints kept"},
    {"run.max_bad_steps", F_INT, OFF(max_bad_steps), "5", NULL, 1, 1 << 20, "non-finite steps in a row before the run aborts"},
    {"run.seed", F_U64, OFF(seed), "1234", NULL, 0, 0, "seed for initialisation, shuffling and label masking"},
    {"run.device", F_STR, OFF(device), "auto", "cpu|cuda|auto", 0, 0, "backend"},
    {"run.out", F_STR, OFF(out), "runs/default", NULL, 0, 0, "run directory: checkpoints, metrics.jsonl"},
    {"run.threads", F_INT, OFF(threads), "0", NULL, 0, 4096, "CPU threads per rank (0: the cores divided among the ranks on this machine)"},
    {"run.zero1", F_BOOL, OFF(zero1), "false", NULL, 0, 0, "ZeRO-1 under mpirun: each rank keeps and updates 1/N of the optimizer state"},
    {"run.overlap_comm", F_BOOL, OFF(overlap_comm), "true", NULL, 0, 0, "under mpirun without ZeRO-1: all-reduce the gradients in buckets during backward, overlapping it"},
    {"run.comm_bucket", F_INT, OFF(comm_bucket), "1048576", NULL, 1, 1 << 30, "gradient elements an all-reduce bucket collects at least (smaller layers are merged)"},
    {"run.recompute", F_STR, OFF(recompute), "none", "none|mlp|full", 0, 0, "activations the student recomputes in backward instead of keeping: mlp (norm outputs, MLP intermediates) or full (whole layers); trades FLOPs for memory"},
};
static const int nfields = (int)(sizeof fields / sizeof fields[0]);

static const field *find_field(const char *key) {
    for (int i = 0; i < nfields; i++)
        if (!strcmp(fields[i].key, key)) return &fields[i];
    return NULL;
}

static int set_text(es_run_config *rc, const field *f, const char *val, const char *src);

static int set_str(char *dst, size_t size, const field *f, const char *val, const char *src) {
    if (strlen(val) >= size) return es_fail("%s: '%s' is too long (max %zu bytes)", src, f->key, size - 1);
    if (f->allowed) {
        size_t n = strlen(val);
        const char *a = f->allowed;
        int ok = 0;
        while (*a) {
            const char *bar = strchr(a, '|');
            size_t len = bar ? (size_t)(bar - a) : strlen(a);
            if (len == n && !strncmp(a, val, n)) ok = 1;
            a += len + (bar ? 1 : 0);
        }
        if (!ok) return es_fail("%s: '%s' is '%s', expected one of %s", src, f->key, val, f->allowed);
    }
    strcpy(dst, val);
    return ES_OK;
}

static int parse_num(double *out, const field *f, const char *val, const char *src) {
    char *end;
    errno = 0;
    double d = strtod(val, &end);
    if (errno || end == val || *end || !isfinite(d)) return es_fail("%s: '%s' is '%s', not a number", src, f->key, val);
    if (f->type == F_INT && d != floor(d)) return es_fail("%s: '%s' is '%s', not an integer", src, f->key, val);
    if (f->type != F_U64 && (d < f->lo || d > f->hi))
        return es_fail("%s: '%s' is %s, outside [%g, %g]", src, f->key, val, f->lo, f->hi);
    *out = d;
    return ES_OK;
}

// Sets a field from its text form (the form of --set and of defaults).
static int set_text(es_run_config *rc, const field *f, const char *val, const char *src) {
    char *base = (char *)rc + f->off;
    double d;
    switch (f->type) {
    case F_STR:
        return set_str(base, f->size, f, val, src);
    case F_INT:
        if (parse_num(&d, f, val, src)) return ES_ERR;
        *(int *)base = (int)d;
        return ES_OK;
    case F_FLOAT:
        if (parse_num(&d, f, val, src)) return ES_ERR;
        *(float *)base = (float)d;
        return ES_OK;
    case F_U64: {
        char *end;
        errno = 0;
        unsigned long long u = strtoull(val, &end, 10);
        if (errno || end == val || *end || val[0] == '-')
            return es_fail("%s: '%s' is '%s', not a non-negative integer", src, f->key, val);
        *(unsigned long long *)base = u;
        return ES_OK;
    }
    case F_BOOL:
        if (!strcmp(val, "true") || !strcmp(val, "1")) *(int *)base = 1;
        else if (!strcmp(val, "false") || !strcmp(val, "0")) *(int *)base = 0;
        else return es_fail("%s: '%s' is '%s', expected true or false", src, f->key, val);
        return ES_OK;
    case F_LIST: {
        // paths, comma-separated or as a JSON list: "a,b" or '["a", "b"]'
        cJSON *arr = NULL;
        if (val[0] == '[') {
            arr = es_json_parse(val, strlen(val));
            if (!arr || !cJSON_IsArray(arr)) {
                cJSON_Delete(arr);
                return es_fail("%s: '%s' is '%s', not a JSON list", src, f->key, val);
            }
        } else {
            arr = cJSON_CreateArray();
            char *copy = strdup(val), *save = NULL;
            for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                cJSON_AddItemToArray(arr, cJSON_CreateString(tok));
            }
            free(copy);
        }
        int rcode = ES_OK;
        int n = cJSON_GetArraySize(arr);
        int *count = f->off == offsetof(es_run_config, train) ? &rc->ntrain : &rc->nval;
        if (n > ES_MAX_SHARDS) {
            rcode = es_fail("%s: '%s' lists %d paths, at most %d", src, f->key, n, ES_MAX_SHARDS);
        } else {
            *count = 0;
            for (int i = 0; i < n && rcode == ES_OK; i++) {
                cJSON *it = cJSON_GetArrayItem(arr, i);
                if (!cJSON_IsString(it)) rcode = es_fail("%s: '%s' item %d is not a string", src, f->key, i);
                else if (strlen(it->valuestring) >= f->size) rcode = es_fail("%s: '%s' item %d is too long", src, f->key, i);
                else strcpy(base + (size_t)i * f->size, it->valuestring), (*count)++;
            }
        }
        cJSON_Delete(arr);
        return rcode;
    }
    }
    return es_fail("%s: '%s': unhandled type", src, f->key);
}

void es_run_config_defaults(es_run_config *rc) {
    memset(rc, 0, sizeof *rc);
    for (int i = 0; i < nfields; i++) {
        int r = set_text(rc, &fields[i], fields[i].def, "default");
        (void)r;  // defaults are valid by construction (checked by the config test)
    }
}

// Converts a JSON value to the text form set_text takes.
static int json_to_text(char *buf, size_t size, const cJSON *v, const field *f, const char *src) {
    if (cJSON_IsString(v)) {
        if (f->type != F_STR && f->type != F_LIST)
            return es_fail("%s: '%s' must be a %s, not a string", src, f->key, f->type == F_BOOL ? "boolean" : "number");
        snprintf(buf, size, "%s", v->valuestring);
        if (f->type == F_LIST) snprintf(buf, size, "[\"%s\"]", v->valuestring);
        return ES_OK;
    }
    if (cJSON_IsBool(v)) {
        if (f->type != F_BOOL) return es_fail("%s: '%s' must not be a boolean", src, f->key);
        snprintf(buf, size, "%s", cJSON_IsTrue(v) ? "true" : "false");
        return ES_OK;
    }
    if (cJSON_IsNumber(v)) {
        if (f->type == F_STR || f->type == F_LIST || f->type == F_BOOL)
            return es_fail("%s: '%s' must not be a number", src, f->key);
        snprintf(buf, size, "%.17g", v->valuedouble);
        return ES_OK;
    }
    if (cJSON_IsArray(v)) {
        if (f->type != F_LIST) return es_fail("%s: '%s' must not be a list", src, f->key);
        char *s = cJSON_PrintUnformatted(v);
        snprintf(buf, size, "%s", s);
        int too_long = strlen(s) >= size;
        free(s);
        return too_long ? es_fail("%s: '%s' is too long", src, f->key) : ES_OK;
    }
    return es_fail("%s: '%s' has an unsupported value (null or object)", src, f->key);
}

static int apply_object(es_run_config *rc, const cJSON *obj, const char *prefix, const char *src) {
    for (const cJSON *it = obj->child; it; it = it->next) {
        char key[128];
        snprintf(key, sizeof key, "%s%s%s", prefix, prefix[0] ? "." : "", it->string);
        const field *f = find_field(key);
        if (!f && cJSON_IsObject(it)) {
            if (apply_object(rc, it, key, src)) return ES_ERR;
            continue;
        }
        if (!f) return es_fail("%s: unknown key '%s' (essence train --help-config lists them)", src, key);
        static char text[ES_MAX_SHARDS * 520];
        if (json_to_text(text, sizeof text, it, f, src) || set_text(rc, f, text, src)) return ES_ERR;
    }
    return ES_OK;
}

int es_run_config_load(es_run_config *rc, const char *path) {
    char *txt;
    size_t len;
    if (es_read_file(&txt, &len, path)) return ES_ERR;
    cJSON *root = es_json_parse(txt, len);
    free(txt);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return es_fail("%s: not a JSON object", path);
    }
    int r = apply_object(rc, root, "", path);
    cJSON_Delete(root);
    return r;
}

int es_run_config_set(es_run_config *rc, const char *kv) {
    const char *eq = strchr(kv, '=');
    if (!eq) return es_fail("--set %s: expected key=value", kv);
    char key[128];
    size_t n = (size_t)(eq - kv);
    if (n >= sizeof key) return es_fail("--set %s: key too long", kv);
    memcpy(key, kv, n);
    key[n] = 0;
    const field *f = find_field(key);
    if (!f) return es_fail("--set: unknown key '%s' (essence train --help-config lists them)", key);
    if (f->type != F_STR || eq[1] != '"') return set_text(rc, f, eq + 1, "--set");
    // a string in JSON quotes, as lists may be given in JSON: run.out="/x" is /x
    cJSON *v = es_json_parse(eq + 1, strlen(eq + 1));
    int r = cJSON_IsString(v) ? set_text(rc, f, v->valuestring, "--set")
                              : es_fail("--set: '%s' is '%s', not a JSON string", key, eq + 1);
    cJSON_Delete(v);
    return r;
}

// The same shard twice would be read twice an epoch: the data mix would change silently.
static int check_repeats(const char *key, const char (*paths)[512], int n) {
    for (int i = 0; i < n; i++) {
        char a[PATH_MAX];
        if (!realpath(paths[i], a)) snprintf(a, sizeof a, "%s", paths[i]);
        for (int j = 0; j < i; j++) {
            char b[PATH_MAX];
            if (!realpath(paths[j], b)) snprintf(b, sizeof b, "%s", paths[j]);
            if (!strcmp(a, b)) return es_fail("config: '%s' lists %s twice (items %d and %d)", key, paths[i], j, i);
        }
    }
    return ES_OK;
}

int es_run_config_validate(const es_run_config *rc) {
    if (!rc->student_path[0] && !rc->student_preset[0])
        return es_fail("config: 'student.path' or 'student.preset' must be set");
    if (rc->student_path[0] && rc->student_preset[0])
        return es_fail("config: set only one of 'student.path' and 'student.preset'");
    if (rc->ntrain == 0) return es_fail("config: 'data.train' lists no shard");
    if (check_repeats("data.train", rc->train, rc->ntrain) || check_repeats("data.val", rc->val, rc->nval))
        return ES_ERR;
    if (rc->step_examples == 0 && rc->step_tokens == 0)
        return es_fail("config: 'batch.step_examples' and 'batch.step_tokens' are both 0");
    if (rc->label_mask > 0 && (rc->lsp < 1 || rc->drop_answer))
        return es_fail("config: 'trunc.label_mask' is a control for truncation: use it with trunc.lsp = 1");
    float w[ES_NSECTIONS];
    if (es_supervision_parse(w, rc->supervise)) return es_fail("config: 'supervise': %s", es_last_error());
    if (rc->teacher_path[0] && rc->teacher_preset[0])
        return es_fail("config: set only one of 'teacher.path' and 'teacher.preset'");
    if (rc->tau != 1.0f && !rc->teacher_path[0] && !rc->teacher_preset[0])
        return es_fail("config: 'loss.tau' is set but no 'teacher.path' is given");
    return ES_OK;
}

char *es_run_config_to_json(const es_run_config *rc) {
    cJSON *root = cJSON_CreateObject();
    for (int i = 0; i < nfields; i++) {
        const field *f = &fields[i];
        const char *base = (const char *)rc + f->off;
        cJSON *v = NULL;
        switch (f->type) {
        case F_STR: v = cJSON_CreateString(base); break;
        case F_INT: v = cJSON_CreateNumber(*(const int *)base); break;
        case F_BOOL: v = cJSON_CreateBool(*(const int *)base); break;
        case F_FLOAT: v = cJSON_CreateNumber(*(const float *)base); break;
        case F_U64: v = cJSON_CreateNumber((double)*(const unsigned long long *)base); break;
        case F_LIST: {
            int n = f->off == offsetof(es_run_config, train) ? rc->ntrain : rc->nval;
            v = cJSON_CreateArray();
            for (int j = 0; j < n; j++) cJSON_AddItemToArray(v, cJSON_CreateString(base + (size_t)j * f->size));
            break;
        }
        }
        cJSON_AddItemToObject(root, f->key, v);
    }
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    return s;
}

void es_run_config_print_help(void) {
    static const char *tn[] = {"string", "int", "float", "bool", "int", "list"};
    printf("| key | type | default | meaning |\n| --- | --- | --- | --- |\n");
    for (int i = 0; i < nfields; i++) {
        const field *f = &fields[i];
        printf("| `%s` | %s | `%s` | %s", f->key, tn[f->type], f->def[0] ? f->def : "\"\"", f->doc);
        if (f->allowed) {  // "a|b" would split a markdown table cell
            fputs(": ", stdout);
            for (const char *c = f->allowed; *c; c++) fputs(*c == '|' ? ", " : (char[]){*c, 0}, stdout);
        }
        puts(" |");
    }
}
