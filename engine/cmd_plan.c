// essence plan: what a run would cost on a device (memory per device by
// kind, whether it fits, FLOPs, time) at the run's r and at r = 1, from the
// configs and the shards or a length histogram. Allocates nothing on a device
// and runs no model (engine/plan.c).
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common.h"
#include "metrics.h"
#include "plan.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: essence plan --config RUN.json [--set key=value ...] [--device D] [--gpus N]\n"
            "                    [--lengths HIST.json] [--mfu F] [--json]\n\n"
            "Plans the run on N devices D (h100-80g, h200, a100-40g, a100-80g or cpu; default cpu when\n"
            "run.device is cpu) without running it: the parameters of student and teacher, memory per\n"
            "device by kind as the engine allocates it (activations at every run.recompute level),\n"
            "whether it fits and the largest capacity that does, FLOPs per step and per epoch by part,\n"
            "and the time per epoch at an MFU (--mfu, default the one measured on D when on record,\n"
            "else 0.4); at the run's trunc.lsp next to r = 1. The lengths come from the run's training\n"
            "shards, or from a length histogram (JSON: {\"source\": ..., \"lengths\": [[count, prompt,\n"
            "cot, answer], ...]}). --json prints one JSON object instead.\n");
}

typedef struct {
    const char *device, *lengths;
    int gpus, json;
    double mfu;
} plan_opts;

// Takes the plan's options out of argv (the rest is a run's command line).
// Returns 0 to go on, else the exit code + 1.
static int parse_plan_opts(plan_opts *o, int *argc, char **argv) {
    *o = (plan_opts){.gpus = 1};
    int n = 1;
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i];
        int takes = !strcmp(a, "--device") || !strcmp(a, "--gpus") || !strcmp(a, "--lengths") || !strcmp(a, "--mfu");
        if (takes && i + 1 >= *argc) {
            fprintf(stderr, "essence plan: %s needs a value\n", a);
            return 3;
        }
        char *end;
        if (!strcmp(a, "--device")) {
            o->device = argv[++i];
        } else if (!strcmp(a, "--lengths")) {
            o->lengths = argv[++i];
        } else if (!strcmp(a, "--gpus")) {
            long v = strtol(argv[++i], &end, 10);
            if (*end || end == argv[i] || v < 1 || v > 65536) {
                fprintf(stderr, "essence plan: --gpus is '%s', expected an integer in [1, 65536]\n", argv[i]);
                return 3;
            }
            o->gpus = (int)v;
        } else if (!strcmp(a, "--mfu")) {
            o->mfu = strtod(argv[++i], &end);
            if (*end || end == argv[i] || !(o->mfu > 0 && o->mfu <= 1)) {
                fprintf(stderr, "essence plan: --mfu is '%s', expected a fraction in (0, 1]\n", argv[i]);
                return 3;
            }
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
        } else {
            argv[n++] = argv[i];
        }
    }
    *argc = n;
    return 0;
}

static const char *const level_names[3] = {"none", "mlp", "full"};

// ---- text ---------------------------------------------------------------------

static void row(const char *label, const char *a, const char *b, double x, double y) {
    char ratio[16] = "";
    if (y != 0) snprintf(ratio, sizeof ratio, "%.2fx", x / y);
    printf("  %-44s %14s %14s %8s\n", label, a, b, ratio);
}

static void row_num(const char *label, const char *fmt, double x, double y) {
    char a[32], b[32];
    snprintf(a, sizeof a, fmt, x);
    snprintf(b, sizeof b, fmt, y);
    row(label, a, b, x, y);
}

// Memory in `unit` bytes (GiB, or MiB for a small run).
static void row_mem(const char *label, double x, double y, double unit) { row_num(label, "%.2f", x / unit, y / unit); }

static void print_model(const char *role, const es_config *c, const char *tail) {
    printf("%-9s %s, %d layers, hidden %d, vocabulary %d: %lld parameters%s\n", role, c->model_type, c->layers,
           c->hidden, c->vocab, es_config_param_count(c), tail);
}

