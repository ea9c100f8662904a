// Packer: truncation of every mode and window, supervision weights, packing
// properties (coverage, capacity, document isolation), rank shares of
// rounds and of optimizer steps,
// determinism and resume.
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "packer.h"
#include "test.h"

// Token values encode (document, index) so every packed token can be traced.
#define TOK(d, j) ((uint32_t)(d) * 8192u + (uint32_t)(j))
#define TOK_DOC(t) ((t) / 8192)
#define TOK_IDX(t) ((t) % 8192)

typedef struct {
    size_t n;
    es_doc_info *docs;
    uint32_t **toks;
} corpus;

// Random lengths from a mix of distributions: short, uniform, heavy-tailed;
// sections anywhere, including empty prompt, CoT or answer.
static void corpus_make(corpus *c, size_t n, uint64_t seed) {
    es_rng r;
    es_rng_seed(&r, seed);
    c->n = n;
    c->docs = es_xmalloc(n * sizeof *c->docs);
    c->toks = es_xmalloc(n * sizeof *c->toks);
    for (size_t i = 0; i < n; i++) {
        uint32_t len;
        switch (es_rng_u64(&r) % 4) {
        case 0: len = 1 + (uint32_t)(es_rng_u64(&r) % 4); break;
        case 1: len = 1 + (uint32_t)(es_rng_u64(&r) % 300); break;
        case 2: len = 1 + (uint32_t)(40.0 / (0.02 + es_rng_uniform(&r))); break;
        default: len = 200 + (uint32_t)(es_rng_u64(&r) % 800); break;
        }
        if (len > 4000) len = 4000;
        uint32_t a = (uint32_t)(es_rng_u64(&r) % (len + 1)), b = (uint32_t)(es_rng_u64(&r) % (len + 1));
        c->docs[i].len = len;
        c->docs[i].cot_begin = a < b ? a : b;
        c->docs[i].cot_end = a < b ? b : a;
        c->toks[i] = es_xmalloc(len * sizeof(uint32_t));
        for (uint32_t j = 0; j < len; j++) c->toks[i][j] = TOK(i, j);
    }
}

static void corpus_free(corpus *c) {
    for (size_t i = 0; i < c->n; i++) free(c->toks[i]);
    free(c->toks);
    free(c->docs);
}

static es_packer *make(const corpus *c, const es_pack_config *pc) {
    es_packer *p = NULL;
    if (es_packer_create(&p, c->docs, (const uint32_t *const *)c->toks, c->n, 0, pc) != ES_OK) {
        fprintf(stderr, "packer: %s\n", es_last_error());
        exit(1);
    }
    return p;
}

static uint32_t win_start(es_trunc_window w, uint32_t n, uint32_t k) {
    return w == ES_WIN_LEAD ? 0 : w == ES_WIN_TAIL ? n - k : (n - k) / 2;
}

// The expected kept indices of a document, written from the specification.
static uint32_t expected_keep(uint8_t *keep, const es_doc_info *d, const es_pack_config *pc) {
    memset(keep, 0, d->len);
    uint32_t end = d->len;
    if (pc->drop_answer && d->cot_end > 0) end = d->cot_end;
    if (pc->mode == ES_TRUNC_SEQ) {
        uint32_t k = (uint32_t)(end * pc->ratio);
        if (k < 1) k = 1;
        uint32_t s = win_start(pc->window, end, k);
        memset(keep + s, 1, k);
    } else if (pc->ratio >= 1) {
        memset(keep, 1, end);
    } else {
        uint32_t ncot = d->cot_end - d->cot_begin, k = (uint32_t)(ncot * pc->ratio);
        memset(keep, 1, d->cot_begin);
        memset(keep + d->cot_begin + win_start(pc->window, ncot, k), 1, k);
        if (d->cot_begin == 0 && k == 0) keep[0] = 1;
    }
    uint32_t n = 0;
    for (uint32_t j = 0; j < d->len; j++) n += keep[j];
    return n;
}

static int section(const es_doc_info *d, uint32_t j) {
    return j < d->cot_begin ? 0 : j < d->cot_end ? 1 : 2;
}

