// Chunked, gathered distillation loss against a full-logits reference in
// double; finite-difference checks of the KD gradient (online and top-k);
// the top-k loss reaching the online one at K = V; no attention leak between
// packed documents through the model.
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "common.h"
#include "distill.h"
#include "model.h"
#include "packer.h"
#include "shard.h"
#include "test.h"
#include "test_models.h"

static es_rng g_rng;

typedef struct {
    int N, C, Ct, V, K;
    float *h, *lm, *th, *tlm;       // host copies: (N, C), (V, C), (N, Ct), (V, Ct)
    int32_t *ids;                    // (N, K) teacher top-k, from the teacher's own logits
    float *logp;
} problem;

static void row_logits(double *out, const float *x, const float *w, int C, int V) {
    for (int v = 0; v < V; v++) {
        double s = 0;
        for (int c = 0; c < C; c++) s += (double)x[c] * w[(size_t)v * C + c];
        out[v] = s;
    }
}

static double log_softmax(double *out, const double *x, int V, double itau) {
    double mx = -INFINITY, se = 0;
    for (int v = 0; v < V; v++) mx = x[v] * itau > mx ? x[v] * itau : mx;
    for (int v = 0; v < V; v++) se += exp(x[v] * itau - mx);
    for (int v = 0; v < V; v++) out[v] = x[v] * itau - mx - log(se);
    return mx + log(se);
}

// Full-logits reference in double. mode 0: CE only, 1: online teacher, 2: top-k.
static void reference(double sums[2], double *dh, double *dlm, const problem *pb,
                      const es_microbatch *mb, int mode, double alpha, double tau, double gscale) {
    int C = pb->C, V = pb->V, K = pb->K;
    double *s = malloc(V * sizeof *s), *t = malloc(V * sizeof *t), *ls = malloc(V * sizeof *ls),
           *lt = malloc(V * sizeof *lt), *lq = malloc(V * sizeof *lq), *g = malloc(V * sizeof *g);
    sums[0] = sums[1] = 0;
    memset(dh, 0, (size_t)pb->N * C * sizeof *dh);
    memset(dlm, 0, (size_t)V * C * sizeof *dlm);
    for (int i = 0; i < mb->n; i++) {
        double w = mb->weights[i];
        if (w <= 0) continue;
        row_logits(s, pb->h + (size_t)i * C, pb->lm, C, V);
        log_softmax(ls, s, V, 1.0);
        int tg = mb->targets[i];
        double a = mode ? alpha : 1.0;
        sums[0] += w * -ls[tg];
        for (int v = 0; v < V; v++) g[v] = a * (exp(ls[v]) - (v == tg));
        if (mode == 1) {
            row_logits(t, pb->th + (size_t)i * pb->Ct, pb->tlm, pb->Ct, V);
            log_softmax(lt, t, V, 1.0 / tau);
            log_softmax(lq, s, V, 1.0 / tau);
            double kl = 0;
            for (int v = 0; v < V; v++) kl += exp(lt[v]) * (lt[v] - lq[v]);
            sums[1] += w * tau * tau * kl;
            for (int v = 0; v < V; v++) g[v] += (1 - a) * tau * (exp(lq[v]) - exp(lt[v]));
        } else if (mode == 2) {
            const int32_t *id = pb->ids + (size_t)i * K;
            const float *lp = pb->logp + (size_t)i * K;
            double pt = 0, qs = 0, kl = 0;
            char *listed = calloc(V, 1);
            for (int j = 0; j < K; j++) {
                listed[id[j]] = 1;
                pt += exp(lp[j]);
                qs += exp(ls[id[j]]);
                kl += exp(lp[j]) * (lp[j] - ls[id[j]]);
            }
            double rt = pt < 1 ? 1 - pt : 0, rs = 1 - qs;
            if (rt > 0) kl += rt * (log(rt) - log(rs));
            sums[1] += w * kl;
            for (int v = 0; v < V; v++)
                if (!listed[v]) g[v] += (1 - a) * exp(ls[v]) * (1 - rt / rs);
            for (int j = 0; j < K; j++) g[id[j]] += (1 - a) * (exp(ls[id[j]]) - exp(lp[j]));
            free(listed);
        }
        for (int v = 0; v < V; v++) {
            double gv = g[v] * w * gscale;
            for (int c = 0; c < C; c++) {
                dh[(size_t)i * C + c] += gv * pb->lm[(size_t)v * C + c];
                dlm[(size_t)v * C + c] += gv * pb->h[(size_t)i * C + c];
            }
        }
    }
    free(s), free(t), free(ls), free(lt), free(lq), free(g);
}

