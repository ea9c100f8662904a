#include "train.h"

#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "flops.h"
#include "tokenizer_id.h"

static int open_dataset(es_dataset *ds, const char (*paths)[512], int n, uint32_t vocab, uint64_t fp) {
    const char *p[ES_MAX_SHARDS];
    for (int i = 0; i < n; i++) p[i] = paths[i];
    return es_dataset_open(ds, p, n, vocab, fp);
}

int es_run_pack_config(es_pack_config *pc, const es_run_config *rc, int rank, int nranks, int full) {
    es_pack_config_defaults(pc);
    if (es_trunc_mode_parse(&pc->mode, rc->trunc_mode) || es_trunc_window_parse(&pc->window, rc->trunc_window) ||
        es_supervision_parse(pc->weights, rc->supervise))
        return ES_ERR;
    pc->ratio = full ? 1.0 : rc->lsp;
    pc->drop_answer = full ? 0 : rc->drop_answer;
    pc->label_mask = full ? 0.0 : rc->label_mask;
    pc->capacity = full ? 0 : rc->capacity;
    pc->capacity_factor = full ? 1 : rc->capacity_factor;  // validation: one longest document at a time
    pc->shuffle_window = rc->shuffle_window;
    pc->seed = rc->seed;
    pc->rank = rank;
    pc->nranks = nranks;
    return ES_OK;
}

// The student: from a checkpoint, a Hugging Face directory, or a preset.
static int load_student(es_trainer *t, const char *dir, int max_tokens) {
    const es_run_config *rc = &t->rc;
    int mode;  // trainable, at the run's recompute level
    if (es_model_train_mode(&mode, rc->recompute)) return ES_ERR;
    char path[PATH_MAX];
    es_config cfg;  // the run's student: a checkpoint of another model is refused before it is loaded
    snprintf(path, sizeof path, "%s/config.json", rc->student_path);
    if (es_config_load(&cfg, rc->student_path[0] ? path : rc->student_preset)) return ES_ERR;
    if (dir) {
        if (es_ckpt_check_model(dir, &cfg)) return ES_ERR;
        return es_model_load_hf(&t->student, dir, t->be, max_tokens, mode);
    }
    if (rc->student_path[0]) return es_model_load_hf(&t->student, rc->student_path, t->be, max_tokens, mode);
    if (es_model_create(&t->student, &cfg, t->be, max_tokens, mode)) return ES_ERR;
    es_model_init_random(&t->student, rc->seed);
    return ES_OK;
}

// Tokenizer of the run: shards and models must agree with it.
static int run_tokenizer(uint64_t *fp, uint32_t *vocab, const es_run_config *rc) {
    const char *dir = rc->tokenizer[0] ? rc->tokenizer : rc->student_path;
    *fp = 0;
    *vocab = 0;
    if (!dir[0]) return ES_OK;  // a random preset without a tokenizer: checked against shards only
    char path[PATH_MAX];
    struct stat sb;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (stat(path, &sb) != 0) {
        if (rc->tokenizer[0]) return es_fail("%s: missing (tokenizer)", path);
        return ES_OK;  // a student directory without a tokenizer: rely on the shards
    }
    return es_tokenizer_fingerprint(fp, vocab, dir);
}

static int check_teacher_tokenizer(const es_trainer *t, uint64_t fp) {
    char path[PATH_MAX];
    struct stat sb;
    snprintf(path, sizeof path, "%s/tokenizer.json", t->rc.teacher_path);
    if (!fp || stat(path, &sb) != 0) return ES_OK;
    uint64_t tfp;
    uint32_t tv;
    if (es_tokenizer_fingerprint(&tfp, &tv, t->rc.teacher_path)) return ES_ERR;
    if (tfp != fp)
        return es_fail("%s: the teacher's tokenizer (fingerprint %016llx) differs from the run's (%016llx)", path,
                       (unsigned long long)tfp, (unsigned long long)fp);
    return ES_OK;
}