// Checks one micro-batch's internal consistency; marks seen tokens.
static void check_batch(const es_microbatch *mb, const corpus *c, const es_pack_config *pc,
                        int capacity, uint8_t **seen, size_t *docs_seen) {
    CHECK(mb->n <= capacity, "n %d > capacity %d", mb->n, capacity);
    CHECK(mb->cu_seqlens[0] == 0 && mb->cu_seqlens[mb->ndocs] == mb->n, "cu_seqlens ends");
    int nsup = 0;
    for (int d = 0; d < mb->ndocs; d++) {
        int64_t id = mb->doc_ids[d];
        const es_doc_info *di = &c->docs[id];
        docs_seen[id]++;
        int s = mb->cu_seqlens[d], e = mb->cu_seqlens[d + 1];
        CHECK(e > s, "empty document %lld", (long long)id);
        int prev = -1;
        for (int t = s; t < e; t++) {
            uint32_t tok = (uint32_t)mb->tokens[t];
            CHECK(TOK_DOC(tok) == (uint32_t)id, "token of doc %u inside doc %lld", TOK_DOC(tok),
                  (long long)id);
            uint32_t j = TOK_IDX(tok);
            CHECK((int)j > prev && j < di->len, "token order");
            CHECK(mb->src[t] == (int32_t)j, "src");
            prev = (int)j;
            seen[id][j]++;
            CHECK(mb->pos[t] == t - s, "position %d at %d", mb->pos[t], t - s);
            if (t + 1 < e) {
                CHECK(mb->targets[t] == mb->tokens[t + 1], "target is the next token");
                if (pc->label_mask == 0) {
                    float w = pc->weights[section(di, TOK_IDX((uint32_t)mb->tokens[t + 1]))];
                    CHECK(mb->weights[t] == w, "weight %g != %g", mb->weights[t], w);
                }
            } else {
                CHECK(mb->targets[t] == -1 && mb->weights[t] == 0,
                      "last token of a document predicts nothing");
            }
            nsup += mb->weights[t] > 0;
        }
    }
    CHECK(nsup == mb->nsup, "nsup %d != %d", mb->nsup, nsup);
}

// One epoch over every mode, window, proportion and the drop-answer option.
static void test_truncation_coverage(const corpus *c) {
    const double ratios[] = {0.1, 0.37, 0.5, 0.7, 1.0};
    uint8_t **seen = es_xmalloc(c->n * sizeof *seen);
    uint8_t *keep = es_xmalloc(8192);
    size_t *docs_seen = es_xmalloc(c->n * sizeof *docs_seen);
    for (size_t i = 0; i < c->n; i++) seen[i] = es_xmalloc(c->docs[i].len);
    for (int mode = 0; mode < 2; mode++)
        for (int win = 0; win < 3; win++)
            for (size_t ri = 0; ri < sizeof ratios / sizeof ratios[0]; ri++)
                for (int drop = 0; drop < 2; drop++) {
                    es_pack_config pc;
                    es_pack_config_defaults(&pc);
                    pc.mode = mode;
                    pc.window = win;
                    pc.ratio = (float)ratios[ri];  // as a run config stores it
                    pc.drop_answer = drop;
                    pc.shuffle_window = 37;
                    pc.seed = 11 + ri;
                    pc.weights[0] = 0.5f;
                    pc.weights[2] = 2.0f;
                    es_packer *p = make(c, &pc);
                    pc.ratio = ratios[ri];
                    int cap = es_packer_capacity(p);
                    size_t expect_kept = 0, expect_seq = 0, maxkept = 0;
                    for (size_t i = 0; i < c->n; i++) {
                        memset(seen[i], 0, c->docs[i].len);
                        docs_seen[i] = 0;
                        size_t k = expected_keep(keep, &c->docs[i], &pc);
                        expect_kept += k;
                        if (k > maxkept) maxkept = k;
                        size_t s = (size_t)(c->docs[i].len * ratios[ri]);
                        expect_seq += s < 1 ? 1 : s;
                    }
                    CHECK(cap % 64 == 0 && (size_t)cap >= maxkept && (size_t)cap < maxkept + 64,
                          "default capacity %d for longest %zu", cap, maxkept);
                    CHECK(es_packer_kept_tokens(p) == expect_kept, "kept %zu != %zu",
                          es_packer_kept_tokens(p), expect_kept);
                    if (mode == ES_TRUNC_SEQ && !drop)
                        CHECK(expect_kept == expect_seq, "seq kept %zu != sum max(1, floor(len r)) %zu",
                              expect_kept, expect_seq);
                    es_microbatch mb;
                    es_microbatch_alloc(&mb, cap);
                    size_t steps = es_packer_steps_per_epoch(p), total = 0, sup = 0;
                    for (size_t s = 0; s < steps; s++) {
                        es_packer_next(p, &mb);
                        check_batch(&mb, c, &pc, cap, seen, docs_seen);
                        total += (size_t)mb.n;
                        sup += (size_t)mb.nsup;
                    }
                    CHECK(es_packer_get_state(p).epoch == 0, "still epoch 0");
                    CHECK(total == expect_kept, "packed %zu tokens, kept %zu", total, expect_kept);
                    CHECK(sup == es_packer_supervised_tokens(p), "supervised %zu vs %zu", sup,
                          es_packer_supervised_tokens(p));
                    // Best fit decreasing wastes little: under a third of the capacity on average.
                    CHECK(total * 3 > steps * (size_t)cap * 2 || steps <= 2, "packing density %zu/%zu",
                          total, steps * (size_t)cap);
                    int bad = 0;
                    for (size_t i = 0; i < c->n; i++) {
                        bad += docs_seen[i] != 1;
                        expected_keep(keep, &c->docs[i], &pc);
                        for (uint32_t j = 0; j < c->docs[i].len; j++) bad += seen[i][j] != keep[j];
                    }
                    CHECK(bad == 0, "mode %d window %d r %g drop %d: %d tokens not kept exactly once",
                          mode, win, ratios[ri], drop, bad);
                    es_packer_next(p, &mb);
                    CHECK(es_packer_get_state(p).epoch == 1, "rolls over to epoch 1");
                    es_microbatch_free(&mb);
                    es_packer_free(p);
                }
    for (size_t i = 0; i < c->n; i++) free(seen[i]);
    free(seen);
    free(keep);
    free(docs_seen);
}