static void print_memory(const es_plan *p) {
    const es_plan_col *a = &p->col[0], *b = &p->col[1];
    const es_plan_mem *ma = &a->mem[p->recompute], *mb = &b->mem[p->recompute];
    const char *ct = p->dev.compute_bytes == 2 ? "bf16" : "fp32";
    char label[96];
    int big = mb->total >= ES_GIB;
    double unit = big ? ES_GIB : 1048576.0;
    printf("memory per device, %s (run.recompute %s%s)\n", big ? "GiB" : "MiB", level_names[p->recompute],
           p->zero1 ? "; ZeRO-1: master weights and moments are this device's 1/N part" : "");
    snprintf(label, sizeof label, "weights (%s)", ct);
    row_mem(label, ma->weights, mb->weights, unit);
    row_mem("master weights (fp32)", ma->master, mb->master, unit);
    row_mem("gradients (fp32)", ma->grads, mb->grads, unit);
    row_mem("optimizer state (fp32 AdamW moments)", ma->moments, mb->moments, unit);
    snprintf(label, sizeof label, "teacher weights (%s)", ct);
    row_mem(label, ma->teacher, mb->teacher, unit);
    for (int l = 0; l < 3; l++) {
        snprintf(label, sizeof label, "activations, recompute %s%s", level_names[l],
                 l == (int)p->recompute ? " *" : "");
        row_mem(label, a->mem[l].acts, b->mem[l].acts, unit);
    }
    row_mem("LM-head chunk (fused loss)", ma->lm_head, mb->lm_head, unit);
    row_mem("workspace", ma->workspace, mb->workspace, unit);
    row_mem("index", ma->index, mb->index, unit);
    if (ma->validation > 0) row_mem("validation view (whole sequences)", ma->validation, mb->validation, unit);
    for (int l = 0; l < 3; l++) {
        snprintf(label, sizeof label, "total, recompute %s%s", level_names[l], l == (int)p->recompute ? " *" : "");
        row_mem(label, a->mem[l].total, b->mem[l].total, unit);
    }
    snprintf(label, sizeof label, "fits %s (%.1f GiB usable)", p->dev.name, p->usable / ES_GIB);
    row(label, a->fits ? "yes" : "no", b->fits ? "yes" : "no", 0, 0);
    char ca[32], cb[32];
    snprintf(ca, sizeof ca, a->max_capacity ? "%d" : "none", a->max_capacity);
    snprintf(cb, sizeof cb, b->max_capacity ? "%d" : "none", b->max_capacity);
    row("largest capacity that fits (tokens)", ca, cb, a->max_capacity, b->max_capacity);
}

