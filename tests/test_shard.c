// Data shards: write/read round trip, every truncation and byte flip refused
// with a message, each validation rule, tokenizer mismatches, the fixture
// made by tools/prep_data.py, and `essence data check`.
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checksum.h"
#include "cli.h"
#include "common.h"
#include "shard.h"
#include "shard_format.h"
#include "test.h"
#include "tokenizer_id.h"

// In memory where the system offers it: thousands of small files are written.
static char dir[64];

static const char *tmp_path(const char *name) {
    static char buf[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static void put_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
}

// A random shard's content; arrays owned by the caller (free_content).
typedef struct {
    es_shard_content c;
    es_doc_info *docs;
    uint32_t *tokens, *ids;
    float *logp;
} content;

// Examples of 2..41 tokens; odd forces an odd total so that the padding exists.
static content random_content(es_rng *r, size_t ndocs, uint32_t topk, uint32_t vocab, int odd) {
    content x = {0};
    x.docs = es_xcalloc(ndocs, sizeof *x.docs);
    size_t n = 0;
    for (size_t d = 0; d < ndocs; d++) {
        uint32_t len = 2 + (uint32_t)(es_rng_u64(r) % 40);
        if (odd && d == ndocs - 1 && (n + len) % 2 == 0) len++;
        uint32_t b = (uint32_t)(es_rng_u64(r) % (len + 1));
        uint32_t e = b + (uint32_t)(es_rng_u64(r) % (len - b + 1));
        x.docs[d] = (es_doc_info){len, b, e};
        n += len;
    }
    x.tokens = es_xmalloc(n * sizeof *x.tokens);
    for (size_t i = 0; i < n; i++) x.tokens[i] = (uint32_t)(es_rng_u64(r) % vocab);
    if (topk) {
        x.ids = es_xmalloc(n * topk * sizeof *x.ids);
        x.logp = es_xmalloc(n * topk * sizeof *x.logp);
        for (size_t i = 0; i < n * topk; i++) {
            x.ids[i] = (uint32_t)(es_rng_u64(r) % vocab);
            x.logp[i] = -10.0f * es_rng_uniform(r);
        }
    }
    x.c = (es_shard_content){vocab, es_rng_u64(r), x.docs, ndocs, x.tokens, n, topk, x.ids, x.logp};
    return x;
}

static void free_content(content *x) {
    free(x->docs);
    free(x->tokens);
    free(x->ids);
    free(x->logp);
}

// The dataset holds exactly the content, example by example.
static void check_same(const es_dataset *ds, const es_shard_content *const *cs, int n) {
    size_t g = 0;
    for (int s = 0; s < n; s++) {
        const es_shard_content *c = cs[s];
        size_t off = 0;
        for (size_t d = 0; d < c->ndocs; d++, g++) {
            es_doc_info info = {0};
            const uint32_t *t = es_dataset_doc(ds, g, &info);
            CHECK(t != NULL, "doc %zu missing: %s", g, es_last_error());
            if (!t) return;
            CHECK(info.len == c->docs[d].len && info.cot_begin == c->docs[d].cot_begin &&
                      info.cot_end == c->docs[d].cot_end,
                  "doc %zu info differs", g);
            CHECK(!memcmp(t, c->tokens + off, info.len * 4), "doc %zu tokens differ", g);
            const uint32_t *ids;
            const float *logp;
            CHECK(es_dataset_topk(ds, g, &ids, &logp) == ES_OK, "topk %zu", g);
            if (c->topk) {
                size_t m = (size_t)info.len * c->topk;
                CHECK(ids && !memcmp(ids, c->topk_ids + off * c->topk, m * 4), "doc %zu top-k ids differ", g);
                CHECK(logp && t_rel_err(logp, c->topk_logp + off * c->topk, m, 1e-6) == 0.0,
                      "doc %zu top-k log-probs differ", g);
            } else {
                CHECK(!ids && !logp, "doc %zu has top-k it was not given", g);
            }
            off += c->docs[d].len;
        }
    }
    CHECK(g == ds->ndocs, "dataset holds %zu examples, expected %zu", ds->ndocs, g);
    es_doc_info info;
    CHECK(es_dataset_doc(ds, g, &info) == NULL && strstr(es_last_error(), "out of range"), "doc past the end");
}

static void test_round_trip(es_rng *r) {
    content a = random_content(r, 5, 3, 1000, 0), b = random_content(r, 4, 3, 1000, 0);
    b.c.fingerprint = a.c.fingerprint;
    const char *pa = tmp_path("a.shard"), *pb = tmp_path("b.shard");
    CHECK(es_shard_write(pa, &a.c) == ES_OK, "write a: %s", es_last_error());
    CHECK(es_shard_write(pb, &b.c) == ES_OK, "write b: %s", es_last_error());
    const char *paths[2] = {pa, pb};
    const es_shard_content *cs[2] = {&a.c, &b.c};
    es_dataset ds;
    CHECK(es_dataset_open(&ds, paths, 2, 1000, a.c.fingerprint) == ES_OK, "open: %s", es_last_error());
    CHECK(ds.ndocs == 9 && ds.ntokens == a.c.ntokens + b.c.ntokens && ds.topk == 3 && ds.vocab == 1000,
          "dataset totals");
    check_same(&ds, cs, 2);
    es_dataset_close(&ds);
    free_content(&a);
    free_content(&b);
    for (int rep = 0; rep < 4; rep++) {  // without top-k; odd and even token counts
        content c = random_content(r, 1 + (size_t)rep, 0, 50, rep % 2);
        const es_shard_content *one = &c.c;
        CHECK(es_shard_write(pa, &c.c) == ES_OK, "write: %s", es_last_error());
        CHECK(es_dataset_open(&ds, paths, 1, 0, 0) == ES_OK, "open: %s", es_last_error());
        CHECK(ds.topk == 0, "top-k absent");
        check_same(&ds, &one, 1);
        es_dataset_close(&ds);
        free_content(&c);
    }
}

typedef struct {
    int tries, refused, named;
} damage_tally;

// Writes buf (n bytes) to `bad` and opens it, counting whether it is refused
// and whether the message names the file.
static void try_damaged(damage_tally *t, const char *bad, const uint8_t *buf, size_t n) {
    put_file(bad, buf, n);
    t->tries++;
    es_fail("%s", "");
    es_dataset ds;
    if (es_dataset_open(&ds, &bad, 1, 0, 0) == ES_OK) {
        es_dataset_close(&ds);
        return;
    }
    t->refused++;
    t->named += !strncmp(es_last_error(), bad, strlen(bad));
}

// Every prefix, one extra byte, and a flip of every byte: refused with a
// message naming the file, never a crash.
static void test_damage(es_rng *r) {
    content c = random_content(r, 3, 2, 300, 1);
    const char *good = tmp_path("good.shard"), *bad = tmp_path("bad.shard");
    CHECK(es_shard_write(good, &c.c) == ES_OK, "write: %s", es_last_error());
    CHECK(c.c.ntokens % 2 == 1, "odd token count");
    char *bytes;
    size_t n;
    if (es_read_file(&bytes, &n, good) != ES_OK) exit(1);
    uint8_t *buf = es_xmalloc(n + 1);
    damage_tally t = {0, 0, 0};
    for (size_t len = 0; len <= n + 1; len++) {
        if (len == n) continue;
        memcpy(buf, bytes, n);
        buf[n] = 0;
        try_damaged(&t, bad, buf, len);
    }
    for (size_t pos = 0; pos < n; pos++) {
        memcpy(buf, bytes, n);
        buf[pos] ^= (uint8_t)(1 + es_rng_u64(r) % 255);
        try_damaged(&t, bad, buf, n);
    }
    CHECK(t.refused == t.tries, "%d of %d damaged files accepted", t.tries - t.refused, t.tries);
    CHECK(t.named == t.tries, "%d of %d messages do not name the file", t.tries - t.named, t.tries);
    free(buf);
    free(bytes);
    free_content(&c);
}

// A well-formed file (checksum fixed up) whose content breaks one rule.
typedef struct {
    const char *what;
    size_t at;  // byte offset to patch
    uint32_t value;
    const char *message;  // expected in the error
} patch;

static void test_rules(es_rng *r) {
    content c = random_content(r, 2, 2, 100, 1);  // at least 5 tokens
    c.docs[0].cot_begin = 0;
    c.docs[0].cot_end = 1;
    c.docs[1].cot_begin = 1;
    c.docs[1].cot_end = 2;
    const char *good = tmp_path("rules.shard"), *bad = tmp_path("rules-bad.shard");
    CHECK(es_shard_write(good, &c.c) == ES_OK, "write: %s", es_last_error());
    char *bytes;
    size_t n;
    if (es_read_file(&bytes, &n, good) != ES_OK) exit(1);
    size_t nt = c.c.ntokens, idx = 64 + 4 * nt + 4, ids = idx + 24 * 2, logp = ids + 4 * nt * 2;
    uint32_t nan_bits = 0x7fc00000u, inf_bits = 0x7f800000u, pos_bits = 0x3f000000u;  // NaN, +inf, 0.5
    const patch patches[] = {
        {"version", 8, 2, "version 2"},
        {"header size", 12, 32, "header size"},
        {"reserved header", 48, 1, "reserved header"},
        {"zero vocab", 16, 0, "vocabulary size is 0"},
        {"no examples", 32, 0, "no examples"},
        {"huge top-k", 20, 5000, "exceeds the limit"},
        {"token outside vocab", 64, 100, "outside the vocabulary of 100"},
        {"padding", 64 + 4 * nt, 7, "padding"},
        {"reserved index", idx + 20, 1, "reserved index"},
        {"gap between examples", idx + 24, 1, "overlap or leave gaps"},
        {"empty example", idx + 8, 0, "is empty"},
        {"cot_begin after cot_end", idx + 24 + 12, 3, "out of order"},
        {"cot_end past len", idx + 24 + 16, c.docs[1].len + 1, "out of order"},
        {"top-k id outside vocab", ids + 4 * 5, 100, "top-k id 100"},
        {"positive log-prob", logp + 4 * 3, pos_bits, "log-probability"},
        {"NaN log-prob", logp + 4 * 5, nan_bits, "log-probability"},
        {"infinite log-prob", logp, inf_bits, "log-probability"},
    };
    uint8_t *buf = es_xmalloc(n);
    for (size_t i = 0; i < sizeof patches / sizeof patches[0]; i++) {
        const patch *p = &patches[i];
        memcpy(buf, bytes, n);
        memcpy(buf + p->at, &p->value, 4);
        uint32_t crc = es_crc32(0, buf, n - 4);
        memcpy(buf + n - 4, &crc, 4);
        put_file(bad, buf, n);
        es_dataset ds;
        int rc = es_dataset_open(&ds, &bad, 1, 0, 0);
        CHECK(rc == ES_ERR && strstr(es_last_error(), p->message) && !strncmp(es_last_error(), bad, strlen(bad)),
              "%s: got \"%s\"", p->what, rc == ES_OK ? "accepted" : es_last_error());
        if (rc == ES_OK) es_dataset_close(&ds);
    }
    // The last example running past the tokens: its length grows, the next offset check cannot see it.
    memcpy(buf, bytes, n);
    uint32_t longer = c.docs[1].len + 1;
    memcpy(buf + idx + 24 + 8, &longer, 4);
    uint32_t crc = es_crc32(0, buf, n - 4);
    memcpy(buf + n - 4, &crc, 4);
    put_file(bad, buf, n);
    es_dataset ds;
    CHECK(es_dataset_open(&ds, &bad, 1, 0, 0) == ES_ERR && strstr(es_last_error(), "runs past"), "past end: %s",
          es_last_error());
    // The writer refuses bad content and leaves nothing behind.
    const char *refused = tmp_path("refused.shard");
    c.docs[0].cot_end = c.docs[0].len + 1;
    CHECK(es_shard_write(refused, &c.c) == ES_ERR && strstr(es_last_error(), "out of order") &&
              !strncmp(es_last_error(), refused, strlen(refused)),
          "writer: %s", es_last_error());
    CHECK(access(refused, F_OK) != 0, "writer left a bad shard");
    c.docs[0].cot_end = 0;
    c.docs[0].len += 1;
    CHECK(es_shard_write(refused, &c.c) == ES_ERR && strstr(es_last_error(), "tokens but"), "writer count: %s",
          es_last_error());
    free(buf);
    free(bytes);
    free_content(&c);
}

static void test_mismatch(es_rng *r) {
    content a = random_content(r, 2, 0, 64, 0), b = random_content(r, 2, 0, 64, 0), k = random_content(r, 2, 1, 64, 0);
    b.c.fingerprint = a.c.fingerprint ^ 0x10;
    k.c.fingerprint = a.c.fingerprint;
    const char *pa = tmp_path("m-a.shard"), *pb = tmp_path("m-b.shard"), *pk = tmp_path("m-k.shard");
    CHECK(es_shard_write(pa, &a.c) == ES_OK && es_shard_write(pb, &b.c) == ES_OK && es_shard_write(pk, &k.c) == ES_OK,
          "write: %s", es_last_error());
    es_dataset ds;
    char want[64], have[64];
    CHECK(es_dataset_open(&ds, &pa, 1, 65, 0) == ES_ERR && strstr(es_last_error(), " 64 ") &&
              strstr(es_last_error(), " 65 ") && !strncmp(es_last_error(), pa, strlen(pa)),
          "vocab mismatch: %s", es_last_error());
    snprintf(have, sizeof have, "%016llx", (unsigned long long)a.c.fingerprint);
    snprintf(want, sizeof want, "%016llx", (unsigned long long)(a.c.fingerprint + 1));
    CHECK(es_dataset_open(&ds, &pa, 1, 64, a.c.fingerprint + 1) == ES_ERR && strstr(es_last_error(), have) &&
              strstr(es_last_error(), want),
          "fingerprint mismatch: %s", es_last_error());
    const char *ab[2] = {pa, pb}, *ak[2] = {pa, pk};
    CHECK(es_dataset_open(&ds, ab, 2, 0, 0) == ES_ERR && strstr(es_last_error(), pa) && strstr(es_last_error(), pb),
          "shards of two tokenizers: %s", es_last_error());
    CHECK(es_dataset_open(&ds, ak, 2, 0, 0) == ES_ERR && strstr(es_last_error(), "top-k"), "mixed top-k: %s",
          es_last_error());
    const char *missing = tmp_path("missing.shard");
    CHECK(es_dataset_open(&ds, &missing, 1, 0, 0) == ES_ERR && strstr(es_last_error(), "cannot open"), "missing: %s",
          es_last_error());
    CHECK(es_dataset_open(&ds, NULL, 0, 0, 0) == ES_ERR, "no paths");
    free_content(&a);
    free_content(&b);
    free_content(&k);
}

// The shard tools/prep_data.py made (tests/tools/tiny_fixture.py) holds what
// tiny.expect says, and C computes the same tokenizer fingerprint as Python.
static void test_fixture(void) {
    FILE *f = fopen("tests/data/tiny.expect", "r");
    CHECK(f != NULL, "tests/data/tiny.expect missing");
    if (!f) return;
    unsigned long long fp;
    unsigned vocab;
    size_t ndocs;
    CHECK(fscanf(f, "fingerprint %llx vocab %u docs %zu", &fp, &vocab, &ndocs) == 3, "expect header");
    uint64_t cfp = 0;
    uint32_t cvocab = 0;
    CHECK(es_tokenizer_fingerprint(&cfp, &cvocab, "tests/data/tiny_model") == ES_OK, "fingerprint: %s",
          es_last_error());
    CHECK(cfp == fp && cvocab == vocab, "C fingerprint %016llx/%u, Python %016llx/%u", (unsigned long long)cfp,
          cvocab, fp, vocab);
    const char *path = "tests/data/tiny.shard";
    es_dataset ds;
    CHECK(es_dataset_open(&ds, &path, 1, cvocab, cfp) == ES_OK, "open fixture: %s", es_last_error());
    if (ds.ndocs != ndocs) {
        CHECK(0, "fixture holds %zu examples, expected %zu", ds.ndocs, ndocs);
    } else {
        for (size_t d = 0; d < ndocs; d++) {
            unsigned len, b, e;
            es_doc_info info;
            const uint32_t *t = es_dataset_doc(&ds, d, &info);
            CHECK(fscanf(f, " doc %u %u %u", &len, &b, &e) == 3, "expect doc %zu", d);
            CHECK(info.len == len && info.cot_begin == b && info.cot_end == e, "doc %zu sections", d);
            for (unsigned i = 0; i < len; i++) {
                unsigned id;
                CHECK(fscanf(f, "%u", &id) == 1 && i < info.len && t[i] == id, "doc %zu token %u", d, i);
            }
        }
    }
    es_dataset_close(&ds);
    fclose(f);
}

static void put_text(const char *path, const char *text) { put_file(path, text, strlen(text)); }

static void test_fingerprint_rules(void) {
    uint64_t fp1, fp2;
    uint32_t v1, v2;
    const char *tj = tmp_path("tokenizer.json");
    // An added token replaces the vocabulary entry of its id; vocab = largest id + 1.
    put_text(tj, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"x\": 5}},"
                 " \"added_tokens\": [{\"id\": 5, \"content\": \"<s>\"}]}");
    CHECK(es_tokenizer_fingerprint(&fp1, &v1, dir) == ES_OK && v1 == 6, "fingerprint: %s", es_last_error());
    put_text(tj, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"<s>\": 5}}, \"added_tokens\": []}");
    CHECK(es_tokenizer_fingerprint(&fp2, &v2, dir) == ES_OK && fp1 == fp2 && v2 == 6, "override: %016llx %016llx",
          (unsigned long long)fp1, (unsigned long long)fp2);
    put_text(tj, "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0], [\"b\", -1.0]]}}");
    CHECK(es_tokenizer_fingerprint(&fp2, &v2, dir) == ES_OK && v2 == 2 && fp2 != fp1, "unigram: %s", es_last_error());
    put_text(tj, "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 0}}}");
    CHECK(es_tokenizer_fingerprint(&fp2, &v2, dir) == ES_ERR && strstr(es_last_error(), "id 0"), "dup id: %s",
          es_last_error());
    put_text(tj, "{\"model\": {\"vocab\": {\"a\": -1}}}");
    CHECK(es_tokenizer_fingerprint(&fp2, &v2, dir) == ES_ERR && strstr(es_last_error(), tj), "bad id: %s",
          es_last_error());
    put_text(tj, "{\"model\": ");
    CHECK(es_tokenizer_fingerprint(&fp2, &v2, dir) == ES_ERR && strstr(es_last_error(), "not valid JSON"),
          "bad json: %s", es_last_error());
    put_text(tj, "{\"model\": {}}");
    CHECK(es_tokenizer_fingerprint(&fp2, &v2, dir) == ES_ERR && strstr(es_last_error(), "model.vocab"), "no vocab: %s",
          es_last_error());
    CHECK(es_tokenizer_fingerprint(&fp2, &v2, "/nonexistent-model") == ES_ERR && strstr(es_last_error(), "cannot open"),
          "missing: %s", es_last_error());
    unlink(tj);
}

static int run_data(int argc, const char **argv) { return cmd_data(argc, (char **)argv); }

static void test_cli(void) {
    const char *ok[] = {"data", "check", "tests/data/tiny.shard"};
    const char *model[] = {"data", "check", "--model", "tests/data/tiny_model", "tests/data/tiny.shard"};
    const char *other[] = {"data", "check", "--model", dir, "tests/data/tiny.shard"};
    const char *bad[] = {"data", "check", "tests/data/tiny.shard", tmp_path("bad.shard")};
    const char *verb[] = {"data", "frobnicate"};
    const char *none[] = {"data", "check"};
    CHECK(run_data(3, ok) == 0, "data check on the fixture");
    CHECK(run_data(5, model) == 0, "data check --model");
    put_text(tmp_path("tokenizer.json"), "{\"model\": {\"vocab\": {\"a\": 0}}}");
    CHECK(run_data(5, other) == 1, "data check with another tokenizer");
    CHECK(run_data(4, bad) == 1, "data check on a damaged shard");
    CHECK(run_data(2, verb) == 2, "unknown verb");
    CHECK(run_data(2, none) == 2, "no shard");
    unlink(tmp_path("tokenizer.json"));
}

int main(void) {
    struct stat st;
    snprintf(dir, sizeof dir, "%s/essence-test-shard-XXXXXX", stat("/dev/shm", &st) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    es_rng r;
    uint64_t seed = (uint64_t)time(NULL);
    printf("seed %llu\n", (unsigned long long)seed);
    es_rng_seed(&r, seed);
    test_round_trip(&r);
    test_damage(&r);
    test_rules(&r);
    test_mismatch(&r);
    test_fixture();
    test_fingerprint_rules();
    test_cli();
    const char *names[] = {"a.shard", "b.shard", "good.shard", "bad.shard", "rules.shard", "rules-bad.shard",
                           "m-a.shard", "m-b.shard", "m-k.shard"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) unlink(tmp_path(names[i]));
    CHECK(rmdir(dir) == 0, "temporary folder left non-empty");
    TEST_DONE();
}
