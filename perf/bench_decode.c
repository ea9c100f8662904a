// Decode speed with the key/value cache at several context lengths: each
// step costs the weights (fixed) plus attention over the cached context
// (linear in its length), so time per token grows linearly with context; a
// cacheless decoder would recompute the whole prefix, quadratic overall.
//
//   bench_decode [cpu|cuda|auto] [batch]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "generate.h"
#include "tests/test_models.h"

#define STEPS 16

int main(int argc, char **argv) {
    const char *dev = argc > 1 ? argv[1] : "cpu";
    int B = argc > 2 ? atoi(argv[2]) : 1;
    const int ctx[] = {256, 1024, 2048, 4096};
    const int nctx = 4, longest = 4096 + STEPS + 1;
    es_config c = t_config(ES_ARCH_QWEN3, (t_sizes){.vocab = 4096, .hidden = 256, .layers = 4,
                                                    .heads = 8, .kv_heads = 4, .head_dim = 64,
                                                    .ffn = 768, .max_pos = longest});
    c.rope_theta = 1e6f;
    c.norm_eps = 1e-6f;
    if (B < 1) B = 1;
    es_backend *be = es_backend_create(dev);
    es_model m;
    es_gen g;
    if (!be || es_model_create(&m, &c, be, ctx[nctx - 1], 0) ||
        es_gen_create(&g, &m, B, longest)) {
        fprintf(stderr, "bench_decode: %s\n", es_last_error());
        return 1;
    }
    es_model_init_random(&m, 1);
    es_rng rng;
    es_rng_seed(&rng, 2);
    int32_t *prompt = es_xmalloc((size_t)longest * sizeof *prompt);
    for (int i = 0; i < longest; i++) prompt[i] = (int32_t)(es_rng_u64(&rng) % c.vocab);
    float *logits = es_xmalloc((size_t)B * c.vocab * sizeof *logits);
    int *slot = es_xmalloc((size_t)B * sizeof *slot);
    int32_t *tok = es_xmalloc((size_t)B * sizeof *tok);
    printf("decode on %s, batch %d, qwen3 %d layers, C %d, H %d/%d, D %d\n", be->name, B,
           c.layers, c.hidden, c.heads, c.kv_heads, c.head_dim);
    printf("%8s %12s %12s\n", "context", "ms/step", "tok/s");
    double first_ms = 0;
    for (int k = 0; k < nctx; k++) {
        for (int s = 0; s < B; s++) {  // one prompt at a time keeps prefill within capacity
            const int32_t *ids = prompt;
            g.len[s] = 0;
            slot[s] = s;
            tok[s] = prompt[ctx[k]];
            if (es_gen_prefill(&g, logits, &slot[s], &ids, &ctx[k], 1)) {
                fprintf(stderr, "bench_decode: %s\n", es_last_error());
                return 1;
            }
        }
        double t0 = es_now();
        for (int step = 0; step < STEPS; step++)
            if (es_gen_decode(&g, logits, slot, tok, B)) {
                fprintf(stderr, "bench_decode: %s\n", es_last_error());
                return 1;
            }
        double ms = (es_now() - t0) * 1e3 / STEPS;
        if (!k) first_ms = ms;
        printf("%8d %12.3f %12.1f   (x%.2f of context %d)\n", ctx[k], ms, B * 1e3 / ms,
               ms / first_ms, ctx[0]);
    }
    free(prompt);
    free(logits);
    free(slot);
    free(tok);
    es_gen_free(&g);
    es_model_free(&m);
    be->destroy(be);
    return 0;
}