static void print_text(const es_plan *p, const char *config) {
    const es_plan_col *a = &p->col[0], *b = &p->col[1];
    printf("plan: %s on %d x %s (%.1f GiB, %.1f usable each)%s\n", config, p->gpus, p->dev.name,
           p->dev.memory / ES_GIB, p->usable / ES_GIB, p->zero1 ? ", ZeRO-1" : "");
    print_model("student", &p->student, "");
    if (p->has_teacher) print_model("teacher", &p->teacher, ", forward only");
    printf("%-9s %s: %zu examples, %zu tokens\n", "data", p->data_source, p->examples, p->tokens);
    printf("%-9s %.3g TFLOP/s per device (%s); MFU %.1f%% (%s)\n\n", "peak", p->dev.peak_flops / 1e12,
           p->dev.peak_source, 100 * p->mfu, p->mfu_source);
    char ha[32], hb[32];
    snprintf(ha, sizeof ha, "r = %g", a->r);
    snprintf(hb, sizeof hb, "r = %g", b->r);
    printf("  %-44s %14s %14s %8s\n", "", ha, hb, "ratio");
    row_num("kept tokens per epoch", "%.0f", a->kept, b->kept);
    row_num("supervised labels per epoch", "%.0f", a->supervised, b->supervised);
    row_num("longest kept example (tokens)", "%.0f", a->longest, b->longest);
    row_num("capacity (tokens per micro-batch)", "%.0f", a->capacity, b->capacity);
    row_num("micro-batches per epoch", "%.0f", (double)a->batches, (double)b->batches);
    row_num("micro-batches per step (per device)", "%.0f", a->accum, b->accum);
    row_num("optimizer steps per epoch", "%.0f", a->steps.steps_per_epoch, b->steps.steps_per_epoch);
    printf("\n");
    print_memory(p);
    printf("\nFLOPs per epoch (model FLOPs: recomputation is not counted)\n");
    row_num("student forward", "%.4g", a->flops.student_fwd, b->flops.student_fwd);
    row_num("student backward", "%.4g", a->flops.student_bwd, b->flops.student_bwd);
    if (p->has_teacher) row_num("teacher forward", "%.4g", a->flops.teacher_fwd, b->flops.teacher_fwd);
    row_num("  of the total: attention", "%.4g", a->flops.attention, b->flops.attention);
    row_num("  of the total: LM head", "%.4g", a->flops.lm_head, b->flops.lm_head);
    row_num("total", "%.4g", a->flops.total, b->flops.total);
    row_num("FLOPs per optimizer step", "%.4g", a->flops_step, b->flops_step);
    char ta[32], tb[32];
    es_format_duration(ta, sizeof ta, a->seconds);
    es_format_duration(tb, sizeof tb, b->seconds);
    char label[64];
    snprintf(label, sizeof label, "time per epoch at %.1f%% MFU", 100 * p->mfu);
    row(label, ta, tb, a->seconds, b->seconds);
}

// ---- JSON ---------------------------------------------------------------------

static cJSON *json_model(const es_config *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model_type", c->model_type);
    cJSON_AddNumberToObject(o, "layers", c->layers);
    cJSON_AddNumberToObject(o, "hidden", c->hidden);
    cJSON_AddNumberToObject(o, "params", (double)es_config_param_count(c));
    return o;
}

static cJSON *json_mem(const es_plan_mem *m) {
    cJSON *o = cJSON_CreateObject();
    const char *names[] = {"weights", "master", "gradients", "moments", "teacher", "activations",
                           "lm_head", "workspace", "index", "validation", "total"};
    const double vals[] = {m->weights, m->master, m->grads, m->moments, m->teacher, m->acts,
                           m->lm_head, m->workspace, m->index, m->validation, m->total};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) cJSON_AddNumberToObject(o, names[i], vals[i]);
    cJSON *k = cJSON_AddObjectToObject(o, "kinds");
    for (int i = 0; i < ES_MEM_KINDS; i++) cJSON_AddNumberToObject(k, es_mem_kind_names[i], m->kinds[i]);
    return o;
}

static cJSON *json_col(const es_plan *p, const es_plan_col *c) {
    cJSON *o = cJSON_CreateObject();
    const char *names[] = {"lsp", "capacity", "longest", "max_tokens", "kept_tokens", "supervised",
                           "micro_batches", "step_micro_batches", "accum", "steps_per_epoch",
                           "flops_per_step", "seconds_per_epoch", "max_capacity"};
    const double vals[] = {c->r, c->capacity, c->longest, c->max_tokens, c->kept, c->supervised,
                           (double)c->batches, c->steps.step_mbs, c->accum, c->steps.steps_per_epoch,
                           c->flops_step, c->seconds, c->max_capacity};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) cJSON_AddNumberToObject(o, names[i], vals[i]);
    cJSON_AddBoolToObject(o, "fits", c->fits);
    cJSON *f = cJSON_AddObjectToObject(o, "flops_per_epoch");
    const char *fn[] = {"student_forward", "student_backward", "teacher_forward", "attention", "lm_head", "total"};
    const double fv[] = {c->flops.student_fwd, c->flops.student_bwd, c->flops.teacher_fwd,
                         c->flops.attention, c->flops.lm_head, c->flops.total};
    for (size_t i = 0; i < sizeof fv / sizeof fv[0]; i++) cJSON_AddNumberToObject(f, fn[i], fv[i]);
    cJSON_AddItemToObject(o, "memory", json_mem(&c->mem[p->recompute]));
    cJSON *lv = cJSON_AddObjectToObject(o, "memory_by_recompute");
    for (int l = 0; l < 3; l++) cJSON_AddItemToObject(lv, level_names[l], json_mem(&c->mem[l]));
    return o;
}