static void problem_make(problem *pb, int N, int C, int Ct, int V, int K) {
    pb->N = N, pb->C = C, pb->Ct = Ct, pb->V = V, pb->K = K;
    pb->h = malloc((size_t)N * C * 4);
    pb->lm = malloc((size_t)V * C * 4);
    pb->th = malloc((size_t)N * Ct * 4);
    pb->tlm = malloc((size_t)V * Ct * 4);
    pb->ids = malloc((size_t)N * K * 4);
    pb->logp = malloc((size_t)N * K * 4);
    t_fill_normal(pb->h, (size_t)N * C, 1.0f, &g_rng);
    t_fill_normal(pb->lm, (size_t)V * C, 0.5f, &g_rng);
    t_fill_normal(pb->th, (size_t)N * Ct, 1.0f, &g_rng);
    t_fill_normal(pb->tlm, (size_t)V * Ct, 0.8f, &g_rng);
    // The teacher's top-K of its own logits (temperature 1), most likely first.
    double *t = malloc(V * sizeof *t), *lt = malloc(V * sizeof *lt);
    char *used = malloc(V);
    for (int i = 0; i < N; i++) {
        row_logits(t, pb->th + (size_t)i * Ct, pb->tlm, Ct, V);
        log_softmax(lt, t, V, 1.0);
        memset(used, 0, V);
        for (int j = 0; j < K; j++) {
            int best = -1;
            for (int v = 0; v < V; v++)
                if (!used[v] && (best < 0 || lt[v] > lt[best])) best = v;
            used[best] = 1;
            pb->ids[(size_t)i * K + j] = best;
            pb->logp[(size_t)i * K + j] = (float)lt[best];
        }
    }
    free(t), free(lt), free(used);
}

static void problem_free(problem *pb) {
    free(pb->h), free(pb->lm), free(pb->th), free(pb->tlm), free(pb->ids), free(pb->logp);
}

