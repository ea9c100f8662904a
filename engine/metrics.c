#include "metrics.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

int es_metrics_open(es_metrics *mx, const char *path) {
    mx->f = fopen(path, "a");
    if (!mx->f) return es_fail("%s: cannot open for writing: %s", path, strerror(errno));
    mx->tty = isatty(fileno(stderr));
    return ES_OK;
}

void es_metrics_close(es_metrics *mx) {
    if (mx->f) fclose(mx->f);
    mx->f = NULL;
}

void es_metrics_write(es_metrics *mx, const char *kind, int nkv, const char *const *keys,
                      const double *vals) {
    if (!mx->f) return;
    fprintf(mx->f, "{\"kind\": \"%s\"", kind);
    for (int i = 0; i < nkv; i++) {
        if (isfinite(vals[i])) fprintf(mx->f, ", \"%s\": %.9g", keys[i], vals[i]);
        else fprintf(mx->f, ", \"%s\": null", keys[i]);  // JSON has no NaN
    }
    fputs("}\n", mx->f);
    fflush(mx->f);
}

void es_format_duration(char *buf, size_t size, double s) {
    if (!isfinite(s) || s < 0) snprintf(buf, size, "?");
    else if (s >= 3600) snprintf(buf, size, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else if (s >= 60) snprintf(buf, size, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(buf, size, "%.0fs", s);
}