// Micro-batches per optimizer step, all ranks together: the step target over
// the average micro-batch of epoch 0, so that neither the number of ranks nor
// the epoch a run resumes in changes the batch, the steps or the schedule.
void es_run_steps_plan(es_run_steps *s, const es_run_config *rc, const es_packer *p, size_t ndocs) {
    size_t all_mb = es_packer_epoch_batches(p);
    double items = rc->step_tokens ? (double)es_packer_kept_tokens(p) : (double)ndocs;
    double target = rc->step_tokens ? rc->step_tokens : rc->step_examples;
    long g = lround(target / (items / (double)all_mb));
    if (g < 1) g = 1;
    if ((size_t)g > all_mb) g = (long)all_mb;
    s->step_mbs = (int)g;
    s->steps_per_epoch = (int)(all_mb / (size_t)s->step_mbs);
    s->total_steps = rc->steps ? rc->steps : rc->epochs * s->steps_per_epoch;
}

static void print_plan(const es_trainer *t) {
    const es_backend *be = t->be;
    printf("run config:\n%s\n", t->config_json);
    printf("student: %s, %d layers, hidden %d, %lld parameters\n", t->student.cfg.model_type,
           t->student.cfg.layers, t->student.cfg.hidden, es_config_param_count(&t->student.cfg));
    if (t->has_teacher)
        printf("teacher: %s, %d layers, hidden %d, %lld parameters (forward only)\n", t->teacher.cfg.model_type,
               t->teacher.cfg.layers, t->teacher.cfg.hidden, es_config_param_count(&t->teacher.cfg));
    printf("data: %zu training examples, %zu tokens; r = %.3g keeps %zu tokens, %zu supervised (per epoch, all ranks)\n",
           t->train.ndocs, t->train.ntokens, t->pack.ratio, es_packer_kept_tokens(t->packer),
           es_packer_supervised_tokens(t->packer));
    printf("batching: micro-batch capacity %d tokens, %d micro-batches per step (at most %d per rank), %d rank(s); "
           "%d steps per epoch, %d steps\n",
           t->capacity, t->step_mbs, t->accum, t->dist->size, t->steps_per_epoch, t->total_steps);
    int buckets, during;
    es_dp_buckets(&buckets, &during, &t->dp, &t->student);
    if (buckets) printf("gradient all-reduce: %d buckets, %d of them during backward\n", buckets, during);
    printf("device: %s; attention: %s; MFU against %.0f TFLOP/s (%s)\n", be->name, be->attention,
           be->peak_flops / 1e12, be->peak_source);
    printf("memory plan (%s):", be->name);
    for (int k = 0; k < ES_MEM_KINDS; k++) printf(" %s %.1f MiB%s", es_mem_kind_names[k], be->mem_now[k] / 1048576.0,
                                                  k + 1 < ES_MEM_KINDS ? "," : "\n");
    if (t->resumed) printf("resuming from %s at step %d\n", t->resumed_from, t->st.step);
    fflush(stdout);
}

