// `essence data stats` run as a program on a random shard: the printed
// counts against the packer's own (kept and supervised tokens, capacity,
// micro-batches of one epoch) and against the truncation formula; bad
// options and files give one line and a non-zero exit.
// Usage: test_data_stats PATH/TO/essence
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "packer.h"
#include "shard.h"
#include "test.h"

#define ND 40
#define MAXLEN 300

static const char *g_essence;
static char g_dir[64], g_shard[128], g_err[128];
static es_rng g_rng;
static es_doc_info g_docs[ND];
static uint32_t g_tokens[ND * MAXLEN];
static const uint32_t *g_toks[ND];
static size_t g_ntokens;

// Random examples (one of a single token), each with random sections.
static void make_shard(void) {
    g_ntokens = 0;
    for (int d = 0; d < ND; d++) {
        uint32_t len = d == 0 ? 1 : 1 + (uint32_t)(es_rng_u64(&g_rng) % MAXLEN);
        uint32_t b = (uint32_t)(es_rng_u64(&g_rng) % (len + 1));
        uint32_t e = b + (uint32_t)(es_rng_u64(&g_rng) % (len - b + 1));
        g_docs[d] = (es_doc_info){len, b, e};
        g_toks[d] = g_tokens + g_ntokens;
        for (uint32_t j = 0; j < len; j++) g_tokens[g_ntokens++] = (uint32_t)(es_rng_u64(&g_rng) % 100);
    }
    es_shard_content c = {.vocab = 100, .fingerprint = 1, .docs = g_docs, .ndocs = ND, .tokens = g_tokens,
                          .ntokens = g_ntokens};
    CHECK(es_shard_write(g_shard, &c) == ES_OK, "%s", es_last_error());
}

// What the command printed: column 0 the setting, column 1 r = 1.
typedef struct {
    size_t examples, tokens, kept[2], sup[2], cap[2], steps[2];
    int rows;  // table rows found
} stats;

