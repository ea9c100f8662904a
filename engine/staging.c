#include "staging.h"

#include <string.h>

#include "common.h"

int es_staging_create(es_staging *s, es_backend *be, size_t bytes) {
    memset(s, 0, sizeof *s);
    s->be = be;
    s->bytes = bytes;
    for (int i = 0; i < 2; i++)
        if (!(s->block[i] = be->host_alloc(be, bytes))) {
            es_staging_free(s);
            return es_fail("staging: cannot allocate %zu bytes of host memory for uploads", bytes);
        }
    return ES_OK;
}

void es_staging_free(es_staging *s) {
    for (int i = 0; i < 2; i++)
        if (s->block[i]) s->be->host_free(s->be, s->block[i]);
    memset(s, 0, sizeof *s);
}

void *es_staging_next(es_staging *s) {
    void *b = s->block[s->next];
    s->next ^= 1;
    s->be->host_wait(s->be, b);
    return b;
}
