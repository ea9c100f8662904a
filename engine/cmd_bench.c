// essence bench: times optimizer steps of a run config (fresh start, no
// checkpoints, no metrics file, no validation) and reports throughput, MFU,
// peak memory by kind and the share of time spent in each backend op.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common.h"
#include "op_timer.h"
#include "peaks.h"
#include "train.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: essence bench --config RUN.json [--set key=value ...] [--steps N] [--warmup W]\n"
            "                     [--op-steps K] [--json]\n\n"
            "Runs W warm-up steps, then N timed steps (default 1 and 5) of the run from a fresh\n"
            "start, then K more steps (default 1, 0 = none) under a per-op timer, which syncs the\n"
            "device around every op and so is kept out of the throughput figures. Writes no\n"
            "checkpoint or metrics and skips validation (activations are sized for training only).\n"
            "Prints ms/step, tokens/s, FLOP/s, MFU, peak memory by kind and per-op time shares;\n"
            "--json prints them as one JSON line instead.\n");
}

typedef struct {
    int steps, warmup, op_steps, json;
} bench_opts;

static int parse_count(int *out, const char *opt, const char *val, int lo) {
    char *end;
    long v = strtol(val, &end, 10);
    if (*end || end == val || v < lo || v > 1000000) {
        fprintf(stderr, "essence bench: %s is '%s', expected an integer >= %d\n", opt, val, lo);
        return ES_ERR;
    }
    *out = (int)v;
    return ES_OK;
}

// Takes the bench options out of argv (the rest is a run's command line).
// Returns 0 to go on, else the exit code + 1.
static int parse_bench_opts(bench_opts *o, int *argc, char **argv) {
    *o = (bench_opts){.steps = 5, .warmup = 1, .op_steps = 1, .json = 0};
    int n = 1;
    for (int i = 1; i < *argc; i++) {
        int *dst = !strcmp(argv[i], "--steps") ? &o->steps : !strcmp(argv[i], "--warmup") ? &o->warmup
                   : !strcmp(argv[i], "--op-steps") ? &o->op_steps : NULL;
        if (dst) {
            if (i + 1 >= *argc) {
                fprintf(stderr, "essence bench: %s needs a value\n", argv[i]);
                return 3;
            }
            if (parse_count(dst, argv[i], argv[i + 1], dst == &o->steps)) return 3;
            i++;
        } else if (!strcmp(argv[i], "--json")) {
            o->json = 1;
        } else {
            argv[n++] = argv[i];
        }
    }
    *argc = n;
    return 0;
}

typedef struct {
    double seconds, tokens, flops, nsup, docs;
    int steps;
} bench_sum;

static int run_steps(bench_sum *s, es_trainer *t, int n) {
    memset(s, 0, sizeof *s);
    for (int i = 0; i < n; i++) {
        es_step_result r;
        if (es_trainer_step(t, &r)) return ES_ERR;
        s->seconds += r.seconds;
        s->tokens += r.tokens;
        s->flops += r.flops;
        s->nsup += r.nsup;
        s->docs += r.docs;
        s->steps++;
    }
    return ES_OK;
}

// FLOP/s with a unit that suits it: "12.3 GFLOP/s" or "412 TFLOP/s".
static void format_rate(char *buf, size_t size, double flops_s) {
    if (flops_s >= 1e12) snprintf(buf, size, "%.1f TFLOP/s", flops_s / 1e12);
    else snprintf(buf, size, "%.1f GFLOP/s", flops_s / 1e9);
}

