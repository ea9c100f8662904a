// CPU training-step benchmark: one optimizer step (forward, loss with the LM
// head on every supervised row, backward, AdamW) of a randomly initialised
// model on B = 4 documents of T = 64 random tokens, fully supervised, on the
// CPU backend. Prints ms/step, achieved GFLOP/s and its fraction of this
// machine's sgemm rate measured in the same run, the memory bandwidth, and
// the time share per op (with GB/s for the optimizer's memory-bound passes).
//
//   build/perf/bench_cpu [--steps N] [--warmup W] MODEL_CONFIG.json ...
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "distill.h"
#include "flops.h"
#include "model.h"
#include "op_timer.h"
#include "optim.h"
#include "peaks.h"

enum { B = 4, T = 64, N = B * T };

// Best rate of the backend's own matmul on a large square problem: the
// ceiling a training step's matmuls can reach on this machine.
static double sgemm_rate(es_backend *be) {
    enum { S = 1024, REPS = 5 };
    float *h = malloc(sizeof(float) * S * S);
    es_rng r;
    es_rng_seed(&r, 3);
    for (int i = 0; i < S * S; i++) h[i] = es_rng_uniform(&r) - 0.5f;
    void *a = be->alloc(be, (size_t)S * S, ES_DT_COMPUTE, ES_MEM_WORKSPACE);
    void *w = be->alloc(be, (size_t)S * S, ES_DT_COMPUTE, ES_MEM_WORKSPACE);
    void *c = be->alloc(be, (size_t)S * S, ES_DT_COMPUTE, ES_MEM_WORKSPACE);
    double best = 0;
    if (a && w && c) {
        be->upload(be, a, h, (size_t)S * S, ES_DT_COMPUTE);
        be->upload(be, w, h, (size_t)S * S, ES_DT_COMPUTE);
        for (int i = 0; i <= REPS; i++) {  // the first warms up threads and caches
            be->sync(be);
            double t0 = es_now();
            be->matmul_fwd(be, c, a, w, NULL, S, S, S);
            be->sync(be);
            double dt = es_now() - t0;
            if (i && dt > 0 && 2.0 * S * S * S / dt > best) best = 2.0 * S * S * S / dt;
        }
    }
    be->free(be, a);
    be->free(be, w);
    be->free(be, c);
    free(h);
    return best;
}

// Best bandwidth of the backend's own add (out = a + b, 12 bytes an element)
// over buffers far larger than the caches: the ceiling of the step's
// memory-bound passes (zero, sumsq, adamw) on this machine.
static double memory_rate(es_backend *be) {
    enum { REPS = 5 };
    const size_t n = (size_t)32 << 20;  // 128 MiB a buffer
    void *a = be->alloc(be, n, ES_DT_COMPUTE, ES_MEM_WORKSPACE);
    void *b = be->alloc(be, n, ES_DT_COMPUTE, ES_MEM_WORKSPACE);
    void *c = be->alloc(be, n, ES_DT_COMPUTE, ES_MEM_WORKSPACE);
    double best = 0;
    if (a && b && c) {
        be->zero(be, a, n, ES_DT_COMPUTE);
        be->zero(be, b, n, ES_DT_COMPUTE);
        be->zero(be, c, n, ES_DT_COMPUTE);
        for (int i = 0; i <= REPS; i++) {
            be->sync(be);
            double t0 = es_now();
            be->add(be, c, a, b, n);
            be->sync(be);
            double dt = es_now() - t0;
            if (i && dt > 0 && 12.0 * (double)n / dt > best) best = 12.0 * (double)n / dt;
        }
    }
    be->free(be, a);
    be->free(be, b);
    be->free(be, c);
    return best;
}

// B documents of T random tokens, every position but each document's last supervised.
static void make_batch(es_microbatch *mb, int V, es_rng *r) {
    mb->n = N, mb->ndocs = B, mb->nsup = 0;
    for (int d = 0; d <= B; d++) mb->cu_seqlens[d] = d * T;
    for (int i = 0; i < N; i++) mb->tokens[i] = (int32_t)(es_rng_u64(r) % (uint64_t)V);
    for (int i = 0; i < N; i++) {
        int last = i % T == T - 1;
        mb->pos[i] = mb->src[i] = i % T;
        mb->targets[i] = last ? -1 : mb->tokens[i + 1];
        mb->weights[i] = last ? 0.0f : 1.0f;
        mb->nsup += !last;
    }
}