// Three ranks: same step count, disjoint shares covering every document once.
static void test_ranks(const corpus *c) {
    size_t *count = es_xcalloc(c->n, sizeof *count);
    size_t steps0 = 0;
    for (int rank = 0; rank < 3; rank++) {
        es_pack_config pc;
        es_pack_config_defaults(&pc);
        pc.ratio = 0.5;
        pc.capacity = 1024;
        pc.seed = 5;
        pc.rank = rank;
        pc.nranks = 3;
        es_packer *p = make(c, &pc);
        size_t steps = es_packer_steps_per_epoch(p);
        if (rank == 0) steps0 = steps;
        CHECK(steps == steps0, "rank %d has %zu steps, rank 0 %zu", rank, steps, steps0);
        es_microbatch mb;
        es_microbatch_alloc(&mb, es_packer_capacity(p));
        for (size_t s = 0; s < steps; s++) {
            es_packer_next(p, &mb);
            for (int d = 0; d < mb.ndocs; d++) count[mb.doc_ids[d]]++;
        }
        es_microbatch_free(&mb);
        es_packer_free(p);
    }
    int bad = 0;
    for (size_t i = 0; i < c->n; i++) bad += count[i] != 1;
    CHECK(bad == 0, "%d documents not in exactly one rank's share", bad);
    free(count);
}

static int same_batch(const es_microbatch *a, const es_microbatch *b) {
    return a->n == b->n && a->ndocs == b->ndocs && a->nsup == b->nsup &&
           !memcmp(a->tokens, b->tokens, (size_t)a->n * 4) &&
           !memcmp(a->weights, b->weights, (size_t)a->n * 4) &&
           !memcmp(a->doc_ids, b->doc_ids, (size_t)a->ndocs * 8);
}