int es_trainer_init(es_trainer *t, const es_run_config *rc, const es_dist *dist, int fresh, int verbose) {
    memset(t, 0, sizeof *t);
    t->rc = *rc;
    t->dist = dist;
    if (es_run_config_validate(rc) || es_schedule_parse(&t->sched, rc->schedule)) return ES_ERR;
    t->config_json = es_run_config_to_json(rc);
    if (es_dist_check_same(dist, "run config", t->config_json)) return ES_ERR;

    if (rc->threads > 0) {
        omp_set_num_threads(rc->threads);
    } else if (dist->size > 1) {  // ranks sharing a machine share its cores
        const char *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
        int nlocal = local ? atoi(local) : 1, ncores = omp_get_num_procs();
        if (nlocal > 1) omp_set_num_threads(ncores / nlocal > 1 ? ncores / nlocal : 1);
    }
    t->be = es_backend_create(rc->device);
    if (!t->be) return ES_ERR;
    if (es_dp_init(&t->dp, t->be, dist, rc->zero1, rc->overlap_comm, (size_t)rc->comm_bucket)) return ES_ERR;

    uint64_t fp;
    uint32_t tok_vocab;
    if (run_tokenizer(&fp, &tok_vocab, rc)) return ES_ERR;
    if (open_dataset(&t->train, rc->train, rc->ntrain, tok_vocab, fp)) return ES_ERR;
    if (rc->nval) {
        if (open_dataset(&t->val, rc->val, rc->nval, t->train.vocab, t->train.fingerprint)) return ES_ERR;
        t->has_val = 1;
    }
    char fps[64];
    snprintf(fps, sizeof fps, "%016llx %zu %zu", (unsigned long long)t->train.fingerprint, t->train.ndocs,
             t->train.ntokens);
    if (es_dist_check_same(dist, "training data (fingerprint, examples, tokens)", fps)) return ES_ERR;

    if (es_run_pack_config(&t->pack, rc, dist->rank, dist->size, 0) ||
        es_run_pack_config(&t->val_pack, rc, dist->rank, dist->size, 1))
        return ES_ERR;
    if (es_packer_from_dataset(&t->packer, &t->train, &t->pack)) return ES_ERR;
    if (es_packer_supervised_tokens(t->packer) == 0)
        return es_fail("supervise '%s' with trunc.lsp %g (mode %s) leaves no supervised token in the training data: "
                       "the kept spans hold none of the supervised sections",
                       rc->supervise, rc->lsp, rc->trunc_mode);
    t->capacity = es_packer_capacity(t->packer);
    es_run_steps rs;
    es_run_steps_plan(&rs, rc, t->packer, t->train.ndocs);
    t->step_mbs = rs.step_mbs;
    t->accum = (t->step_mbs + dist->size - 1) / dist->size;
    t->steps_per_epoch = rs.steps_per_epoch;
    t->total_steps = rs.total_steps;
    int max_tokens = t->capacity;
    if (t->has_val) {  // validation runs whole sequences: size the activations for them
        es_packer *vp;
        if (es_packer_from_dataset(&vp, &t->val, &t->val_pack)) return ES_ERR;
        if (es_packer_capacity(vp) > max_tokens) max_tokens = es_packer_capacity(vp);
        t->val_pack.capacity = es_packer_capacity(vp);
        es_packer_free(vp);
    }

    // resume from the newest checkpoint of the run directory
    // (rank 0 verifies the checkpoints of the shared run directory)
    char ckpt[600];
    double found = 0;  // es_ckpt_pick's answer, sent to every rank
    if (dist->rank == 0)
        found = es_ckpt_clean(rc->out, fresh) ? ES_ERR : fresh ? 0 : es_ckpt_pick(ckpt, sizeof ckpt, rc->out);
    es_dist_bcast(dist, &found, sizeof found);
    if (found < 0) return dist->rank == 0 ? ES_ERR : es_fail("rank 0 could not resume from %s (see its message)", rc->out);
    if (found) {
        es_dist_bcast(dist, ckpt, sizeof ckpt);
        t->resumed = 1;
        snprintf(t->resumed_from, sizeof t->resumed_from, "%s", ckpt);
    }
    // training activations follow the (truncated) capacity; validation runs
    // whole sequences through a forward-only view (one layer's activations)
    if (load_student(t, t->resumed ? ckpt : NULL, t->capacity)) return ES_ERR;
    const es_config *sc = &t->student.cfg;
    if (t->train.vocab > (uint32_t)sc->vocab)
        return es_fail("%s: token ids reach %u but the student's vocabulary has %d entries", rc->train[0],
                       t->train.vocab, sc->vocab);
    if (sc->arch == ES_ARCH_GPT2 && max_tokens > sc->max_pos)
        return es_fail("batch.capacity: micro-batches of %d tokens exceed the student's %d learned positions",
                       max_tokens, sc->max_pos);
    if (rc->teacher_path[0] || rc->teacher_preset[0]) {
        if (rc->teacher_path[0]) {
            if (es_model_load_hf(&t->teacher, rc->teacher_path, t->be, t->capacity, 0)) return ES_ERR;
        } else {  // random weights of the teacher's shape: for cost measurements only
            es_config tc;
            if (es_config_load(&tc, rc->teacher_preset) || es_model_create(&t->teacher, &tc, t->be, t->capacity, 0))
                return ES_ERR;
            es_model_init_random(&t->teacher, rc->seed + 1);
        }
        t->has_teacher = 1;
        if (t->teacher.cfg.vocab != sc->vocab)
            return es_fail("%s: the teacher's vocabulary (%d) differs from the student's (%d)",
                           rc->teacher_path[0] ? rc->teacher_path : rc->teacher_preset, t->teacher.cfg.vocab, sc->vocab);
        if (rc->teacher_path[0] && check_teacher_tokenizer(t, fp)) return ES_ERR;
    }
    int topk = !t->has_teacher && t->train.topk > 0 && rc->alpha < 1 ? t->train.topk : 0;
    if (es_step_buffers_create(&t->buf, t->be, t->capacity, t->accum, max_tokens, sc->hidden, sc->vocab, rc->chunk_rows,
                               t->has_teacher ? t->teacher.cfg.hidden : 0, topk))
        return ES_ERR;
    if (topk) {
        t->topk_ids = es_xmalloc((size_t)max_tokens * (size_t)topk * sizeof(int32_t));
        t->topk_logp = es_xmalloc((size_t)max_tokens * (size_t)topk * sizeof(float));
    }
    if (es_dp_optim_create(&t->opt, &t->dp, &t->student)) return ES_ERR;
    if (t->resumed) {
        if (es_ckpt_load_state_range(&t->opt, &t->st, &t->student, ckpt, t->dp.lo, t->dp.hi)) return ES_ERR;
        if (t->st.seed != rc->seed)
            return es_fail("%s: run.seed %llu differs from the checkpoint's %llu (the data order would change)", ckpt,
                           rc->seed, (unsigned long long)t->st.seed);
        if (es_packer_set_state(t->packer, t->st.data)) return ES_ERR;
    }
    t->st.seed = rc->seed;

    t->mbs = es_xcalloc((size_t)t->accum, sizeof *t->mbs);  // this rank's share of a step
    for (int a = 0; a < t->accum; a++) es_microbatch_alloc(&t->mbs[a], t->capacity);
    if (verbose && dist->rank == 0) print_plan(t);
    return ES_OK;
}

