// Hugging Face checkpoint directories: config.json plus model.safetensors or
// model.safetensors.index.json shards, mapped onto the flat parameter layout.
// qwen3/qwen2/llama names map one to one. GPT-2 stores Conv1D weights as
// (in, out) and fuses q/k/v into c_attn, so its tensors are transposed and
// split on load, and joined and transposed back on save.
#include <cjson/cJSON.h>
#include <math.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "json.h"
#include "model.h"
#include "safetensors.h"

// Directory names are limited so that every path built from one fits.
enum { DIR_MAX = 480, PATH_CAP = 1024 };

// ---- the name and shape map ------------------------------------------------

typedef enum {
    MAP_COPY,   // same shape and order
    MAP_T,      // Conv1D weight (in, out) <-> Linear (out, in)
    MAP_QKV_T,  // c_attn.weight (C, QD + 2 KD) <-> q/k/v_proj.weight
    MAP_QKV,    // c_attn.bias (QD + 2 KD) <-> q/k/v_proj.bias
} map_kind;

typedef struct {
    char name[112];  // Hugging Face name (gpt2 without its "transformer." prefix)
    int ndim;
    int64_t shape[2];
    map_kind kind;
    int param[3];  // layout indices (q, k, v for the fused kinds)
} hf_tensor;

typedef struct {
    hf_tensor *t;
    int n;
} hf_map;

static hf_tensor *map_add(hf_map *m, map_kind kind, const es_layout *lo, const int *params,
                          const char *fmt, int l) {
    hf_tensor *t = &m->t[m->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, fmt, l);
    t->kind = kind;
    const es_param *p = &lo->params[params[0]];
    for (int i = 0; i < (kind == MAP_QKV_T || kind == MAP_QKV ? 3 : 1); i++) t->param[i] = params[i];
    t->ndim = p->ndim;
    t->shape[0] = p->shape[0];
    t->shape[1] = p->shape[1];
    if (kind == MAP_T) {
        t->shape[0] = p->shape[1];
        t->shape[1] = p->shape[0];
    } else if (kind == MAP_QKV_T || kind == MAP_QKV) {
        int64_t out = 0;
        for (int i = 0; i < 3; i++) out += lo->params[params[i]].shape[0];
        t->shape[0] = kind == MAP_QKV_T ? p->shape[1] : out;
        t->shape[1] = kind == MAP_QKV_T ? out : 0;
    }
    return t;
}

static void map_gpt2(hf_map *m, const es_layout *lo, const es_config *c) {
    map_add(m, MAP_COPY, lo, &lo->wte, "wte.weight", 0);
    map_add(m, MAP_COPY, lo, &lo->wpe, "wpe.weight", 0);
    for (int l = 0; l < c->layers; l++) {
        const es_layer_params *p = &lo->layer[l];
        int qkv_w[3] = {p->q_w, p->k_w, p->v_w}, qkv_b[3] = {p->q_b, p->k_b, p->v_b};
        map_add(m, MAP_COPY, lo, &p->ln1_w, "h.%d.ln_1.weight", l);
        map_add(m, MAP_COPY, lo, &p->ln1_b, "h.%d.ln_1.bias", l);
        map_add(m, MAP_QKV_T, lo, qkv_w, "h.%d.attn.c_attn.weight", l);
        map_add(m, MAP_QKV, lo, qkv_b, "h.%d.attn.c_attn.bias", l);
        map_add(m, MAP_T, lo, &p->o_w, "h.%d.attn.c_proj.weight", l);
        map_add(m, MAP_COPY, lo, &p->o_b, "h.%d.attn.c_proj.bias", l);
        map_add(m, MAP_COPY, lo, &p->ln2_w, "h.%d.ln_2.weight", l);
        map_add(m, MAP_COPY, lo, &p->ln2_b, "h.%d.ln_2.bias", l);
        map_add(m, MAP_T, lo, &p->up_w, "h.%d.mlp.c_fc.weight", l);
        map_add(m, MAP_COPY, lo, &p->up_b, "h.%d.mlp.c_fc.bias", l);
        map_add(m, MAP_T, lo, &p->down_w, "h.%d.mlp.c_proj.weight", l);
        map_add(m, MAP_COPY, lo, &p->down_b, "h.%d.mlp.c_proj.bias", l);
    }
    map_add(m, MAP_COPY, lo, &lo->lnf_w, "ln_f.weight", 0);
    map_add(m, MAP_COPY, lo, &lo->lnf_b, "ln_f.bias", 0);
    if (!c->tied) map_add(m, MAP_COPY, lo, &lo->lm_head, "lm_head.weight", 0);
}

