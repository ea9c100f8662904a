// FLOP accounting: the formulas against hand counts for a tiny config of each
// architecture; a packed batch counts as the sum of its documents; the counted
// matmul FLOPs equal those the model and the loss actually issue (tallied by
// the op timer, which must leave results unchanged); the GPU peak table.
#include <string.h>

#include "common.h"
#include "distill.h"
#include "flops.h"
#include "model.h"
#include "op_timer.h"
#include "peaks.h"
#include "tests/test.h"
#include "tests/test_models.h"

static es_rng g_rng;

// C = 8, H = 2, D = 4, F = 12, 2 layers, V = 10; KVH = 1 except gpt2 (KVH = H).
static es_config tiny(es_arch arch) {
    es_config c;
    memset(&c, 0, sizeof c);
    c.arch = arch;
    static const char *types[] = {"qwen3", "qwen2", "llama", "gpt2"};
    strcpy(c.model_type, types[arch]);
    c.vocab = 10, c.hidden = 8, c.layers = 2, c.heads = 2, c.head_dim = 4, c.ffn = 12, c.max_pos = 256;
    c.kv_heads = arch == ES_ARCH_GPT2 ? 2 : 1;
    c.rope_theta = arch == ES_ARCH_GPT2 ? 0.0f : 10000.0f;
    c.norm_eps = 1e-5f, c.tied = 1, c.bos_id = -1, c.eos_id = -1;
    c.qk_norm = arch == ES_ARCH_QWEN3;
    c.qkv_bias = arch == ES_ARCH_QWEN2 || arch == ES_ARCH_GPT2;
    c.o_bias = c.mlp_bias = arch == ES_ARCH_GPT2;
    strcpy(c.torch_dtype, "float32");
    return c;
}

static double rel(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-300); }

// Documents of 3 and 2 tokens, 2 supervised rows. Per token and layer the
// projections take q 8*8 + k 8*4 + v 8*4 + o 8*8 = 192 multiply-adds (gpt2:
// 4 * 64 = 256) and the MLP 3*8*12 = 288 (gpt2: 2*8*12 = 192): 480 (448).
// Matmuls: 2 FLOPs * 480 * 5 tokens * 2 layers = 9600 (gpt2 8960).
// Attention: 6 + 3 causal pairs, each 2 heads * (4 + 4) multiply-adds = 16
// MACs = 32 FLOPs: 9 * 32 * 2 layers = 576. LM head: 2 * 8 * 10 * 2 rows = 320.
static void test_hand_counts(void) {
    const int32_t cu[] = {0, 3, 5};
    for (int a = 0; a < 4; a++) {
        es_config c = tiny((es_arch)a);
        es_flops f = es_flops_forward(&c, cu, 2, 2);
        double mm = a == ES_ARCH_GPT2 ? 8960 : 9600;
        CHECK(f.matmul == mm, "%s: matmul %g, hand count %g", c.model_type, f.matmul, mm);
        CHECK(f.attention == 576, "%s: attention %g, hand count 576", c.model_type, f.attention);
        CHECK(f.head == 320, "%s: head %g, hand count 320", c.model_type, f.head);
        CHECK(es_flops_total(f) == mm + 896, "%s: total %g", c.model_type, es_flops_total(f));
        // training: forward + backward (2x) of the student, forward of the teacher
        double s = 3 * (mm + 896);
        CHECK(es_flops_train(&c, NULL, cu, 2, 2) == s, "%s: train %g, hand count %g", c.model_type,
              es_flops_train(&c, NULL, cu, 2, 2), s);
        CHECK(es_flops_train(&c, &c, cu, 2, 2) == s + mm + 896, "%s: train with teacher %g", c.model_type,
              es_flops_train(&c, &c, cu, 2, 2));
    }
}

// A packed batch counts exactly as its documents counted one by one, and less
// attention than one document of the same total length (nothing crosses a
// boundary).
static void test_packed_is_sum(void) {
    es_config s = tiny(ES_ARCH_QWEN3), t = tiny(ES_ARCH_LLAMA);
    t.hidden = 16, t.layers = 3, t.ffn = 40;
    for (int trial = 0; trial < 20; trial++) {
        int ndocs = 1 + (int)(es_rng_u64(&g_rng) % 8), nsup = 0;
        int32_t cu[9] = {0};
        double one_by_one = 0, att_sum = 0;
        for (int d = 0; d < ndocs; d++) {
            int L = 1 + (int)(es_rng_u64(&g_rng) % 200), sup = (int)(es_rng_u64(&g_rng) % (uint64_t)L);
            cu[d + 1] = cu[d] + L;
            nsup += sup;
            int32_t one[2] = {0, L};
            one_by_one += es_flops_train(&s, &t, one, 1, sup);
            att_sum += es_flops_forward(&s, one, 1, sup).attention;
        }
        double packed = es_flops_train(&s, &t, cu, ndocs, nsup);
        CHECK(rel(packed, one_by_one) < 1e-12, "trial %d: packed %g vs one by one %g", trial, packed, one_by_one);
        es_flops f = es_flops_forward(&s, cu, ndocs, nsup);
        CHECK(rel(f.attention, att_sum) < 1e-12, "trial %d: attention %g vs %g", trial, f.attention, att_sum);
        int32_t whole[2] = {0, cu[ndocs]};
        es_flops w = es_flops_forward(&s, whole, 1, nsup);
        CHECK(ndocs == 1 ? f.attention == w.attention : f.attention < w.attention,
              "trial %d: %d documents attend %g, one of the same length %g", trial, ndocs, f.attention, w.attention);
        CHECK(f.matmul == w.matmul && f.head == w.head, "trial %d: matmuls depend on tokens only", trial);
    }
}