void es_trainer_free(es_trainer *t) {
    es_backend *be = t->be;
    if (t->mbs)
        for (int a = 0; a < t->accum; a++) es_microbatch_free(&t->mbs[a]);
    free(t->mbs);
    free(t->topk_ids);
    free(t->topk_logp);
    if (be) {
        es_step_buffers_free(&t->buf, be);
        es_optim_free(&t->opt, be);
        if (t->has_teacher) es_model_free(&t->teacher);
        if (t->student.be) es_model_free(&t->student);
    }
    if (t->packer) es_packer_free(t->packer);
    if (t->has_val) es_dataset_close(&t->val);
    if (t->train.shards) es_dataset_close(&t->train);
    if (be) be->destroy(be);
    free(t->config_json);
    memset(t, 0, sizeof *t);
}

// Uploads the indices of a micro-batch (through the staging, without waiting
// for the device) and runs the student forward on exactly its kept tokens.
static int forward_student(es_trainer *t, es_model *m, es_model_batch *b, const es_microbatch *mb) {
    es_backend *be = t->be;
    int32_t *tok = es_staging_next(&t->buf.stage), *pos = tok + mb->n, *cu = pos + mb->n;
    memcpy(tok, mb->tokens, (size_t)mb->n * sizeof *tok);
    memcpy(pos, mb->pos, (size_t)mb->n * sizeof *pos);
    memcpy(cu, mb->cu_seqlens, ((size_t)mb->ndocs + 1) * sizeof *cu);
    be->upload_async(be, t->buf.tokens, tok, (size_t)mb->n, ES_DT_I32);
    be->upload_async(be, t->buf.pos, pos, (size_t)mb->n, ES_DT_I32);
    be->upload_async(be, t->buf.cu, cu, (size_t)mb->ndocs + 1, ES_DT_I32);
    *b = (es_model_batch){.N = mb->n, .ndocs = mb->ndocs, .tokens = t->buf.tokens, .pos = t->buf.pos,
                          .cu_seqlens = t->buf.cu};
    return es_model_forward(m, b);
}