static void map_build(hf_map *m, const es_layout *lo, const es_config *c) {
    m->t = es_xmalloc((size_t)lo->nparams * sizeof *m->t);  // never more tensors than params
    m->n = 0;
    if (c->arch == ES_ARCH_GPT2) {
        map_gpt2(m, lo, c);
        return;
    }
    for (int i = 0; i < lo->nparams; i++) {
        hf_tensor *t = map_add(m, MAP_COPY, lo, &i, "", 0);
        snprintf(t->name, sizeof t->name, "%s", lo->params[i].name);
    }
}

static int map_find(const hf_map *m, const char *name) {
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->t[i].name, name)) return i;
    return -1;
}

static size_t map_numel(const hf_tensor *t) {
    return (size_t)t->shape[0] * (size_t)(t->ndim == 2 ? t->shape[1] : 1);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

// Buffers that checkpoints may carry but that are not parameters.
static int ignorable(const char *name, const es_config *c) {
    if (c->tied && !strcmp(name, "lm_head.weight")) return 1;
    if (c->arch == ES_ARCH_GPT2) return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias");
    return ends_with(name, ".rotary_emb.inv_freq");
}

// Moves one tensor between its Hugging Face form `hf` and the flat host
// parameter buffer `flat`, in the direction given by `load`.
static void map_move(float *hf, float *flat, const es_layout *lo, const hf_tensor *t, int load) {
#define MOVE(i, j) (load ? (flat[j] = hf[i]) : (hf[i] = flat[j]))
    const es_param *p = &lo->params[t->param[0]];
    if (t->kind == MAP_COPY) {
        for (size_t i = 0; i < p->numel; i++) MOVE(i, p->offset + i);
    } else if (t->kind == MAP_T) {
        size_t R = (size_t)p->shape[0], K = (size_t)p->shape[1];  // flat (R, K), hf (K, R)
        for (size_t r = 0; r < R; r++)
            for (size_t k = 0; k < K; k++) MOVE(k * R + r, p->offset + r * K + k);
    } else {
        size_t W = (size_t)(t->kind == MAP_QKV_T ? t->shape[1] : t->shape[0]), col = 0;
        for (int s = 0; s < 3; s++) {
            const es_param *q = &lo->params[t->param[s]];
            size_t R = (size_t)q->shape[0];
            if (t->kind == MAP_QKV) {
                for (size_t r = 0; r < R; r++) MOVE(col + r, q->offset + r);
            } else {
                size_t K = (size_t)q->shape[1];  // hf (K, W): columns [col, col + R) are this part
                for (size_t r = 0; r < R; r++)
                    for (size_t k = 0; k < K; k++) MOVE(k * W + col + r, q->offset + r * K + k);
            }
            col += R;
        }
    }
#undef MOVE
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    int n = snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && n < (int)cap; d++)
        n += snprintf(buf + n, cap - (size_t)n, "%s%lld", d ? "," : "", (long long)shape[d]);
    if (n < (int)cap) snprintf(buf + n, cap - (size_t)n, "]");
}

// ---- the weight files ----------------------------------------------------------

typedef struct {
    es_st_file *files;
    int nfiles;
    char label[PATH_CAP];  // the file named when a tensor is missing
} weight_files;

static void weights_close(weight_files *w) {
    for (int i = 0; i < w->nfiles; i++) es_st_close(&w->files[i]);
    free(w->files);
    w->files = NULL;
    w->nfiles = 0;
}

static int open_shard(weight_files *w, const char *dir, const char *file) {
    char path[PATH_CAP];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    for (int i = 0; i < w->nfiles; i++)
        if (!strcmp(w->files[i].path, path)) return i;
    if (es_st_open(&w->files[w->nfiles], path)) return -1;
    return w->nfiles++;
}

