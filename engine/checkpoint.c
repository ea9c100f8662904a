#include "checkpoint.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_files.h"
#include "common.h"
#include "json.h"
#include "safetensors.h"

static int fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return es_fail("%s: cannot open to sync: %s", path, strerror(errno));
    int r = fsync(fd);
    close(fd);
    return r ? es_fail("%s: fsync failed: %s", path, strerror(errno)) : ES_OK;
}

static int rm_tree(const char *path) {
    DIR *d = opendir(path);
    if (!d) return unlink(path) == 0 || errno == ENOENT ? ES_OK : es_fail("%s: cannot remove", path);
    struct dirent *e;
    int r = ES_OK;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char sub[PATH_MAX];
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        if (rm_tree(sub)) r = ES_ERR;
    }
    closedir(d);
    if (rmdir(path) != 0) r = es_fail("%s: cannot remove: %s", path, strerror(errno));
    return r;
}

// Sorted list of checkpoint steps under out_dir (ckpt-NNNNNNNN).
static int list_ckpts(int **steps, const char *out_dir) {
    DIR *d = opendir(out_dir);
    int n = 0, cap = 16;
    *steps = es_xmalloc(sizeof(int) * (size_t)cap);
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int s;
        char tail;
        if (sscanf(e->d_name, "ckpt-%d%c", &s, &tail) != 1 || strlen(e->d_name) != 13) continue;
        if (n == cap) *steps = realloc(*steps, sizeof(int) * (size_t)(cap *= 2));
        (*steps)[n++] = s;
    }
    closedir(d);
    for (int i = 1; i < n; i++)  // insertion sort: a handful of entries
        for (int j = i; j > 0 && (*steps)[j - 1] > (*steps)[j]; j--) {
            int t = (*steps)[j];
            (*steps)[j] = (*steps)[j - 1];
            (*steps)[j - 1] = t;
        }
    return n;
}

// Writes the optimizer state o (n elements: the whole layout, or one rank's part).
static int save_optim(const char *path, const es_model *m, const es_optim *o, size_t n) {
    es_backend *be = m->be;
    float *buf = es_xmalloc((n ? n : 1) * sizeof(float) * 3);
    be->download(be, buf, o->m, n, ES_DT_F32);
    be->download(be, buf + n, o->v, n, ES_DT_F32);
    es_st_writer *w = es_st_writer_new();
    int64_t shape[1] = {(int64_t)n};
    es_st_writer_add_f32(w, "adamw.m", buf, 1, shape, ES_ST_F32);
    es_st_writer_add_f32(w, "adamw.v", buf + n, 1, shape, ES_ST_F32);
    if (o->master) {
        be->download(be, buf + 2 * n, o->master, n, ES_DT_F32);
        es_st_writer_add_f32(w, "master", buf + 2 * n, 1, shape, ES_ST_F32);
    }
    int r = es_st_writer_write(w, path);
    es_st_writer_free(w);
    free(buf);
    return r;
}

// The order of the flat layout the optimizer state is stored in: 2 since the
// q/k/v weights are adjacent (layout.c). Before, absent: each q/k/v bias
// followed its weight, which differs only for qkv_bias models outside gpt2.
#define FLAT_ORDER 2

// `files` (taken over) lists the other files of the checkpoint with their checksums.
static char *state_json(const es_train_state *st, const char *config_json, int nparts, cJSON *files) {
    cJSON *root = cJSON_CreateObject();
    char num[32];
    cJSON_AddNumberToObject(root, "step", st->step);
    cJSON_AddNumberToObject(root, "optim_step", st->optim_step);
    snprintf(num, sizeof num, "%llu", (unsigned long long)st->data.epoch);
    cJSON_AddStringToObject(root, "data_epoch", num);
    snprintf(num, sizeof num, "%llu", (unsigned long long)st->data.pos);
    cJSON_AddStringToObject(root, "data_pos", num);
    snprintf(num, sizeof num, "%llu", (unsigned long long)st->seed);  // exact: a JSON number would round
    cJSON_AddStringToObject(root, "seed", num);
    cJSON_AddNumberToObject(root, "bad_steps", st->bad_steps);
    cJSON_AddNumberToObject(root, "tokens", st->tokens);
    cJSON_AddNumberToObject(root, "flops", st->flops);
    cJSON_AddNumberToObject(root, "seconds", st->seconds);
    if (nparts) cJSON_AddNumberToObject(root, "optim_parts", nparts);
    cJSON_AddNumberToObject(root, "flat_order", FLAT_ORDER);
    cJSON *cfg = config_json ? cJSON_Parse(config_json) : NULL;
    if (cfg) cJSON_AddItemToObject(root, "config", cfg);
    cJSON_AddItemToObject(root, "files", files);
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    return s;
}

