// Run metrics: one JSON object per line in <run>/metrics.jsonl, and the live
// progress line on the terminal.
#pragma once
#include <stdio.h>

typedef struct {
    FILE *f;
    int tty;  // stderr is a terminal: redraw one line instead of scrolling
} es_metrics;

// Opens for appending, first cutting the file back to the records of steps
// <= through (a resumed run's checkpoint step, so that the steps it runs again
// after a kill are not recorded twice; -1: a run from the start keeps none).
int es_metrics_open(es_metrics *mx, const char *path, int through);
void es_metrics_close(es_metrics *mx);
// Appends {"kind": kind, k1: v1, ...} with nkv numeric fields and flushes.
void es_metrics_write(es_metrics *mx, const char *kind, int nkv, const char *const *keys,
                      const double *vals);
// Appends {"kind": kind, "step": step, key: text} and flushes.
void es_metrics_note(es_metrics *mx, const char *kind, int step, const char *key, const char *text);
// Formats seconds as "1h02m", "3m05s" or "12s".
void es_format_duration(char *buf, size_t size, double seconds);
