// The offline teacher: the stored top-k ids and log-probabilities against a
// reference from full logits of each example run alone; the offline top-k
// loss approaching the online one as k grows to V; refusals of a teacher
// that does not fit the shards.
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "common.h"
#include "distill.h"
#include "model.h"
#include "packer.h"
#include "shard.h"
#include "teacher.h"
#include "test.h"
#include "tokenizer_id.h"

#define V 64
#define ND 7
#define MAXLEN 40

static char g_dir[64], g_model[128];
static es_rng g_rng;

static void path_in(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", g_dir, name); }

static int mentions(const char *a, const char *b) {
    const char *e = es_last_error();
    return strstr(e, a) && (!b || strstr(e, b));
}

static es_config tiny_config(void) {
    es_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.arch = ES_ARCH_QWEN3;
    strcpy(cfg.model_type, "qwen3");
    cfg.vocab = V, cfg.hidden = 32, cfg.layers = 2, cfg.heads = 4, cfg.kv_heads = 2;
    cfg.head_dim = 8, cfg.ffn = 48, cfg.max_pos = 256, cfg.rope_theta = 10000.0f;
    cfg.norm_eps = 1e-6f, cfg.qk_norm = 1, cfg.bos_id = -1, cfg.eos_id = -1;
    strcpy(cfg.torch_dtype, "float32");
    return cfg;
}

// A random model whose LM head is scaled up, so its next-token distributions
// are peaked rather than near uniform (as trained models are).
static int make_model(es_model *m, es_backend *be, int trainable, uint64_t seed, float head_scale) {
    es_config cfg = tiny_config();
    if (es_model_create(m, &cfg, be, 128, trainable)) return ES_ERR;
    es_model_init_random(m, seed);
    const es_param *p = &m->layout.params[m->layout.lm_head];
    float *w = malloc(p->numel * sizeof *w);
    void *dw = be->offset(be, m->params, p->offset, ES_DT_COMPUTE);
    be->download(be, w, dw, p->numel, ES_DT_COMPUTE);
    for (size_t i = 0; i < p->numel; i++) w[i] *= head_scale;
    be->upload(be, dw, w, p->numel, ES_DT_COMPUTE);
    free(w);
    return ES_OK;
}

typedef struct {
    es_doc_info docs[ND];
    uint32_t tokens[ND * MAXLEN];
    size_t ntokens;
} corpus;

// ND examples of random lengths and sections, tokens below `vocab`.
static void make_corpus(corpus *c, uint32_t vocab) {
    c->ntokens = 0;
    for (int d = 0; d < ND; d++) {
        uint32_t len = 2 + (uint32_t)(es_rng_u64(&g_rng) % (MAXLEN - 1));
        uint32_t b = (uint32_t)(es_rng_u64(&g_rng) % len);
        uint32_t e = b + (uint32_t)(es_rng_u64(&g_rng) % (len - b + 1));
        c->docs[d] = (es_doc_info){len, b, e};
        for (uint32_t j = 0; j < len; j++) c->tokens[c->ntokens++] = (uint32_t)(es_rng_u64(&g_rng) % vocab);
    }
}

static int write_corpus(const char *path, const corpus *c, uint32_t vocab, uint64_t fp) {
    es_shard_content sc = {.vocab = vocab, .fingerprint = fp, .docs = c->docs, .ndocs = ND,
                           .tokens = c->tokens, .ntokens = c->ntokens};
    return es_shard_write(path, &sc);
}

static int run_teacher(es_backend *be, const char *in, const char *out, int k, int batch, int chunk) {
    const char *shards[1] = {in};
    es_teacher_opts o = {.model_dir = g_model, .shards = shards, .nshards = 1, .out = out, .k = k,
                         .batch_tokens = batch, .chunk_rows = chunk};
    return es_teacher_run(be, &o);
}

// Full logits of one example run alone (positions from 0): (len, V).
static void doc_logits(float *out, es_model *m, const uint32_t *tok, int len) {
    es_backend *be = m->be;
    int32_t t[MAXLEN], pos[MAXLEN], cu[2] = {0, len};
    for (int j = 0; j < len; j++) t[j] = (int32_t)tok[j], pos[j] = j;
    void *dt = be->alloc(be, MAXLEN, ES_DT_I32, ES_MEM_INDEX), *dp = be->alloc(be, MAXLEN, ES_DT_I32, ES_MEM_INDEX);
    void *dc = be->alloc(be, 2, ES_DT_I32, ES_MEM_INDEX);
    void *dl = be->alloc(be, (size_t)MAXLEN * V, ES_DT_COMPUTE, ES_MEM_ACTS);
    be->upload(be, dt, t, (size_t)len, ES_DT_I32);
    be->upload(be, dp, pos, (size_t)len, ES_DT_I32);
    be->upload(be, dc, cu, 2, ES_DT_I32);
    es_model_batch b = {len, 1, dt, dp, dc};
    t_poison(out, (size_t)len * V);
    CHECK(es_model_forward(m, &b) == ES_OK, "forward: %s", es_last_error());
    be->matmul_fwd(be, dl, m->hidden, es_model_lm_head(m), NULL, len, m->cfg.hidden, V);
    be->download(be, out, dl, (size_t)len * V, ES_DT_COMPUTE);
    be->free(be, dt), be->free(be, dp), be->free(be, dc), be->free(be, dl);
}

// Reference top-k of one row: log-softmax over all V in double, then the k
// best ids below nids by a full sort (selection sort: V is small).
static void ref_topk(int *ids, double *lp, const float *x, int nids, int k) {
    double mx = -INFINITY, se = 0;
    for (int v = 0; v < V; v++) mx = fmax(mx, x[v]);
    for (int v = 0; v < V; v++) se += exp(x[v] - mx);
    char used[V] = {0};
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int v = 0; v < nids; v++)
            if (!used[v] && (best < 0 || x[v] > x[best])) best = v;
        used[best] = 1;
        ids[j] = best;
        lp[j] = x[best] - mx - log(se);
    }
}

