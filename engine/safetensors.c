// safetensors reading (mmap, every field validated before use) and writing
// (streamed through engine/out_file.h: a temporary file renamed into place).
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "json.h"
#include "out_file.h"

static const char *const dtype_names[] = {"F32", "BF16", "F16", "I32", "I64"};
static const size_t dtype_sizes[] = {4, 2, 2, 4, 8};
#define NDTYPES 5
// Larger numbers lose integer precision in cJSON's doubles.
#define MAX_JSON_INT 9007199254740992.0

size_t es_st_numel(const es_st_tensor *t) {
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= (size_t)t->shape[d];
    return n;
}

static int json_size(size_t *out, const cJSON *v) {
    if (!cJSON_IsNumber(v)) return ES_ERR;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= MAX_JSON_INT) || d != (double)(size_t)d) return ES_ERR;
    *out = (size_t)d;
    return ES_OK;
}

// Fills t from one header entry; the caller has checked the name's length.
static int parse_entry(es_st_tensor *t, const es_st_file *f, const cJSON *e, size_t data_len) {
    const char *p = f->path, *n = e->string;
    if (!cJSON_IsObject(e)) return es_fail("%s: tensor '%s': header entry is not an object", p, n);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt)) return es_fail("%s: tensor '%s': dtype missing", p, n);
    int k = 0;
    while (k < NDTYPES && strcmp(dt->valuestring, dtype_names[k])) k++;
    if (k == NDTYPES)
        return es_fail("%s: tensor '%s': unsupported dtype '%s' (expected F32, BF16, F16, I32 or I64)",
                       p, n, dt->valuestring);
    t->dtype = (es_st_dtype)k;
    if (!cJSON_IsArray(sh)) return es_fail("%s: tensor '%s': shape missing", p, n);
    t->ndim = cJSON_GetArraySize(sh);
    if (t->ndim > 4) return es_fail("%s: tensor '%s': %d dimensions (at most 4)", p, n, t->ndim);
    size_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        size_t s;
        if (json_size(&s, cJSON_GetArrayItem(sh, d)))
            return es_fail("%s: tensor '%s': shape entry %d is not a non-negative integer", p, n, d);
        if (__builtin_mul_overflow(numel, s, &numel))
            return es_fail("%s: tensor '%s': shape overflows", p, n);
        t->shape[d] = (int64_t)s;
    }
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 ||
        json_size(&t->begin, cJSON_GetArrayItem(off, 0)) ||
        json_size(&t->end, cJSON_GetArrayItem(off, 1)))
        return es_fail("%s: tensor '%s': data_offsets is not a pair of non-negative integers", p, n);
    if (t->begin > t->end || t->end > data_len)
        return es_fail("%s: tensor '%s': data_offsets [%zu, %zu] outside the data section (%zu bytes)",
                       p, n, t->begin, t->end, data_len);
    size_t bytes;
    if (__builtin_mul_overflow(numel, dtype_sizes[k], &bytes) || bytes != t->end - t->begin)
        return es_fail("%s: tensor '%s': %zu bytes of data, but its shape and dtype need %zu", p, n,
                       t->end - t->begin, numel * dtype_sizes[k]);
    return ES_OK;
}

static int cmp_begin(const void *a, const void *b) {
    const es_st_tensor *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const es_st_tensor *)a)->name, ((const es_st_tensor *)b)->name);
}

// Rejects overlapping byte ranges, a data section the tensors do not cover
// exactly (a gap, or bytes after the last tensor), and repeated names (cJSON
// keeps duplicates).
static int check_disjoint(const es_st_file *f, size_t data_len) {
    int n = f->ntensors;
    es_st_tensor *s = es_xmalloc((size_t)(n ? n : 1) * sizeof *s);
    memcpy(s, f->tensors, (size_t)n * sizeof *s);
    int rc = ES_OK;
    qsort(s, (size_t)n, sizeof *s, cmp_begin);
    int last = -1;  // the non-empty tensor reaching furthest so far
    size_t covered = 0;
    for (int i = 0; i < n && rc == ES_OK; i++) {
        if (s[i].begin == s[i].end) continue;
        if (last >= 0 && s[i].begin < s[last].end)
            rc = es_fail("%s: tensors '%s' and '%s' overlap", f->path, s[last].name, s[i].name);
        if (rc == ES_OK && s[i].begin > covered)
            rc = es_fail("%s: %zu bytes before tensor '%s' belong to no tensor", f->path, s[i].begin - covered,
                         s[i].name);
        if (last < 0 || s[i].end > s[last].end) last = i;
        covered = s[last].end;
    }
    if (rc == ES_OK && covered != data_len)
        rc = es_fail("%s: %zu bytes after the last tensor's data (the tensors must cover the data exactly)",
                     f->path, data_len - covered);
    qsort(s, (size_t)n, sizeof *s, cmp_name);
    for (int i = 1; i < n && rc == ES_OK; i++)
        if (!strcmp(s[i].name, s[i - 1].name))
            rc = es_fail("%s: tensor '%s' appears twice", f->path, s[i].name);
    free(s);
    return rc;
}

