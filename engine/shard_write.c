// Writing data shards (the engine side; tools/shard_io.py is the Python one).
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checksum.h"
#include "common.h"
#include "out_file.h"
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
    es_out o;
    if (es_out_open(&o, path)) return ES_ERR;
    sink k = {o.f, 0};
    if (write_body(&k, c) != ES_OK || fflush(o.f) != 0) {
        int err = errno;
        es_out_abort(&o);
        return es_fail("%s: write failed: %s", path, strerror(err));
    }
    es_shard *s;
    if (!o.direct && es_shard_open(&s, o.tmp) != ES_OK) {  // the content itself is invalid; the reader says why
        char why[1024];
        const char *m = es_last_error();
        size_t tl = strlen(o.tmp);
        snprintf(why, sizeof why, "%s%s", strncmp(m, o.tmp, tl) ? ": " : "", strncmp(m, o.tmp, tl) ? m : m + tl);
        es_out_abort(&o);
        return es_fail("%s%s", path, why);
    }
    if (!o.direct) es_shard_close(s);
    return es_out_commit(&o);
}