// Removes checkpoint dir `name` of out_dir so that it vanishes at once: renamed
// to a .ckpt-tmp- name first (which the next start cleans up if this process
// dies), so a kill during the removal never leaves a partial ckpt-* visible.
static int discard_ckpt(const char *out_dir, const char *name) {
    char from[PATH_MAX], to[PATH_MAX];
    snprintf(from, sizeof from, "%s/%s", out_dir, name);
    snprintf(to, sizeof to, "%s/.ckpt-tmp-old-%s", out_dir, name);
    if (rename(from, to) != 0) return es_fail("%s: cannot move aside: %s", from, strerror(errno));
    return rm_tree(to);
}

// Completes the checkpoint staged in tmp (model, the whole optimizer state
// unless o is NULL because nparts ranks wrote it in parts, trainer state) and
// moves it into place.
static int commit(const char *out_dir, const char *tmp, const es_model *m, const es_optim *o, int nparts,
                  const es_train_state *st, const char *config_json, int keep) {
    char final[PATH_MAX], path[PATH_MAX];
    snprintf(final, sizeof final, "%s/ckpt-%08d", out_dir, st->step);
    int r = es_model_save_hf(m, tmp, 0);
    snprintf(path, sizeof path, "%s/optim.safetensors", tmp);
    if (!r && o) r = save_optim(path, m, o, m->layout.total);
    cJSON *files = NULL;
    if (!r) r = es_ckpt_files_record(&files, tmp);  // read back: what is on disk is what resume checks
    if (!r) {
        char *js = state_json(st, config_json, nparts, files);
        snprintf(path, sizeof path, "%s/trainer_state.json", tmp);
        r = es_write_atomic(path, js, strlen(js));
        free(js);
    }
    if (!r) r = fsync_path(tmp);
    if (!r) {
        struct stat sb;
        if (stat(final, &sb) == 0) r = discard_ckpt(out_dir, strrchr(final, '/') + 1);  // a re-run of the same step replaces it
    }
    if (!r && rename(tmp, final) != 0) r = es_fail("%s: cannot rename into place: %s", final, strerror(errno));
    if (!r) r = fsync_path(out_dir);
    if (r) {
        char why[1024];
        snprintf(why, sizeof why, "%s", es_last_error());
        rm_tree(tmp);
        return es_fail("%s", why);
    }
    int *steps, n = list_ckpts(&steps, out_dir);
    for (int i = 0; i + keep < n; i++) {
        snprintf(path, sizeof path, "ckpt-%08d", steps[i]);
        discard_ckpt(out_dir, path);
    }
    free(steps);
    return ES_OK;
}

int es_ckpt_save(const char *out_dir, const es_model *m, const es_optim *o, const es_train_state *st,
                 const char *config_json, int keep) {
    char tmp[PATH_MAX];
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST)
        return es_fail("%s: cannot create run directory: %s", out_dir, strerror(errno));
    snprintf(tmp, sizeof tmp, "%s/.ckpt-tmp-XXXXXX", out_dir);
    if (!mkdtemp(tmp)) return es_fail("%s: cannot create a temporary directory: %s", out_dir, strerror(errno));
    return commit(out_dir, tmp, m, o, 0, st, config_json, keep);
}

void es_ckpt_stage_path(char *path, size_t size, const char *out_dir, int step) {
    snprintf(path, size, "%s/.ckpt-tmp-stage-%08d", out_dir, step);
}

int es_ckpt_stage_create(const char *stage) {
    struct stat sb;
    if (stat(stage, &sb) == 0 && rm_tree(stage)) return ES_ERR;  // left by a crash
    if (es_mkdir_p(stage)) return ES_ERR;
    return ES_OK;
}

static void part_path(char *path, size_t size, const char *dir, int rank, int nranks) {
    snprintf(path, size, "%s/optim-%05d-of-%05d.safetensors", dir, rank, nranks);
}

int es_ckpt_save_part(const char *stage, const es_model *m, const es_optim *o, int rank, int nranks) {
    char path[PATH_MAX];
    size_t lo, hi;
    es_shard_range(&lo, &hi, m->layout.total, rank, nranks);
    part_path(path, sizeof path, stage, rank, nranks);
    return save_optim(path, m, o, hi - lo);
}

