// Output files: replaced atomically when they are regular files, written
// straight through when they are not.
#pragma once
#include <stdio.h>

// A regular file (or a new one) is written into a temporary file beside it,
// then fsynced and renamed over it: readers see the old file or the new one,
// and a failure leaves the old one. '-' (stdout), a character device or a
// FIFO is written straight through: renaming over /dev/null would replace
// the device node with a file.
typedef struct {
    FILE *f;
    int direct;  // written straight through: no temporary file, no rename
    char tmp[4200];
    const char *path;
} es_out;

int es_out_open(es_out *o, const char *path);
// Flushes; for a regular file also fsyncs and renames into place.
int es_out_commit(es_out *o);
// Closes and removes the temporary file; the target is left as it was.
void es_out_abort(es_out *o);
