// Subcommands of the essence program. Each returns the process exit code.
#pragma once

typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);  // argv[0] is the subcommand name
} es_command;

// `essence data <verb>`: validate and describe data shards (engine/cmd_data.c).
int cmd_data(int argc, char **argv);

// `essence train`: train or distil a student from a run config (engine/cmd_train.c).
// Exits 0 when finished, ES_EXIT_RESUMABLE when a signal stopped it after a
// checkpoint (run the same command again to resume), 1 on an error.
int cmd_train(int argc, char **argv);
#define ES_EXIT_RESUMABLE 75  // EX_TEMPFAIL: checkpointed, resumable; requeue it

// `essence bench`: time steps of a run config (engine/cmd_bench.c).
int cmd_bench(int argc, char **argv);

// `essence teacher`: precompute an offline teacher's top-k for shards (engine/cmd_teacher.c).
int cmd_teacher(int argc, char **argv);

// `essence generate`: continue token-id prompts with a KV cache (engine/cmd_generate.c).
int cmd_generate(int argc, char **argv);

// `essence eval`: generate on math problems and score the answers (runs tools/eval_math.py).
int cmd_eval(int argc, char **argv);

// `essence plan`: memory, FLOPs and time of a run on a device, without running it (engine/cmd_plan.c).
int cmd_plan(int argc, char **argv);

#include <stdio.h>

#include "run_config.h"

// Parses `--config RUN.json [--set key=value ...] [--fresh]` (and --help,
// --help-config) into rc and validates it. Returns 0 to go on, else the exit
// code + 1.
int es_parse_run_args(es_run_config *rc, int *fresh, int argc, char **argv, void (*help)(FILE *));
// The same without the validation, for a caller that completes rc first.
int es_read_run_args(es_run_config *rc, int *fresh, int argc, char **argv, void (*help)(FILE *));