// Every stored entry of `out` against the reference from the teacher's logits.
static void check_entries(es_model *tm, const char *out, const corpus *c, uint32_t vocab, uint64_t fp, int k) {
    es_dataset ds;
    const char *p = out;
    if (es_dataset_open(&ds, &p, 1, 0, 0) != ES_OK) {
        CHECK(0, "open %s: %s", out, es_last_error());
        return;
    }
    CHECK(ds.topk == k && ds.vocab == vocab && ds.fingerprint == fp && ds.ndocs == ND && ds.ntokens == c->ntokens,
          "header: top-k %d vocab %u fingerprint %llx", ds.topk, ds.vocab, (unsigned long long)ds.fingerprint);
    float *logits = malloc((size_t)MAXLEN * V * sizeof *logits);
    int ids[V], bad_ids = 0, checked = 0;
    double lp[V], worst = 0;
    size_t at = 0;
    for (size_t d = 0; d < ds.ndocs && d < ND; d++) {
        es_doc_info info;
        const uint32_t *tok = es_dataset_doc(&ds, d, &info);
        const uint32_t *tid;
        const float *tlp;
        CHECK(es_dataset_topk(&ds, d, &tid, &tlp) == ES_OK && tid, "no top-k for example %zu", d);
        CHECK(memcmp(&info, &c->docs[d], sizeof info) == 0 && !memcmp(tok, c->tokens + at, info.len * 4),
              "example %zu differs from the input", d);
        at += c->docs[d].len;
        if (!tid) continue;
        doc_logits(logits, tm, tok, (int)info.len);
        for (uint32_t t = 0; t < info.len; t++) {
            ref_topk(ids, lp, logits + (size_t)t * V, (int)vocab, k);
            for (int j = 0; j < k; j++) {
                double e = fabs(tlp[t * k + j] - lp[j]) / fmax(1.0, fabs(lp[j]));
                if (!(e <= worst)) worst = isfinite(e) ? e : INFINITY;  // NaN never passes
                // an id is compared only where its log-probability is not (nearly) tied
                int tied = (j > 0 && lp[j - 1] - lp[j] < 1e-4) || (j + 1 < k && lp[j] - lp[j + 1] < 1e-4);
                if (!tied && tid[t * k + j] != (uint32_t)ids[j]) bad_ids++;
                if (tid[t * k + j] >= vocab) bad_ids++;
            }
            checked++;
        }
    }
    CHECK(checked == (int)c->ntokens, "checked %d of %zu positions", checked, c->ntokens);
    CHECK(worst < 1e-4, "top-%d log-probabilities: max rel err %g", k, worst);
    CHECK(bad_ids == 0, "top-%d ids: %d differ from the reference", k, bad_ids);
    free(logits);
    es_dataset_close(&ds);
}

