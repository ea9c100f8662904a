#include "tokenizer_id.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "json.h"

typedef struct {
    uint32_t id;
    int added;  // added tokens replace vocabulary tokens with the same id
    const char *text;
} pair;

static int pair_cmp(const void *a, const void *b) {
    const pair *x = a, *y = b;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    return x->added - y->added;
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static int id_of(uint32_t *out, const cJSON *v) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= 4294967295.0 ||
        v->valuedouble != floor(v->valuedouble))
        return ES_ERR;
    *out = (uint32_t)v->valuedouble;
    return ES_OK;
}

// Collects the pairs of model.vocab (object or Unigram array) and added_tokens.
static int collect(pair *p, size_t *n, const cJSON *root, const char *path) {
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "model"), "vocab");
    if (!cJSON_IsObject(vocab) && !cJSON_IsArray(vocab)) return es_fail("%s: no model.vocab", path);
    size_t k = 0;
    uint32_t pos = 0;
    for (const cJSON *e = vocab->child; e; e = e->next, pos++) {
        if (cJSON_IsArray(vocab)) {  // Unigram: [token, score], id = position
            const cJSON *t = cJSON_GetArrayItem(e, 0);
            if (!cJSON_IsString(t)) return es_fail("%s: model.vocab entry %u is not [token, score]", path, pos);
            p[k++] = (pair){pos, 0, t->valuestring};
        } else {
            uint32_t id;
            if (id_of(&id, e) != ES_OK) return es_fail("%s: model.vocab id of \"%s\" is not an id", path, e->string);
            p[k++] = (pair){id, 0, e->string};
        }
    }
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added && !cJSON_IsArray(added)) return es_fail("%s: added_tokens is not a list", path);
    for (const cJSON *e = added ? added->child : NULL; e; e = e->next) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "content");
        uint32_t id;
        if (!cJSON_IsString(t) || id_of(&id, cJSON_GetObjectItemCaseSensitive(e, "id")) != ES_OK)
            return es_fail("%s: an added_tokens entry lacks content or id", path);
        p[k++] = (pair){id, 1, t->valuestring};
    }
    if (k == 0) return es_fail("%s: empty vocabulary", path);
    *n = k;
    return ES_OK;
}

static int fingerprint_pairs(uint64_t *out, uint32_t *vocab_out, pair *p, size_t n, const char *path) {
    qsort(p, n, sizeof *p, pair_cmp);
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n && p[i + 1].id == p[i].id) {
            if (p[i + 1].added == p[i].added)
                return es_fail("%s: id %u is given to both \"%s\" and \"%s\"", path, p[i].id, p[i].text,
                               p[i + 1].text);
            continue;  // the added token that follows replaces this one
        }
        uint32_t len = (uint32_t)strlen(p[i].text);
        h = fnv1a(h, &p[i].id, 4);  // little-endian host, as the shards assume
        h = fnv1a(h, &len, 4);
        h = fnv1a(h, p[i].text, len);
    }
    *out = h;
    *vocab_out = p[n - 1].id + 1;
    return ES_OK;
}

int es_tokenizer_fingerprint(uint64_t *out, uint32_t *vocab_out, const char *model_dir) {
    size_t n = strlen(model_dir) + sizeof "/tokenizer.json";
    char *path = es_xmalloc(n);
    snprintf(path, n, "%s/tokenizer.json", model_dir);
    char *text;
    size_t len;
    if (es_read_file(&text, &len, path) != ES_OK) {
        free(path);
        return ES_ERR;
    }
    cJSON *root = es_json_parse(text, len);
    free(text);
    int rc;
    if (!root) {
        rc = es_fail("%s: not valid JSON", path);
    } else {
        const cJSON *vocab =
            cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "model"), "vocab");
        size_t cap = (size_t)cJSON_GetArraySize(vocab) + (size_t)cJSON_GetArraySize(
                                                                cJSON_GetObjectItemCaseSensitive(root, "added_tokens"));
        pair *p = es_xmalloc((cap ? cap : 1) * sizeof *p);
        size_t np = 0;
        rc = collect(p, &np, root, path);
        if (rc == ES_OK) rc = fingerprint_pairs(out, vocab_out, p, np, path);
        free(p);
        cJSON_Delete(root);
    }
    free(path);
    return rc;
}