// The matmul FLOPs a real training micro-batch issues (student forward,
// backward, teacher forward, LM head on supervised rows in chunks) equal the
// counted ones; attention is not a matmul op and is left out on both sides.
static void test_issued_matmuls(es_backend *be) {
    for (int a = 0; a < 4; a++) {
        es_config sc = tiny((es_arch)a), tc = sc;
        sc.hidden = 16, sc.heads = 4, sc.kv_heads = a == ES_ARCH_GPT2 ? 4 : 2, sc.ffn = 24, sc.vocab = 50;
        tc.hidden = 24, tc.heads = 3, tc.kv_heads = a == ES_ARCH_GPT2 ? 3 : 1, tc.layers = 3, tc.ffn = 40, tc.vocab = 50;
        tc.head_dim = 8;
        if (a == ES_ARCH_GPT2) sc.head_dim = 4, tc.head_dim = 8;
        int N = 61;
        es_model s, t;
        es_distill d;
        if (es_model_create(&s, &sc, be, N, 1) || es_model_create(&t, &tc, be, N, 0) ||
            es_distill_create(&d, be, N, sc.hidden, sc.vocab, 8, tc.hidden, 0)) {
            CHECK(0, "%s: setup: %s", sc.model_type, es_last_error());
            return;
        }
        es_model_init_random(&s, 11 + a);
        es_model_init_random(&t, 23 + a);
        es_microbatch mb;
        t_random_microbatch(&mb, N, sc.vocab, &g_rng);
        es_model_batch b;
        CHECK(t_batch_upload(&b, be, mb.tokens, mb.pos, mb.cu_seqlens, N, mb.ndocs) == ES_OK, "%s",
              es_last_error());
        void *dh = t_dev_buf(be, NULL, (size_t)N * sc.hidden, ES_DT_COMPUTE);
        es_distill_params dp = {.alpha = 0.5f, .tau = 1.0f, .grad_scale = 1.0f / (float)mb.nsup};
        es_op_timer ot;
        CHECK(es_op_timer_attach(&ot, be) == ES_OK, "attach: %s", es_last_error());
        double ls[2], *dls = be->alloc(be, 2, ES_DT_F64, ES_MEM_WORKSPACE);
        be->zero(be, dls, 2, ES_DT_F64);
        be->zero(be, s.grads, s.layout.total, ES_DT_F32);
        int ok = es_model_forward(&s, &b) == ES_OK && es_model_forward(&t, &b) == ES_OK &&
                 es_distill_model(&d, dls, dh, &s, &t, NULL, NULL, &mb, &dp) == ES_OK &&
                 es_model_backward(&s, &b, dh) == ES_OK;
        es_op_timer_detach(&ot);
        be->download(be, ls, dls, 2, ES_DT_F64);
        be->free(be, dls);
        CHECK(ok, "%s: step: %s", sc.model_type, es_last_error());
        CHECK(isfinite(ls[0]) && isfinite(ls[1]) && ls[0] > 0, "%s: loss %g %g", sc.model_type, ls[0], ls[1]);
        es_flops fs = es_flops_forward(&sc, mb.cu_seqlens, mb.ndocs, mb.nsup);
        es_flops ft = es_flops_forward(&tc, mb.cu_seqlens, mb.ndocs, mb.nsup);
        double counted = es_flops_train(&sc, &tc, mb.cu_seqlens, mb.ndocs, mb.nsup) - 3 * fs.attention - ft.attention;
        double issued = ot.flops[ES_OP_matmul_fwd] + ot.flops[ES_OP_matmul_bwd];
        CHECK(rel(issued, counted) < 1e-12, "%s: issued matmul FLOPs %.17g, counted %.17g", sc.model_type, issued,
              counted);
        CHECK(ot.flops[ES_OP_matmul_bwd] == 2 * (fs.matmul + fs.head), "%s: backward %g, counted 2 x %g",
              sc.model_type, ot.flops[ES_OP_matmul_bwd], fs.matmul + fs.head);
        CHECK(ot.calls[ES_OP_attention_fwd] == sc.layers + tc.layers && ot.calls[ES_OP_attention_bwd] == sc.layers,
              "%s: attention calls %lld fwd %lld bwd", sc.model_type, ot.calls[ES_OP_attention_fwd],
              ot.calls[ES_OP_attention_bwd]);
        es_microbatch_free(&mb);
        t_batch_free(be, &b);
        be->free(be, dh);
        es_distill_free(&d);
        es_model_free(&t);
        es_model_free(&s);
    }
}