// Host syncs left in a step, and why:
//  - the one download of the step's statistics at its end (loss sums of every
//    micro-batch and the gradients' sum of squares, buf.stats): the metrics
//    and the bookkeeping of a skipped update (bad_steps, the update count that
//    the next step's bias correction uses) need them;
//  - with several ranks, comm_wait after the gradient reduction (and, under
//    ZeRO-1, after the parameter all-gather): CUDA polls NCCL there so that a
//    lost peer is reported instead of hanging the step;
//  - under ZeRO-1 the parts' sums of squares are added on the host, in rank
//    order (es_dp_grad_sumsq), which keeps the norm independent of how a
//    collective would order a device-side sum;
//  - a staging block is reused only once the device has read it
//    (es_staging_next), which waits only when the host runs two micro-batches
//    ahead.
// Everything else (batch uploads, loss sums, the norm, the clip scale, the
// skip test, AdamW) stays on the device's stream.
int es_trainer_step(es_trainer *t, es_step_result *r) {
    es_backend *be = t->be;
    const es_run_config *rc = &t->rc;
    double t0 = es_now();
    memset(r, 0, sizeof *r);

    // fetch the whole step first: the loss is normalised by its supervised tokens
    double sums[5] = {0, 0, 0, 0, 0};  // nsup, tokens, docs, ce, kd
    int last = -1;  // the last micro-batch with tokens: its backward reduces gradients as it goes
    es_packer_next_step(t->packer, t->mbs, (size_t)t->step_mbs);
    for (int a = 0; a < t->accum; a++) {
        if (t->mbs[a].n) last = a;
        sums[0] += t->mbs[a].nsup;
        sums[1] += t->mbs[a].n;
        sums[2] += t->mbs[a].ndocs;
    }
    double nsup_all = sums[0];
    es_dist_sum_f64(t->dist, &nsup_all, 1);
    es_distill_params dp = {.alpha = rc->alpha, .tau = rc->tau, .grad_scale = nsup_all > 0 ? (float)(1.0 / nsup_all) : 0};

    // stats: the gradients' sum of squares, then CE and KD of each micro-batch
    const size_t nstats = 1 + 2 * (size_t)t->accum;
    be->zero(be, t->buf.stats, nstats, ES_DT_F64);
    be->zero(be, t->student.grads, t->student.layout.total, ES_DT_F32);
    double flops = 0;
    for (int a = 0; a < t->accum; a++) {
        const es_microbatch *mb = &t->mbs[a];
        if (mb->n == 0) continue;  // this rank's share of the step is shorter
        es_model_batch b;
        if (forward_student(t, &t->student, &b, mb)) return ES_ERR;
        if (t->has_teacher && es_model_forward(&t->teacher, &b)) return ES_ERR;
        if (t->topk_ids && es_microbatch_topk(t->topk_ids, t->topk_logp, mb, &t->train)) return ES_ERR;
        if (es_distill_model(&t->buf.loss, t->buf.stats + 1 + 2 * a, t->buf.dhidden, &t->student,
                             t->has_teacher ? &t->teacher : NULL, t->topk_ids, t->topk_logp, mb, &dp))
            return ES_ERR;
        if (a == last) es_dp_overlap_begin(&t->dp, &t->student);
        if (es_model_backward(&t->student, &b, t->buf.dhidden)) return ES_ERR;
        flops += es_flops_train(&t->student.cfg, t->has_teacher ? &t->teacher.cfg : NULL, mb->cu_seqlens, mb->ndocs,
                                mb->nsup);
    }
    // gradients (all, or this rank's ZeRO-1 part) and the count of non-finite
    // loss sums of all ranks, which skips the update; then the gradients' norm
    // and the update, which reads the norm and the count where they are
    if (es_dp_reduce_grads(&t->dp, &t->student, t->buf.skip, t->buf.stats + 1, nstats - 1)) return ES_ERR;
    es_dp_grad_sumsq(t->buf.stats, &t->dp, t->dist, &t->student);
    r->lr = es_schedule_lr(t->sched, rc->lr, rc->min_lr_ratio, rc->warmup, t->st.step, t->total_steps);
    es_optim_hparams hp = {.lr = r->lr, .beta1 = rc->beta1, .beta2 = rc->beta2, .eps = rc->eps, .wd = rc->wd,
                           .clip = rc->clip};
    if (nsup_all > 0 && es_dp_optim_step(&t->opt, &t->dp, &t->student, &hp, t->buf.stats, t->buf.skip))
        return ES_ERR;

    // the one read of the step: its statistics, once the device is done
    double *stats = es_xmalloc(nstats * sizeof *stats);
    be->download(be, stats, t->buf.stats, nstats, ES_DT_F64);
    for (int a = 0; a < t->accum; a++) {  // in micro-batch order, as they ran
        if (t->mbs[a].n == 0) continue;
        sums[3] += stats[1 + 2 * a];
        sums[4] += stats[2 + 2 * a];
    }
    r->grad_norm = sqrt(stats[0]);
    free(stats);
    es_dist_sum_f64(t->dist, sums, 5);
    es_dist_sum_f64(t->dist, &flops, 1);

    int kd = t->has_teacher || t->topk_ids;
    float alpha = kd ? rc->alpha : 1.0f;
    r->nsup = sums[0];
    r->tokens = sums[1];
    r->docs = sums[2];
    r->ce = sums[0] > 0 ? sums[3] / sums[0] : NAN;
    r->kd = sums[0] > 0 && kd ? sums[4] / sums[0] : 0;
    r->loss = alpha * r->ce + (1 - alpha) * r->kd;
    r->flops = flops;
    // the same test the device made: a non-finite loss sum on any rank makes
    // the summed loss non-finite, and the norm is the one it read
    if (nsup_all == 0) {
        r->empty = 1;  // nothing supervised in this step: nothing to learn, nothing wrong
    } else if (!isfinite(r->loss) || !isfinite(r->grad_norm)) {
        r->skipped = 1;
        t->st.bad_steps++;
    } else {
        t->opt.step++;  // the update ran
        t->st.bad_steps = 0;
        t->st.optim_step = t->opt.step;
    }
    r->seconds = es_now() - t0;
    t->st.step++;
    t->st.data = es_packer_get_state(t->packer);
    t->st.tokens += r->tokens;
    t->st.flops += r->flops;
    t->st.seconds += r->seconds;
    return ES_OK;
}

