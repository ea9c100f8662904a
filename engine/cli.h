// Subcommands of the essence program. Each returns the process exit code.
#pragma once

typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);  // argv[0] is the subcommand name
} es_command;

// `essence data <verb>`: validate and describe data shards (engine/cmd_data.c).
int cmd_data(int argc, char **argv);