// The timer changes no result, counts calls, and restores the table.
static void test_timer_transparent(es_backend *be) {
    int N = 37, C = 29, OC = 41;
    float *x = malloc(sizeof(float) * N * C), *w = malloc(sizeof(float) * OC * C), *bias = malloc(sizeof(float) * OC);
    float *ref = malloc(sizeof(float) * N * OC), *got = malloc(sizeof(float) * N * OC);
    t_fill_normal(x, (size_t)N * C, 1.0f, &g_rng);
    t_fill_normal(w, (size_t)OC * C, 1.0f, &g_rng);
    t_fill_normal(bias, OC, 1.0f, &g_rng);
    void *dx = t_dev_buf(be, x, (size_t)N * C, ES_DT_COMPUTE), *dw = t_dev_buf(be, w, (size_t)OC * C, ES_DT_COMPUTE);
    void *db = t_dev_buf(be, bias, OC, ES_DT_COMPUTE), *dout = t_dev_buf(be, NULL, (size_t)N * OC, ES_DT_COMPUTE);
    void (*orig)(es_backend *, void *, const void *, const void *, const void *, int, int, int) = be->matmul_fwd;
    t_poison(ref, (size_t)N * OC);
    be->upload(be, dout, ref, (size_t)N * OC, ES_DT_COMPUTE);
    be->matmul_fwd(be, dout, dx, dw, db, N, C, OC);
    be->download(be, ref, dout, (size_t)N * OC, ES_DT_COMPUTE);
    es_op_timer ot, other;
    CHECK(es_op_timer_attach(&ot, be) == ES_OK, "attach: %s", es_last_error());
    CHECK(be->matmul_fwd != orig, "the op is wrapped");
    CHECK(es_op_timer_attach(&other, be) == ES_ERR, "a second timer is refused");
    t_poison(got, (size_t)N * OC);
    be->upload(be, dout, got, (size_t)N * OC, ES_DT_COMPUTE);
    for (int rep = 0; rep < 3; rep++) be->matmul_fwd(be, dout, dx, dw, db, N, C, OC);
    be->download(be, got, dout, (size_t)N * OC, ES_DT_COMPUTE);
    es_op_timer_detach(&ot);
    CHECK(be->matmul_fwd == orig, "detach restores the op");
    CHECK(t_rel_err(got, ref, (size_t)N * OC, 1e-6) == 0, "wrapped result differs: %g",
          t_rel_err(got, ref, (size_t)N * OC, 1e-6));
    CHECK(ot.calls[ES_OP_matmul_fwd] == 3 && ot.flops[ES_OP_matmul_fwd] == 3 * 2.0 * N * C * OC,
          "calls %lld, flops %g", ot.calls[ES_OP_matmul_fwd], ot.flops[ES_OP_matmul_fwd]);
    CHECK(ot.calls[ES_OP_upload] == 1 && ot.calls[ES_OP_download] == 1, "copies timed too");
    CHECK(ot.seconds[ES_OP_matmul_fwd] >= 0 && es_op_timer_total(&ot) >= ot.seconds[ES_OP_matmul_fwd], "times add up");
    es_op_timer_reset(&ot);
    CHECK(ot.calls[ES_OP_matmul_fwd] == 0 && es_op_timer_total(&ot) == 0, "reset clears");
    void *bufs[] = {dx, dw, db, dout};
    for (int i = 0; i < 4; i++) be->free(be, bufs[i]);
    free(x), free(w), free(bias), free(ref), free(got);
}

static void test_gpu_peaks(void) {
    struct { const char *name; double tflops; } cases[] = {
        {"NVIDIA H100 80GB HBM3", 989}, {"NVIDIA H100 PCIe", 756}, {"NVIDIA H200", 989},
        {"NVIDIA GH200 480GB", 989},    {"NVIDIA A100-SXM4-80GB", 312}, {"NVIDIA L40S", 362},
        {"NVIDIA L4", 121},             {"Tesla T4", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(es_gpu_peak_flops(cases[i].name) == cases[i].tflops * 1e12, "%s: %g", cases[i].name,
              es_gpu_peak_flops(cases[i].name));
}

int main(void) {
    es_rng_seed(&g_rng, 20240607);
    es_backend *be = es_backend_create("cpu");
    if (!be) {
        fprintf(stderr, "cpu backend: %s\n", es_last_error());
        return 1;
    }
    test_hand_counts();
    test_packed_is_sum();
    test_issued_matmuls(be);
    test_timer_transparent(be);
    test_gpu_peaks();
    // train and bench both read the peak es_backend_create set
    CHECK(be->peak_flops > 0 && !strcmp(be->peak_source, "measured sgemm rate"),
          "the CPU's peak is its measured sgemm rate (%g, %s)", be->peak_flops, be->peak_source);
    be->destroy(be);
    TEST_DONE();
}