int es_trainer_validate(es_trainer *t, double *val_loss) {
    *val_loss = NAN;
    if (!t->has_val) return ES_OK;
    es_packer *vp;
    if (es_packer_from_dataset(&vp, &t->val, &t->val_pack)) return ES_ERR;
    es_model view;
    if (es_model_create_view(&view, &t->student, es_packer_capacity(vp))) {
        es_packer_free(vp);
        return ES_ERR;
    }
    es_microbatch mb;
    es_microbatch_alloc(&mb, es_packer_capacity(vp));
    es_distill_params dp = {.alpha = 1, .tau = 1, .grad_scale = 1};
    double sums[2] = {0, 0};  // ce, supervised tokens
    es_backend *be = t->be;
    double *dls = t->buf.stats + 1;  // the first micro-batch's loss sums: unused between steps
    int rcode = ES_OK;
    size_t n = es_packer_steps_per_epoch(vp);
    for (size_t i = 0; i < n && rcode == ES_OK; i++) {
        es_packer_next(vp, &mb);
        if (mb.n == 0) continue;
        es_model_batch b;
        double ls[2] = {0, 0};
        be->zero(be, dls, 2, ES_DT_F64);
        rcode = forward_student(t, &view, &b, &mb);
        if (rcode == ES_OK)
            rcode = es_distill_loss(&t->buf.loss, dls, NULL, NULL, view.hidden, es_model_lm_head(&view), NULL, &mb, &dp);
        if (rcode == ES_OK) be->download(be, ls, dls, 2, ES_DT_F64);
        sums[0] += ls[0];
        sums[1] += mb.nsup;
    }
    es_microbatch_free(&mb);
    es_model_free(&view);
    es_packer_free(vp);
    es_dist_sum_f64(t->dist, sums, 2);
    if (sums[1] > 0) *val_loss = sums[0] / sums[1];
    return rcode;
}

// ZeRO-1: every rank writes its part of the optimizer state into the staging
// directory rank 0 made, then rank 0 completes the checkpoint.
static int checkpoint_sharded(es_trainer *t) {
    const es_dist *d = t->dist;
    char stage[600];
    es_ckpt_stage_path(stage, sizeof stage, t->rc.out, t->st.step);
    int r = d->rank == 0 ? es_ckpt_stage_create(stage) : ES_OK;
    double failed = r != ES_OK;
    es_dist_max_f64(d, &failed, 1);
    if (failed) return r ? r : es_fail("checkpoint: rank 0 failed to create %s", stage);
    r = es_ckpt_save_part(stage, &t->student, &t->opt, d->rank, d->size);
    failed = r != ES_OK;
    es_dist_max_f64(d, &failed, 1);
    if (failed) return r ? r : es_fail("checkpoint: another rank failed to write its part into %s", stage);
    if (d->rank == 0)
        r = es_ckpt_save_sharded(t->rc.out, stage, &t->student, &t->st, t->config_json, t->rc.keep, d->size);
    return r;
}

int es_trainer_checkpoint(es_trainer *t) {
    int r = ES_OK;
    if (t->dp.sharded)
        r = checkpoint_sharded(t);
    else if (t->dist->rank == 0)
        r = es_ckpt_save(t->rc.out, &t->student, &t->opt, &t->st, t->config_json, t->rc.keep);
    double failed = r != ES_OK;
    es_dist_max_f64(t->dist, &failed, 1);
    if (failed && r == ES_OK) return es_fail("checkpoint: rank 0 failed to write it");
    return r;
}
