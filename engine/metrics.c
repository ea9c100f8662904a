#include "metrics.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "json.h"

// Keeps the records of steps <= through; a torn or unreadable line (a kill
// mid-write) goes too. Rewritten atomically: a kill here loses nothing.
static int cut(const char *path, int through) {
    struct stat st;
    if (stat(path, &st) != 0) return ES_OK;  // no record yet
    char *txt;
    size_t len, n = 0;
    if (es_read_file(&txt, &len, path)) return ES_ERR;
    char *kept = es_xmalloc(len + 1);
    for (char *line = txt, *nl; (nl = memchr(line, '\n', (size_t)(txt + len - line))); line = nl + 1) {
        cJSON *o = es_json_parse(line, (size_t)(nl - line));
        const cJSON *step = cJSON_GetObjectItemCaseSensitive(o, "step");
        if (cJSON_IsNumber(step) && step->valuedouble <= through) {
            memcpy(kept + n, line, (size_t)(nl + 1 - line));
            n += (size_t)(nl + 1 - line);
        }
        cJSON_Delete(o);
    }
    free(txt);
    int r = es_write_atomic(path, kept, n);
    free(kept);
    return r;
}

int es_metrics_open(es_metrics *mx, const char *path, int through) {
    if (cut(path, through)) return ES_ERR;
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

void es_metrics_note(es_metrics *mx, const char *kind, int step, const char *key, const char *text) {
    if (!mx->f) return;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "kind", kind);
    cJSON_AddNumberToObject(o, "step", step);
    cJSON_AddStringToObject(o, key, text);
    char *line = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (line) fprintf(mx->f, "%s\n", line);
    cJSON_free(line);
    fflush(mx->f);
}

void es_format_duration(char *buf, size_t size, double s) {
    if (!isfinite(s) || s < 0) snprintf(buf, size, "?");
    else if (s >= 3600) snprintf(buf, size, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else if (s >= 60) snprintf(buf, size, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(buf, size, "%.0fs", s);
}