int es_ckpt_save_sharded(const char *out_dir, const char *stage, const es_model *m, const es_train_state *st,
                         const char *config_json, int keep, int nranks) {
    return commit(out_dir, stage, m, NULL, nranks, st, config_json, keep);
}

int es_ckpt_clean(const char *out_dir, int all) {
    DIR *d = opendir(out_dir);
    if (!d) return ES_OK;
    struct dirent *e;
    int r = ES_OK;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, ".ckpt-tmp-", 10) && !(all && !strncmp(e->d_name, "ckpt-", 5))) continue;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", out_dir, e->d_name);
        if (rm_tree(path)) r = ES_ERR;
    }
    closedir(d);
    return r;
}

static int get_u64(uint64_t *out, const cJSON *root, const char *key, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    char *end;
    if (!cJSON_IsString(v)) return es_fail("%s: '%s' missing or not a string", path, key);
    errno = 0;
    *out = strtoull(v->valuestring, &end, 10);
    if (errno || *end || end == v->valuestring) return es_fail("%s: '%s' is not an integer", path, key);
    return ES_OK;
}

static int get_num(double *out, const cJSON *root, const char *key, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!cJSON_IsNumber(v)) return es_fail("%s: '%s' missing or not a number", path, key);
    *out = v->valuedouble;
    return ES_OK;
}

static int read_state(cJSON **root, const char *path) {
    char *txt;
    size_t len;
    if (es_read_file(&txt, &len, path)) return ES_ERR;
    *root = es_json_parse(txt, len);
    free(txt);
    return *root ? ES_OK : es_fail("%s: not valid JSON (corrupt checkpoint)", path);
}

// *nparts: ranks that wrote the optimizer state in parts (0: one file).
static int state_from_json(es_train_state *st, int *nparts, const cJSON *root, const char *path) {
    double step = 0, ostep = 0, bad = 0;
    // "data_pos" counts the epoch's micro-batches of all ranks; older checkpoints
    // have "data_step", the micro-batches of each of their "ranks"
    int legacy = !cJSON_GetObjectItemCaseSensitive(root, "data_pos");
    int r = get_num(&step, root, "step", path) || get_num(&ostep, root, "optim_step", path) || get_u64(&st->data.epoch, root, "data_epoch", path) ||
            get_u64(&st->data.pos, root, legacy ? "data_step" : "data_pos", path) || get_u64(&st->seed, root, "seed", path) ||
            get_num(&bad, root, "bad_steps", path) || get_num(&st->tokens, root, "tokens", path) ||
            get_num(&st->flops, root, "flops", path) || get_num(&st->seconds, root, "seconds", path);
    const cJSON *parts = cJSON_GetObjectItemCaseSensitive(root, "optim_parts");
    const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(root, "ranks");  // absent: one rank
    double np = cJSON_IsNumber(parts) ? parts->valuedouble : 0, nr = cJSON_IsNumber(ranks) ? ranks->valuedouble : 1;
    if (!r && ((parts && !cJSON_IsNumber(parts)) || (ranks && !cJSON_IsNumber(ranks))))
        r = es_fail("%s: 'optim_parts' or 'ranks' is not a number", path);
    if (r) return ES_ERR;
    if (step < 0 || bad < 0 || ostep < 0 || ostep > step)
        return es_fail("%s: inconsistent step counts (corrupt checkpoint)", path);
    st->step = (int)step;
    st->optim_step = (int)ostep;
    st->bad_steps = (int)bad;
    if (np < 0 || np > 1 << 20 || np != (int)np || nr < 1 || nr > 1 << 20 || nr != (int)nr)
        return es_fail("%s: bad 'optim_parts' %g or 'ranks' %g (corrupt checkpoint)", path, np, nr);
    *nparts = (int)np;
    if (legacy) st->data.pos *= (uint64_t)nr;
    return ES_OK;
}

static int load_trainer_state(es_train_state *st, int *nparts, const char *path) {
    cJSON *root;
    if (read_state(&root, path)) return ES_ERR;
    int r = state_from_json(st, nparts, root, path);
    cJSON_Delete(root);
    return r;
}

// A checkpoint is intact when its trainer state is valid and every file it
// lists has its recorded size and checksum. *unlisted: the state lists no
// files (written before they were recorded), so nothing could be checked.
static int verify(int *unlisted, const char *ckpt_dir) {
    char path[PATH_MAX];
    cJSON *root;
    es_train_state st;
    int nparts;
    snprintf(path, sizeof path, "%s/trainer_state.json", ckpt_dir);
    if (read_state(&root, path)) return ES_ERR;
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(root, "files");
    *unlisted = files == NULL;
    int r = state_from_json(&st, &nparts, root, path);
    if (!r && files) r = es_ckpt_files_verify(files, ckpt_dir);
    cJSON_Delete(root);
    return r;
}