static void print_text(const es_trainer *t, const bench_sum *s, const es_op_timer *ot, const bench_sum *os,
                       double peak, const char *peak_src, double rss) {
    const es_backend *be = t->be;
    int ranks = t->dist->size;
    double fl_s = s->flops / s->seconds;
    char rate[32], prate[32];
    format_rate(rate, sizeof rate, fl_s);
    format_rate(prate, sizeof prate, peak);
    printf("bench: %s, student %s (%lld parameters)%s, r = %.3g (%s), %d rank(s), capacity %d tokens, %d "
           "micro-batch(es) per step (at most %d per rank)\n",
           be->name, t->student.cfg.model_type, es_config_param_count(&t->student.cfg),
           t->has_teacher ? " + online teacher" : "", t->rc.lsp, t->rc.trunc_mode, ranks, t->capacity, t->step_mbs,
           t->accum);
    printf("%d steps: %.1f ms/step, %.0f tokens/step (%.0f supervised), %.0f tokens/s, %s, MFU %.1f%% of %s "
           "(%s)\n",
           s->steps, 1e3 * s->seconds / s->steps, s->tokens / s->steps, s->nsup / s->steps, s->tokens / s->seconds,
           rate, 100 * fl_s / (peak * ranks), prate, peak_src);
    printf("peak memory (engine):");
    for (int k = 0; k < ES_MEM_KINDS; k++) printf(" %s %.1f MiB,", es_mem_kind_names[k], be->mem_peak[k] / 1048576.0);
    printf(" total %.1f MiB; process RSS %.1f MiB\n", be->mem_peak_total / 1048576.0, rss / 1048576.0);
    if (!os->steps) return;
    double total = os->seconds, ops = es_op_timer_total(ot);
    // The timed step packs its own batch, which may hold fewer tokens than the
    // timed steps' average: its ms are not comparable with ms/step above.
    printf("time per op over %d step(s) of %.0f tokens (%.1f ms/step with the timer):\n", os->steps,
           os->tokens / os->steps, 1e3 * total / os->steps);
    printf("  %-18s %7s %9s %8s %s\n", "op", "share", "ms/step", "calls", "achieved");
    for (int i = 0; i < ES_OP_COUNT; i++) {
        if (!ot->calls[i]) continue;
        char ach[32] = "";
        if (ot->flops[i] > 0 && ot->seconds[i] > 0) format_rate(ach, sizeof ach, ot->flops[i] / ot->seconds[i]);
        printf("  %-18s %6.1f%% %9.2f %8lld %s\n", es_op_names[i], 100 * ot->seconds[i] / total,
               1e3 * ot->seconds[i] / os->steps, ot->calls[i] / os->steps, ach);
    }
    printf("  %-18s %6.1f%% %9.2f %8s (host: packing, staging, bookkeeping)\n", "other",
           100 * (total - ops) / total, 1e3 * (total - ops) / os->steps, "");
}

