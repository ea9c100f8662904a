// The offline teacher's core: pack whole examples, run the teacher forward,
// and turn the LM head's output into top-k log-probabilities a chunk of rows
// at a time, so the logits of a whole batch never exist at once.
#include "teacher.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "metrics.h"
#include "model.h"
#include "packer.h"
#include "shard.h"
#include "tokenizer_id.h"

#define MAX_TOPK 1024           // the shard format's limit
#define CHUNK_ELEMS (1 << 24)   // logits per chunk: 64 MiB of fp32 on the host
#define PROGRESS_EVERY_S 5.0

// Heap order for the selection: an entry is worse with a smaller logit, or
// the same logit and a larger id (so ties list the smaller id first).
static int worse(float xa, uint32_t ia, float xb, uint32_t ib) {
    return xa < xb || (xa == xb && ia > ib);
}

// Restores the min-heap (worst at the root) of n entries below i.
static void sift_down(float *hx, uint32_t *hi, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && worse(hx[l], hi[l], hx[m], hi[m])) m = l;
        if (r < n && worse(hx[r], hi[r], hx[m], hi[m])) m = r;
        if (m == i) return;
        float tx = hx[i];
        uint32_t ti = hi[i];
        hx[i] = hx[m], hi[i] = hi[m];
        hx[m] = tx, hi[m] = ti;
        i = m;
    }
}

// Top-k of one row of logits x (V) as log-probabilities (log-softmax over all
// V entries), most likely first: a k-entry heap, O(V log k). Only ids < nids
// are listed; ids past the tokenizer's vocabulary (a padded embedding) count
// in the normalisation alone. ES_ERR when the row is not finite.
static int row_topk(uint32_t *ids, float *logp, const float *x, int V, int nids, int k) {
    float hx[MAX_TOPK];
    uint32_t hi[MAX_TOPK];
    double mx = -INFINITY, se = 0;
    for (int v = 0; v < V; v++) mx = x[v] > mx ? x[v] : mx;
    for (int v = 0; v < V; v++) se += exp((double)x[v] - mx);
    double lse = mx + log(se);
    if (!isfinite(lse)) return ES_ERR;
    for (int j = 0; j < k; j++) hx[j] = x[j], hi[j] = (uint32_t)j;
    for (int j = k / 2 - 1; j >= 0; j--) sift_down(hx, hi, k, j);
    for (uint32_t v = (uint32_t)k; v < (uint32_t)nids; v++)
        if (worse(hx[0], hi[0], x[v], v)) {
            hx[0] = x[v], hi[0] = v;
            sift_down(hx, hi, k, 0);
        }
    for (int n = k; n > 0; n--) {  // the worst leaves first and goes last
        ids[n - 1] = hi[0];
        logp[n - 1] = (float)((double)hx[0] - lse);  // <= 0: x <= max <= lse
        hx[0] = hx[n - 1], hi[0] = hi[n - 1];
        sift_down(hx, hi, n - 1, 0);
    }
    return ES_OK;
}

// Everything one run holds, freed together.
typedef struct {
    es_backend *be;
    es_dataset ds;
    es_packer *packer;
    es_model m;
    es_microbatch mb;
    void *d_tokens, *d_pos, *d_cu, *d_logits;  // device: (cap) x2, (cap + 1) int32; (R, V)
    float *logits;                             // host (R, V)
    size_t *doc_off;                           // (ndocs) first token of each example
    size_t *dest;                              // (cap) output position of each packed row
    es_doc_info *docs;                         // (ndocs) the output shard's index
    uint32_t *tokens, *ids;                    // (ntokens), (ntokens, k)
    float *logp;                               // (ntokens, k)
} teacher_job;

static void job_free(teacher_job *j) {
    es_backend *be = j->be;
    void *bufs[] = {j->d_tokens, j->d_pos, j->d_cu, j->d_logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) be->free(be, bufs[i]);
    if (j->m.be) es_model_free(&j->m);
    if (j->mb.tokens) es_microbatch_free(&j->mb);
    if (j->packer) es_packer_free(j->packer);
    if (j->ds.shards) es_dataset_close(&j->ds);
    free(j->logits);
    free(j->doc_off);
    free(j->dest);
    free(j->docs);
    free(j->tokens);
    free(j->ids);
    free(j->logp);
}