// Moves damaged checkpoints out of the list of checkpoints (pruning would
// otherwise count them and could delete the intact ones), keeping them for
// inspection; --fresh removes them.
static int set_aside(const char *ckpt_dir) {
    char to[PATH_MAX];
    struct stat sb;
    snprintf(to, sizeof to, "%s.damaged", ckpt_dir);
    if (stat(to, &sb) == 0 && rm_tree(to)) return ES_ERR;
    if (rename(ckpt_dir, to) != 0) return es_fail("%s: cannot set the damaged checkpoint aside: %s", ckpt_dir, strerror(errno));
    return ES_OK;
}

int es_ckpt_pick(char *path, size_t size, const char *out_dir) {
    int *steps, n = list_ckpts(&steps, out_dir), good = -1;
    char dir[PATH_MAX];
    for (int i = n - 1; i >= 0 && good < 0; i--) {
        int unlisted;
        snprintf(dir, sizeof dir, "%s/ckpt-%08d", out_dir, steps[i]);
        if (verify(&unlisted, dir)) {
            fprintf(stderr, "essence: %s\n", es_last_error());
            continue;
        }
        good = i;
        if (unlisted) fprintf(stderr, "essence: %s: no checksums recorded (an older checkpoint): resuming unverified\n", dir);
    }
    int r = n > 0;
    if (n > 0 && good < 0)
        r = es_fail("%s: no intact checkpoint to resume from; repair it or start over with --fresh", out_dir);
    for (int i = good + 1; good >= 0 && i < n && r > 0; i++) {
        snprintf(dir, sizeof dir, "%s/ckpt-%08d", out_dir, steps[i]);
        if (set_aside(dir)) r = ES_ERR;
    }
    if (r > 0) {
        snprintf(path, size, "%s/ckpt-%08d", out_dir, steps[good]);
        if (good < n - 1)
            fprintf(stderr, "essence: resuming from the previous complete checkpoint %s instead (%d damaged one(s) set aside as ckpt-*.damaged)\n",
                    path, n - 1 - good);
    }
    free(steps);
    return r;
}

// First difference between the checkpoint's layout and the run's, as text;
// "" when they hold the same tensors (layouts have a fixed order).
static void layout_diff(char *why, size_t size, const es_layout *ck, const es_layout *run) {
    why[0] = 0;
    for (int i = 0; i < ck->nparams || i < run->nparams; i++) {
        const es_param *p = i < ck->nparams ? &ck->params[i] : NULL, *q = i < run->nparams ? &run->params[i] : NULL;
        if (!p || !q || strcmp(p->name, q->name)) {
            snprintf(why, size, "tensor '%s' where the run's student has '%s'", p ? p->name : "(none)",
                     q ? q->name : "(none)");
            return;
        }
        if (p->shape[0] != q->shape[0] || p->shape[1] != q->shape[1]) {  // 1-D tensors have shape[1] == 0
            snprintf(why, size, "tensor '%s' is %dx%d, %dx%d in the run's student", p->name, p->shape[0],
                     p->shape[1] ? p->shape[1] : 1, q->shape[0], q->shape[1] ? q->shape[1] : 1);
            return;
        }
    }
}

// Refuses optimizer state stored in a flat order other than this layout's.
static int check_flat_order(const char *ckpt_dir, const es_config *c) {
    char path[PATH_MAX];
    cJSON *root;
    snprintf(path, sizeof path, "%s/trainer_state.json", ckpt_dir);
    if (read_state(&root, path)) return ES_ERR;
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, "flat_order");
    double order = cJSON_IsNumber(o) ? o->valuedouble : 1;
    cJSON_Delete(root);
    if (order == FLAT_ORDER || (order == 1 && (!c->qkv_bias || c->arch == ES_ARCH_GPT2))) return ES_OK;
    return es_fail("%s: optimizer state in flat order %g, this essence's is %d (q/k/v weights adjacent, then "
                   "their biases): resume with the essence that wrote it, or start over with --fresh",
                   path, order, FLAT_ORDER);
}

