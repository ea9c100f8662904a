// The essence program: one binary, subcommands.
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "es_build.h"

static int cmd_version(int argc, char **argv);

static const es_command commands[] = {
    {"version", "print the version and the backends built in", cmd_version},
    {"train", "train or distil a student from a run config", cmd_train},
    {"bench", "time training steps: throughput, MFU, memory, time per op", cmd_bench},
    {"plan", "memory per GPU, FLOPs and time of a run on a device, without running it", cmd_plan},
    {"eval", "generate answers to math problems and score them (pass@1, majority)", cmd_eval},
    {"data", "validate data shards and print their statistics", cmd_data},
    {"teacher", "precompute an offline teacher's top-k log-probabilities for shards", cmd_teacher},
    {"generate", "continue token-id prompts (greedy or sampled) with a KV cache", cmd_generate},
};
static const int ncommands = (int)(sizeof commands / sizeof commands[0]);

static void usage(FILE *f) {
    fprintf(f, "usage: essence <command> [options]\n\ncommands:\n");
    for (int i = 0; i < ncommands; i++) fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n'essence <command> --help' describes a command.\n");
}

static int cmd_version(int argc, char **argv) {
    if (argc > 1) {
        fprintf(stderr, "essence version: unexpected argument '%s'\n", argv[1]);
        return 2;
    }
    printf("essence 0.1.0 (blas %s, mpi %s, cuda %s, nccl %s)\n", ES_HAVE_BLAS ? "yes" : "no",
           ES_HAVE_MPI ? "yes" : "no", ES_HAVE_CUDA ? "yes" : "no", ES_HAVE_NCCL ? "yes" : "no");
    if (ES_HAVE_CUDA) printf("cuda attention paths: %s (ESSENCE_ATTN selects; the first is the default)\n",
                             ES_ATTENTION_PATHS);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (int i = 0; i < ncommands; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "essence: unknown command '%s' (see essence --help)\n", argv[1]);
    return 2;
}