// KD and CE sums over one epoch at lead-span r: online teacher, then each
// offline shard. kd[0] online, kd[1 + i] offline shard i.
static void epoch_losses(double *kd, double *ce, es_backend *be, es_model *st, es_model *tm, const char *const *outs,
                         const int *ks, int n, double r) {
    es_dataset ds[3];
    es_distill dl[4];
    int ok = 1;
    for (int i = 0; i < n; i++) ok = ok && es_dataset_open(&ds[i], &outs[i], 1, 0, 0) == ES_OK;
    es_pack_config pc;
    es_pack_config_defaults(&pc);
    pc.ratio = r;
    pc.capacity = 64;
    es_packer *p = NULL;
    ok = ok && es_packer_from_dataset(&p, &ds[0], &pc) == ES_OK;
    ok = ok && es_distill_create(&dl[0], be, 64, 32, V, 16, 32, 0) == ES_OK;
    for (int i = 0; ok && i < n; i++) ok = es_distill_create(&dl[1 + i], be, 64, 32, V, 16, 0, ks[i]) == ES_OK;
    if (!ok) {
        CHECK(0, "setup: %s", es_last_error());
        exit(1);
    }
    es_microbatch mb;
    es_microbatch_alloc(&mb, 64);
    int32_t *ids = malloc(64 * V * sizeof *ids);
    float *lp = malloc(64 * V * sizeof *lp);
    void *dt = be->alloc(be, 64, ES_DT_I32, ES_MEM_INDEX), *dp = be->alloc(be, 64, ES_DT_I32, ES_MEM_INDEX);
    void *dc = be->alloc(be, 65, ES_DT_I32, ES_MEM_INDEX);
    double *dsums = be->alloc(be, 2, ES_DT_F64, ES_MEM_WORKSPACE), sums[2];
    es_distill_params prm = {.alpha = 0.5f, .tau = 1.0f, .grad_scale = 1.0f};
    for (int i = 0; i <= n; i++) kd[i] = ce[i] = 0;
    for (size_t s = 0; s < es_packer_steps_per_epoch(p); s++) {
        es_packer_next(p, &mb);
        be->upload(be, dt, mb.tokens, (size_t)mb.n, ES_DT_I32);
        be->upload(be, dp, mb.pos, (size_t)mb.n, ES_DT_I32);
        be->upload(be, dc, mb.cu_seqlens, (size_t)mb.ndocs + 1, ES_DT_I32);
        es_model_batch b = {mb.n, mb.ndocs, dt, dp, dc};
        CHECK(es_model_forward(st, &b) == ES_OK && es_model_forward(tm, &b) == ES_OK, "%s", es_last_error());
        be->zero(be, dsums, 2, ES_DT_F64);
        CHECK(es_distill_model(&dl[0], dsums, NULL, st, tm, NULL, NULL, &mb, &prm) == ES_OK, "%s", es_last_error());
        be->download(be, sums, dsums, 2, ES_DT_F64);
        kd[0] += sums[1], ce[0] += sums[0];
        for (int i = 0; i < n; i++) {
            be->zero(be, dsums, 2, ES_DT_F64);
            CHECK(es_microbatch_topk(ids, lp, &mb, &ds[i]) == ES_OK, "%s", es_last_error());
            CHECK(es_distill_model(&dl[1 + i], dsums, NULL, st, NULL, ids, lp, &mb, &prm) == ES_OK, "%s",
                  es_last_error());
            be->download(be, sums, dsums, 2, ES_DT_F64);
            kd[1 + i] += sums[1], ce[1 + i] += sums[0];
        }
    }
    be->free(be, dt), be->free(be, dp), be->free(be, dc), be->free(be, dsums);
    free(ids), free(lp);
    es_microbatch_free(&mb);
    for (int i = 0; i <= n; i++) es_distill_free(&dl[i]);
    es_packer_free(p);
    for (int i = 0; i < n; i++) es_dataset_close(&ds[i]);
}