// Runs `essence data stats ARGS SHARD`; returns its exit status, stdout parsed
// into st, stderr left in g_err.
static int run_stats(stats *st, const char *args, const char *shard) {
    char cmd[512], line[512];
    snprintf(cmd, sizeof cmd, "'%s' data stats %s '%s' 2>'%s'", g_essence, args, shard, g_err);
    memset(st, 0, sizeof *st);
    FILE *f = popen(cmd, "r");
    if (!f) return -1;
    static const char *rows[4] = {"kept tokens", "supervised labels", "capacity", "micro-batches/epoch"};
    while (fgets(line, sizeof line, f)) {
        sscanf(line, "examples %zu", &st->examples);
        sscanf(line, "tokens %zu", &st->tokens);
        for (int r = 0; r < 4; r++) {
            size_t *cell = r == 0 ? st->kept : r == 1 ? st->sup : r == 2 ? st->cap : st->steps;
            // columns start at 21 and 46 (labels %-20s, first column %-24s)
            if (strncmp(line, rows[r], strlen(rows[r])) || strlen(line) < 47) continue;
            st->rows += sscanf(line + 21, "%zu", &cell[0]) == 1 && sscanf(line + 46, "%zu", &cell[1]) == 1;
        }
    }
    int status = pclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The first line the command wrote to stderr.
static const char *err_line(void) {
    static char buf[512];
    buf[0] = 0;
    FILE *f = fopen(g_err, "r");
    if (f) {
        if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
        fclose(f);
    }
    return buf;
}

// The packer's counts for pc: kept and supervised over the dataset, capacity,
// and micro-batches of one epoch counted by running it (they must hold every
// kept token).
static void packer_counts(size_t out[4], const es_pack_config *pc) {
    es_packer *p;
    memset(out, 0, 4 * sizeof *out);
    if (es_packer_create(&p, g_docs, g_toks, ND, 100, pc) != ES_OK) {
        CHECK(0, "packer: %s", es_last_error());
        return;
    }
    out[0] = es_packer_kept_tokens(p);
    out[1] = es_packer_supervised_tokens(p);
    out[2] = (size_t)es_packer_capacity(p);
    out[3] = es_packer_steps_per_epoch(p);
    es_microbatch mb;
    es_microbatch_alloc(&mb, es_packer_capacity(p));
    size_t n = 0, sup = 0, nonempty = 0;
    for (size_t s = 0; s < out[3]; s++) {
        es_packer_next(p, &mb);
        n += (size_t)mb.n;
        sup += (size_t)mb.nsup;
        nonempty += mb.n > 0;
    }
    CHECK(n == out[0] && sup == out[1] && nonempty == out[3], "one epoch packs %zu/%zu tokens, %zu/%zu labels", n,
          out[0], sup, out[1]);
    es_microbatch_free(&mb);
    es_packer_free(p);
}

static void expect(const char *args, const es_pack_config *pc) {
    stats st;
    int rc = run_stats(&st, args, g_shard);
    CHECK(rc == 0 && st.rows == 4, "'%s': exit %d, %d table rows; stderr: %s", args, rc, st.rows, err_line());
    CHECK(st.examples == ND && st.tokens == g_ntokens, "'%s': %zu examples, %zu tokens", args, st.examples,
          st.tokens);
    es_pack_config full = *pc;
    full.ratio = 1.0, full.drop_answer = 0, full.label_mask = 0;
    size_t want[2][4];
    packer_counts(want[0], pc);
    packer_counts(want[1], &full);
    for (int c = 0; c < 2; c++)
        CHECK(st.kept[c] == want[c][0] && st.sup[c] == want[c][1] && st.cap[c] == want[c][2] &&
                  st.steps[c] == want[c][3],
              "'%s' column %d: printed kept %zu sup %zu cap %zu steps %zu, packer %zu %zu %zu %zu", args, c,
              st.kept[c], st.sup[c], st.cap[c], st.steps[c], want[c][0], want[c][1], want[c][2], want[c][3]);
    CHECK(st.kept[1] == g_ntokens, "'%s': r = 1 keeps %zu of %zu tokens", args, st.kept[1], g_ntokens);
}

static void test_counts(void) {
    es_pack_config pc;
    // r = 0.5, lead: kept = sum of max(1, floor(len / 2)); every kept token but
    // a document's last predicts one, all sections weighted.
    es_pack_config_defaults(&pc);
    pc.ratio = 0.5;
    expect("--lsp 0.5", &pc);
    stats st;
    run_stats(&st, "--lsp 0.5", g_shard);
    size_t kept = 0, longest = 0;
    for (int d = 0; d < ND; d++) {
        size_t k = g_docs[d].len / 2 ? g_docs[d].len / 2 : 1;
        kept += k;
        longest = k > longest ? k : longest;
    }
    CHECK(st.kept[0] == kept && st.sup[0] == kept - ND, "r 0.5: kept %zu (formula %zu), supervised %zu (%zu)",
          st.kept[0], kept, st.sup[0], kept - ND);
    CHECK(st.sup[1] == g_ntokens - ND, "r 1: supervised %zu of %zu", st.sup[1], g_ntokens - ND);
    CHECK(st.cap[0] == (longest + 63) / 64 * 64, "capacity %zu for a longest kept %zu", st.cap[0], longest);
    CHECK(st.steps[0] * st.cap[0] >= kept && st.steps[0] <= ND, "%zu micro-batches", st.steps[0]);

    // cot mode: the whole prompt and floor(r * CoT) of the CoT (at least one token).
    es_pack_config_defaults(&pc);
    pc.ratio = 0.3, pc.mode = ES_TRUNC_COT;
    CHECK(es_supervision_parse(pc.weights, "cotAns") == ES_OK, "%s", es_last_error());
    expect("--lsp 0.3 --mode cot --supervise cotAns", &pc);
    run_stats(&st, "--lsp 0.3 --mode cot --supervise cotAns", g_shard);
    kept = 0;
    for (int d = 0; d < ND; d++) {
        size_t k = g_docs[d].cot_begin + (size_t)floor((g_docs[d].cot_end - g_docs[d].cot_begin) * 0.3);
        kept += k ? k : 1;
    }
    CHECK(st.kept[0] == kept, "cot 0.3: kept %zu, formula %zu", st.kept[0], kept);

    es_pack_config_defaults(&pc);
    pc.ratio = 0.7, pc.window = ES_WIN_TAIL, pc.drop_answer = 1, pc.capacity = 600, pc.seed = 3;
    expect("--lsp 0.7 --window tail --drop-answer --capacity 600 --seed 3", &pc);

    es_pack_config_defaults(&pc);
    pc.label_mask = 0.5, pc.weights[1] = 0, pc.weights[2] = 2;
    expect("--label-mask 0.5 --supervise 1,0,2", &pc);
}

static void test_bad_input(void) {
    stats st;
    CHECK(run_stats(&st, "--lsp 0", g_shard) == 1 && strstr(err_line(), "lead-span proportion 0"),
          "lsp 0: %s", err_line());
    CHECK(run_stats(&st, "--lsp abc", g_shard) == 2 && strstr(err_line(), "--lsp"), "lsp abc: %s", err_line());
    CHECK(run_stats(&st, "--capacity 8", g_shard) == 1 && strstr(err_line(), "capacity 8"), "capacity: %s",
          err_line());
    char missing[160];
    snprintf(missing, sizeof missing, "%s/missing.shard", g_dir);
    CHECK(run_stats(&st, "", missing) == 1 && strstr(err_line(), missing), "missing shard: %s", err_line());
    CHECK(st.rows == 0, "a failed run printed a table");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PATH/TO/essence\n", argv[0]);
        return 2;
    }
    g_essence = argv[1];
    snprintf(g_dir, sizeof g_dir, "/tmp/es_data_stats_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(g_shard, sizeof g_shard, "%s/s.shard", g_dir);
    snprintf(g_err, sizeof g_err, "%s/stderr.txt", g_dir);
    es_rng_seed(&g_rng, (uint64_t)getpid() ^ (uint64_t)(es_now() * 1e6));
    make_shard();
    test_counts();
    test_bad_input();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    CHECK(system(cmd) == 0, "cleanup");
    TEST_DONE();
}
