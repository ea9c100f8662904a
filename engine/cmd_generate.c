// essence generate: sampled or greedy continuations of token-id prompts.
// Reads one JSON object per line, {"id": ..., "prompt_ids": [...]}, and writes
// one line per sample, {"id": ..., "sample": k, "ids": [...], "finished": b},
// in the order samples finish. Text (chat template, tokenizer) stays in
// tools/eval_math.py.
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "common.h"
#include "out_file.h"
#include "json.h"
#include "generate.h"

#define MAX_STOP 16
#define PREFILL_TOKENS 8192  // prompts prefilled together, at most (unless one is longer)

typedef struct {
    const char *model, *in, *out, *device;
    es_gen_params p;
    int batch;
    es_wfmt weights;
    int32_t stop[MAX_STOP];
} gen_args;

typedef struct {
    es_gen_request *reqs;
    char **id;  // each request's id, as JSON text
    int n;
} prompt_set;

typedef struct {
    FILE *f;
    const prompt_set *ps;
    long tokens;
} emitter;

static void usage(FILE *f) {
    fprintf(f,
            "usage: essence generate --model DIR --in PROMPTS.jsonl --out SAMPLES.jsonl\n"
            "         [--n N] [--max-new T] [--temperature t] [--top-p p] [--seed s]\n"
            "         [--batch B] [--device cpu|cuda|auto] [--stop ID ...]\n"
            "         [--weights fp32|bf16|int8]\n\n"
            "Continues each prompt ({\"id\": ..., \"prompt_ids\": [...]} per line) N times\n"
            "(default 1) with a key/value cache, B sequences at a time (default 8).\n"
            "Greedy unless --temperature > 0 (then top-p, default 1). A sample ends at\n"
            "a stop id (the config's eos, plus each --stop), after T new tokens (default\n"
            "32768) or at the model's last position. Writes one line per sample:\n"
            "{\"id\": ..., \"sample\": k, \"ids\": [...], \"finished\": true when stopped}.\n"
            "--weights: the matmul weights decode steps read (CPU): fp32 (default, the\n"
            "reference), bf16 or int8 with a scale per row (fewer bytes per token, faster;\n"
            "prefills of more than 16 tokens stay on fp32).\n");
}

static void prompts_free(prompt_set *ps) {
    for (int i = 0; i < ps->n; i++) {
        free((void *)ps->reqs[i].ids);
        free(ps->id[i]);
    }
    free(ps->reqs);
    free(ps->id);
    memset(ps, 0, sizeof *ps);
}

// Parses one line into request slot i.
static int parse_line(prompt_set *ps, const char *line, const char *path, int lineno, int vocab) {
    cJSON *o = es_json_parse(line, strlen(line));
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return es_fail("%s:%d: not a JSON object", path, lineno);
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(o, "prompt_ids");
    int n = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : 0;
    if (!id || !n) {
        cJSON_Delete(o);
        return es_fail("%s:%d: needs \"id\" and a non-empty \"prompt_ids\" array", path, lineno);
    }
    int32_t *ids = es_xmalloc((size_t)n * sizeof *ids);
    int k = 0;
    for (const cJSON *e = arr->child; e; e = e->next, k++) {
        double v = cJSON_IsNumber(e) ? e->valuedouble : -1.0;
        if (v != (double)(int32_t)v || v < 0 || v >= vocab) {
            free(ids);
            cJSON_Delete(o);
            return es_fail("%s:%d: prompt_ids[%d] is not a token id in [0, %d)", path, lineno, k,
                           vocab);
        }
        ids[k] = (int32_t)v;
    }
    ps->reqs[ps->n] = (es_gen_request){ids, n};
    ps->id[ps->n] = cJSON_PrintUnformatted(id);
    ps->n++;
    cJSON_Delete(o);
    return ES_OK;
}

static int read_prompts(prompt_set *ps, const char *path, const es_config *cfg) {
    memset(ps, 0, sizeof *ps);
    char *text = NULL;
    size_t len = 0;
    if (es_read_file(&text, &len, path)) return ES_ERR;
    int cap = 1;
    for (size_t i = 0; i < len; i++) cap += text[i] == '\n';
    ps->reqs = es_xcalloc((size_t)cap, sizeof *ps->reqs);
    ps->id = es_xcalloc((size_t)cap, sizeof *ps->id);
    int lineno = 0, rc = ES_OK;
    for (char *line = text, *nl; line && *line && !rc; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        lineno++;
        if (strspn(line, " \t\r") == strlen(line)) continue;
        rc = parse_line(ps, line, path, lineno, cfg->vocab);
        if (!rc && ps->reqs[ps->n - 1].len >= cfg->max_pos)
            rc = es_fail("%s:%d: prompt of %d tokens does not fit the model's %d positions",
                         path, lineno, ps->reqs[ps->n - 1].len, cfg->max_pos);
    }
    free(text);
    if (!rc && !ps->n) rc = es_fail("%s: no prompts", path);
    if (rc) prompts_free(ps);
    return rc;
}

static int emit_line(void *user, int req, int sample, const int32_t *ids, int n, int finished) {
    emitter *e = user;
    fprintf(e->f, "{\"id\":%s,\"sample\":%d,\"ids\":[", e->ps->id[req], sample);
    for (int i = 0; i < n; i++) fprintf(e->f, i ? ",%d" : "%d", ids[i]);
    fprintf(e->f, "],\"finished\":%s}\n", finished ? "true" : "false");
    e->tokens += n;
    return fflush(e->f) != 0 || ferror(e->f);
}

static int parse_int(int *out, const char *s, const char *opt, int lo, int hi) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end || v < lo || v > hi)
        return es_fail("generate: %s expects an integer in [%d, %d] (got '%s')", opt, lo, hi, s);
    *out = (int)v;
    return ES_OK;
}