// Runs es_distill_loss on the backend; returns host dhidden (N, C) and dlm (V, C).
// The loss sums go to a device fp64 slot inside a larger buffer, as the
// trainer's statistics: acc holds the slot's value before and after the call.
static int run_loss_acc(double acc[2], float *dh, float *dlm, es_backend *be, const problem *pb,
                        const es_microbatch *mb, int mode, float alpha, float tau, float gscale,
                        int chunk, size_t *workspace) {
    int N = pb->N, C = pb->C, V = pb->V;
    es_distill d;
    if (es_distill_create(&d, be, N, C, V, chunk, mode == 1 ? pb->Ct : 0, mode == 2 ? pb->K : 0)) {
        fprintf(stderr, "%s\n", es_last_error());
        exit(1);
    }
    if (workspace) *workspace = be->mem_now[ES_MEM_WORKSPACE];
    void *h = t_dev_buf(be, pb->h, (size_t)N * C, ES_DT_COMPUTE), *lm = t_dev_buf(be, pb->lm, (size_t)V * C, ES_DT_COMPUTE);
    void *th = t_dev_buf(be, pb->th, (size_t)N * pb->Ct, ES_DT_COMPUTE);
    void *tlm = t_dev_buf(be, pb->tlm, (size_t)V * pb->Ct, ES_DT_COMPUTE);
    void *ddh = t_dev_buf(be, NULL, (size_t)N * C, ES_DT_COMPUTE), *ddlm = t_dev_buf(be, NULL, (size_t)V * C, ES_DT_F32);
    float *poison = malloc((size_t)N * C * 4);
    t_poison(poison, (size_t)N * C);
    be->upload(be, ddh, poison, (size_t)N * C, ES_DT_COMPUTE);
    be->zero(be, ddlm, (size_t)V * C, ES_DT_F32);
    es_teacher_rows tr = {0};
    if (mode == 1) tr.hidden = th, tr.lm_head = tlm;
    if (mode == 2) tr.topk_ids = pb->ids, tr.topk_logp = pb->logp;
    double stats[4] = {-7.0, acc[0], acc[1], 11.0};  // the slot between two neighbours
    double *dstats = be->alloc(be, 4, ES_DT_F64, ES_MEM_WORKSPACE);
    be->upload(be, dstats, stats, 4, ES_DT_F64);
    es_distill_params p = {alpha, tau, gscale};
    int rc = es_distill_loss(&d, dstats + 1, ddh, ddlm, h, lm, &tr, mb, &p);
    be->download(be, dh, ddh, (size_t)N * C, ES_DT_COMPUTE);
    be->download(be, dlm, ddlm, (size_t)V * C, ES_DT_F32);
    be->download(be, stats, dstats, 4, ES_DT_F64);
    CHECK(stats[0] == -7.0 && stats[3] == 11.0, "loss sums wrote outside their slot: %g %g", stats[0], stats[3]);
    CHECK(stats[1] == (float)stats[1] && stats[2] == (float)stats[2], "loss sums %.17g %.17g are not fp32 numbers",
          stats[1], stats[2]);
    acc[0] = stats[1];
    acc[1] = stats[2];
    void *bufs[] = {h, lm, th, tlm, ddh, ddlm, dstats};
    for (int i = 0; i < 7; i++) be->free(be, bufs[i]);
    free(poison);
    es_distill_free(&d);
    return rc;
}

// run_loss_acc from zero sums, returned as fp32.
static int run_loss(float sums[2], float *dh, float *dlm, es_backend *be, const problem *pb,
                    const es_microbatch *mb, int mode, float alpha, float tau, float gscale,
                    int chunk, size_t *workspace) {
    double acc[2] = {0, 0};
    int rc = run_loss_acc(acc, dh, dlm, be, pb, mb, mode, alpha, tau, gscale, chunk, workspace);
    sums[0] = (float)acc[0];
    sums[1] = (float)acc[1];
    return rc;
}

static double rel_d(const float *a, const double *b, size_t n) {
    float *bf = malloc(n * 4);
    for (size_t i = 0; i < n; i++) bf[i] = (float)b[i];
    double e = t_rel_err(a, bf, n, 1e-6);
    free(bf);
    return e;
}

