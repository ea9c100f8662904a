// safetensors files: validated reading (header parsed with cJSON) and writing.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef enum { ES_ST_F32 = 0, ES_ST_BF16, ES_ST_F16, ES_ST_I32, ES_ST_I64 } es_st_dtype;

typedef struct {
    char name[160];
    es_st_dtype dtype;
    int ndim;
    int64_t shape[4];
    size_t begin, end;  // byte range inside the data section
} es_st_tensor;

typedef struct {
    char path[512];
    int fd;
    unsigned char *map;  // whole file, read-only mapping
    size_t size;
    size_t data_off;     // 8 + header length
    es_st_tensor *tensors;
    int ntensors;
} es_st_file;

// Opens and validates: header length, JSON, every dtype, shape and byte range
// (inside the file, matching numel * dtype size, non-overlapping).
int es_st_open(es_st_file *f, const char *path);
void es_st_close(es_st_file *f);
// Index of a tensor by name, or -1.
int es_st_find(const es_st_file *f, const char *name);
// Converts tensor i to fp32 into dst (numel elements).
void es_st_read_f32(float *dst, const es_st_file *f, int i);
// Elements [lo, lo + n) of tensor i as fp32 into dst (n elements); safe to
// call from several threads at once.
void es_st_read_f32_range(float *dst, const es_st_file *f, int i, size_t lo, size_t n);
size_t es_st_numel(const es_st_tensor *t);

// Writer: add tensors (fp32 source, stored as F32 or BF16; or raw int32),
// then write to `path` through a temporary file, fsync and rename.
typedef struct es_st_writer es_st_writer;
es_st_writer *es_st_writer_new(void);
void es_st_writer_add_f32(es_st_writer *w, const char *name, const float *data, int ndim,
                          const int64_t *shape, es_st_dtype stored);
void es_st_writer_add_i32(es_st_writer *w, const char *name, const int32_t *data, int ndim,
                          const int64_t *shape);
int es_st_writer_write(es_st_writer *w, const char *path);
void es_st_writer_free(es_st_writer *w);
