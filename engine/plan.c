#include "plan.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "cuda_sizes.h"
#include "data_parallel.h"
#include "flops.h"
#include "lengths.h"
#include "optim.h"
#include "packer.h"
#include "shard.h"
#include "step_buffers.h"

#define DEFAULT_MFU 0.4
#define MAX_CAPACITY (1 << 24)  // batch.capacity's upper bound

// ---- the documents ----------------------------------------------------------

// What the plan packs: the run's training shards, or a length histogram with
// every example reading one shared run of zero tokens (only lengths matter).
typedef struct {
    es_dataset ds;
    int shards;
    es_lengths hist;
    uint32_t *zeros;         // (hist.longest)
    const uint32_t **toks;   // (hist.ndocs) each = zeros
    uint32_t longest;        // the longest example
} plan_data;

static int data_open(plan_data *d, const es_run_config *rc, const char *lengths_path) {
    memset(d, 0, sizeof *d);
    if (lengths_path) {
        if (es_lengths_load(&d->hist, lengths_path)) return ES_ERR;
        d->zeros = es_xcalloc(d->hist.longest, sizeof *d->zeros);
        d->toks = es_xmalloc(d->hist.ndocs * sizeof *d->toks);
        for (size_t i = 0; i < d->hist.ndocs; i++) d->toks[i] = d->zeros;
        d->longest = d->hist.longest;
        return ES_OK;
    }
    const char *paths[ES_MAX_SHARDS];
    for (int i = 0; i < rc->ntrain; i++) paths[i] = rc->train[i];
    if (es_dataset_open(&d->ds, paths, rc->ntrain, 0, 0)) return ES_ERR;
    d->shards = 1;
    for (size_t i = 0; i < d->ds.ndocs; i++) {
        es_doc_info info;
        es_dataset_doc(&d->ds, i, &info);
        if (info.len > d->longest) d->longest = info.len;
    }
    return ES_OK;
}

static size_t data_examples(const plan_data *d) { return d->shards ? d->ds.ndocs : d->hist.ndocs; }

static int data_packer(es_packer **p, const plan_data *d, const es_pack_config *pc) {
    if (d->shards) return es_packer_from_dataset(p, &d->ds, pc);
    return es_packer_create(p, d->hist.docs, d->toks, d->hist.ndocs, 0, pc);
}

static void data_close(plan_data *d) {
    if (d->shards) es_dataset_close(&d->ds);
    es_lengths_free(&d->hist);
    free(d->zeros);
    free(d->toks);
    memset(d, 0, sizeof *d);
}

// ---- memory -----------------------------------------------------------------

// What a rank's memory depends on besides the models.
typedef struct {
    int capacity;    // activations
    int accum;       // micro-batches of a rank's share of a step (the step's statistics)
    int max_tokens;  // loss and index buffers
    int val_tokens;  // whole validation sequences (0: no validation)
    int mode;        // es_model_create's trainable value: the recompute level
    int chunk;       // loss.chunk_rows
    int topk;        // offline teacher entries (0: none)
} mem_shape;

// The scratch the CUDA backend grows to in a step (cuda_sizes.h): the
// student's attention backward over the full capacity (every token its own
// document at most), or the offline teacher's loss over one chunk of rows
// (chunk: the rows the loss resolved loss.chunk_rows to). Under cuDNN's
// attention the scratch is the plan's own workspace, which only a GPU can
// tell; the tensor-core kernels' fp32 dQ sums are counted in its place.
static size_t cuda_scratch_bytes(const es_config *c, const mem_shape *s, int chunk) {
    size_t b = es_cuda_attn_bwd_scratch_plain(s->capacity, c->heads);
    if (es_cuda_attn_tc_dim(c->head_dim)) {
        es_cuda_attn_scratch a = es_cuda_attn_bwd_scratch(s->capacity, c->heads, c->head_dim, s->capacity);
        b = a.tiles + a.rowdot + a.dq;
    }
    size_t loss = (size_t)chunk * (size_t)s->topk * sizeof(float);
    return loss > b ? loss : b;
}

