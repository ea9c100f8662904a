#include "ckpt_files.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checksum.h"
#include "common.h"

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

// Sorted names of the regular files of dir but trainer_state.json.
static int list_files(char ***names, int *n, const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return es_fail("%s: cannot open: %s", dir, strerror(errno));
    int cap = 8;
    *n = 0;
    *names = es_xmalloc(sizeof(char *) * (size_t)cap);
    for (struct dirent *e; (e = readdir(d));) {
        char path[PATH_MAX];
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode) || !strcmp(e->d_name, "trainer_state.json")) continue;
        if (*n == cap) *names = realloc(*names, sizeof(char *) * (size_t)(cap *= 2));
        if (!*names) es_die("out of memory");
        (*names)[(*n)++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(*names, (size_t)*n, sizeof(char *), by_name);
    return ES_OK;
}

int es_ckpt_files_record(cJSON **files, const char *dir) {
    char **names = NULL;
    int n = 0;
    if (list_files(&names, &n, dir)) return ES_ERR;
    *files = cJSON_CreateObject();
    int r = ES_OK;
    for (int i = 0; i < n; i++) {
        char path[PATH_MAX], hex[16];
        uint32_t crc;
        uint64_t bytes;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (!r && !(r = es_crc32c_file(&crc, &bytes, path))) {
            cJSON *f = cJSON_AddObjectToObject(*files, names[i]);
            cJSON_AddNumberToObject(f, "bytes", (double)bytes);  // exact below 2^53
            snprintf(hex, sizeof hex, "%08" PRIx32, crc);
            cJSON_AddStringToObject(f, "crc32c", hex);
        }
        free(names[i]);
    }
    free(names);
    if (r) {
        cJSON_Delete(*files);
        *files = NULL;
    }
    return r;
}

static int verify_one(const cJSON *f, const char *dir) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, f->string);
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(f, "bytes");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(f, "crc32c");
    char *end;
    unsigned long want = cJSON_IsString(c) ? strtoul(c->valuestring, &end, 16) : 0;
    if (strchr(f->string, '/') || !cJSON_IsNumber(b) || b->valuedouble < 0 || !cJSON_IsString(c) || *end ||
        strlen(c->valuestring) != 8)
        return es_fail("%s/trainer_state.json: bad entry for '%s' in 'files' (corrupt checkpoint)", dir, f->string);
    uint64_t expect = (uint64_t)b->valuedouble;
    struct stat sb;
    if (stat(path, &sb) != 0) return es_fail("%s: missing (listed in trainer_state.json)", path);
    if ((uint64_t)sb.st_size < expect)
        return es_fail("%s: truncated: %lld bytes, %" PRIu64 " recorded in trainer_state.json", path,
                       (long long)sb.st_size, expect);
    if ((uint64_t)sb.st_size != expect)
        return es_fail("%s: %lld bytes, %" PRIu64 " recorded in trainer_state.json (damaged)", path,
                       (long long)sb.st_size, expect);
    uint32_t crc;
    uint64_t bytes;
    if (es_crc32c_file(&crc, &bytes, path)) return ES_ERR;
    if (bytes != expect || crc != (uint32_t)want)
        return es_fail("%s: checksum mismatch: CRC-32C %08" PRIx32 ", %s recorded in trainer_state.json (damaged)",
                       path, crc, c->valuestring);
    return ES_OK;
}

int es_ckpt_files_verify(const cJSON *files, const char *dir) {
    if (!cJSON_IsObject(files)) return es_fail("%s/trainer_state.json: 'files' is not an object (corrupt checkpoint)", dir);
    const cJSON *f;
    cJSON_ArrayForEach(f, files) if (verify_one(f, dir)) return ES_ERR;
    return ES_OK;
}