static void print_json(const es_trainer *t, const bench_sum *s, const es_op_timer *ot, const bench_sum *os,
                       double peak, const char *peak_src, double rss) {
    const es_backend *be = t->be;
    double fl_s = s->flops / s->seconds;
    printf("{\"device\": \"%s\", \"model_type\": \"%s\", \"params\": %lld, \"teacher\": %d, \"lsp\": %g, "
           "\"trunc_mode\": \"%s\", \"ranks\": %d, \"capacity\": %d, \"accum\": %d, \"steps\": %d, "
           "\"ms_per_step\": %.6g, \"tokens_per_step\": %.0f, \"supervised_per_step\": %.0f, "
           "\"tokens_per_s\": %.6g, \"flops_per_step\": %.17g, \"flops_per_s\": %.6g, \"peak_flops\": %.6g, "
           "\"peak_source\": \"%s\", \"mfu\": %.6g, \"attention\": \"%s\", \"chunk_rows\": %d, \"mem_peak\": {",
           be->name, t->student.cfg.model_type, es_config_param_count(&t->student.cfg), t->has_teacher, t->rc.lsp,
           t->rc.trunc_mode, t->dist->size, t->capacity, t->accum, s->steps, 1e3 * s->seconds / s->steps,
           s->tokens / s->steps, s->nsup / s->steps, s->tokens / s->seconds, s->flops / s->steps, fl_s, peak,
           peak_src, fl_s / (peak * t->dist->size), be->attention, t->buf.loss.chunk);
    for (int k = 0; k < ES_MEM_KINDS; k++) printf("%s\"%s\": %zu", k ? ", " : "", es_mem_kind_names[k], be->mem_peak[k]);
    // The op-timer step's own batch, for reading its per-op times against perf/cost_model.py.
    printf("}, \"mem_peak_total\": %zu, \"rss_peak\": %.0f, \"op_steps\": %d, \"op_tokens_per_step\": %.0f, "
           "\"op_supervised_per_step\": %.0f, \"op_docs_per_step\": %.0f, \"ops\": {",
           be->mem_peak_total, rss, os->steps, os->steps ? os->tokens / os->steps : 0.0,
           os->steps ? os->nsup / os->steps : 0.0, os->steps ? os->docs / os->steps : 0.0);
    int first = 1;
    double ops = es_op_timer_total(ot);
    for (int i = 0; i < ES_OP_COUNT && os->steps; i++) {
        if (!ot->calls[i]) continue;
        printf("%s\"%s\": {\"share\": %.6g, \"ms_per_step\": %.6g, \"calls_per_step\": %.6g, "
               "\"flops_per_s\": %.6g}", first ? "" : ", ",
               es_op_names[i], ot->seconds[i] / os->seconds, 1e3 * ot->seconds[i] / os->steps,
               (double)ot->calls[i] / os->steps, ot->seconds[i] > 0 ? ot->flops[i] / ot->seconds[i] : 0.0);
        first = 0;
    }
    if (os->steps)
        printf("%s\"other\": {\"share\": %.6g, \"ms_per_step\": %.6g}", first ? "" : ", ",
               (os->seconds - ops) / os->seconds, 1e3 * (os->seconds - ops) / os->steps);
    printf("}}\n");
}

int cmd_bench(int argc, char **argv) {
    bench_opts o;
    int code = parse_bench_opts(&o, &argc, argv);
    if (code) return code - 1;
    es_run_config rc;
    int fresh;
    code = es_parse_run_args(&rc, &fresh, argc, argv, usage);
    if (code) return code - 1;
    rc.steps = o.warmup + o.steps + o.op_steps;  // the schedule spans exactly the steps run
    rc.nval = 0;

    es_dist dist;
    if (es_dist_init(&dist, &argc, &argv)) {
        fprintf(stderr, "essence: %s\n", es_last_error());
        return 1;
    }
    es_trainer t;
    es_op_timer ot;
    memset(&ot, 0, sizeof ot);
    bench_sum warm, s, os = {0};
    int r = es_trainer_init(&t, &rc, &dist, 1, 0);
    if (r == ES_OK) r = run_steps(&warm, &t, o.warmup);
    if (r == ES_OK) r = run_steps(&s, &t, o.steps);
    if (r == ES_OK && o.op_steps) {
        r = es_op_timer_attach(&ot, t.be);
        if (r == ES_OK) {
            r = run_steps(&os, &t, o.op_steps);
            es_op_timer_detach(&ot);
        }
    }
    if (r == ES_OK && !(s.seconds > 0)) r = es_fail("bench: the timed steps took no measurable time");
    if (r == ES_OK) {
        double rss = es_rss_peak_bytes();
        es_dist_max_f64(&dist, &rss, 1);
        if (dist.rank == 0)
            (o.json ? print_json : print_text)(&t, &s, &ot, &os, t.be->peak_flops, t.be->peak_source, rss);
    }
    if (r != ES_OK && dist.size > 1) fprintf(stderr, "essence: rank %d: %s\n", dist.rank, es_last_error());
    else if (r != ES_OK) fprintf(stderr, "essence: %s\n", es_last_error());
    es_trainer_free(&t);
    es_dist_finalize(&dist);
    return r == ES_OK ? 0 : 1;
}