// Chunked, gathered loss and gradients equal the full-logits reference.
static void test_reference(es_backend *be) {
    problem pb;
    problem_make(&pb, 64, 24, 16, 50, 7);
    es_microbatch mb;
    t_random_microbatch(&mb, pb.N, pb.V, &g_rng);
    size_t NC = (size_t)pb.N * pb.C, VC = (size_t)pb.V * pb.C;
    float *dh = malloc(NC * 4), *dlm = malloc(VC * 4);
    double *rdh = malloc(NC * 8), *rdlm = malloc(VC * 8), rs[2];
    const char *names[] = {"CE only", "online teacher", "top-k teacher"};
    for (int mode = 0; mode < 3; mode++) {
        float tau = mode == 1 ? 2.0f : 1.0f, alpha = 0.3f, gs = 1.0f / (float)mb.nsup;
        float sums[2];
        size_t ws;
        CHECK(run_loss(sums, dh, dlm, be, &pb, &mb, mode, alpha, tau, gs, 7, &ws) == ES_OK, "%s",
              es_last_error());
        reference(rs, rdh, rdlm, &pb, &mb, mode, alpha, tau, gs);
        double e0 = fabs(sums[0] - rs[0]) / fabs(rs[0]), e1 = fabs(sums[1] - rs[1]) / (fabs(rs[1]) + 1e-6);
        CHECK(e0 < 1e-5 && (mode == 0 ? sums[1] == 0 : e1 < 1e-4), "%s: sums %g %g vs %g %g",
              names[mode], sums[0], sums[1], rs[0], rs[1]);
        double eh = rel_d(dh, rdh, NC), elm = rel_d(dlm, rdlm, VC);
        CHECK(eh < 1e-4 && elm < 1e-4, "%s: dhidden err %g, dlm err %g", names[mode], eh, elm);
        int zero_rows = 1;
        for (int t = 0; t < mb.n; t++)
            for (int c = 0; c < pb.C && mb.weights[t] == 0; c++) zero_rows &= dh[(size_t)t * pb.C + c] == 0;
        CHECK(zero_rows, "%s: unsupervised rows get a zero gradient", names[mode]);
        // Only one chunk of logits is ever allocated: far less than all rows'.
        CHECK(ws < (size_t)mb.nsup * pb.V * 4, "%s: workspace %zu bytes holds more than a chunk",
              names[mode], ws);
    }
    // Chunk size does not change the result.
    float s1[2], s2[2];
    float *dh2 = malloc(NC * 4);
    run_loss(s1, dh, dlm, be, &pb, &mb, 1, 0.5f, 1.0f, 1.0f, 1, NULL);
    run_loss(s2, dh2, dlm, be, &pb, &mb, 1, 0.5f, 1.0f, 1.0f, 64, NULL);
    CHECK(fabsf(s1[1] - s2[1]) <= 1e-5f * fabsf(s2[1]) && t_rel_err(dh, dh2, NC, 1e-6) < 1e-5,
          "chunk 1 vs 64: kd %g vs %g", s1[1], s2[1]);
    free(dh2);
    free(dh), free(dlm), free(rdh), free(rdlm);
    es_microbatch_free(&mb);
    problem_free(&pb);
}

// d(KD sum)/d(hidden) against central differences (alpha = 0, grad_scale = 1).
static void test_finite_difference(es_backend *be) {
    problem pb;
    problem_make(&pb, 12, 6, 5, 11, 4);
    es_microbatch mb;
    t_random_microbatch(&mb, pb.N, pb.V, &g_rng);
    size_t NC = (size_t)pb.N * pb.C, VC = (size_t)pb.V * pb.C;
    float *dh = malloc(NC * 4), *dlm = malloc(VC * 4), *tmp = malloc(NC * 4), *tlm = malloc(VC * 4);
    for (int mode = 1; mode <= 2; mode++) {
        float tau = mode == 1 ? 1.7f : 1.0f, sums[2], sp[2], sm[2];
        run_loss(sums, dh, dlm, be, &pb, &mb, mode, 0.0f, tau, 1.0f, 5, NULL);
        double worst = 0;
        const double eps = 1e-2;
        for (size_t k = 0; k < NC; k += 3) {
            float keep = pb.h[k];
            pb.h[k] = keep + (float)eps;
            run_loss(sp, tmp, tlm, be, &pb, &mb, mode, 0.0f, tau, 1.0f, 5, NULL);
            pb.h[k] = keep - (float)eps;
            run_loss(sm, tmp, tlm, be, &pb, &mb, mode, 0.0f, tau, 1.0f, 5, NULL);
            pb.h[k] = keep;
            double fd = ((double)sp[1] - sm[1]) / (2 * eps);
            double err = fabs(fd - dh[k]) / (fabs(fd) + 1e-2);
            if (!(err <= worst)) worst = err;
        }
        CHECK(worst < 2e-2, "%s KD gradient vs finite differences: worst rel err %g",
              mode == 1 ? "online" : "top-k", worst);
    }
    free(dh), free(dlm), free(tmp), free(tlm);
    es_microbatch_free(&mb);
    problem_free(&pb);
}