int es_ckpt_check_model(const char *ckpt_dir, const es_config *run) {
    char path[PATH_MAX], why[256];
    es_config cc;
    es_layout ck, lo;
    snprintf(path, sizeof path, "%s/config.json", ckpt_dir);
    if (es_config_load(&cc, path)) return ES_ERR;
    if (strcmp(cc.model_type, run->model_type)) {
        snprintf(why, sizeof why, "a %s model, the run's student is %s", cc.model_type, run->model_type);
    } else if (cc.layers != run->layers) {
        snprintf(why, sizeof why, "%d layers, %d in the run's student", cc.layers, run->layers);
    } else {
        if (es_layout_build(&ck, &cc)) return ES_ERR;
        if (es_layout_build(&lo, run)) {
            es_layout_free(&ck);
            return ES_ERR;
        }
        layout_diff(why, sizeof why, &ck, &lo);
        es_layout_free(&ck);
        es_layout_free(&lo);
    }
    if (why[0])
        return es_fail("%s: a checkpoint of another model (%s): use another run.out, or start over with --fresh",
                       path, why);
    return check_flat_order(ckpt_dir, run);
}

static int load_vec(float *host, es_st_file *f, const char *name, size_t n) {
    int i = es_st_find(f, name);
    if (i < 0) return es_fail("%s: tensor '%s' missing (corrupt checkpoint)", f->path, name);
    if (es_st_numel(&f->tensors[i]) != n || f->tensors[i].dtype != ES_ST_F32)
        return es_fail("%s: tensor '%s' has %zu elements, expected %zu fp32 (checkpoint of another model?)",
                       f->path, name, es_st_numel(&f->tensors[i]), n);
    es_st_read_f32(host, f, i);
    return ES_OK;
}

// Reads elements [lo, hi) of the moments (and master weights, when
// `master` is not NULL and every file has them) from the optimizer state
// of a checkpoint, stored whole (nparts 0) or in nparts parts.
static int load_range(float *m, float *v, float *master, int *has_master, const char *ckpt_dir, int nparts,
                      size_t n, size_t lo, size_t hi) {
    char path[PATH_MAX];
    *has_master = master != NULL;
    for (int p = 0; p < (nparts ? nparts : 1); p++) {
        size_t plo = 0, phi = n;
        if (nparts) es_shard_range(&plo, &phi, n, p, nparts);
        size_t a = lo > plo ? lo : plo, b = hi < phi ? hi : phi;
        if (a >= b) continue;
        if (nparts)
            part_path(path, sizeof path, ckpt_dir, p, nparts);
        else
            snprintf(path, sizeof path, "%s/optim.safetensors", ckpt_dir);
        es_st_file f;
        if (es_st_open(&f, path)) return ES_ERR;
        float *buf = es_xmalloc((phi - plo) * sizeof(float));
        float *dst[3] = {m, v, master};
        const char *names[3] = {"adamw.m", "adamw.v", "master"};
        int r = ES_OK;
        for (int k = 0; k < 3 && !r; k++) {
            if (k == 2 && (!*has_master || es_st_find(&f, "master") < 0)) {
                *has_master = 0;
                break;
            }
            r = load_vec(buf, &f, names[k], phi - plo);
            if (!r) memcpy(dst[k] + (a - lo), buf + (a - plo), (b - a) * sizeof(float));
        }
        free(buf);
        es_st_close(&f);
        if (r) return ES_ERR;
    }
    return ES_OK;
}

int es_ckpt_load_state_range(es_optim *o, es_train_state *st, const es_model *m, const char *ckpt_dir, size_t lo,
                             size_t hi) {
    char path[PATH_MAX];
    int nparts = 0;
    snprintf(path, sizeof path, "%s/trainer_state.json", ckpt_dir);
    if (load_trainer_state(st, &nparts, path)) return ES_ERR;
    es_backend *be = m->be;
    size_t n = hi - lo;
    float *host = es_xmalloc((n ? n : 1) * sizeof(float) * 3);
    int has_master;
    int r = load_range(host, host + n, o->master ? host + 2 * n : NULL, &has_master, ckpt_dir, nparts,
                       m->layout.total, lo, hi);
    if (!r) {
        be->upload(be, o->m, host, n, ES_DT_F32);
        be->upload(be, o->v, host + n, n, ES_DT_F32);
        if (has_master) be->upload(be, o->master, host + 2 * n, n, ES_DT_F32);
        o->step = st->optim_step;
    }
    free(host);
    return r;
}

int es_ckpt_load_state(es_optim *o, es_train_state *st, const es_model *m, const char *ckpt_dir) {
    return es_ckpt_load_state_range(o, st, m, ckpt_dir, 0, m->layout.total);
}
