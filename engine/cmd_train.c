// essence train: the training loop around the trainer, with the live
// progress line, metrics, validation, checkpoints and clean stops.
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "common.h"
#include "config_change.h"
#include "peaks.h"
#include "run_lock.h"
#include "train.h"

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int sig) { g_stop = sig; }

static void usage(FILE *f) {
    fprintf(f,
            "usage: essence train --config RUN.json [--set key=value ...] [--fresh] [--stop-at STEP]\n"
            "                     [--allow-config-change]\n"
            "       essence train --help-config\n\n"
            "Trains (distils) a student as the run config says; resumes from the newest\n"
            "checkpoint in run.out unless --fresh (which deletes the old checkpoints).\n"
            "--stop-at STEP checkpoints and exits after STEP steps (a time slice): the\n"
            "same command resumes. SIGINT/SIGTERM finish the step, write a checkpoint\n"
            "and exit with status 75 (checkpointed, resumable: requeue the same command);\n"
            "0 means finished, 1 an error. Under mpirun every rank runs this same command.\n"
            "A resume whose config changes the training (any key but run.*, or run.seed)\n"
            "is refused naming the keys; --allow-config-change resumes anyway and records\n"
            "the change in metrics.jsonl.\n");
}

// Parses the command line into a run config; returns 0 to go on, or an exit code + 1.
int es_read_run_args(es_run_config *rc, int *fresh, int argc, char **argv, void (*help)(FILE *)) {
    es_run_config_defaults(rc);
    const char *config = NULL;
    *fresh = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            help(stdout);
            return 1;
        } else if (!strcmp(argv[i], "--help-config")) {
            es_run_config_print_help();
            return 1;
        } else if (!strcmp(argv[i], "--config") && i + 1 < argc) {
            config = argv[++i];
        } else if (!strcmp(argv[i], "--set") && i + 1 < argc) {
            i++;  // applied after the file, below
        } else if (!strcmp(argv[i], "--fresh")) {
            *fresh = 1;
        } else {
            fprintf(stderr, "essence %s: unknown or incomplete option '%s' (see --help)\n", argv[0], argv[i]);
            return 3;
        }
    }
    if (!config) {
        fprintf(stderr, "essence %s: --config RUN.json is required\n", argv[0]);
        return 3;
    }
    if (es_run_config_load(rc, config)) goto fail;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--set") && es_run_config_set(rc, argv[++i])) goto fail;
    return 0;
fail:
    fprintf(stderr, "essence: %s\n", es_last_error());
    return 2;
}

int es_parse_run_args(es_run_config *rc, int *fresh, int argc, char **argv, void (*help)(FILE *)) {
    int code = es_read_run_args(rc, fresh, argc, argv, help);
    if (code) return code;
    if (es_run_config_validate(rc)) {
        fprintf(stderr, "essence: %s\n", es_last_error());
        return 2;
    }
    return 0;
}

static void progress(const es_trainer *t, const es_step_result *r, double tok_s, double mfu, double eta_s,
                     int tty) {
    char eta[32];
    es_format_duration(eta, sizeof eta, eta_s);
    double epoch = (double)t->st.step / (t->steps_per_epoch ? t->steps_per_epoch : 1);
    fprintf(stderr, "%sstep %d/%d | epoch %.2f | loss %.4f (ce %.4f kd %.4f) | lr %.2e | %.0f tok/s | MFU %.1f%% | ETA %s%s%s",
            tty ? "\r" : "", t->st.step, t->total_steps, epoch, r->loss, r->ce, r->kd, r->lr, tok_s, 100 * mfu, eta,
            r->skipped ? " | SKIPPED" : r->empty ? " | no supervised token" : "", tty ? "\033[K" : "\n");
    fflush(stderr);
}

static int write_summary(const es_trainer *t, double val_loss, double rss) {
    char path[600], buf[2048];
    snprintf(path, sizeof path, "%s/summary.json", t->rc.out);
    const es_backend *be = t->be;
    int n = snprintf(buf, sizeof buf,
                     "{\"steps\": %d, \"lsp\": %g, \"tokens\": %.0f, \"flops\": %.6g, \"seconds\": %.3f, "
                     "\"val_loss\": %.9g, \"peak_device_bytes\": %zu, \"peak_rss_bytes\": %.0f, "
                     "\"peak_activation_bytes\": %zu, \"capacity\": %d}\n",
                     t->st.step, t->rc.lsp, t->st.tokens, t->st.flops, t->st.seconds, isfinite(val_loss) ? val_loss : -1,
                     be->mem_peak_total, rss, be->mem_peak[ES_MEM_ACTS], t->capacity);
    return es_write_atomic(path, buf, (size_t)n);
}

