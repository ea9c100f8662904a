// essence eval: math evaluation of a checkpoint. Text (chat template,
// tokenizer, answer extraction) lives in Python (tools/eval_math.py); this
// command runs it with this very binary doing the generation.
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "common.h"

int cmd_eval(int argc, char **argv) {
    char self[PATH_MAX], tools[PATH_MAX + 64];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        fprintf(stderr, "essence eval: cannot locate this program: %s\n", strerror(errno));
        return 1;
    }
    self[n] = 0;
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", self);
    // the binary sits in <source>/<build dir>/essence
    snprintf(tools, sizeof tools, "%s/../tools/eval_math.py", dirname(dir));
    if (access(tools, R_OK) != 0) {
        fprintf(stderr, "essence eval: %s: missing (run essence from its build directory)\n", tools);
        return 1;
    }
    char **args = es_xcalloc((size_t)argc + 5, sizeof *args);
    int k = 0;
    args[k++] = "python3";
    args[k++] = tools;
    args[k++] = "--essence";
    args[k++] = self;
    for (int i = 1; i < argc; i++) args[k++] = argv[i];
    setenv("ESSENCE_PROG", "essence eval", 1);  // the name eval_math.py gives in its messages
    execvp("python3", args);
    fprintf(stderr, "essence eval: cannot run python3: %s\n", strerror(errno));
    free(args);
    return 1;
}
