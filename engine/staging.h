// Double-buffered host staging for asynchronous uploads (backend.h's
// host_alloc, upload_async): the host fills one block while the device may
// still be reading the other, and waits only when it runs two blocks ahead.
#pragma once
#include "backend.h"

typedef struct {
    es_backend *be;
    void *block[2];
    size_t bytes;
    int next;  // the block es_staging_next hands out next
} es_staging;

// Two blocks of `bytes` each; ES_ERR when host memory is short.
int es_staging_create(es_staging *s, es_backend *be, size_t bytes);
void es_staging_free(es_staging *s);
// The next block to fill, once the device has read every upload_async issued
// from it before.
void *es_staging_next(es_staging *s);