// The trained student as a Hugging Face directory at run.out/final, with the
// run's tokenizer files, ready for transformers or vLLM.
static int save_final(const es_trainer *t) {
    char dir[600], src[700], dst[700];
    snprintf(dir, sizeof dir, "%s/final", t->rc.out);
    if (es_model_save_hf(&t->student, dir, 0)) return ES_ERR;
    const char *tok = t->rc.tokenizer[0] ? t->rc.tokenizer : t->rc.student_path;
    static const char *files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"};
    for (int i = 0; tok[0] && i < 3; i++) {
        char *buf;
        size_t n;
        snprintf(src, sizeof src, "%s/%s", tok, files[i]);
        if (access(src, R_OK) != 0) continue;
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        if (es_read_file(&buf, &n, src)) return ES_ERR;
        int r = es_write_atomic(dst, buf, n);
        free(buf);
        if (r) return ES_ERR;
    }
    return ES_OK;
}

static int validate_and_log(es_trainer *t, es_metrics *mx, double *val) {
    if (es_trainer_validate(t, val)) return ES_ERR;
    if (t->dist->rank == 0 && isfinite(*val)) {
        const char *k[] = {"step", "val_loss"};
        double v[] = {t->st.step, *val};
        es_metrics_write(mx, "val", 2, k, v);
        fprintf(stderr, "%sstep %d | validation loss %.4f\n", mx->tty ? "\n" : "", t->st.step, *val);
    }
    return ES_OK;
}

// *interrupted: stopped by a signal after a checkpoint (resumable, not finished).
static int train_loop(int *interrupted, es_trainer *t, es_metrics *mx, int stop_at) {
    const es_run_config *rc = &t->rc;
    const es_dist *dist = t->dist;
    double session_s = 0;
    int session_steps = 0, rank0 = dist->rank == 0;
    double val = NAN;
    if (t->st.step == 0 && t->has_val && validate_and_log(t, mx, &val)) return ES_ERR;  // the starting point
    while (t->st.step < t->total_steps) {
        es_step_result r;
        if (es_trainer_step(t, &r)) return ES_ERR;
        session_s += r.seconds;
        session_steps++;
        double tok_s = r.tokens / r.seconds, mfu = r.flops / r.seconds / (t->be->peak_flops * dist->size);
        double eta = session_s / session_steps * (t->total_steps - t->st.step);
        if (rank0) {
            const char *k[] = {"step", "loss", "ce", "kd", "lr", "grad_norm", "tokens", "supervised", "docs",
                               "flops", "seconds", "tok_per_s", "mfu", "skipped"};
            double v[] = {t->st.step, r.loss, r.ce, r.kd, r.lr, r.grad_norm, r.tokens, r.nsup, r.docs,
                          r.flops, r.seconds, tok_s, mfu, r.skipped};
            es_metrics_write(mx, "train", 14, k, v);
            if (r.skipped)
                fprintf(stderr, "%swarning: step %d: non-finite loss or gradient norm, update skipped (%d in a row)\n",
                        mx->tty ? "\n" : "", t->st.step, t->st.bad_steps);
            if (t->st.step % rc->log_every == 0 || t->st.step == t->total_steps || r.skipped)
                progress(t, &r, tok_s, mfu, eta, mx->tty);
        }
        if (t->st.bad_steps >= rc->max_bad_steps)
            return es_fail("%d steps in a row had a non-finite loss or gradient norm (run.max_bad_steps); aborting "
                           "without a checkpoint: lower optim.lr or check the data",
                           t->st.bad_steps);
        if (rc->val_every && t->st.step % rc->val_every == 0 && t->st.step < t->total_steps &&
            validate_and_log(t, mx, &val))
            return ES_ERR;
        double stop = g_stop;
        es_dist_max_f64(dist, &stop, 1);
        if (stop_at && t->st.step >= stop_at && t->st.step < t->total_steps) {
            if (es_trainer_checkpoint(t)) return ES_ERR;
            if (rank0)
                fprintf(stderr, "%sstopped at step %d (--stop-at): checkpoint written to %s\n", mx->tty ? "\n" : "",
                        t->st.step, rc->out);
            return ES_OK;
        }
        int ckpt_due = rc->ckpt_every && t->st.step % rc->ckpt_every == 0;
        if ((ckpt_due || stop) && t->st.step < t->total_steps) {
            if (es_trainer_checkpoint(t)) return ES_ERR;
            if (stop) {
                if (rank0)
                    fprintf(stderr, "%sstopped by signal %d at step %d: checkpoint written to %s; run the same "
                                    "command to resume (exit status %d: checkpointed, resumable)\n",
                            mx->tty ? "\n" : "", (int)stop, t->st.step, rc->out, ES_EXIT_RESUMABLE);
                *interrupted = 1;
                return ES_OK;
            }
        }
    }
    if (mx->tty && rank0) fputc('\n', stderr);
    // A student no step has updated is not a trained one: no final/, no exit 0.
    if (t->st.optim_step == 0)
        return es_fail("%d steps ran and none updated the weights (each had a non-finite loss or gradient norm, "
                       "or no supervised token); no final/ written",
                       t->st.step);
    if (validate_and_log(t, mx, &val)) return ES_ERR;
    if (es_trainer_checkpoint(t)) return ES_ERR;
    double rss = es_rss_peak_bytes();
    es_dist_max_f64(dist, &rss, 1);
    if (rank0) {
        if (write_summary(t, val, rss) || save_final(t)) return ES_ERR;
        char dur[32];
        es_format_duration(dur, sizeof dur, t->st.seconds);
        char vl[48] = "";
        if (isfinite(val)) snprintf(vl, sizeof vl, "validation loss %.4f; ", val);
        printf("done: %d steps, %.3g tokens, %.3g FLOPs in %s; peak memory %.1f MiB (engine), %.1f MiB (process); "
               "%sstudent in %s/final\n",
               t->st.step, t->st.tokens, t->st.flops, dur, t->be->mem_peak_total / 1048576.0, rss / 1048576.0, vl,
               rc->out);
    }
    return ES_OK;
}