// The top-k KD grows with K (a coarser teacher partition loses information)
// and equals the online loss, gradients included, once K == V.
static void test_topk_converges(es_backend *be) {
    const int V = 40;
    problem pb;
    problem_make(&pb, 20, 8, 8, V, V);
    es_microbatch mb;
    t_random_microbatch(&mb, pb.N, pb.V, &g_rng);
    size_t NC = (size_t)pb.N * pb.C, VC = (size_t)pb.V * pb.C;
    float *dh = malloc(NC * 4), *dlm = malloc(VC * 4), *dh_on = malloc(NC * 4), *dlm_on = malloc(VC * 4);
    float on[2], tk[2];
    run_loss(on, dh_on, dlm_on, be, &pb, &mb, 1, 0.5f, 1.0f, 1.0f, 6, NULL);
    const int Ks[] = {1, 3, 10, 25, V};
    double prev = -1, err_full = INFINITY;
    int monotone = 1;
    for (int i = 0; i < 5; i++) {
        problem sub = pb;
        sub.K = Ks[i];
        sub.ids = malloc((size_t)pb.N * Ks[i] * 4);
        sub.logp = malloc((size_t)pb.N * Ks[i] * 4);
        for (int r = 0; r < pb.N; r++) {
            memcpy(sub.ids + (size_t)r * Ks[i], pb.ids + (size_t)r * V, (size_t)Ks[i] * 4);
            memcpy(sub.logp + (size_t)r * Ks[i], pb.logp + (size_t)r * V, (size_t)Ks[i] * 4);
        }
        run_loss(tk, dh, dlm, be, &sub, &mb, 2, 0.5f, 1.0f, 1.0f, 6, NULL);
        monotone &= tk[1] >= prev - 1e-4 * fabs(on[1]);
        prev = tk[1];
        if (Ks[i] == V)
            err_full = fmax(fabs(tk[1] - on[1]) / fabs(on[1]),
                            fmax(t_rel_err(dh, dh_on, NC, 1e-6), t_rel_err(dlm, dlm_on, VC, 1e-6)));
        CHECK(fabsf(tk[0] - on[0]) <= 1e-5f * fabsf(on[0]), "CE does not depend on K");
        CHECK(tk[1] <= on[1] * (1 + 1e-5), "K %d: top-k KD %g above the full KD %g", Ks[i], tk[1], on[1]);
        free(sub.ids), free(sub.logp);
    }
    CHECK(monotone, "top-k KD grows with K");
    CHECK(err_full < 1e-4, "K == V equals the online loss: err %g", err_full);
    free(dh), free(dlm), free(dh_on), free(dlm_on);
    es_microbatch_free(&mb);
    problem_free(&pb);
}

// The loss sums stay on the device and add up there, in fp32, micro-batch
// after micro-batch (as the trainer's step accumulates them): two
// micro-batches of one chunk each into one slot equal the fp32 sum of each
// alone, bit for bit; with several chunks a call adds to what the slot held.
static void test_device_sums(es_backend *be) {
    problem pb;
    problem_make(&pb, 40, 8, 6, 30, 5);
    es_microbatch ma, mbb;
    t_random_microbatch(&ma, pb.N, pb.V, &g_rng);
    t_random_microbatch(&mbb, pb.N, pb.V, &g_rng);
    size_t NC = (size_t)pb.N * pb.C, VC = (size_t)pb.V * pb.C;
    float *dh = malloc(NC * 4), *dlm = malloc(VC * 4);
    for (int mode = 0; mode < 3; mode++) {
        double a[2] = {0, 0}, b[2] = {0, 0}, ab[2] = {0, 0};
        run_loss_acc(a, dh, dlm, be, &pb, &ma, mode, 0.4f, 1.0f, 1.0f, pb.N, NULL);
        run_loss_acc(b, dh, dlm, be, &pb, &mbb, mode, 0.4f, 1.0f, 1.0f, pb.N, NULL);
        run_loss_acc(ab, dh, dlm, be, &pb, &ma, mode, 0.4f, 1.0f, 1.0f, pb.N, NULL);
        run_loss_acc(ab, dh, dlm, be, &pb, &mbb, mode, 0.4f, 1.0f, 1.0f, pb.N, NULL);
        CHECK(ab[0] == (float)((float)a[0] + (float)b[0]) && ab[1] == (float)((float)a[1] + (float)b[1]),
              "mode %d: accumulated sums %.9g %.9g, want %.9g %.9g", mode, ab[0], ab[1], a[0] + b[0], a[1] + b[1]);
        CHECK(a[0] > 0 && (mode == 0 ? a[1] == 0 : a[1] > 0), "mode %d: sums %g %g", mode, a[0], a[1]);
        double c[2] = {0, 0}, cs[2] = {1000.0, 2000.0};  // chunks of 3 rows, from a non-zero start
        run_loss_acc(c, dh, dlm, be, &pb, &ma, mode, 0.4f, 1.0f, 1.0f, 3, NULL);
        run_loss_acc(cs, dh, dlm, be, &pb, &ma, mode, 0.4f, 1.0f, 1.0f, 3, NULL);
        CHECK(fabs(cs[0] - 1000.0 - c[0]) < 1e-4 * (1000.0 + c[0]) && fabs(cs[1] - 2000.0 - c[1]) < 1e-4 * (2000.0 + c[1]),
              "mode %d: sums added to %g %g give %g %g", mode, c[0], c[1], cs[0], cs[1]);
    }
    free(dh), free(dlm);
    es_microbatch_free(&ma);
    es_microbatch_free(&mbb);
    problem_free(&pb);
}

