// `essence teacher`: precompute an offline teacher's top-k next-token
// log-probabilities for a set of shards (engine/teacher.c does the work).
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common.h"
#include "teacher.h"

#define DEFAULT_BATCH_TOKENS 4096

static void usage(FILE *f) {
    fprintf(f,
            "usage: essence teacher --model TEACHER_DIR --k K --out OUT.bin [options] SHARD...\n\n"
            "Runs the teacher forward over every example at full length and writes OUT.bin:\n"
            "the same examples plus, per token, the teacher's K most likely next tokens and\n"
            "their log-probabilities (docs/shards.md), for distillation without the teacher.\n"
            "  --model DIR         Hugging Face directory of the teacher (config.json, *.safetensors)\n"
            "  --k K               entries per token, 1..1024\n"
            "  --out PATH          shard to write (atomically)\n"
            "  --device D          cpu | cuda | auto (default auto)\n"
            "  --batch-tokens T    tokens per forward pass (default %d; raised to the longest example)\n"
            "  --quiet             no progress lines\n",
            DEFAULT_BATCH_TOKENS);
}

static int parse_int(int *out, const char *opt, const char *s) {
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < 1 || v > INT_MAX) {
        fprintf(stderr, "essence teacher: %s expects a whole number >= 1, got '%s'\n", opt, s);
        return ES_ERR;
    }
    *out = (int)v;
    return ES_OK;
}

int cmd_teacher(int argc, char **argv) {
    es_teacher_opts o = {.batch_tokens = DEFAULT_BATCH_TOKENS, .progress = 1};
    const char *device = "auto";
    const char **shards = es_xcalloc((size_t)argc, sizeof *shards);
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            rc = 0;
            goto done;
        } else if (!strcmp(a, "--quiet")) {
            o.progress = 0;
        } else if (a[0] != '-') {
            shards[o.nshards++] = a;
        } else if (!val) {
            fprintf(stderr, "essence teacher: unknown or incomplete option '%s'\n", a);
            goto done;
        } else if (!strcmp(a, "--model")) {
            o.model_dir = argv[++i];
        } else if (!strcmp(a, "--out")) {
            o.out = argv[++i];
        } else if (!strcmp(a, "--device")) {
            device = argv[++i];
        } else if (!strcmp(a, "--k")) {
            if (parse_int(&o.k, a, argv[++i])) goto done;
        } else if (!strcmp(a, "--batch-tokens")) {
            if (parse_int(&o.batch_tokens, a, argv[++i])) goto done;
        } else {
            fprintf(stderr, "essence teacher: unknown option '%s'\n", a);
            goto done;
        }
    }
    if (!o.model_dir || !o.out || !o.k || !o.nshards) {
        fprintf(stderr, "essence teacher: --model, --k, --out and at least one shard are required (see --help)\n");
        goto done;
    }
    o.shards = shards;
    es_backend *be = es_backend_create(device);
    if (!be) {
        fprintf(stderr, "essence: %s\n", es_last_error());
        rc = 1;
        goto done;
    }
    double t0 = es_now();
    rc = es_teacher_run(be, &o) == ES_OK ? 0 : 1;
    if (rc) fprintf(stderr, "essence: %s\n", es_last_error());
    else  // not onto a shard written to stdout
        fprintf(strcmp(o.out, "-") ? stdout : stderr, "%s: teacher top-%d written (%s backend, %.1f s)\n", o.out,
                o.k, be->name, es_now() - t0);
    be->destroy(be);
done:
    free(shards);
    return rc;
}
