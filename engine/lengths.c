#include "lengths.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "json.h"

#define MAX_EXAMPLES ((size_t)1 << 28)  // 268M examples: more than any corpus a plan needs
#define MAX_LEN (1u << 30)              // the packer's limit on one example

// A whole number in [lo, hi] (JSON numbers are doubles).
static int whole(double *out, const cJSON *v, double lo, double hi) {
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(long long)v->valuedouble || v->valuedouble < lo ||
        v->valuedouble > hi)
        return ES_ERR;
    *out = v->valuedouble;
    return ES_OK;
}

// Checks row i: [count, prompt, cot, answer] with count >= 1 and a non-empty example.
static int read_row(double f[4], const cJSON *row, size_t i, const char *path) {
    if (!cJSON_IsArray(row) || cJSON_GetArraySize(row) != 4)
        return es_fail("%s: lengths row %zu is not [count, prompt, cot, answer]", path, i);
    for (int k = 0; k < 4; k++)
        if (whole(&f[k], cJSON_GetArrayItem(row, k), k == 0 ? 1 : 0, MAX_LEN))
            return es_fail("%s: lengths row %zu: %s must be a whole number in [%d, %u]", path, i,
                           (const char *[]){"count", "prompt", "cot", "answer"}[k], k == 0, MAX_LEN);
    if (f[1] + f[2] + f[3] < 1 || f[1] + f[2] + f[3] > MAX_LEN)
        return es_fail("%s: lengths row %zu: an example of %.0f tokens (1 to %u)", path, i, f[1] + f[2] + f[3],
                       MAX_LEN);
    return ES_OK;
}

static int load_rows(es_lengths *l, const cJSON *root, const char *path) {
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(root, "source");
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(root, "lengths");
    for (const cJSON *it = root->child; it; it = it->next)
        if (strcmp(it->string, "source") && strcmp(it->string, "lengths"))
            return es_fail("%s: unknown key '%s' (a length histogram has 'source' and 'lengths')", path, it->string);
    if (!cJSON_IsString(src) || !src->valuestring[0])
        return es_fail("%s: 'source' must say where the lengths come from", path);
    if (!cJSON_IsArray(rows) || cJSON_GetArraySize(rows) == 0)
        return es_fail("%s: 'lengths' must be a non-empty list of [count, prompt, cot, answer]", path);
    snprintf(l->source, sizeof l->source, "%s", src->valuestring);
    size_t n = 0, i = 0;
    double f[4];
    for (const cJSON *row = rows->child; row; row = row->next, i++) {
        if (read_row(f, row, i, path)) return ES_ERR;
        n += (size_t)f[0];
        if (n > MAX_EXAMPLES) return es_fail("%s: more than %zu examples", path, MAX_EXAMPLES);
    }
    l->docs = es_xmalloc(n * sizeof *l->docs);
    for (const cJSON *row = rows->child; row; row = row->next) {
        read_row(f, row, 0, path);  // checked above
        es_doc_info d = {.cot_begin = (uint32_t)f[1], .cot_end = (uint32_t)(f[1] + f[2]),
                         .len = (uint32_t)(f[1] + f[2] + f[3])};
        for (size_t c = 0; c < (size_t)f[0]; c++) l->docs[l->ndocs++] = d;
        l->ntokens += (size_t)f[0] * d.len;
        if (d.len > l->longest) l->longest = d.len;
    }
    return ES_OK;
}

int es_lengths_load(es_lengths *l, const char *path) {
    memset(l, 0, sizeof *l);
    char *txt;
    size_t len;
    if (es_read_file(&txt, &len, path)) return ES_ERR;
    cJSON *root = es_json_parse(txt, len);
    free(txt);
    int r = root && cJSON_IsObject(root) ? load_rows(l, root, path)
                                         : es_fail("%s: not a JSON object (a length histogram)", path);
    cJSON_Delete(root);
    if (r) es_lengths_free(l);
    return r;
}

void es_lengths_free(es_lengths *l) {
    free(l->docs);
    memset(l, 0, sizeof *l);
}