// The staging behind the loss's uploads: two blocks handed out in turn, each
// only after host_wait on it, so the host never writes a block the device may
// still be reading; a run of the loss takes one block.
static void *g_waited;
static int g_waits;
static void record_wait(es_backend *be, void *h) {
    (void)be;
    g_waited = h;
    g_waits++;
}

static void test_staging(es_backend *be) {
    es_backend rec = *be;
    rec.host_wait = record_wait;
    es_staging s;
    CHECK(es_staging_create(&s, &rec, 64) == ES_OK, "%s", es_last_error());
    void *seen[4];
    for (int i = 0; i < 4; i++) {
        g_waited = NULL;
        seen[i] = es_staging_next(&s);
        CHECK(g_waited == seen[i], "block %d handed out without a wait on it", i);
    }
    CHECK(seen[0] != seen[1] && seen[0] == seen[2] && seen[1] == seen[3], "the two blocks alternate");
    es_staging_free(&s);
    problem pb;
    problem_make(&pb, 10, 4, 4, 9, 3);
    es_microbatch mb;
    t_random_microbatch(&mb, pb.N, pb.V, &g_rng);
    float sums[2], *dh = malloc(40 * 4), *dlm = malloc(36 * 4);
    g_waits = 0;
    CHECK(run_loss(sums, dh, dlm, &rec, &pb, &mb, 0, 1.0f, 1.0f, 1.0f, 4, NULL) == ES_OK, "%s", es_last_error());
    CHECK(g_waits == 1, "a run of the loss waited on %d staging blocks, want 1", g_waits);
    free(dh), free(dlm);
    es_microbatch_free(&mb);
    problem_free(&pb);
}

static void test_bad_input(es_backend *be) {
    problem pb;
    problem_make(&pb, 10, 4, 4, 9, 3);
    es_microbatch mb;
    t_random_microbatch(&mb, pb.N, pb.V, &g_rng);
    float sums[2], *dh = malloc(40 * 4), *dlm = malloc(36 * 4);
    CHECK(run_loss(sums, dh, dlm, be, &pb, &mb, 2, 0.5f, 2.0f, 1.0f, 4, NULL) == ES_ERR &&
              strstr(es_last_error(), "temperature"), "tau with a top-k teacher refused");
    for (int t = 0; t < mb.n; t++)
        if (mb.weights[t] > 0) {
            mb.targets[t] = 9;
            break;
        }
    CHECK(run_loss(sums, dh, dlm, be, &pb, &mb, 0, 1.0f, 1.0f, 1.0f, 4, NULL) == ES_ERR &&
              strstr(es_last_error(), "outside the vocabulary"), "bad target named: %s",
          es_last_error());
    free(dh), free(dlm);
    es_microbatch_free(&mb);
    problem_free(&pb);
}

