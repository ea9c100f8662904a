// `essence data stats`: what the packer makes of a set of shards under a
// truncation and supervision setting: kept and supervised tokens, and how
// full the micro-batches are, without loading a model.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "packer.h"
#include "shard.h"

static const char *usage_text =
    "usage: essence data stats [options] SHARD...\n"
    "Packs one epoch as training would and prints kept tokens, supervised labels and fill.\n"
    "  --lsp R           lead-span proportion in (0, 1] (default 1)\n"
    "  --mode M          seq | cot (default seq)\n"
    "  --window W        lead | middle | tail (default lead)\n"
    "  --drop-answer     keep up to and including </think>\n"
    "  --label-mask F    mask this fraction of labels instead of truncating\n"
    "  --supervise S     preset (ans, promptAns, cot, cotAns, promptCot, promptcotAns) or p,c,a\n"
    "  --capacity N      tokens per micro-batch (default: longest kept example, rounded to 64)\n"
    "  --seed S          shuffle seed (default 0)\n";

static int parse_num(double *out, const char *opt, const char *s) {
    char *end;
    *out = strtod(s, &end);
    if (end == s || *end) {
        fprintf(stderr, "essence: data stats: %s expects a number, got '%s'\n", opt, s);
        return ES_ERR;
    }
    return ES_OK;
}

int data_stats(int argc, char **argv) {
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
        fputs(usage_text, stderr);
        return 2;
    }
    es_dataset ds;
    if (es_dataset_open(&ds, (const char *const *)argv + first, argc - first, 0, 0) != ES_OK) {
        fprintf(stderr, "essence: %s\n", es_last_error());
        return 1;
    }
    es_packer *p = NULL;
    if (es_packer_from_dataset(&p, &ds, &pc) != ES_OK) {
        fprintf(stderr, "essence: %s\n", es_last_error());
        es_dataset_close(&ds);
        return 1;
    }
    size_t steps = es_packer_steps_per_epoch(p), kept = es_packer_kept_tokens(p);
    size_t sup = es_packer_supervised_tokens(p), cap = (size_t)es_packer_capacity(p);
    double tot = (double)ds.ntokens;
    printf("examples             %zu\n", ds.ndocs);
    printf("tokens               %zu\n", ds.ntokens);
    printf("kept tokens          %zu (%.1f%%)\n", kept, 100.0 * (double)kept / tot);
    printf("supervised labels    %zu (%.1f%% of tokens)\n", sup, 100.0 * (double)sup / tot);
    printf("capacity             %zu tokens\n", cap);
    printf("micro-batches/epoch  %zu (fill %.1f%%)\n", steps,
           100.0 * (double)kept / ((double)steps * (double)cap));
    es_packer_free(p);
    es_dataset_close(&ds);
    return 0;
}