static void test_entries_and_convergence(es_backend *be, es_model *tm) {
    char in[128], pad_in[128], outs[3][128], pad_out[128];
    const char *outp[3] = {outs[0], outs[1], outs[2]};
    const int ks[3] = {4, 16, V};
    corpus c, pc;
    make_corpus(&c, V);
    path_in(in, sizeof in, "in.shard");
    CHECK(write_corpus(in, &c, V, 0x5eed) == ES_OK, "%s", es_last_error());
    for (int i = 0; i < 3; i++) {
        snprintf(outs[i], sizeof outs[i], "%s/top%d.shard", g_dir, ks[i]);
        // small batches and odd chunks: several micro-batches, chunks across documents
        CHECK(run_teacher(be, in, outs[i], ks[i], 48, i == 2 ? 0 : 5 + 2 * i) == ES_OK, "k %d: %s", ks[i],
              es_last_error());
        check_entries(tm, outs[i], &c, V, 0x5eed, ks[i]);
    }
    // A tokenizer smaller than the model's (padded) vocabulary: ids stay below it.
    make_corpus(&pc, V - 5);
    path_in(pad_in, sizeof pad_in, "pad.shard");
    path_in(pad_out, sizeof pad_out, "pad_top.shard");
    CHECK(write_corpus(pad_in, &pc, V - 5, 7) == ES_OK, "%s", es_last_error());
    CHECK(run_teacher(be, pad_in, pad_out, 8, 4096, 0) == ES_OK, "padded: %s", es_last_error());
    check_entries(tm, pad_out, &pc, V - 5, 7, 8);

    es_model st;
    if (make_model(&st, be, 1, 99, 20.0f)) {
        CHECK(0, "student: %s", es_last_error());
        return;
    }
    // At a lead window the teacher's logits on the kept prefix are those of the
    // whole example, so the offline entries apply to truncated sequences too.
    const double ratios[2] = {1.0, 0.5};
    for (int ri = 0; ri < 2; ri++) {
        double kd[4], ce[4];
        epoch_losses(kd, ce, be, &st, tm, outp, ks, 3, ratios[ri]);
        double err[3];
        for (int i = 0; i < 3; i++) err[i] = fabs(kd[1 + i] - kd[0]) / kd[0];
        printf("r = %.1f: online KD %.6f; top-4 %.6f, top-16 %.6f, top-64 %.6f\n", ratios[ri], kd[0], kd[1], kd[2],
               kd[3]);
        CHECK(isfinite(kd[0]) && kd[0] > 0, "online KD %g", kd[0]);
        for (int i = 0; i < 3; i++)
            CHECK(fabs(ce[1 + i] - ce[0]) <= 1e-5 * ce[0], "CE with top-%d %g vs %g", ks[i], ce[1 + i], ce[0]);
        CHECK(err[2] < 1e-4, "top-V KD %g vs online %g (rel err %g)", kd[3], kd[0], err[2]);
        // The bucketed KL never exceeds the full one and grows as the buckets refine.
        CHECK(kd[1] <= kd[2] * (1 + 1e-6) && kd[2] <= kd[3] * (1 + 1e-6), "KD not increasing with k");
        CHECK(err[0] > err[1] && err[1] > err[2], "error not decreasing with k: %g %g %g", err[0], err[1], err[2]);
        CHECK(err[0] > 1e-3, "top-4 too close to be a test (%g)", err[0]);
    }
    es_model_free(&st);
}

