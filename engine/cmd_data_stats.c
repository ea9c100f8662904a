// `essence data stats`: what the packer makes of a set of shards under a
// truncation and supervision setting: kept and supervised tokens, and how
// full the micro-batches are, without loading a model.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common.h"
#include "packer.h"
#include "shard.h"
#include "train.h"

static const char *usage_text =
    "usage: essence data stats [options] SHARD...\n"
    "       essence data stats --config RUN.json [--set key=value ...]\n"
    "Packs one epoch as training would and prints kept tokens, supervised labels and fill,\n"
    "next to the same at r = 1 (no truncation).\n"
    "  --lsp R           lead-span proportion in (0, 1] (default 1)\n"
    "  --mode M          seq | cot (default seq)\n"
    "  --window W        lead | middle | tail (default lead)\n"
    "  --drop-answer     keep up to and including </think>\n"
    "  --label-mask F    mask this fraction of labels instead of truncating\n"
    "  --supervise S     preset (ans, promptAns, cot, cotAns, promptCot, promptcotAns) or p,c,a\n"
    "  --capacity N      tokens per micro-batch (default: longest kept example, rounded to 64)\n"
    "  --seed S          shuffle seed (default 0)\n"
    "With --config, the settings and the training shards are the run config's.\n";

static void usage(FILE *f) { fputs(usage_text, f); }

static int parse_num(double *out, const char *opt, const char *s) {
    char *end;
    *out = strtod(s, &end);
    if (end == s || *end) {
        fprintf(stderr, "essence: data stats: %s expects a number, got '%s'\n", opt, s);
        return ES_ERR;
    }
    return ES_OK;
}

static const char *const window_names[3] = {"lead", "middle", "tail"};

// The baseline column: the same shards and supervision at r = 1.
static void full_config(es_pack_config *fc, const es_pack_config *pc, const es_dataset *ds) {
    uint32_t longest = 0;
    for (size_t i = 0; i < ds->ndocs; i++) {
        es_doc_info d;
        es_dataset_doc(ds, i, &d);
        if (d.len > longest) longest = d.len;
    }
    es_pack_config_untruncated(fc, pc, longest);
}

static int print_stats(const es_pack_config *pc, const char *const *paths, int npaths);

// The run config's packer settings and training shards.
static int stats_of_run(int argc, char **argv) {
    es_run_config rc;
    int fresh;
    int code = es_parse_run_args(&rc, &fresh, argc, argv, usage);
    if (code) return code - 1;
    es_pack_config pc;
    if (es_run_pack_config(&pc, &rc, 0, 1, 0)) {
        fprintf(stderr, "essence: %s\n", es_last_error());
        return 2;
    }
    const char *paths[ES_MAX_SHARDS];
    for (int i = 0; i < rc.ntrain; i++) paths[i] = rc.train[i];
    return print_stats(&pc, paths, rc.ntrain);
}

int data_stats(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--config")) return stats_of_run(argc, argv);
    es_pack_config pc;
    es_pack_config_defaults(&pc);
    int first = 1;
    for (; first < argc && argv[first][0] == '-'; first++) {
        const char *o = argv[first], *val = first + 1 < argc ? argv[first + 1] : NULL;
        double x = 0;
        int rc = ES_OK;
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(o, "--drop-answer")) {
            pc.drop_answer = 1;
            continue;
        } else if (!val) {
            fprintf(stderr, "essence: data stats: unknown or incomplete option '%s'\n", o);
            return 2;
        } else if (!strcmp(o, "--lsp")) {
            rc = parse_num(&pc.ratio, o, val);
        } else if (!strcmp(o, "--label-mask")) {
            rc = parse_num(&pc.label_mask, o, val);
        } else if (!strcmp(o, "--capacity") || !strcmp(o, "--seed")) {
            rc = parse_num(&x, o, val);
            if (rc == ES_OK && (x < 0 || x > 1e9 || x != (double)(long long)x)) {
                fprintf(stderr, "essence: data stats: %s expects a whole number >= 0\n", o);
                return 2;
            }
            if (!strcmp(o, "--capacity")) pc.capacity = (int)x;
            else pc.seed = (uint64_t)x;
        } else if (!strcmp(o, "--mode") || !strcmp(o, "--window") || !strcmp(o, "--supervise")) {
            int bad = !strcmp(o, "--mode")     ? es_trunc_mode_parse(&pc.mode, val)
                      : !strcmp(o, "--window") ? es_trunc_window_parse(&pc.window, val)
                                               : es_supervision_parse(pc.weights, val);
            if (bad) {
                fprintf(stderr, "essence: data stats: %s\n", es_last_error());
                return 2;
            }
        } else {
            fprintf(stderr, "essence: data stats: unknown option '%s'\n", o);
            return 2;
        }
        if (rc != ES_OK) return 2;
        first++;
    }
    if (first >= argc) {
        fprintf(stderr, "essence: data stats: no SHARD given (see essence data stats --help)\n");
        return 2;
    }
    return print_stats(&pc, (const char *const *)argv + first, argc - first);
}

static int print_stats(const es_pack_config *pcp, const char *const *paths, int npaths) {
    es_pack_config pc = *pcp;
    es_dataset ds;
    if (es_dataset_open(&ds, paths, npaths, 0, 0) != ES_OK) {
        fprintf(stderr, "essence: %s\n", es_last_error());
        return 1;
    }
    es_packer *p = NULL, *full = NULL;
    es_pack_config fc;
    full_config(&fc, &pc, &ds);
    if (es_packer_from_dataset(&p, &ds, &pc) != ES_OK || es_packer_from_dataset(&full, &ds, &fc) != ES_OK) {
        fprintf(stderr, "essence: %s\n", es_last_error());
        es_packer_free(p);
        es_dataset_close(&ds);
        return 1;
    }
    printf("setting              lsp %g, mode %s, window %s%s, supervise %g,%g,%g", pc.ratio,
           pc.mode == ES_TRUNC_COT ? "cot" : "seq", window_names[pc.window], pc.drop_answer ? ", drop-answer" : "",
           pc.weights[0], pc.weights[1], pc.weights[2]);
    if (pc.label_mask > 0) printf(", label-mask %g", pc.label_mask);
    printf("\nexamples             %zu\n", ds.ndocs);
    printf("tokens               %zu\n", ds.ntokens);
    printf("%-20s %-24s %s\n", "", "this setting", "r = 1");
    const es_packer *col[2] = {p, full};
    double tot = (double)ds.ntokens;
    char cell[2][4][64];
    for (int c = 0; c < 2; c++) {
        size_t steps = es_packer_steps_per_epoch(col[c]), kept = es_packer_kept_tokens(col[c]);
        size_t sup = es_packer_supervised_tokens(col[c]), cap = (size_t)es_packer_capacity(col[c]);
        snprintf(cell[c][0], 64, "%zu (%.1f%%)", kept, 100.0 * (double)kept / tot);
        snprintf(cell[c][1], 64, "%zu (%.1f%%)", sup, 100.0 * (double)sup / tot);
        snprintf(cell[c][2], 64, "%zu tokens", cap);
        snprintf(cell[c][3], 64, "%zu (fill %.1f%%)", steps, 100.0 * (double)kept / ((double)steps * (double)cap));
    }
    static const char *rows[4] = {"kept tokens", "supervised labels", "capacity", "micro-batches/epoch"};
    for (int r = 0; r < 4; r++) printf("%-20s %-24s %s\n", rows[r], cell[0][r], cell[1][r]);
    es_packer_free(p);
    es_packer_free(full);
    es_dataset_close(&ds);
    return 0;
}