typedef struct {
    es_model m;
    es_distill loss;
    es_optim opt;
    es_microbatch mb;
    es_model_batch b;
    void *dhidden;
    double *stats;  // (3) device: gradient sum of squares, CE and KD sums
    float *skip;    // (1) device: 0, no step is skipped
} bench;

static int step(bench *s) {
    es_backend *be = s->m.be;
    es_distill_params dp = {.alpha = 1, .tau = 1, .grad_scale = 1.0f / (float)s->mb.nsup};
    double *st = s->stats;  // sum of squares, then the loss sums
    be->zero(be, st, 3, ES_DT_F64);
    be->zero(be, s->m.grads, s->m.layout.total, ES_DT_F32);
    if (es_model_forward(&s->m, &s->b) || es_distill_model(&s->loss, st + 1, s->dhidden, &s->m, NULL, NULL, NULL, &s->mb, &dp) ||
        es_model_backward(&s->m, &s->b, s->dhidden))
        return ES_ERR;
    es_grad_sumsq(st, &s->m);
    es_optim_hparams hp = {.lr = 1e-4f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .wd = 0.1f, .clip = 1.0f};
    es_optim_step(&s->opt, &s->m, &hp, st, s->skip);
    double h[3];
    be->download(be, h, st, 3, ES_DT_F64);
    if (!(h[1] == h[1]) || !(h[0] == h[0])) return es_fail("bench: non-finite loss or gradient");
    s->opt.step++;
    return ES_OK;
}