static void write_tokenizer(const char *dir, int n) {
    char path[256], *text = malloc(32 * (size_t)n + 64);
    size_t at = (size_t)sprintf(text, "{\"model\":{\"vocab\":{");
    for (int i = 0; i < n; i++) at += (size_t)sprintf(text + at, "%s\"t%d\":%d", i ? "," : "", i, i);
    sprintf(text + at, "}},\"added_tokens\":[]}");
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    CHECK(es_write_atomic(path, text, strlen(text)) == ES_OK, "%s", es_last_error());
    free(text);
}

static void test_refusals(es_backend *be) {
    char in[128], big[128], out[128], tok[256];
    corpus c;
    path_in(in, sizeof in, "r_in.shard");
    path_in(big, sizeof big, "r_big.shard");
    path_in(out, sizeof out, "r_out.shard");
    make_corpus(&c, V);
    CHECK(write_corpus(in, &c, V, 0xabc) == ES_OK, "%s", es_last_error());
    make_corpus(&c, V + 16);
    CHECK(write_corpus(big, &c, V + 16, 0xabc) == ES_OK, "%s", es_last_error());

    CHECK(run_teacher(be, big, out, 4, 64, 0) == ES_ERR && mentions("vocabulary (64)", "(80"),
          "a teacher vocabulary smaller than the shard's: %s", es_last_error());
    CHECK(run_teacher(be, in, out, 0, 64, 0) == ES_ERR && mentions("k = 0", NULL), "k 0: %s", es_last_error());
    CHECK(run_teacher(be, in, out, V + 1, 64, 0) == ES_ERR && mentions("k = 65", NULL), "k > V: %s", es_last_error());
    char nodir[160];
    snprintf(nodir, sizeof nodir, "%s/none/out.shard", g_dir);
    CHECK(run_teacher(be, in, nodir, 4, 64, 0) == ES_ERR && mentions(nodir, NULL), "unwritable: %s", es_last_error());
    CHECK(access(out, F_OK) != 0, "a refused run left %s", out);

    // A tokenizer beside the weights must be the shards'.
    write_tokenizer(g_model, V);
    uint64_t fp;
    uint32_t tv;
    CHECK(es_tokenizer_fingerprint(&fp, &tv, g_model) == ES_OK && tv == V, "%s", es_last_error());
    char want[32], have[32];
    snprintf(want, sizeof want, "%016llx", (unsigned long long)fp);
    snprintf(have, sizeof have, "%016llx", 0xabcull);
    CHECK(run_teacher(be, in, out, 4, 64, 0) == ES_ERR && mentions(want, have) && mentions("tokenizer", NULL),
          "another tokenizer: %s", es_last_error());
    make_corpus(&c, V);
    CHECK(write_corpus(in, &c, V, fp) == ES_OK, "%s", es_last_error());
    CHECK(run_teacher(be, in, out, 4, 64, 0) == ES_OK, "the same tokenizer: %s", es_last_error());
    snprintf(tok, sizeof tok, "%s/tokenizer.json", g_model);
    remove(tok);

    char saved[160];
    snprintf(saved, sizeof saved, "%s", g_model);
    snprintf(g_model, sizeof g_model, "%s/missing", g_dir);
    CHECK(run_teacher(be, in, out, 4, 64, 0) == ES_ERR && mentions("missing/config.json", NULL), "no model: %s",
          es_last_error());
    snprintf(g_model, sizeof g_model, "%s", saved);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/es_teacher_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    path_in(g_model, sizeof g_model, "teacher");
    es_rng_seed(&g_rng, (uint64_t)getpid() ^ (uint64_t)(es_now() * 1e6));
    es_backend *be = es_backend_cpu_create();
    if (!be) {
        fprintf(stderr, "cpu backend: %s\n", es_last_error());
        return 1;
    }
    es_model m, tm;
    if (make_model(&m, be, 0, es_rng_u64(&g_rng), 30.0f) || es_model_save_hf(&m, g_model, 0) ||
        es_model_load_hf(&tm, g_model, be, 128, 0)) {
        fprintf(stderr, "teacher model: %s\n", es_last_error());
        return 1;
    }
    es_model_free(&m);
    test_entries_and_convergence(be, &tm);
    test_refusals(be);
    es_model_free(&tm);
    be->destroy(be);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    CHECK(system(cmd) == 0, "cleanup");
    TEST_DONE();
}
