// `essence data <verb>`: work on data shards. Verbs live in the table below.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common.h"
#include "shard.h"
#include "tokenizer_id.h"

static int data_check(int argc, char **argv);
int data_stats(int argc, char **argv);  // cmd_data_stats.c

static const es_command verbs[] = {
    {"check", "validate shards and print their statistics", data_check},
    {"stats", "pack one epoch under a truncation setting and report kept tokens", data_stats},
};
static const int nverbs = (int)(sizeof verbs / sizeof verbs[0]);

static void data_usage(FILE *f) {
    fprintf(f, "usage: essence data <verb> [options]\n\nverbs:\n");
    for (int i = 0; i < nverbs; i++) fprintf(f, "  %-10s %s\n", verbs[i].name, verbs[i].summary);
}

int cmd_data(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        data_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (int i = 0; i < nverbs; i++)
        if (!strcmp(argv[1], verbs[i].name)) return verbs[i].run(argc - 1, argv + 1);
    fprintf(stderr, "essence: unknown data verb '%s' (see essence data --help)\n", argv[1]);
    return 2;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

// Nearest-rank percentile q (0..100) of a sorted list.
static uint32_t percentile(const uint32_t *sorted, size_t n, double q) {
    size_t r = (size_t)(q / 100.0 * (double)n + 0.999999);
    return sorted[r ? r - 1 : 0];
}

static void print_section(const char *name, uint32_t *len, size_t n, size_t total) {
    size_t sum = 0;
    for (size_t i = 0; i < n; i++) sum += len[i];
    qsort(len, n, sizeof *len, cmp_u32);
    printf("  %-8s %12zu %6.1f%% %7u %7u %7u %7u %7u %7u\n", name, sum, total ? 100.0 * (double)sum / (double)total : 0.0,
           len[0], percentile(len, n, 10), percentile(len, n, 50), percentile(len, n, 90), percentile(len, n, 99),
           len[n - 1]);
}

static void print_stats(const es_dataset *ds) {
    size_t n = ds->ndocs;
    uint32_t *sec[4];
    for (int s = 0; s < 4; s++) sec[s] = es_xmalloc(n * sizeof(uint32_t));
    for (size_t i = 0; i < n; i++) {
        es_doc_info d;
        es_dataset_doc(ds, i, &d);
        sec[0][i] = d.cot_begin;
        sec[1][i] = d.cot_end - d.cot_begin;
        sec[2][i] = d.len - d.cot_end;
        sec[3][i] = d.len;
    }
    printf("%d shard(s): %zu examples, %zu tokens, vocabulary %u, tokenizer fingerprint %016llx, teacher top-k ",
           ds->nshards, ds->ndocs, ds->ntokens, ds->vocab, (unsigned long long)ds->fingerprint);
    if (ds->topk) printf("%d per token\n", ds->topk);
    else printf("absent\n");
    printf("  %-8s %12s %7s %7s %7s %7s %7s %7s %7s\n", "section", "tokens", "share", "min", "p10", "p50", "p90",
           "p99", "max");
    static const char *names[4] = {"prompt", "cot", "answer", "example"};
    for (int s = 0; s < 4; s++) print_section(names[s], sec[s], n, ds->ntokens);
    for (int s = 0; s < 4; s++) free(sec[s]);
}

static int data_check(int argc, char **argv) {
    const char *model = NULL;
    int first = 1;
    for (; first < argc && argv[first][0] == '-'; first++) {
        if (!strcmp(argv[first], "--model") && first + 1 < argc) {
            model = argv[++first];
        } else if (!strcmp(argv[first], "--help") || !strcmp(argv[first], "-h")) {
            printf("usage: essence data check [--model DIR] SHARD...\n"
                   "Validates every shard (docs/shards.md) and prints example and section length statistics.\n"
                   "--model DIR  also require the tokenizer of DIR/tokenizer.json\n");
            return 0;
        } else {
            fprintf(stderr, "essence: data check: unknown or incomplete option '%s'\n", argv[first]);
            return 2;
        }
    }
    if (first >= argc) {
        fprintf(stderr, "essence: data check: no SHARD given (see essence data check --help)\n");
        return 2;
    }
    uint64_t fp = 0;
    uint32_t vocab = 0;
    if (model && es_tokenizer_fingerprint(&fp, &vocab, model) != ES_OK) {
        fprintf(stderr, "essence: %s\n", es_last_error());
        return 1;
    }
    // Each file alone first, so that every bad one is named, then all together.
    int bad = 0;
    for (int i = first; i < argc; i++) {
        es_dataset one;
        const char *p = argv[i];
        if (es_dataset_open(&one, &p, 1, vocab, fp) != ES_OK) {
            fprintf(stderr, "essence: %s\n", es_last_error());
            bad++;
            continue;
        }
        printf("%s: ok, %zu examples, %zu tokens\n", p, one.ndocs, one.ntokens);
        es_dataset_close(&one);
    }
    if (bad > 1) fprintf(stderr, "essence: %d of %d shard(s) failed validation\n", bad, argc - first);
    if (bad) return 1;
    es_dataset ds;
    if (es_dataset_open(&ds, (const char *const *)argv + first, argc - first, vocab, fp) != ES_OK) {
        fprintf(stderr, "essence: %s\n", es_last_error());
        return 1;
    }
    print_stats(&ds);
    es_dataset_close(&ds);
    return 0;
}
