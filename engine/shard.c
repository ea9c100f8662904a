// Reading data shards: map, validate every byte, index examples across files.
#include "shard.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checksum.h"
#include "common.h"
#include "shard_format.h"

struct es_shard {
    char *path;
    void *map;
    size_t size;
    es_shard_header h;
    const uint32_t *tokens;       // (ntokens)
    const es_shard_entry *index;  // (ndocs)
    const uint32_t *topk_ids;     // (ntokens, topk)
    const float *topk_logp;       // (ntokens, topk)
};

typedef unsigned long long ull;

// Header fields alone, before the size is trusted.
static int check_header(const char *path, const es_shard_header *h) {
    if (memcmp(h->magic, ES_SHARD_MAGIC, 8) != 0) return es_fail("%s: not an essence shard (bad magic)", path);
    if (h->version != ES_SHARD_VERSION)
        return es_fail("%s: shard format version %u, this engine reads version %u", path, h->version,
                       ES_SHARD_VERSION);
    if (h->header_bytes != ES_SHARD_HEADER_BYTES)
        return es_fail("%s: header size %u, expected %u", path, h->header_bytes, ES_SHARD_HEADER_BYTES);
    if (h->reserved[0] || h->reserved[1]) return es_fail("%s: reserved header fields are not zero", path);
    if (h->vocab == 0) return es_fail("%s: vocabulary size is 0", path);
    if (h->ndocs == 0) return es_fail("%s: holds no examples", path);
    if (h->topk > ES_SHARD_MAX_TOPK)
        return es_fail("%s: teacher top-k %u exceeds the limit %u", path, h->topk, ES_SHARD_MAX_TOPK);
    return ES_OK;
}

// The size the header implies; fails when the counts cannot fit the file at all.
static int check_size(const char *path, const es_shard_header *h, size_t size) {
    // Bound the counts by the file size first so the products cannot overflow.
    if (h->ntokens > size / 4 || h->ndocs > size / 24 || (h->topk && h->ntokens > size / 8 / h->topk))
        return es_fail("%s: header claims %llu examples and %llu tokens, more than a %zu-byte file holds", path,
                       (ull)h->ndocs, (ull)h->ntokens, size);
    uint64_t tok = 4 * h->ntokens + (h->ntokens & 1 ? 4 : 0);
    uint64_t want = ES_SHARD_HEADER_BYTES + tok + 24 * h->ndocs + 8 * h->ntokens * h->topk + 4;
    if (want != size)
        return es_fail("%s: file is %zu bytes but its header implies %llu (truncated or damaged)", path, size,
                       (ull)want);
    return ES_OK;
}

static int check_tokens(const es_shard *s) {
    const uint8_t *base = s->map;
    const uint32_t *t = s->tokens;
    for (uint64_t i = 0; i < s->h.ntokens; i++)
        if (t[i] >= s->h.vocab)
            return es_fail("%s: token %u at position %llu is outside the vocabulary of %u", s->path, t[i], (ull)i,
                           s->h.vocab);
    if (s->h.ntokens & 1) {
        uint32_t pad;
        memcpy(&pad, base + ES_SHARD_HEADER_BYTES + 4 * s->h.ntokens, 4);
        if (pad) return es_fail("%s: padding after the tokens is not zero", s->path);
    }
    return ES_OK;
}

static int check_index(const es_shard *s) {
    uint64_t next = 0;
    for (uint64_t d = 0; d < s->h.ndocs; d++) {
        const es_shard_entry *e = &s->index[d];
        if (e->reserved) return es_fail("%s: example %llu: reserved index field is not zero", s->path, (ull)d);
        if (e->offset != next)
            return es_fail("%s: example %llu starts at token %llu, expected %llu (examples overlap or leave gaps)",
                           s->path, (ull)d, (ull)e->offset, (ull)next);
        if (e->len == 0) return es_fail("%s: example %llu is empty", s->path, (ull)d);
        if (e->len > s->h.ntokens - next)
            return es_fail("%s: example %llu (tokens %llu..%llu) runs past the %llu tokens of the shard", s->path,
                           (ull)d, (ull)next, (ull)(next + e->len), (ull)s->h.ntokens);
        if (e->cot_begin > e->cot_end || e->cot_end > e->len)
            return es_fail("%s: example %llu: sections out of order (cot_begin %u, cot_end %u, len %u)", s->path,
                           (ull)d, e->cot_begin, e->cot_end, e->len);
        next += e->len;
    }
    if (next != s->h.ntokens)
        return es_fail("%s: examples cover %llu tokens but the shard holds %llu", s->path, (ull)next,
                       (ull)s->h.ntokens);
    return ES_OK;
}