// Steps of 7 micro-batches over 1, 2 and 3 ranks, past an epoch boundary:
// micro-batch j of a step is the 1-rank step's j-th, on rank j % N (the
// rest of a shorter share empty), and every rank's position is the 1-rank one.
static void test_step_shares(const corpus *c) {
    enum { STEP = 7, NSTEPS = 12 };
    es_pack_config pc;
    es_pack_config_defaults(&pc);
    pc.ratio = 0.5;
    pc.capacity = 1024;
    pc.seed = 9;
    es_packer *ref = make(c, &pc);
    CHECK(NSTEPS * STEP > es_packer_epoch_batches(ref), "the steps cross an epoch boundary");
    int cap = es_packer_capacity(ref);
    es_microbatch want[STEP], got[STEP];
    for (int j = 0; j < STEP; j++) {
        es_microbatch_alloc(&want[j], cap);
        es_microbatch_alloc(&got[j], cap);
    }
    es_packer *ranks[6];
    int nr[6] = {1, 2, 2, 3, 3, 3}, rk[6] = {0, 0, 1, 0, 1, 2};
    for (int k = 0; k < 6; k++) {
        pc.nranks = nr[k];
        pc.rank = rk[k];
        ranks[k] = make(c, &pc);
    }
    for (int s = 0; s < NSTEPS; s++) {
        CHECK(es_packer_next_step(ref, want, STEP) == STEP, "one rank takes the whole step");
        es_packer_state st = es_packer_get_state(ref);
        for (int k = 0; k < 6; k++) {
            int n = nr[k], r = rk[k];
            size_t share = es_packer_next_step(ranks[k], got, STEP);
            CHECK(share == (size_t)(STEP + n - 1) / (size_t)n, "share of rank %d of %d", r, n);
            for (size_t a = 0; a < share; a++) {
                size_t j = a * (size_t)n + (size_t)r;
                CHECK(j < STEP ? same_batch(&got[a], &want[j]) : got[a].n == 0 && got[a].ndocs == 0,
                      "step %d: rank %d of %d, micro-batch %zu", s, r, n, a);
            }
            es_packer_state rs = es_packer_get_state(ranks[k]);
            CHECK(rs.epoch == st.epoch && rs.pos == st.pos, "step %d: rank %d of %d is at %llu/%llu", s, r, n,
                  (unsigned long long)rs.epoch, (unsigned long long)rs.pos);
        }
    }
    for (int k = 0; k < 6; k++) es_packer_free(ranks[k]);
    for (int j = 0; j < STEP; j++) {
        es_microbatch_free(&want[j]);
        es_microbatch_free(&got[j]);
    }
    es_packer_free(ref);
}

// Same seed: same batches. Different epochs: different order. A restored state
// continues exactly where the saved one was, across an epoch boundary.
static void test_determinism_resume(const corpus *c) {
    es_pack_config pc;
    es_pack_config_defaults(&pc);
    pc.mode = ES_TRUNC_COT;
    pc.ratio = 0.6;
    pc.seed = 99;
    pc.shuffle_window = 50;
    es_packer *a = make(c, &pc), *b = make(c, &pc);
    int cap = es_packer_capacity(a);
    size_t steps = es_packer_steps_per_epoch(a);
    es_microbatch ma, mb;
    es_microbatch_alloc(&ma, cap);
    es_microbatch_alloc(&mb, cap);
    int differ = 0;
    int64_t *first = es_xmalloc(steps * sizeof *first);
    for (size_t s = 0; s < steps; s++) {
        es_packer_next(a, &ma);
        es_packer_next(b, &mb);
        differ += !same_batch(&ma, &mb);
        first[s] = ma.doc_ids[0];
    }
    CHECK(differ == 0, "%d batches differ for the same seed", differ);
    int reordered = 0;
    for (size_t s = 0; s < steps; s++) {
        es_packer_next(a, &ma);
        if (es_packer_get_state(a).epoch != 1) break;
        reordered += ma.doc_ids[0] != first[s];
    }
    CHECK(reordered > 0, "epoch 1 repeats epoch 0's order");
    // Save in the middle of epoch 0 of b, restore into a fresh packer.
    es_packer_free(b);
    b = make(c, &pc);
    size_t save_at = steps - 2;
    for (size_t s = 0; s < save_at; s++) es_packer_next(b, &mb);
    es_packer_state st = es_packer_get_state(b);
    es_packer *r = make(c, &pc);
    CHECK(es_packer_set_state(r, st) == ES_OK, "set_state: %s", es_last_error());
    differ = 0;
    for (int s = 0; s < 6; s++) {  // crosses into epoch 1
        es_packer_next(b, &mb);
        es_packer_next(r, &ma);
        differ += !same_batch(&ma, &mb);
    }
    CHECK(differ == 0, "%d batches differ after resume", differ);
    es_packer_state bad = {0, steps + 5};
    CHECK(es_packer_set_state(r, bad) == ES_ERR && strstr(es_last_error(), "packer:"),
          "a position past the epoch is refused");
    free(first);
    es_microbatch_free(&ma);
    es_microbatch_free(&mb);
    es_packer_free(a);
    es_packer_free(b);
    es_packer_free(r);
}