// Counts one rank's memory by making what es_trainer_init makes, with the
// same calls, on the counting backend.
static int count_memory(es_plan_mem *m, const es_plan *p, const mem_shape *s) {
    memset(m, 0, sizeof *m);
    es_backend *be = es_backend_count_create(p->dev.compute_bytes);
    if (p->dev.gpu) es_mem_tally(be, ES_MEM_WORKSPACE, ES_CUDA_HELD_BYTES, +1);  // held from creation on
    es_model student, teacher, view;
    es_optim opt;
    es_step_buffers buf;
    memset(&student, 0, sizeof student);
    memset(&teacher, 0, sizeof teacher);
    memset(&opt, 0, sizeof opt);
    memset(&buf, 0, sizeof buf);
    es_dp dp = {.nranks = p->gpus, .rank = 0, .sharded = p->zero1};
    void *scratch = NULL;
    double workspace = 0;  // all of it but the loss's
    int r = es_model_create(&student, &p->student, be, s->capacity, s->mode);
    if (r == ES_OK) {
        m->weights = (double)be->mem_now[ES_MEM_WEIGHTS];
        if (p->has_teacher) r = es_model_create(&teacher, &p->teacher, be, s->capacity, ES_MODEL_FORWARD_ONLY);
        m->teacher = (double)be->mem_now[ES_MEM_WEIGHTS] - m->weights;
    }
    if (r == ES_OK) {
        workspace = (double)be->mem_now[ES_MEM_WORKSPACE];  // the backend's and the models'
        r = es_step_buffers_create(&buf, be, s->capacity, s->accum, s->max_tokens, p->student.hidden, p->student.vocab,
                                   s->chunk, p->has_teacher ? p->teacher.hidden : 0, s->topk);
        m->lm_head = (double)be->mem_now[ES_MEM_WORKSPACE] - workspace;
    }
    if (r == ES_OK) r = es_dp_optim_create(&opt, &dp, &student);
    if (r == ES_OK) {
        m->master = opt.master ? (double)(dp.hi - dp.lo) * sizeof(float) : 0;
        m->moments = (double)be->mem_now[ES_MEM_OPTIM] - m->master;
    }
    if (r == ES_OK && p->dev.gpu) {
        size_t bytes = cuda_scratch_bytes(&p->student, s, buf.loss.chunk);
        scratch = be->alloc(be, bytes / sizeof(float), ES_DT_F32, ES_MEM_WORKSPACE);
        workspace += (double)bytes;
    }
    if (r == ES_OK && s->val_tokens > 0) {  // validation makes its view over the trained state
        double before = (double)be->mem_now_total;
        r = es_model_create_view(&view, &student, s->val_tokens);
        m->validation = (double)be->mem_now_total - before;
        if (r == ES_OK) es_model_free(&view);
    }
    if (r == ES_OK) {
        m->workspace = workspace;
        m->grads = (double)be->mem_now[ES_MEM_GRADS];
        m->acts = (double)be->mem_now[ES_MEM_ACTS];
        m->index = (double)be->mem_now[ES_MEM_INDEX];
        for (int k = 0; k < ES_MEM_KINDS; k++) m->kinds[k] = (double)be->mem_peak[k];
        m->total = (double)be->mem_peak_total;
    }
    if (scratch) be->free(be, scratch);
    es_step_buffers_free(&buf, be);
    es_optim_free(&opt, be);
    if (teacher.be) es_model_free(&teacher);
    if (student.be) es_model_free(&student);
    be->destroy(be);
    return r;
}

static double total_at(const es_plan *p, mem_shape s, int capacity) {
    s.capacity = capacity;
    s.max_tokens = s.val_tokens > capacity ? s.val_tokens : capacity;
    es_plan_mem m;
    return count_memory(&m, p, &s) == ES_OK ? m.total : INFINITY;
}

// The largest capacity, in steps of the packer's rounding, at which the
// run's memory still fits (memory grows with the capacity); 0 when none.
static int largest_fitting(const es_plan *p, const mem_shape *s) {
    int lo = 0, hi = MAX_CAPACITY / ES_CAPACITY_ROUND;  // lo fits (vacuously), find the last k that does
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (total_at(p, *s, mid * ES_CAPACITY_ROUND) <= p->usable) lo = mid;
        else hi = mid - 1;
    }
    return lo * ES_CAPACITY_ROUND;
}

// ---- one column -------------------------------------------------------------