static int check_topk(const es_shard *s) {
    uint64_t n = s->h.ntokens * s->h.topk;
    for (uint64_t i = 0; i < n; i++) {
        if (s->topk_ids[i] >= s->h.vocab)
            return es_fail("%s: teacher top-k id %u at token %llu is outside the vocabulary of %u", s->path,
                           s->topk_ids[i], (ull)(i / s->h.topk), s->h.vocab);
        float lp = s->topk_logp[i];
        if (!isfinite(lp) || lp > 0.0f)
            return es_fail("%s: teacher log-probability %g at token %llu is not a finite value <= 0", s->path,
                           (double)lp, (ull)(i / s->h.topk));
    }
    return ES_OK;
}

static int validate(es_shard *s) {
    const uint8_t *base = s->map;
    if (s->size < ES_SHARD_HEADER_BYTES + 4)
        return es_fail("%s: %zu bytes, too short for a shard (truncated?)", s->path, s->size);
    memcpy(&s->h, base, sizeof s->h);
    if (check_header(s->path, &s->h) != ES_OK || check_size(s->path, &s->h, s->size) != ES_OK) return ES_ERR;
    uint32_t stored, crc = es_crc32(0, base, s->size - 4);
    memcpy(&stored, base + s->size - 4, 4);
    if (stored != crc)
        return es_fail("%s: checksum mismatch (stored %08x, computed %08x): the file is damaged", s->path, stored,
                       crc);
    uint64_t off = ES_SHARD_HEADER_BYTES;
    s->tokens = (const uint32_t *)(base + off);
    off += 4 * s->h.ntokens + (s->h.ntokens & 1 ? 4 : 0);
    s->index = (const es_shard_entry *)(base + off);
    off += 24 * s->h.ndocs;
    s->topk_ids = s->h.topk ? (const uint32_t *)(base + off) : NULL;
    off += 4 * s->h.ntokens * s->h.topk;
    s->topk_logp = s->h.topk ? (const float *)(base + off) : NULL;
    if (check_tokens(s) != ES_OK || check_index(s) != ES_OK || check_topk(s) != ES_OK) return ES_ERR;
    return ES_OK;
}