// Opens every shard the index names and checks that each listed tensor is in
// the shard the index says.
static int open_index(weight_files *w, const char *dir, const char *index_path) {
    char *text;
    size_t len;
    if (es_read_file(&text, &len, index_path)) return ES_ERR;
    cJSON *root = es_json_parse(text, len);
    free(text);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    int rc = ES_OK;
    if (!cJSON_IsObject(map) || !map->child) {
        rc = es_fail("%s: no weight_map object (or it is empty)", index_path);
        goto done;
    }
    w->files = es_xcalloc((size_t)cJSON_GetArraySize(map), sizeof *w->files);
    for (const cJSON *e = map->child; e && rc == ES_OK; e = e->next) {
        const char *file = cJSON_IsString(e) ? e->valuestring : NULL;
        if (!file || !*file || strchr(file, '/') || !strcmp(file, "..") || !strcmp(file, ".")) {
            rc = es_fail("%s: weight_map entry '%s' is not a file name in this directory",
                         index_path, e->string);
            break;
        }
        int k = open_shard(w, dir, file);
        if (k < 0) rc = ES_ERR;
        else if (es_st_find(&w->files[k], e->string) < 0)
            rc = es_fail("%s: tensor '%s' missing (%s lists it there)", w->files[k].path, e->string,
                         index_path);
    }
done:
    cJSON_Delete(root);
    return rc;
}

static int weights_open(weight_files *w, const char *dir) {
    memset(w, 0, sizeof *w);
    char single[PATH_CAP], index[PATH_CAP];
    snprintf(single, sizeof single, "%s/model.safetensors", dir);
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
    if (access(single, F_OK) == 0) {
        snprintf(w->label, sizeof w->label, "%s", single);
        w->files = es_xcalloc(1, sizeof *w->files);
        if (es_st_open(&w->files[0], single)) {
            weights_close(w);
            return ES_ERR;
        }
        w->nfiles = 1;
        return ES_OK;
    }
    if (access(index, F_OK) != 0)
        return es_fail("%s: neither model.safetensors nor model.safetensors.index.json found", dir);
    snprintf(w->label, sizeof w->label, "%s", index);
    if (open_index(w, dir, index)) {
        weights_close(w);
        return ES_ERR;
    }
    return ES_OK;
}

// ---- load ----------------------------------------------------------------------

// Elements per task when a tensor is read into place: large enough that the
// per-task cost vanishes, small enough that every thread gets work.
#define LOAD_CHUNK ((size_t)1 << 18)

// Index of the first non-finite of x[0, n), or n.
static size_t first_nonfinite(const float *x, size_t n) {
    for (size_t e = 0; e < n; e++)
        if (!isfinite(x[e])) return e;
    return n;
}

static int load_tensor(float *flat, char *found, const hf_map *map, const es_model *m,
                       const es_st_file *f, int i) {
    const es_st_tensor *st = &f->tensors[i];
    const char *name = st->name;
    if (m->cfg.arch == ES_ARCH_GPT2 && !strncmp(name, "transformer.", 12)) name += 12;
    int k = map_find(map, name);
    if (k < 0) {
        if (ignorable(name, &m->cfg)) return ES_OK;
        return es_fail("%s: unexpected tensor '%s' (not part of this %s model)", f->path, st->name,
                       m->cfg.model_type);
    }
    const hf_tensor *t = &map->t[k];
    if (found[k]) return es_fail("%s: tensor '%s' appears twice", f->path, st->name);
    int same = st->ndim == t->ndim;
    for (int d = 0; same && d < t->ndim; d++) same = st->shape[d] == t->shape[d];
    if (!same) {
        char got[64], want[64];
        shape_str(got, sizeof got, st->ndim, st->shape);
        shape_str(want, sizeof want, t->ndim, t->shape);
        return es_fail("%s: tensor '%s' has shape %s, expected %s", f->path, st->name, got, want);
    }
    if (st->dtype != ES_ST_F32 && st->dtype != ES_ST_BF16 && st->dtype != ES_ST_F16)
        return es_fail("%s: tensor '%s' holds integers, expected F32, BF16 or F16", f->path, st->name);
    size_t n = map_numel(t), bad = n;
    if (t->kind == MAP_COPY) {
        // Straight into place, in chunks over the threads: one pass over the
        // file, each chunk checked while it is still in cache.
        float *dst = flat + m->layout.params[t->param[0]].offset;
        long chunks = (long)((n + LOAD_CHUNK - 1) / LOAD_CHUNK);
        #pragma omp parallel for schedule(dynamic) reduction(min : bad) if (chunks > 1)
        for (long c = 0; c < chunks; c++) {
            size_t lo = (size_t)c * LOAD_CHUNK, len = n - lo < LOAD_CHUNK ? n - lo : LOAD_CHUNK;
            es_st_read_f32_range(dst + lo, f, i, lo, len);
            size_t e = first_nonfinite(dst + lo, len);
            if (e < len && lo + e < bad) bad = lo + e;
        }
    } else {
        float *hf = es_xmalloc(n * sizeof *hf);
        es_st_read_f32(hf, f, i);
        bad = first_nonfinite(hf, n);
        if (bad == n) map_move(hf, flat, &m->layout, t, 1);
        free(hf);
    }
    // A NaN or Inf weight would only show later as skipped steps or garbage tokens.
    if (bad < n)
        return es_fail("%s: tensor '%s' holds a non-finite value (NaN or Inf) at element %zu", f->path,
                       st->name, bad);
    found[k] = 1;
    return ES_OK;
}