static void print_json(const es_plan *p) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "student", json_model(&p->student));
    cJSON_AddItemToObject(o, "teacher", p->has_teacher ? json_model(&p->teacher) : cJSON_CreateNull());
    cJSON *d = cJSON_AddObjectToObject(o, "device");
    cJSON_AddStringToObject(d, "name", p->dev.name);
    cJSON_AddNumberToObject(d, "memory", p->dev.memory);
    cJSON_AddNumberToObject(d, "usable", p->usable);
    cJSON_AddNumberToObject(d, "peak_flops", p->dev.peak_flops);
    cJSON_AddStringToObject(d, "peak_source", p->dev.peak_source);
    cJSON_AddNumberToObject(o, "gpus", p->gpus);
    cJSON_AddBoolToObject(o, "zero1", p->zero1);
    cJSON_AddStringToObject(o, "recompute", level_names[p->recompute]);
    cJSON_AddNumberToObject(o, "mfu", p->mfu);
    cJSON_AddStringToObject(o, "mfu_source", p->mfu_source);
    cJSON_AddStringToObject(o, "data", p->data_source);
    cJSON_AddNumberToObject(o, "examples", (double)p->examples);
    cJSON_AddNumberToObject(o, "tokens", (double)p->tokens);
    cJSON_AddItemToObject(o, "run", json_col(p, &p->col[0]));
    cJSON_AddItemToObject(o, "full", json_col(p, &p->col[1]));
    char *s = cJSON_PrintUnformatted(o);
    puts(s);
    free(s);
    cJSON_Delete(o);
}

int cmd_plan(int argc, char **argv) {
    plan_opts o;
    int code = parse_plan_opts(&o, &argc, argv);
    if (code) return code - 1;
    const char *config = NULL;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--config")) config = argv[i + 1];
    es_run_config rc;
    int fresh;
    code = es_read_run_args(&rc, &fresh, argc, argv, usage);
    if (code) return code - 1;
    if (o.lengths) {  // the histogram stands in for the training shards
        snprintf(rc.train[0], sizeof rc.train[0], "%s", o.lengths);
        rc.ntrain = 1;
    } else if (rc.ntrain == 0) {
        fprintf(stderr, "essence plan: %s: no length source: the config lists no training shards (data.train); "
                        "give them or a length histogram (--lengths HIST.json)\n", config);
        return 1;
    }
    if (es_run_config_validate(&rc)) {
        fprintf(stderr, "essence plan: %s\n", es_last_error());
        return 1;
    }
    if (!o.device && strcmp(rc.device, "cpu")) {
        fprintf(stderr, "essence plan: run.device is %s: name the device with --device (h100-80g, h200, a100-40g, "
                        "a100-80g or cpu)\n", rc.device);
        return 2;
    }
    es_device dev;
    if (es_device_named(&dev, o.device ? o.device : "cpu")) {
        fprintf(stderr, "essence plan: %s\n", es_last_error());
        return 2;
    }
    es_plan p;
    if (es_plan_make(&p, &rc, &dev, o.gpus, o.mfu, o.lengths)) {
        fprintf(stderr, "essence plan: %s\n", es_last_error());
        return 1;
    }
    if (o.json) print_json(&p);
    else print_text(&p, config);
    return 0;
}