int es_shard_open(es_shard **out, const char *path) {
    *out = NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return es_fail("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return es_fail("%s: cannot stat: %s", path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return es_fail("%s: not a regular file", path);
    }
    es_shard *s = es_xcalloc(1, sizeof *s);
    s->path = strdup(path);
    if (!s->path) es_die("out of host memory");
    s->size = (size_t)st.st_size;
    if (s->size > 0) {
        s->map = mmap(NULL, s->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (s->map == MAP_FAILED) {
            int err = errno;
            s->map = NULL;
            close(fd);
            es_shard_close(s);
            return es_fail("%s: cannot map: %s", path, strerror(err));
        }
    }
    close(fd);
    if (validate(s) != ES_OK) {
        es_shard_close(s);
        return ES_ERR;
    }
    *out = s;
    return ES_OK;
}

void es_shard_close(es_shard *s) {
    if (!s) return;
    if (s->map) munmap(s->map, s->size);
    free(s->path);
    free(s);
}

// Every shard of a set must describe its tokens the same way.
static int check_agree(const es_dataset *ds, const es_shard *s, uint32_t vocab, uint64_t fingerprint) {
    if (vocab && s->h.vocab != vocab)
        return es_fail("%s: vocabulary of %u tokens differs from the model's %u (made with another tokenizer?)",
                       s->path, s->h.vocab, vocab);
    if (fingerprint && s->h.fingerprint != fingerprint)
        return es_fail("%s: tokenizer fingerprint %016llx differs from the model's %016llx (made with another "
                       "tokenizer?)",
                       s->path, (ull)s->h.fingerprint, (ull)fingerprint);
    if (ds->nshards == 0) return ES_OK;
    const es_shard *f = ds->shards[0];
    if (s->h.vocab != f->h.vocab || s->h.fingerprint != f->h.fingerprint)
        return es_fail("%s: tokenizer (vocabulary %u, fingerprint %016llx) differs from %s's (vocabulary %u, "
                       "fingerprint %016llx)",
                       s->path, s->h.vocab, (ull)s->h.fingerprint, f->path, f->h.vocab, (ull)f->h.fingerprint);
    if (s->h.topk != f->h.topk)
        return es_fail("%s: teacher top-k %u differs from %s's %u", s->path, s->h.topk, f->path, f->h.topk);
    return ES_OK;
}

int es_dataset_open(es_dataset *ds, const char *const *paths, int npaths, uint32_t vocab,
                    uint64_t fingerprint) {
    memset(ds, 0, sizeof *ds);
    if (npaths < 1) return es_fail("dataset: no shard files given");
    ds->shards = es_xcalloc((size_t)npaths, sizeof *ds->shards);
    ds->first_doc = es_xcalloc((size_t)npaths + 1, sizeof *ds->first_doc);
    for (int i = 0; i < npaths; i++) {
        es_shard *s;
        if (es_shard_open(&s, paths[i]) != ES_OK) {
            es_dataset_close(ds);
            return ES_ERR;
        }
        if (check_agree(ds, s, vocab, fingerprint) != ES_OK) {
            es_shard_close(s);
            es_dataset_close(ds);
            return ES_ERR;
        }
        ds->shards[ds->nshards++] = s;
        ds->ndocs += s->h.ndocs;
        ds->ntokens += s->h.ntokens;
        ds->first_doc[i + 1] = ds->ndocs;
    }
    ds->vocab = ds->shards[0]->h.vocab;
    ds->fingerprint = ds->shards[0]->h.fingerprint;
    ds->topk = (int)ds->shards[0]->h.topk;
    return ES_OK;
}

void es_dataset_close(es_dataset *ds) {
    for (int i = 0; i < ds->nshards; i++) es_shard_close(ds->shards[i]);
    free(ds->shards);
    free(ds->first_doc);
    memset(ds, 0, sizeof *ds);
}

// The shard holding global example i (i < ndocs).
static int shard_of(const es_dataset *ds, size_t i) {
    int lo = 0, hi = ds->nshards - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (ds->first_doc[mid] <= i) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

const uint32_t *es_dataset_doc(const es_dataset *ds, size_t i, es_doc_info *info) {
    if (i >= ds->ndocs) {
        es_fail("dataset: example %zu out of range (%zu examples)", i, ds->ndocs);
        return NULL;
    }
    int k = shard_of(ds, i);
    const es_shard *s = ds->shards[k];
    const es_shard_entry *e = &s->index[i - ds->first_doc[k]];
    info->len = e->len;
    info->cot_begin = e->cot_begin;
    info->cot_end = e->cot_end;
    return s->tokens + e->offset;
}

int es_dataset_topk(const es_dataset *ds, size_t i, const uint32_t **ids, const float **logp) {
    *ids = NULL;
    *logp = NULL;
    if (i >= ds->ndocs) return es_fail("dataset: example %zu out of range (%zu examples)", i, ds->ndocs);
    int k = shard_of(ds, i);
    const es_shard *s = ds->shards[k];
    if (!s->h.topk) return ES_OK;
    const es_shard_entry *e = &s->index[i - ds->first_doc[k]];
    *ids = s->topk_ids + e->offset * s->h.topk;
    *logp = s->topk_logp + e->offset * s->h.topk;
    return ES_OK;
}
