// Writing data shards (the engine side; tools/shard_io.py is the Python one).
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checksum.h"
#include "common.h"
#include "shard.h"
#include "shard_format.h"

typedef struct {
    FILE *f;
    uint32_t crc;
} sink;

static int put(sink *k, const void *data, size_t n) {
    if (n == 0) return ES_OK;
    k->crc = es_crc32(k->crc, data, n);
    return fwrite(data, 1, n, k->f) == n ? ES_OK : ES_ERR;
}

static int write_body(sink *k, const es_shard_content *c) {
    es_shard_header h = {.version = ES_SHARD_VERSION,
                         .header_bytes = ES_SHARD_HEADER_BYTES,
                         .vocab = c->vocab,
                         .topk = c->topk,
                         .fingerprint = c->fingerprint,
                         .ndocs = c->ndocs,
                         .ntokens = c->ntokens};
    memcpy(h.magic, ES_SHARD_MAGIC, 8);
    if (put(k, &h, sizeof h) || put(k, c->tokens, 4 * c->ntokens)) return ES_ERR;
    static const uint32_t pad = 0;
    if ((c->ntokens & 1) && put(k, &pad, 4)) return ES_ERR;
    uint64_t off = 0;
    for (size_t d = 0; d < c->ndocs; d++) {
        es_shard_entry e = {.offset = off,
                            .len = c->docs[d].len,
                            .cot_begin = c->docs[d].cot_begin,
                            .cot_end = c->docs[d].cot_end};
        if (put(k, &e, sizeof e)) return ES_ERR;
        off += c->docs[d].len;
    }
    size_t nk = c->ntokens * c->topk;
    if (put(k, c->topk_ids, 4 * nk) || put(k, c->topk_logp, 4 * nk)) return ES_ERR;
    uint32_t crc = k->crc;
    return fwrite(&crc, 1, 4, k->f) == 4 ? ES_OK : ES_ERR;
}

int es_shard_write(const char *path, const es_shard_content *c) {
    uint64_t total = 0;
    for (size_t d = 0; d < c->ndocs; d++) total += c->docs[d].len;
    if (total != c->ntokens)
        return es_fail("%s: examples hold %llu tokens but %zu were given", path, (unsigned long long)total,
                       c->ntokens);
    if (c->topk && (!c->topk_ids || !c->topk_logp))
        return es_fail("%s: teacher top-k %u given without its ids and log-probabilities", path, c->topk);
    size_t n = strlen(path) + 32;
    char *tmp = es_xmalloc(n);
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    sink k = {fopen(tmp, "wb"), 0};
    if (!k.f) {
        int err = errno;
        free(tmp);
        return es_fail("%s: cannot create: %s", path, strerror(err));
    }
    int ok = write_body(&k, c) == ES_OK && fflush(k.f) == 0 && fsync(fileno(k.f)) == 0;
    int err = errno;
    if (fclose(k.f) != 0 && ok) {
        ok = 0;
        err = errno;
    }
    if (!ok) {
        unlink(tmp);
        free(tmp);
        return es_fail("%s: write failed: %s", path, strerror(err));
    }
    es_shard *s;
    if (es_shard_open(&s, tmp) != ES_OK) {  // the content itself is invalid; the reader says why
        char why[1024];
        const char *m = es_last_error();
        size_t tl = strlen(tmp);
        snprintf(why, sizeof why, "%s%s", strncmp(m, tmp, tl) ? ": " : "", strncmp(m, tmp, tl) ? m : m + tl);
        unlink(tmp);
        free(tmp);
        return es_fail("%s%s", path, why);
    }
    es_shard_close(s);
    if (rename(tmp, path) != 0) {
        err = errno;
        unlink(tmp);
        free(tmp);
        return es_fail("%s: cannot move into place: %s", path, strerror(err));
    }
    free(tmp);
    return ES_OK;
}