// The dataset adapter and the offline teacher lookup: entries come from the
// token's original position, and a truncation gap gets none.
static void test_dataset_topk(void) {
    enum { ND = 3, K = 2, V = 50 };
    es_doc_info docs[ND] = {{12, 2, 9}, {7, 1, 6}, {20, 4, 15}};
    uint32_t toks[39], ids[39 * K];
    float logp[39 * K];
    for (int j = 0; j < 39; j++) {
        toks[j] = (uint32_t)(es_rng_u64(&g_rng) % V);
        for (int k = 0; k < K; k++) {
            ids[j * K + k] = (uint32_t)((j * K + k) % V);  // distinct per position, traceable
            logp[j * K + k] = -0.5f - (float)j - 0.25f * (float)k;
        }
    }
    es_shard_content sc = {V, 0, docs, ND, toks, 39, K, ids, logp};
    char path[] = "/tmp/essence_test_distill_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        CHECK(0, "mkstemp");
        return;
    }
    close(fd);
    es_dataset ds;
    const char *paths[1] = {path};
    if (es_shard_write(path, &sc) || es_dataset_open(&ds, paths, 1, V, 0)) {
        CHECK(0, "shard: %s", es_last_error());
        remove(path);
        return;
    }
    es_pack_config pc;
    es_pack_config_defaults(&pc);
    pc.mode = ES_TRUNC_COT;
    pc.window = ES_WIN_MIDDLE;
    pc.ratio = 0.5;
    es_packer *p = NULL;
    CHECK(es_packer_from_dataset(&p, &ds, &pc) == ES_OK, "%s", es_last_error());
    if (p) {
        es_microbatch mb;
        es_microbatch_alloc(&mb, es_packer_capacity(p));
        int32_t *tid = malloc((size_t)mb.capacity * K * 4);
        float *tlp = malloc((size_t)mb.capacity * K * 4);
        size_t first[ND] = {0, 12, 19};
        int seen = 0, bad = 0, gaps = 0;
        for (size_t s = 0; s < es_packer_steps_per_epoch(p); s++) {
            es_packer_next(p, &mb);
            for (int t = 0; t < mb.n; t++) tid[(size_t)t * K] = -7;
            CHECK(es_microbatch_topk(tid, tlp, &mb, &ds) == ES_OK, "%s", es_last_error());
            for (int d = 0; d < mb.ndocs; d++) {
                size_t base = first[mb.doc_ids[d]];
                seen++;
                for (int t = mb.cu_seqlens[d]; t < mb.cu_seqlens[d + 1]; t++) {
                    size_t j = base + (size_t)mb.src[t];
                    CHECK((uint32_t)mb.tokens[t] == toks[j], "token from the shard");
                    int contiguous = t + 1 < mb.cu_seqlens[d + 1] && mb.src[t + 1] == mb.src[t] + 1;
                    gaps += !contiguous && t + 1 < mb.cu_seqlens[d + 1];
                    for (int k = 0; k < K; k++)
                        bad += contiguous ? tid[(size_t)t * K + k] != (int32_t)ids[j * K + k] ||
                                                tlp[(size_t)t * K + k] != logp[j * K + k]
                                          : tid[(size_t)t * K + k] != -1;
                }
            }
        }
        CHECK(seen == ND && bad == 0, "%d documents, %d wrong top-k entries", seen, bad);
        CHECK(gaps > 0, "the middle window leaves a gap after the prompt");
        free(tid), free(tlp);
        es_microbatch_free(&mb);
        es_packer_free(p);
    }
    es_dataset_close(&ds);
    remove(path);
}