// The label-mask control keeps every token and supervises floor(S (1 - f)) labels.
static void test_label_mask(const corpus *c) {
    es_pack_config pc;
    es_pack_config_defaults(&pc);
    pc.label_mask = 0.6;
    pc.seed = 3;
    es_packer *p = make(c, &pc);
    size_t all = 0, expect_sup = 0;
    for (size_t i = 0; i < c->n; i++) {
        all += c->docs[i].len;
        size_t S = c->docs[i].len - 1, k = (size_t)(S * 0.4);
        expect_sup += S == 0 ? 0 : k < 1 ? 1 : k;
    }
    CHECK(es_packer_kept_tokens(p) == all, "label mask keeps every token");
    CHECK(es_packer_supervised_tokens(p) == expect_sup, "label mask supervises %zu, expected %zu",
          es_packer_supervised_tokens(p), expect_sup);
    es_microbatch mb;
    es_microbatch_alloc(&mb, es_packer_capacity(p));
    uint8_t **seen = es_xmalloc(c->n * sizeof *seen);
    size_t *docs_seen = es_xcalloc(c->n, sizeof *docs_seen);
    for (size_t i = 0; i < c->n; i++) seen[i] = es_xcalloc(c->docs[i].len, 1);
    size_t sup = 0, steps = es_packer_steps_per_epoch(p);
    for (size_t s = 0; s < steps; s++) {
        es_packer_next(p, &mb);
        check_batch(&mb, c, &pc, es_packer_capacity(p), seen, docs_seen);
        sup += (size_t)mb.nsup;
    }
    CHECK(sup == expect_sup, "packed supervision %zu != %zu", sup, expect_sup);
    for (size_t i = 0; i < c->n; i++) free(seen[i]);
    free(seen);
    free(docs_seen);
    es_microbatch_free(&mb);
    es_packer_free(p);
}

// Hand-built example: prompt [0,3), CoT [3,7), answer [7,10). weight[t] is the
// section weight of token t+1, and the last token has none.
static void test_presets(void) {
    static const struct { const char *name; float w[9]; } cases[] = {
        {"ans", {0, 0, 0, 0, 0, 0, 1, 1, 1}},
        {"promptAns", {1, 1, 0, 0, 0, 0, 1, 1, 1}},
        {"cot", {0, 0, 1, 1, 1, 1, 0, 0, 0}},
        {"cotAns", {0, 0, 1, 1, 1, 1, 1, 1, 1}},
        {"promptCot", {1, 1, 1, 1, 1, 1, 0, 0, 0}},
        {"promptcotAns", {1, 1, 1, 1, 1, 1, 1, 1, 1}},
        {"0.25,0,3", {0.25f, 0.25f, 0, 0, 0, 0, 3, 3, 3}},
    };
    es_doc_info d = {10, 3, 7};
    uint32_t toks[10];
    for (int j = 0; j < 10; j++) toks[j] = (uint32_t)(100 + j);
    const uint32_t *tp[1] = {toks};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        es_pack_config pc;
        es_pack_config_defaults(&pc);
        CHECK(es_supervision_parse(pc.weights, cases[k].name) == ES_OK, "%s", es_last_error());
        es_packer *p = NULL;
        CHECK(es_packer_create(&p, &d, tp, 1, 200, &pc) == ES_OK, "%s", es_last_error());
        if (!p) continue;
        es_microbatch mb;
        es_microbatch_alloc(&mb, es_packer_capacity(p));
        es_packer_next(p, &mb);
        CHECK(mb.n == 10 && mb.ndocs == 1, "one document of 10");
        int bad = 0, nsup = 0;
        for (int t = 0; t < 9; t++) {
            bad += mb.weights[t] != cases[k].w[t];
            nsup += cases[k].w[t] > 0;
        }
        CHECK(bad == 0 && mb.weights[9] == 0 && mb.targets[9] == -1, "preset %s", cases[k].name);
        CHECK(mb.nsup == nsup, "preset %s supervises %d, expected %d", cases[k].name, mb.nsup, nsup);
        es_microbatch_free(&mb);
        es_packer_free(p);
    }
    // cot mode, r = 0.5, tail window: prompt 0..2 then CoT tokens 5, 6.
    es_pack_config pc;
    es_pack_config_defaults(&pc);
    pc.mode = ES_TRUNC_COT;
    pc.window = ES_WIN_TAIL;
    pc.ratio = 0.5;
    es_kept_spans ks;
    es_doc_keep(&ks, &d, &pc);
    CHECK(ks.a0 == 0 && ks.a1 == 3 && ks.b0 == 5 && ks.b1 == 7, "cot tail spans [%u,%u)+[%u,%u)",
          ks.a0, ks.a1, ks.b0, ks.b1);
    pc.mode = ES_TRUNC_SEQ;
    pc.window = ES_WIN_MIDDLE;
    pc.ratio = 0.3;
    es_doc_keep(&ks, &d, &pc);
    CHECK(ks.a0 == 3 && ks.a1 == 6 && ks.b1 == ks.b0, "seq middle span [%u,%u)", ks.a0, ks.a1);
    pc.ratio = 1;
    pc.drop_answer = 1;
    es_doc_keep(&ks, &d, &pc);
    CHECK(ks.a0 == 0 && ks.a1 == 7 && ks.b1 == ks.b0, "drop answer keeps through </think>");
}