// FLOPs of epoch 0's optimizer steps, per micro-batch as the trainer counts
// them, summed per step and then over the steps as the trainer sums them.
static void epoch_flops(es_plan_col *c, es_packer *pk, const es_plan *p) {
    const es_config *tc = p->has_teacher ? &p->teacher : NULL;
    int n = c->steps.step_mbs;
    es_microbatch *mbs = es_xcalloc((size_t)n, sizeof *mbs);
    for (int a = 0; a < n; a++) es_microbatch_alloc(&mbs[a], c->capacity);
    es_plan_flops *f = &c->flops;
    for (int st = 0; st < c->steps.steps_per_epoch; st++) {
        es_packer_next_step(pk, mbs, (size_t)n);
        double step = 0;
        for (int a = 0; a < n; a++) {
            const es_microbatch *mb = &mbs[a];
            if (mb->n == 0) continue;
            es_flops fs = es_flops_forward(&p->student, mb->cu_seqlens, mb->ndocs, mb->nsup);
            f->student_fwd += es_flops_total(fs);
            f->student_bwd += 2 * es_flops_total(fs);
            f->attention += 3 * fs.attention;
            f->lm_head += 3 * fs.head;
            if (tc) {
                es_flops ft = es_flops_forward(tc, mb->cu_seqlens, mb->ndocs, mb->nsup);
                f->teacher_fwd += es_flops_total(ft);
                f->attention += ft.attention;
                f->lm_head += ft.head;
            }
            step += es_flops_train(&p->student, tc, mb->cu_seqlens, mb->ndocs, mb->nsup);
        }
        f->total += step;
    }
    c->flops_step = c->steps.steps_per_epoch ? f->total / c->steps.steps_per_epoch : 0;
    for (int a = 0; a < n; a++) es_microbatch_free(&mbs[a]);
    free(mbs);
}

static int plan_column(es_plan_col *c, const es_plan *p, const es_run_config *rc, const plan_data *d,
                       const es_pack_config *pc, mem_shape s) {
    es_packer *pk;
    if (data_packer(&pk, d, pc)) return ES_ERR;
    c->r = pc->ratio;
    c->capacity = es_packer_capacity(pk);
    c->longest = es_packer_longest(pk);
    c->kept = (double)es_packer_kept_tokens(pk);
    c->supervised = (double)es_packer_supervised_tokens(pk);
    c->batches = es_packer_epoch_batches(pk);
    if (c->supervised == 0) {
        es_packer_free(pk);
        return es_fail("supervise '%s' with trunc.lsp %g (mode %s) leaves no supervised token in the training "
                       "data: the kept spans hold none of the supervised sections",
                       rc->supervise, c->r, rc->trunc_mode);
    }
    es_run_steps_plan(&c->steps, rc, pk, data_examples(d));
    c->accum = (c->steps.step_mbs + p->gpus - 1) / p->gpus;
    epoch_flops(c, pk, p);
    es_packer_free(pk);
    c->seconds = c->flops.total / (p->gpus * p->dev.peak_flops * p->mfu);

    s.capacity = c->capacity;
    s.accum = c->accum;
    c->max_tokens = s.max_tokens = s.val_tokens > c->capacity ? s.val_tokens : c->capacity;
    if (p->student.arch == ES_ARCH_GPT2 && c->max_tokens > p->student.max_pos)
        return es_fail("batch.capacity: micro-batches of %d tokens exceed the student's %d learned positions",
                       c->max_tokens, p->student.max_pos);
    for (int level = 0; level < 3; level++) {
        s.mode = ES_MODEL_TRAIN + level;
        if (count_memory(&c->mem[level], p, &s)) return ES_ERR;
    }
    s.mode = ES_MODEL_TRAIN + (int)p->recompute;
    c->fits = c->mem[p->recompute].total <= p->usable;
    c->max_capacity = largest_fitting(p, &s);
    return ES_OK;
}

// ---- the plan ---------------------------------------------------------------

static int load_model(es_config *cfg, const char *dir, const char *preset) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/config.json", dir);
    return es_config_load(cfg, dir[0] ? path : preset);
}

// Whole validation sequences, as es_trainer_init sizes them (0: none).
static int validation_tokens(int *tokens, const es_run_config *rc, const plan_data *d) {
    *tokens = 0;
    if (!rc->nval) return ES_OK;
    const char *paths[ES_MAX_SHARDS];
    for (int i = 0; i < rc->nval; i++) paths[i] = rc->val[i];
    es_dataset val;
    if (es_dataset_open(&val, paths, rc->nval, d->shards ? d->ds.vocab : 0, d->shards ? d->ds.fingerprint : 0))
        return ES_ERR;
    es_pack_config pc;
    es_packer *vp = NULL;
    int r = es_run_pack_config(&pc, rc, 0, 1, 1);
    if (r == ES_OK) r = es_packer_from_dataset(&vp, &val, &pc);
    if (r == ES_OK) *tokens = es_packer_capacity(vp);
    es_packer_free(vp);
    es_dataset_close(&val);
    return r;
}