// The teacher must cover the shards' tokens and use their tokenizer.
static int check_teacher(es_config *cfg, const es_teacher_opts *o, const es_dataset *ds) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/config.json", o->model_dir);
    if (es_config_load(cfg, path)) return ES_ERR;
    if ((uint32_t)cfg->vocab < ds->vocab)
        return es_fail("%s: the teacher's vocabulary (%d) is smaller than the shards' (%u, %s)", path,
                       cfg->vocab, ds->vocab, o->shards[0]);
    struct stat sb;
    snprintf(path, sizeof path, "%s/tokenizer.json", o->model_dir);
    if (stat(path, &sb) != 0) return ES_OK;  // weights without a tokenizer: the vocabulary check stands
    uint64_t fp;
    uint32_t tv;
    if (es_tokenizer_fingerprint(&fp, &tv, o->model_dir)) return ES_ERR;
    if (fp != ds->fingerprint)
        return es_fail("%s: the teacher's tokenizer (fingerprint %016llx) differs from the shards' (%016llx, %s)",
                       path, (unsigned long long)fp, (unsigned long long)ds->fingerprint, o->shards[0]);
    return ES_OK;
}

// Copies the examples (index and tokens) into the output's arrays.
static void copy_examples(teacher_job *j) {
    const es_dataset *ds = &j->ds;
    size_t at = 0;
    for (size_t i = 0; i < ds->ndocs; i++) {
        const uint32_t *t = es_dataset_doc(ds, i, &j->docs[i]);
        j->doc_off[i] = at;
        memcpy(j->tokens + at, t, j->docs[i].len * sizeof *t);
        at += j->docs[i].len;
    }
}

// Top-k of every row of the micro-batch the model just ran, R rows at a time.
static int topk_rows(teacher_job *j, const char *dir, int R, int k) {
    es_backend *be = j->be;
    const es_microbatch *mb = &j->mb;
    int C = j->m.cfg.hidden, V = j->m.cfg.vocab, nids = (int)j->ds.vocab;
    for (int d = 0; d < mb->ndocs; d++)
        for (int t = mb->cu_seqlens[d]; t < mb->cu_seqlens[d + 1]; t++)
            j->dest[t] = j->doc_off[mb->doc_ids[d]] + (size_t)mb->src[t];
    const void *lm = es_model_lm_head(&j->m);
    for (int r0 = 0; r0 < mb->n; r0 += R) {
        int r = mb->n - r0 < R ? mb->n - r0 : R;
        const void *h = be->offset(be, j->m.hidden, (size_t)r0 * C, ES_DT_COMPUTE);
        be->matmul_fwd(be, j->d_logits, h, lm, NULL, r, C, V);  // (r, V)
        be->download(be, j->logits, j->d_logits, (size_t)r * V, ES_DT_COMPUTE);
        int bad = -1;
#pragma omp parallel for schedule(dynamic, 4)
        for (int i = 0; i < r; i++) {
            size_t o = j->dest[r0 + i] * (size_t)k;
            if (row_topk(j->ids + o, j->logp + o, j->logits + (size_t)i * V, V, nids, k) != ES_OK) {
#pragma omp critical
                bad = i;
            }
        }
        if (bad >= 0) {
            int t = r0 + bad, d = 0;
            while (mb->cu_seqlens[d + 1] <= t) d++;
            return es_fail("%s: the teacher's logits are not finite (example %lld, position %d)", dir,
                           (long long)mb->doc_ids[d], mb->src[t]);
        }
    }
    return ES_OK;
}

static void print_progress(size_t done, size_t total, double elapsed) {
    double rate = done / (elapsed > 0 ? elapsed : 1e-9);
    char eta[32];
    es_format_duration(eta, sizeof eta, rate > 0 ? (double)(total - done) / rate : 0);
    fprintf(stderr, "teacher: %zu/%zu examples | %.1f examples/s | ETA %s\n", done, total, rate, eta);
    fflush(stderr);
}