// Bytes the fp32 optimizer passes stream per step over P parameters: sumsq
// reads the gradients, adamw reads p, g, m, v and writes p, m, v. 0 for every
// other op (zero also clears buffers other than the gradients).
static double optim_bytes(int op, size_t P) {
    double per = op == ES_OP_sumsq ? 4 : op == ES_OP_adamw ? 28 : 0;
    return per * (double)P;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int bench_model(es_backend *be, const char *path, int steps, int warmup) {
    es_config cfg;
    if (es_config_load(&cfg, path)) return ES_ERR;
    bench s;
    memset(&s, 0, sizeof s);
    es_rng r;
    es_rng_seed(&r, 42);
    es_microbatch_alloc(&s.mb, N);
    make_batch(&s.mb, cfg.vocab, &r);
    int rc = es_model_create(&s.m, &cfg, be, N, 1);
    if (rc == ES_OK) rc = es_distill_create(&s.loss, be, N, cfg.hidden, cfg.vocab, N, 0, 0);
    if (rc == ES_OK) rc = es_optim_create(&s.opt, &s.m);
    void *tok = NULL, *pos = NULL, *cu = NULL;
    if (rc == ES_OK) {
        es_model_init_random(&s.m, 1);
        tok = be->alloc(be, N, ES_DT_I32, ES_MEM_INDEX);
        pos = be->alloc(be, N, ES_DT_I32, ES_MEM_INDEX);
        cu = be->alloc(be, B + 1, ES_DT_I32, ES_MEM_INDEX);
        s.dhidden = be->alloc(be, (size_t)N * cfg.hidden, ES_DT_COMPUTE, ES_MEM_ACTS);
        s.stats = be->alloc(be, 3, ES_DT_F64, ES_MEM_WORKSPACE);
        s.skip = be->alloc(be, 1, ES_DT_F32, ES_MEM_WORKSPACE);
        if (!tok || !pos || !cu || !s.dhidden || !s.stats || !s.skip) rc = ES_ERR;
        else be->zero(be, s.skip, 1, ES_DT_F32);
    }
    double *ms = calloc((size_t)steps, sizeof *ms);
    es_op_timer ot;
    memset(&ot, 0, sizeof ot);
    if (rc == ES_OK) {
        be->upload(be, tok, s.mb.tokens, N, ES_DT_I32);
        be->upload(be, pos, s.mb.pos, N, ES_DT_I32);
        be->upload(be, cu, s.mb.cu_seqlens, B + 1, ES_DT_I32);
        s.b = (es_model_batch){.N = N, .ndocs = B, .tokens = tok, .pos = pos, .cu_seqlens = cu};
        for (int i = 0; i < warmup && rc == ES_OK; i++) rc = step(&s);
        for (int i = 0; i < steps && rc == ES_OK; i++) {
            double t0 = es_now();
            rc = step(&s);
            ms[i] = 1e3 * (es_now() - t0);
        }
        if (rc == ES_OK && (rc = es_op_timer_attach(&ot, be)) == ES_OK) {
            double t0 = es_now();
            rc = step(&s);
            double total = es_now() - t0;
            es_op_timer_detach(&ot);
            if (rc == ES_OK) {
                double peak = sgemm_rate(be), bw = memory_rate(be);
                double flops = es_flops_train(&cfg, NULL, s.mb.cu_seqlens, B, s.mb.nsup);
                qsort(ms, (size_t)steps, sizeof *ms, cmp_double);
                double med = ms[steps / 2], rate = flops / (med / 1e3);
                printf("%s: %s, %lld parameters, B=%d T=%d, %d supervised rows\n", path, cfg.model_type,
                       es_config_param_count(&cfg), B, T, s.mb.nsup);
                printf("  %.1f ms/step (median of %d, min %.1f), %.3g FLOPs/step, %.1f GFLOP/s, sgemm %.1f GFLOP/s "
                       "measured now: %.0f%% of it\n",
                       med, steps, ms[0], flops, rate / 1e9, peak / 1e9, 100 * rate / peak);
                printf("  memory bandwidth %.1f GB/s measured now (the backend's add over 3 x 128 MiB)\n", bw / 1e9);
                printf("  peak memory (engine) %.1f MiB, process RSS %.1f MiB\n", be->mem_peak_total / 1048576.0,
                       es_rss_peak_bytes() / 1048576.0);
                printf("  time per op (one step under the timer, %.1f ms):\n", 1e3 * total);
                for (int i = 0; i < ES_OP_COUNT; i++) {
                    if (!ot.calls[i]) continue;
                    printf("    %-18s %5.1f%% %9.1f ms", es_op_names[i], 100 * ot.seconds[i] / total, 1e3 * ot.seconds[i]);
                    if (ot.flops[i] > 0) printf("  %.1f GFLOP/s", ot.flops[i] / ot.seconds[i] / 1e9);
                    double bytes = optim_bytes(i, s.m.layout.total);
                    if (bytes > 0) printf("  %.1f GB/s", bytes / ot.seconds[i] / 1e9);
                    printf("\n");
                }
                printf("    %-18s %5.1f%%\n", "other (host)", 100 * (total - es_op_timer_total(&ot)) / total);
            }
        }
    }
    free(ms);
    if (tok) be->free(be, tok);
    if (pos) be->free(be, pos);
    if (cu) be->free(be, cu);
    if (s.dhidden) be->free(be, s.dhidden);
    if (s.stats) be->free(be, s.stats);
    if (s.skip) be->free(be, s.skip);
    es_optim_free(&s.opt, be);
    es_distill_free(&s.loss);
    if (s.m.be) es_model_free(&s.m);
    es_microbatch_free(&s.mb);
    return rc;
}

int main(int argc, char **argv) {
    int steps = 5, warmup = 1, nmodels = 0;
    const char *models[8];
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "--steps") || !strcmp(argv[i], "--warmup")) && i + 1 < argc) {
            int v = atoi(argv[i + 1]);
            if (v < (argv[i][2] == 's')) {
                fprintf(stderr, "bench_cpu: %s '%s' is out of range\n", argv[i], argv[i + 1]);
                return 2;
            }
            *(argv[i][2] == 's' ? &steps : &warmup) = v;
            i++;
        } else if (argv[i][0] != '-' && nmodels < 8) {
            models[nmodels++] = argv[i];
        } else {
            fprintf(stderr, "usage: bench_cpu [--steps N] [--warmup W] MODEL_CONFIG.json ...\n");
            return 2;
        }
    }
    if (!nmodels) models[nmodels++] = "configs/models/gpt2-124m.json";
    for (int i = 0; i < nmodels; i++) {
        es_backend *be = es_backend_cpu_create();  // a fresh memory tally per model
        if (!be || bench_model(be, models[i], steps, warmup)) {
            fprintf(stderr, "bench_cpu: %s\n", es_last_error());
            if (be) be->destroy(be);
            return 1;
        }
        be->destroy(be);
    }
    return 0;
}