static int load_all(es_model *m, const weight_files *w) {
    hf_map map;
    map_build(&map, &m->layout, &m->cfg);
    char *found = es_xcalloc((size_t)map.n, 1);
    // Host memory buffers are filled in place; others through one staging copy.
    int in_place = m->be->host_buffers;
    float *flat = in_place ? m->params : es_xmalloc(m->layout.total * sizeof *flat);
    int rc = ES_OK;
    for (int f = 0; f < w->nfiles && !rc; f++)
        for (int i = 0; i < w->files[f].ntensors && !rc; i++)
            rc = load_tensor(flat, found, &map, m, &w->files[f], i);
    for (int k = 0; k < map.n && !rc; k++)
        if (!found[k])
            rc = es_fail("%s: tensor '%s%s' missing", w->label,
                         m->cfg.arch == ES_ARCH_GPT2 && strcmp(map.t[k].name, "lm_head.weight")
                             ? "transformer." : "",
                         map.t[k].name);
    if (!in_place) {
        if (!rc) m->be->upload(m->be, m->params, flat, m->layout.total, ES_DT_COMPUTE);
        free(flat);
    }
    free(found);
    free(map.t);
    return rc;
}

int es_model_load_hf(es_model *m, const char *dir, es_backend *be, int max_tokens, int trainable) {
    memset(m, 0, sizeof *m);
    if (strlen(dir) > DIR_MAX) return es_fail("%.80s...: path too long", dir);
    char path[PATH_CAP];
    snprintf(path, sizeof path, "%s/config.json", dir);
    es_config cfg;
    if (es_config_load(&cfg, path)) return ES_ERR;
    weight_files w;
    if (weights_open(&w, dir)) return ES_ERR;
    int rc = es_model_create(m, &cfg, be, max_tokens, trainable);
    if (!rc) {
        rc = load_all(m, &w);
        if (rc) es_model_free(m);
    }
    weights_close(&w);
    return rc;
}

// ---- save ----------------------------------------------------------------------

// Removes a directory holding only plain files.
static int remove_flat_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return es_fail("%s: cannot open: %s", dir, strerror(errno));
    int rc = ES_OK;
    for (struct dirent *e; (e = readdir(d)) && !rc;) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (unlinkat(dirfd(d), e->d_name, 0) != 0)
            rc = es_fail("%s/%s: cannot remove: %s", dir, e->d_name, strerror(errno));
    }
    closedir(d);
    if (!rc && rmdir(dir) != 0) rc = es_fail("%s: cannot remove: %s", dir, strerror(errno));
    return rc;
}

// Files of a previous save that the new one replaces rather than keeps.
static int replaced_by_save(const char *name) {
    return !strcmp(name, "config.json") || !strcmp(name, "model.safetensors") ||
           !strcmp(name, "model.safetensors.index.json") ||
           !fnmatch("model-*-of-*.safetensors", name, 0);
}

// Hard-links the other files of an existing `dir` (tokenizer, ...) into the
// new copy, so that replacing the directory keeps them.
static int keep_other_files(const char *dir, const char *tmp) {
    DIR *d = opendir(dir);
    if (!d) return es_fail("%s: cannot open: %s", dir, strerror(errno));
    int rc = ES_OK;
    for (struct dirent *e; (e = readdir(d)) && !rc;) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || replaced_by_save(e->d_name)) continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) {
            rc = es_fail("%s: holds '%s', which is not a plain file; save into a new directory", dir,
                         e->d_name);
        } else {
            char src[PATH_CAP], dst[PATH_CAP];
            snprintf(src, sizeof src, "%s/%s", dir, e->d_name);
            snprintf(dst, sizeof dst, "%s/%s", tmp, e->d_name);
            if (link(src, dst) != 0) rc = es_fail("%s: cannot keep it: %s", src, strerror(errno));
        }
    }
    closedir(d);
    return rc;
}