int cmd_train(int argc, char **argv) {
    // --stop-at is not part of the run config: a resumed run must see the same config
    int stop_at = 0, nargs = 0, allow_change = 0;
    char **args = es_xcalloc((size_t)argc + 1, sizeof *args);
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--stop-at") && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 1 << 30) {
                fprintf(stderr, "essence train: --stop-at '%s' is not a positive step count\n", argv[i]);
                free(args);
                return 2;
            }
            stop_at = (int)v;
        } else if (!strcmp(argv[i], "--allow-config-change")) {
            allow_change = 1;
        } else {
            args[nargs++] = argv[i];
        }
    }
    es_run_config rc;
    int fresh;
    int code = es_parse_run_args(&rc, &fresh, nargs, args, usage);
    free(args);
    if (code) return code - 1;

    es_dist dist;
    if (es_dist_init(&dist, &argc, &argv)) {
        fprintf(stderr, "essence: %s\n", es_last_error());
        return 1;
    }
    struct stat st;
    int made_out = stat(rc.out, &st) != 0;  // a run that fails before writing anything leaves no run.out
    if (es_mkdir_p(rc.out)) {
        fprintf(stderr, "essence: run.out: %s\n", es_last_error());
        return 1;
    }
    // Rank 0 locks run.out for the whole job; every rank learns whether it could.
    int lock_fd = -1;
    double lock_failed = dist.rank == 0 && es_run_lock(&lock_fd, rc.out) != ES_OK;
    es_dist_max_f64(&dist, &lock_failed, 1);
    if (lock_failed) {
        if (dist.rank == 0) fprintf(stderr, "essence: %s\n", es_last_error());
        es_dist_finalize(&dist);
        if (made_out) rmdir(rc.out);
        return 1;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    es_trainer t;
    es_metrics mx = {0};
    int r = es_trainer_init(&t, &rc, &dist, fresh, dist.rank == 0);
    char changed[2048] = "";
    if (r == ES_OK && t.resumed)
        r = es_config_changes(changed, sizeof changed, t.resumed_from, t.config_json);
    if (r == ES_OK && changed[0] && !allow_change)
        r = es_fail("%s: the run config changed since this checkpoint (%s): resuming would mix two trainings; "
                    "restore them, start over with --fresh, or pass --allow-config-change",
                    t.resumed_from, changed);
    if (r == ES_OK && dist.rank == 0) {
        char path[600];
        snprintf(path, sizeof path, "%s/metrics.jsonl", rc.out);
        r = es_metrics_open(&mx, path, t.resumed ? t.st.step : -1);
        if (r == ES_OK && changed[0]) {
            es_metrics_note(&mx, "config_change", t.st.step, "changed", changed);
            fprintf(stderr, "warning: resuming with a changed config (--allow-config-change): %s\n", changed);
        }
    }
    int interrupted = 0;
    if (r == ES_OK) r = train_loop(&interrupted, &t, &mx, stop_at);
    if (r != ES_OK && dist.size > 1)
        fprintf(stderr, "%sessence: rank %d: %s\n", mx.tty ? "\n" : "", dist.rank, es_last_error());
    else if (r != ES_OK)
        fprintf(stderr, "%sessence: %s\n", mx.tty ? "\n" : "", es_last_error());
    es_metrics_close(&mx);
    es_trainer_free(&t);
    es_dist_finalize(&dist);
    if (r != ES_OK && made_out) {  // the folder goes only when nothing else is in it
        char lock[sizeof rc.out + 8];
        snprintf(lock, sizeof lock, "%s/.lock", rc.out);
        if (lock_fd >= 0) unlink(lock);
        rmdir(rc.out);
    }
    if (lock_fd >= 0) close(lock_fd);
    return r != ES_OK ? 1 : interrupted ? ES_EXIT_RESUMABLE : 0;
}