static int run(teacher_job *j, const es_teacher_opts *o) {
    es_backend *be = j->be;
    if (o->nshards < 1) return es_fail("teacher: no input shards");
    if (o->batch_tokens < 1 || o->chunk_rows < 0)
        return es_fail("teacher: batch tokens %d must be >= 1 and chunk rows %d >= 0", o->batch_tokens, o->chunk_rows);
    if (es_dataset_open(&j->ds, o->shards, o->nshards, 0, 0)) return ES_ERR;
    const es_dataset *ds = &j->ds;
    if (o->k < 1 || o->k > MAX_TOPK || (uint32_t)o->k > ds->vocab)
        return es_fail("teacher: k = %d must be in 1..%d and at most the shards' vocabulary (%u)", o->k, MAX_TOPK,
                       ds->vocab);
    es_config cfg;
    if (check_teacher(&cfg, o, ds)) return ES_ERR;
    uint32_t maxlen = 0;
    for (size_t i = 0; i < ds->ndocs; i++) {
        es_doc_info d;
        es_dataset_doc(ds, i, &d);
        maxlen = d.len > maxlen ? d.len : maxlen;
    }
    if (cfg.arch == ES_ARCH_GPT2 && maxlen > (uint32_t)cfg.max_pos)
        return es_fail("%s: an example of %u tokens exceeds the teacher's %d learned positions", o->model_dir, maxlen,
                       cfg.max_pos);
    // Whole examples: r = 1, and a batch always fits the longest one.
    es_pack_config pc;
    es_pack_config_defaults(&pc);
    pc.capacity = (uint32_t)o->batch_tokens > maxlen ? o->batch_tokens : (int)maxlen;
    if (es_packer_from_dataset(&j->packer, ds, &pc)) return ES_ERR;
    int cap = es_packer_capacity(j->packer);
    if (es_model_load_hf(&j->m, o->model_dir, be, cap, 0)) return ES_ERR;
    int V = j->m.cfg.vocab, k = o->k;
    int R = o->chunk_rows > 0 ? o->chunk_rows : CHUNK_ELEMS / V;
    R = R < 1 ? 1 : R > cap ? cap : R;
    j->d_tokens = be->alloc(be, (size_t)cap, ES_DT_I32, ES_MEM_INDEX);
    j->d_pos = be->alloc(be, (size_t)cap, ES_DT_I32, ES_MEM_INDEX);
    j->d_cu = be->alloc(be, (size_t)cap + 1, ES_DT_I32, ES_MEM_INDEX);
    j->d_logits = be->alloc(be, (size_t)R * V, ES_DT_COMPUTE, ES_MEM_WORKSPACE);
    if (!j->d_tokens || !j->d_pos || !j->d_cu || !j->d_logits) return ES_ERR;
    es_microbatch_alloc(&j->mb, cap);
    j->logits = es_xmalloc((size_t)R * V * sizeof *j->logits);
    j->dest = es_xmalloc((size_t)cap * sizeof *j->dest);
    j->doc_off = es_xmalloc(ds->ndocs * sizeof *j->doc_off);
    j->docs = es_xmalloc(ds->ndocs * sizeof *j->docs);
    j->tokens = es_xmalloc(ds->ntokens * sizeof *j->tokens);
    j->ids = es_xmalloc(ds->ntokens * (size_t)k * sizeof *j->ids);
    j->logp = es_xmalloc(ds->ntokens * (size_t)k * sizeof *j->logp);
    copy_examples(j);

    size_t steps = es_packer_steps_per_epoch(j->packer), done = 0, rows = 0;
    double t0 = es_now(), shown = t0;
    for (size_t s = 0; s < steps; s++) {
        es_microbatch *mb = &j->mb;
        es_packer_next(j->packer, mb);
        if (mb->n == 0) continue;
        be->upload(be, j->d_tokens, mb->tokens, (size_t)mb->n, ES_DT_I32);
        be->upload(be, j->d_pos, mb->pos, (size_t)mb->n, ES_DT_I32);
        be->upload(be, j->d_cu, mb->cu_seqlens, (size_t)mb->ndocs + 1, ES_DT_I32);
        es_model_batch b = {mb->n, mb->ndocs, j->d_tokens, j->d_pos, j->d_cu};
        if (es_model_forward(&j->m, &b) || topk_rows(j, o->model_dir, R, k)) return ES_ERR;
        done += (size_t)mb->ndocs;
        rows += (size_t)mb->n;
        double now = es_now();
        if (o->progress && now - shown >= PROGRESS_EVERY_S) {
            print_progress(done, ds->ndocs, now - t0);
            shown = now;
        }
    }
    // The packer hands out every example once per epoch; anything else would
    // leave positions of the output unwritten.
    if (done != ds->ndocs || rows != ds->ntokens)
        return es_fail("teacher: packed %zu of %zu examples (%zu of %zu tokens)", done, ds->ndocs, rows, ds->ntokens);
    es_shard_content c = {.vocab = ds->vocab,
                          .fingerprint = ds->fingerprint,
                          .docs = j->docs,
                          .ndocs = ds->ndocs,
                          .tokens = j->tokens,
                          .ntokens = ds->ntokens,
                          .topk = (uint32_t)k,
                          .topk_ids = j->ids,
                          .topk_logp = j->logp};
    return es_shard_write(o->out, &c);
}

int es_teacher_run(es_backend *be, const es_teacher_opts *o) {
    teacher_job j;
    memset(&j, 0, sizeof j);
    j.be = be;
    int rc = run(&j, o);
    job_free(&j);
    return rc;
}