// Bad input gives one line naming the problem, never a crash.
static void test_bad_input(void) {
    float w[3];
    CHECK(es_supervision_parse(w, "answer") == ES_ERR && strstr(es_last_error(), "answer"),
          "unknown preset refused");
    CHECK(es_supervision_parse(w, "1,2") == ES_ERR, "two weights refused");
    CHECK(es_supervision_parse(w, "0,0,0") == ES_ERR, "all-zero weights refused");
    CHECK(es_supervision_parse(w, "1,-1,0") == ES_ERR, "negative weight refused");
    es_trunc_mode m;
    es_trunc_window wi;
    CHECK(es_trunc_mode_parse(&m, "lead") == ES_ERR && es_trunc_window_parse(&wi, "tail") == ES_OK &&
              wi == ES_WIN_TAIL, "mode/window parse");
    es_doc_info d[2] = {{10, 3, 7}, {5, 4, 2}};
    uint32_t toks[10] = {0};
    const uint32_t *tp[2] = {toks, toks};
    es_pack_config pc;
    es_pack_config_defaults(&pc);
    es_packer *p = NULL;
    CHECK(es_packer_create(&p, d, tp, 2, 0, &pc) == ES_ERR && strstr(es_last_error(), "document 1"),
          "bad sections named: %s", es_last_error());
    toks[4] = 500;
    CHECK(es_packer_create(&p, d, tp, 1, 100, &pc) == ES_ERR && strstr(es_last_error(), "token 4"),
          "token outside vocabulary named: %s", es_last_error());
    toks[4] = 0;
    pc.capacity = 8;
    CHECK(es_packer_create(&p, d, tp, 1, 0, &pc) == ES_ERR && strstr(es_last_error(), "capacity"),
          "capacity below the longest document refused");
    pc.capacity = 0;
    pc.ratio = 0;
    CHECK(es_packer_create(&p, d, tp, 1, 0, &pc) == ES_ERR, "r = 0 refused");
    pc.ratio = 1;
    pc.rank = 2;
    pc.nranks = 2;
    CHECK(es_packer_create(&p, d, tp, 1, 0, &pc) == ES_ERR, "rank out of range refused");
    CHECK(p == NULL, "no packer on failure");
}

int main(void) {
    corpus c;
    corpus_make(&c, 400, 1234);
    test_truncation_coverage(&c);
    test_ranks(&c);
    test_step_shares(&c);
    test_determinism_resume(&c);
    test_label_mask(&c);
    test_presets();
    test_bad_input();
    corpus_free(&c);
    TEST_DONE();
}