static int parse_float(float *out, const char *s, const char *opt, float lo, float hi) {
    char *end;
    float v = strtof(s, &end);
    if (*s == '\0' || *end || !(v >= lo && v <= hi))
        return es_fail("generate: %s expects a number in [%g, %g] (got '%s')", opt, lo, hi, s);
    *out = v;
    return ES_OK;
}

// Returns 0 to go on, or the exit code + 1.
static int parse_args(gen_args *a, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    a->device = "auto";
    a->batch = 8;
    a->p = (es_gen_params){.n = 1, .max_new = 32768, .temperature = 0.0f, .top_p = 1.0f};
    a->p.stop = a->stop;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = ES_OK, stop_id = 0;
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            usage(stdout);
            return 1;
        }
        if (!v) {
            fprintf(stderr, "essence generate: unknown or incomplete option '%s' (see --help)\n", o);
            return 3;
        }
        i++;
        if (!strcmp(o, "--model")) a->model = v;
        else if (!strcmp(o, "--in")) a->in = v;
        else if (!strcmp(o, "--out")) a->out = v;
        else if (!strcmp(o, "--device")) a->device = v;
        else if (!strcmp(o, "--weights")) rc = es_wfmt_parse(&a->weights, v);
        else if (!strcmp(o, "--n")) rc = parse_int(&a->p.n, v, o, 1, 1 << 20);
        else if (!strcmp(o, "--max-new")) rc = parse_int(&a->p.max_new, v, o, 1, 1 << 20);
        else if (!strcmp(o, "--batch")) rc = parse_int(&a->batch, v, o, 1, 4096);
        else if (!strcmp(o, "--temperature")) rc = parse_float(&a->p.temperature, v, o, 0, 100);
        else if (!strcmp(o, "--top-p")) rc = parse_float(&a->p.top_p, v, o, 1e-6f, 1);
        else if (!strcmp(o, "--seed")) {
            char *end;
            a->p.seed = strtoull(v, &end, 10);
            if (*end || !*v) rc = es_fail("generate: --seed expects an integer (got '%s')", v);
        } else if (!strcmp(o, "--stop")) {
            rc = parse_int(&stop_id, v, o, 0, 1 << 30);
            if (!rc && a->p.nstop == MAX_STOP - 1)
                rc = es_fail("generate: at most %d --stop ids", MAX_STOP - 1);
            if (!rc) a->stop[a->p.nstop++] = stop_id;
        } else {
            fprintf(stderr, "essence generate: unknown option '%s' (see --help)\n", o);
            return 3;
        }
        if (rc) {
            fprintf(stderr, "essence: %s\n", es_last_error());
            return 3;
        }
    }
    if (!a->model || !a->in || !a->out) {
        fprintf(stderr, "essence generate: --model, --in and --out are required (see --help)\n");
        return 3;
    }
    return 0;
}

static int run(const gen_args *a0) {
    gen_args a = *a0;
    a.p.stop = a.stop;
    struct stat st;
    if (stat(a.out, &st) == 0 && S_ISDIR(st.st_mode)) return es_fail("%s: is a directory", a.out);
    es_config cfg;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", a.model);
    if (es_config_load(&cfg, path)) return ES_ERR;
    if (cfg.eos_id >= 0) a.stop[a.p.nstop++] = cfg.eos_id;
    prompt_set ps;
    if (read_prompts(&ps, a.in, &cfg)) return ES_ERR;
    int longest = 0;
    for (int i = 0; i < ps.n; i++)
        if (ps.reqs[i].len > longest) longest = ps.reqs[i].len;
    long max_len = (long)longest + a.p.max_new;
    if (max_len > cfg.max_pos) max_len = cfg.max_pos;
    int cap = longest > PREFILL_TOKENS ? longest : PREFILL_TOKENS;
    if ((long)a.batch * longest < cap) cap = a.batch * longest;
    if (cap < a.batch) cap = a.batch;
    int rc = ES_ERR;
    es_backend *be = es_backend_create(a.device);
    es_model m = {0};
    es_gen g = {0};
    // Samples go to a temporary file renamed to OUT once all are written: a failed run leaves no partial OUT.
    es_out out = {0};
    if (!be || es_out_open(&out, a.out)) goto done;
    double t_load = es_now();
    if (es_model_load_hf(&m, a.model, be, cap, 0) || es_gen_create(&g, &m, a.batch, (int)max_len) ||
        es_gen_weights(&g, a.weights))
        goto done;
    t_load = es_now() - t_load;
    emitter e = {out.f, &ps, 0};
    double t0 = es_now();
    rc = es_generate(&g, ps.reqs, ps.n, &a.p, emit_line, &e);
    double dt = es_now() - t0;
    if (!rc)
        fprintf(stderr,
                "essence generate: %d samples, %ld tokens in %.2f s (%.2f tok/s, %s, %s weights); "
                "load %.2f s\n",
                ps.n * a.p.n, e.tokens, dt, e.tokens / (dt > 0 ? dt : 1), be->name,
                es_wfmt_names[a.weights], t_load);
done:
    if (out.f && rc) es_out_abort(&out);
    else if (out.f) rc = es_out_commit(&out);
    es_gen_free(&g);
    if (m.params) es_model_free(&m);
    if (be) be->destroy(be);
    prompts_free(&ps);
    return rc;
}

int cmd_generate(int argc, char **argv) {
    gen_args a;
    int rc = parse_args(&a, argc, argv);
    if (rc) return rc - 1;
    if (run(&a)) {
        fprintf(stderr, "essence: %s\n", es_last_error());
        return 1;
    }
    return 0;
}