// Changing one packed document leaves every other document's logits unchanged.
static void test_no_leak(es_backend *be) {
    es_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.arch = ES_ARCH_QWEN3;
    strcpy(cfg.model_type, "qwen3");
    cfg.vocab = 64, cfg.hidden = 32, cfg.layers = 2, cfg.heads = 4, cfg.kv_heads = 2;
    cfg.head_dim = 8, cfg.ffn = 48, cfg.max_pos = 256, cfg.rope_theta = 10000.0f;
    cfg.norm_eps = 1e-6f, cfg.qk_norm = 1, cfg.bos_id = -1, cfg.eos_id = -1;
    strcpy(cfg.torch_dtype, "float32");
    es_doc_info docs[4] = {{30, 5, 20}, {17, 2, 10}, {40, 8, 30}, {9, 1, 5}};
    uint32_t toks[4][40];
    const uint32_t *tp[4];
    for (int d = 0; d < 4; d++) {
        for (int j = 0; j < 40; j++) toks[d][j] = (uint32_t)(es_rng_u64(&g_rng) % 64);
        tp[d] = toks[d];
    }
    es_pack_config pc;
    es_pack_config_defaults(&pc);
    pc.capacity = 128;
    es_packer *p = NULL;
    es_model m;
    if (es_packer_create(&p, docs, tp, 4, 64, &pc) || es_model_create(&m, &cfg, be, 128, 1)) {
        CHECK(0, "setup: %s", es_last_error());
        return;
    }
    es_model_init_random(&m, 7);
    es_microbatch mb;
    es_microbatch_alloc(&mb, 128);
    es_packer_next(p, &mb);
    CHECK(mb.ndocs == 4, "all four documents in one micro-batch");
    int N = mb.n, V = cfg.vocab;
    void *tok = t_dev_buf(be, NULL, (size_t)N, ES_DT_I32), *pos = t_dev_buf(be, mb.pos, (size_t)N, ES_DT_I32);
    void *cu = t_dev_buf(be, mb.cu_seqlens, (size_t)mb.ndocs + 1, ES_DT_I32);
    void *logits = t_dev_buf(be, NULL, (size_t)N * V, ES_DT_COMPUTE);
    es_model_batch b = {N, mb.ndocs, tok, pos, cu};
    float *before = malloc((size_t)N * V * 4), *after = malloc((size_t)N * V * 4);
    float *out = before;
    for (int pass = 0; pass < 2; pass++) {
        t_poison(out, (size_t)N * V);
        be->upload(be, tok, mb.tokens, (size_t)N, ES_DT_I32);
        CHECK(es_model_forward(&m, &b) == ES_OK, "forward: %s", es_last_error());
        be->matmul_fwd(be, logits, m.hidden, es_model_lm_head(&m), NULL, N, cfg.hidden, V);
        be->download(be, out, logits, (size_t)N * V, ES_DT_COMPUTE);
        // change every token of the second document
        for (int t = mb.cu_seqlens[1]; t < mb.cu_seqlens[2]; t++) mb.tokens[t] = (mb.tokens[t] + 1) % V;
        out = after;
    }
    int s = mb.cu_seqlens[1], e = mb.cu_seqlens[2];
    double other = fmax(t_rel_err(after, before, (size_t)s * V, 1e-6),
                        t_rel_err(after + (size_t)e * V, before + (size_t)e * V, (size_t)(N - e) * V, 1e-6));
    double changed = t_rel_err(after + (size_t)s * V, before + (size_t)s * V, (size_t)(e - s) * V, 1e-6);
    CHECK(other == 0, "other documents' logits changed: rel err %g", other);
    CHECK(changed > 1e-3, "the changed document's logits changed (%g)", changed);
    free(before), free(after);
    be->free(be, tok), be->free(be, pos), be->free(be, cu), be->free(be, logits);
    es_microbatch_free(&mb);
    es_model_free(&m);
    es_packer_free(p);
}

int main(void) {
    es_rng_seed(&g_rng, 2024);
    es_backend *be = es_backend_cpu_create();
    if (!be) {
        fprintf(stderr, "cpu backend: %s\n", es_last_error());
        return 1;
    }
    test_reference(be);
    test_finite_difference(be);
    test_topk_converges(be);
    test_device_sums(be);
    test_staging(be);
    test_bad_input(be);
    test_no_leak(be);
    test_dataset_topk();
    be->destroy(be);
    TEST_DONE();
}