static int fsync_parent(const char *path) {
    char buf[PATH_CAP];
    snprintf(buf, sizeof buf, "%s", path);
    int fd = open(dirname(buf), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return es_fail("%s: cannot open its parent directory: %s", path, strerror(errno));
    int rc = fsync(fd);
    close(fd);
    if (rc != 0) return es_fail("%s: fsync of its parent directory failed: %s", path, strerror(errno));
    return ES_OK;
}

// Puts the complete directory `tmp` at `dir`. A reader sees either the old
// or the new directory, never a half-written one.
static int replace_dir(const char *dir, const char *tmp) {
    if (rename(tmp, dir) == 0) return fsync_parent(dir);
    if (errno != ENOTEMPTY && errno != EEXIST)
        return es_fail("%s: cannot move the saved model into place: %s", dir, strerror(errno));
    if (keep_other_files(dir, tmp)) return ES_ERR;
    char old[PATH_CAP];
    snprintf(old, sizeof old, "%s.old", tmp);
    if (rename(dir, old) != 0)
        return es_fail("%s: cannot move the previous copy aside: %s", dir, strerror(errno));
    if (rename(tmp, dir) != 0) {
        int e = errno;
        if (rename(old, dir) != 0)
            return es_fail("%s: cannot move the saved model into place (%s); the previous copy is at %s",
                           dir, strerror(e), old);
        return es_fail("%s: cannot move the saved model into place: %s", dir, strerror(e));
    }
    if (fsync_parent(dir)) return ES_ERR;
    return remove_flat_dir(old);
}

static int write_files(const es_model *m, const char *tmp, int bf16) {
    const es_layout *lo = &m->layout;
    char path[PATH_CAP];
    es_config cfg = m->cfg;
    snprintf(cfg.torch_dtype, sizeof cfg.torch_dtype, "%s", bf16 ? "bfloat16" : "float32");
    snprintf(path, sizeof path, "%s/config.json", tmp);
    if (es_config_save(&cfg, path)) return ES_ERR;

    float *flat = es_xmalloc(lo->total * sizeof *flat);
    m->be->download(m->be, flat, m->params, lo->total, ES_DT_COMPUTE);
    hf_map map;
    map_build(&map, lo, &m->cfg);
    float *moved = m->cfg.arch == ES_ARCH_GPT2 ? es_xmalloc(lo->total * sizeof *moved) : NULL;
    es_st_writer *w = es_st_writer_new();
    size_t used = 0;
    for (int k = 0; k < map.n; k++) {
        const hf_tensor *t = &map.t[k];
        const float *data = flat + lo->params[t->param[0]].offset;
        if (t->kind != MAP_COPY) {
            map_move(moved + used, flat, lo, t, 0);
            data = moved + used;
            used += map_numel(t);
        }
        char name[128];
        int prefix = m->cfg.arch == ES_ARCH_GPT2 && strcmp(t->name, "lm_head.weight");
        snprintf(name, sizeof name, "%s%s", prefix ? "transformer." : "", t->name);
        es_st_writer_add_f32(w, name, data, t->ndim, t->shape, bf16 ? ES_ST_BF16 : ES_ST_F32);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    int rc = es_st_writer_write(w, path);
    es_st_writer_free(w);
    free(moved);
    free(map.t);
    free(flat);
    return rc;
}

int es_model_save_hf(const es_model *m, const char *dir, int bf16) {
    char target[DIR_MAX + 1], tmp[DIR_MAX + 16];
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;  // "out/" names the same directory as "out"
    if (n > DIR_MAX) return es_fail("%.80s...: path too long", dir);
    memcpy(target, dir, n);
    target[n] = 0;
    snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", target);
    if (!mkdtemp(tmp)) return es_fail("%s: cannot create a temporary directory: %s", target, strerror(errno));
    int rc = chmod(tmp, 0755) == 0 ? ES_OK : es_fail("%s: cannot set permissions: %s", tmp, strerror(errno));
    if (rc || write_files(m, tmp, bf16) || replace_dir(target, tmp)) {
        char why[1024];
        snprintf(why, sizeof why, "%s", es_last_error());
        if (access(tmp, F_OK) == 0) remove_flat_dir(tmp);  // best effort: the first error is the one reported
        return es_fail("%s", why);
    }
    return ES_OK;
}