static int parse_header(es_st_file *f, const char *text, size_t len) {
    cJSON *root = es_json_parse(text, len);
    if (!root) return es_fail("%s: header is not valid JSON", f->path);
    int rc = ES_OK;
    if (!cJSON_IsObject(root)) {
        rc = es_fail("%s: header is not a JSON object", f->path);
        goto done;
    }
    f->tensors = es_xcalloc((size_t)cJSON_GetArraySize(root) + 1, sizeof *f->tensors);
    size_t data_len = f->size - f->data_off;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) {
            if (!cJSON_IsObject(e)) {
                rc = es_fail("%s: __metadata__ is not an object", f->path);
                goto done;
            }
            continue;
        }
        es_st_tensor *t = &f->tensors[f->ntensors];
        if (strlen(e->string) >= sizeof t->name) {
            rc = es_fail("%s: tensor name '%.40s...' is too long", f->path, e->string);
            goto done;
        }
        strcpy(t->name, e->string);
        if ((rc = parse_entry(t, f, e, data_len))) goto done;
        f->ntensors++;
    }
    rc = check_disjoint(f, data_len);
done:
    cJSON_Delete(root);
    return rc;
}

int es_st_open(es_st_file *f, const char *path) {
    memset(f, 0, sizeof *f);
    f->fd = -1;
    if (strlen(path) >= sizeof f->path) return es_fail("%s: path too long", path);
    strcpy(f->path, path);
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) return es_fail("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(f->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        es_st_close(f);
        return es_fail("%s: not a regular file", path);
    }
    f->size = (size_t)st.st_size;
    if (f->size < 8) {
        es_st_close(f);
        return es_fail("%s: truncated (%zu bytes, a safetensors file has at least 8)", path, f->size);
    }
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, f->fd, 0);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        es_st_close(f);
        return es_fail("%s: cannot map: %s", path, strerror(errno));
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | f->map[i];  // little-endian
    if (hlen > f->size - 8) {
        es_st_close(f);
        return es_fail("%s: header length %llu exceeds the file (%zu bytes)", path,
                       (unsigned long long)hlen, f->size);
    }
    f->data_off = 8 + (size_t)hlen;
    if (parse_header(f, (const char *)f->map + 8, (size_t)hlen)) {
        es_st_close(f);
        return ES_ERR;
    }
    return ES_OK;
}

void es_st_close(es_st_file *f) {
    if (f->map) munmap(f->map, f->size);
    if (f->fd >= 0) close(f->fd);
    free(f->tensors);
    f->map = NULL;
    f->fd = -1;
    f->tensors = NULL;
    f->ntensors = 0;
}

int es_st_find(const es_st_file *f, const char *name) {
    for (int i = 0; i < f->ntensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return i;
    return -1;
}

void es_st_read_f32(float *dst, const es_st_file *f, int i) {
    es_st_read_f32_range(dst, f, i, 0, es_st_numel(&f->tensors[i]));
}

void es_st_read_f32_range(float *dst, const es_st_file *f, int i, size_t lo, size_t n) {
    const es_st_tensor *t = &f->tensors[i];
    const unsigned char *src = f->map + f->data_off + t->begin;  // may be unaligned: memcpy
    uint16_t h;
    int32_t i32;
    int64_t i64;
    switch (t->dtype) {  // one loop per type: this runs over every weight at load
    case ES_ST_F32: memcpy(dst, src + 4 * lo, 4 * n); break;
    case ES_ST_BF16:
        src += 2 * lo;
        for (size_t j = 0; j < n; j++) memcpy(&h, src + 2 * j, 2), dst[j] = es_bf16_to_f32(h);
        break;
    case ES_ST_F16:
        src += 2 * lo;
        for (size_t j = 0; j < n; j++) memcpy(&h, src + 2 * j, 2), dst[j] = es_f16_to_f32(h);
        break;
    case ES_ST_I32:
        src += 4 * lo;
        for (size_t j = 0; j < n; j++) memcpy(&i32, src + 4 * j, 4), dst[j] = (float)i32;
        break;
    case ES_ST_I64:
        src += 8 * lo;
        for (size_t j = 0; j < n; j++) memcpy(&i64, src + 8 * j, 8), dst[j] = (float)i64;
        break;
    }
}

// ---- writer ------------------------------------------------------------------

// Tensors are referenced, not copied: their data must stay valid until
// es_st_writer_write, which converts and streams them to disk.
typedef struct {
    char *name;
    const void *data;
    int is_i32;
    es_st_dtype stored;
    int ndim;
    int64_t shape[4];
} writer_entry;

struct es_st_writer {
    writer_entry *e;
    int n, cap;
};

es_st_writer *es_st_writer_new(void) { return es_xcalloc(1, sizeof(es_st_writer)); }

void es_st_writer_free(es_st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->e[i].name);
    free(w->e);
    free(w);
}