// The run's r fits no capacity that holds its longest kept example: the one
// line says by how much, and whether recomputation would make it fit.
static int no_fit(const es_plan *p, const es_plan_col *c, const es_run_config *rc, mem_shape s) {
    int smallest = (c->longest + ES_CAPACITY_ROUND - 1) / ES_CAPACITY_ROUND * ES_CAPACITY_ROUND;
    s.mode = ES_MODEL_TRAIN + (int)p->recompute;
    double need = total_at(p, s, smallest);
    const es_plan_mem *m = &c->mem[p->recompute];
    double state = m->weights + m->master + m->grads + m->moments + m->teacher;
    char full[96] = "";
    if (p->recompute != ES_RECOMPUTE_FULL) {
        s.mode = ES_MODEL_TRAIN_RECOMPUTE_FULL;
        snprintf(full, sizeof full, "; with run.recompute=full %.1f GiB", total_at(p, s, smallest) / ES_GIB);
    }
    return es_fail("the run does not fit %s at any capacity: micro-batches of %d tokens (the longest kept example, "
                   "r = %g) need %.1f GiB per device of %.1f GiB usable, %.1f GiB of it before activations "
                   "(weights, master weights, gradients, optimizer state, teacher)%s",
                   p->dev.name, smallest, (double)rc->lsp, need / ES_GIB, p->usable / ES_GIB, state / ES_GIB, full);
}

int es_plan_make(es_plan *p, const es_run_config *rc, const es_device *dev, int gpus, double mfu,
                 const char *lengths_path) {
    memset(p, 0, sizeof *p);
    p->dev = *dev;
    p->gpus = gpus;
    p->zero1 = rc->zero1 && gpus > 1;
    p->usable = dev->memory - dev->reserved;
    int mode;
    if (es_model_train_mode(&mode, rc->recompute)) return ES_ERR;
    p->recompute = (es_recompute)(mode - ES_MODEL_TRAIN);
    if (load_model(&p->student, rc->student_path, rc->student_preset)) return ES_ERR;
    if (rc->teacher_path[0] || rc->teacher_preset[0]) {
        if (load_model(&p->teacher, rc->teacher_path, rc->teacher_preset)) return ES_ERR;
        p->has_teacher = 1;
        if (p->teacher.vocab != p->student.vocab)
            return es_fail("%s: the teacher's vocabulary (%d) differs from the student's (%d)",
                           rc->teacher_path[0] ? rc->teacher_path : rc->teacher_preset, p->teacher.vocab,
                           p->student.vocab);
    }
    p->mfu = mfu;
    if (p->mfu > 0) {
        snprintf(p->mfu_source, sizeof p->mfu_source, "given");
    } else {
        p->mfu = es_device_mfu_on_record(p->mfu_source, sizeof p->mfu_source, dev->name,
                                         es_config_param_count(&p->student));
        if (p->mfu <= 0) {
            p->mfu = DEFAULT_MFU;
            snprintf(p->mfu_source, sizeof p->mfu_source, "assumed: none measured on %s on record", dev->name);
        }
    }

    plan_data d;
    if (data_open(&d, rc, lengths_path)) return ES_ERR;
    p->examples = data_examples(&d);
    p->tokens = d.shards ? d.ds.ntokens : d.hist.ntokens;
    if (d.shards) snprintf(p->data_source, sizeof p->data_source, "%d training shard(s), first %s", rc->ntrain,
                           rc->train[0]);
    else snprintf(p->data_source, sizeof p->data_source, "length histogram %s (%s)", lengths_path, d.hist.source);
    int r = ES_OK;
    if (d.shards && d.ds.vocab > (uint32_t)p->student.vocab)
        r = es_fail("%s: token ids reach %u but the student's vocabulary has %d entries", rc->train[0], d.ds.vocab,
                    p->student.vocab);
    mem_shape s = {.chunk = rc->chunk_rows};
    if (r == ES_OK) r = validation_tokens(&s.val_tokens, rc, &d);
    // an offline teacher's top-k is read from the shards when no online teacher is given
    if (d.shards && !p->has_teacher && d.ds.topk > 0 && rc->alpha < 1) s.topk = d.ds.topk;
    es_pack_config pc, full;
    if (r == ES_OK) r = es_run_pack_config(&pc, rc, 0, 1, 0);
    if (r == ES_OK) {
        es_pack_config_untruncated(&full, &pc, d.longest);
        r = plan_column(&p->col[0], p, rc, &d, &pc, s);
    }
    if (r == ES_OK) r = plan_column(&p->col[1], p, rc, &d, &full, s);
    data_close(&d);
    if (r == ES_OK && p->col[0].max_capacity < p->col[0].longest) r = no_fit(p, &p->col[0], rc, s);
    return r;
}