static void writer_add(es_st_writer *w, const char *name, const void *data, int is_i32,
                       es_st_dtype stored, int ndim, const int64_t *shape) {
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 64;
        writer_entry *e = es_xmalloc((size_t)w->cap * sizeof *e);
        if (w->n) memcpy(e, w->e, (size_t)w->n * sizeof *e);
        free(w->e);
        w->e = e;
    }
    writer_entry *e = &w->e[w->n++];
    e->name = es_xmalloc(strlen(name) + 1);
    strcpy(e->name, name);
    e->data = data;
    e->is_i32 = is_i32;
    e->stored = stored;
    e->ndim = ndim;
    for (int d = 0; d < ndim; d++) e->shape[d] = shape[d];
}

void es_st_writer_add_f32(es_st_writer *w, const char *name, const float *data, int ndim,
                          const int64_t *shape, es_st_dtype stored) {
    writer_add(w, name, data, 0, stored, ndim, shape);
}

void es_st_writer_add_i32(es_st_writer *w, const char *name, const int32_t *data, int ndim,
                          const int64_t *shape) {
    writer_add(w, name, data, 1, ES_ST_I32, ndim, shape);
}

static size_t entry_numel(const writer_entry *e) {
    size_t n = 1;
    for (int d = 0; d < e->ndim; d++) n *= (size_t)e->shape[d];
    return n;
}

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const writer_entry *)a)->name, ((const writer_entry *)b)->name);
}

// Header JSON, keys sorted, padded with spaces to a multiple of 8 bytes.
static char *writer_header(es_st_writer *w, size_t *len) {
    qsort(w->e, (size_t)w->n, sizeof *w->e, cmp_entry);
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");  // transformers refuses files without it
    size_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const writer_entry *e = &w->e[i];
        cJSON *t = cJSON_AddObjectToObject(root, e->name);
        cJSON_AddStringToObject(t, "dtype", dtype_names[e->stored]);
        cJSON *sh = cJSON_AddArrayToObject(t, "shape");
        for (int d = 0; d < e->ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)e->shape[d]));
        size_t bytes = entry_numel(e) * dtype_sizes[e->stored];
        cJSON *o = cJSON_AddArrayToObject(t, "data_offsets");
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)(off + bytes)));
        off += bytes;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!json) return NULL;
    size_t n = strlen(json), padded = (n + 7) / 8 * 8;
    char *h = es_xmalloc(padded);
    memcpy(h, json, n);
    memset(h + n, ' ', padded - n);
    cJSON_free(json);
    *len = padded;
    return h;
}

static int put(es_out *o, const void *data, size_t len) {
    if (len && fwrite(data, 1, len, o->f) != len) return es_fail("%s: write failed: %s", o->path, strerror(errno));
    return ES_OK;
}

// Converts in chunks so that a bf16 copy of a large tensor is never held whole.
static int write_entry(es_out *o, const writer_entry *e) {
    size_t n = entry_numel(e);
    if (e->is_i32 || e->stored == ES_ST_F32) return put(o, e->data, n * 4);
    enum { CHUNK = 1 << 16 };
    uint16_t *buf = es_xmalloc(CHUNK * sizeof *buf);
    const float *src = e->data;
    int rc = ES_OK;
    for (size_t i = 0; i < n && !rc; i += CHUNK) {
        size_t m = n - i < CHUNK ? n - i : CHUNK;
        for (size_t j = 0; j < m; j++) buf[j] = es_f32_to_bf16(src[i + j]);
        rc = put(o, buf, m * 2);
    }
    free(buf);
    return rc;
}

int es_st_writer_write(es_st_writer *w, const char *path) {
    for (int i = 0; i < w->n; i++)
        if (!w->e[i].is_i32 && w->e[i].stored != ES_ST_F32 && w->e[i].stored != ES_ST_BF16)
            return es_fail("%s: tensor '%s': can only store F32 or BF16 from fp32 data", path,
                           w->e[i].name);
    size_t hlen;
    char *header = writer_header(w, &hlen);
    if (!header) return es_fail("%s: cannot format the header", path);
    es_out o;
    if (es_out_open(&o, path)) {
        free(header);
        return ES_ERR;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    int rc = put(&o, len8, 8);
    if (!rc) rc = put(&o, header, hlen);
    free(header);
    for (int i = 0; i < w->n && !rc; i++) rc = write_entry(&o, &w->e[i]);
    if (rc) {
        es_out_abort(&o);
        return ES_ERR;
    }
    return es_out_commit(&o);
}
