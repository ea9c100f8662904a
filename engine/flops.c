#include "flops.h"

es_flops es_flops_forward(const es_config *c, const int32_t *cu, int ndocs, int nsup) {
    es_flops f = {0, 0, 0};
    double C = c->hidden, q = (double)c->heads * c->head_dim, kv = (double)c->kv_heads * c->head_dim;
    double mlp = c->arch == ES_ARCH_GPT2 ? 2.0 * C * c->ffn : 3.0 * C * c->ffn;
    double per_token = C * q + 2 * C * kv + q * C + mlp;  // multiply-adds per token per layer
    double tokens = (double)(cu[ndocs] - cu[0]);
    f.matmul = 2.0 * per_token * tokens * c->layers;
    for (int d = 0; d < ndocs; d++) {
        double L = (double)(cu[d + 1] - cu[d]);
        // each query attends to itself and the earlier tokens: L(L+1)/2 pairs,
        // each a D-dot for the scores and a D-axpy for the values
        f.attention += 2.0 * 2.0 * c->heads * c->head_dim * (L * (L + 1) / 2) * c->layers;
    }
    f.head = 2.0 * C * c->vocab * nsup;
    return f;
}

double es_flops_total(es_flops f) { return f.matmul + f.attention + f.head; }

double es_flops_train(const es_config *student, const es_config *teacher, const int32_t *cu, int ndocs,
                      int nsup) {
    double s = 3.0 * es_flops_total(es_flops_forward(student, cu, ndocs, nsup));
    if (teacher) s += es_flops_total(es_flops_forward(teacher, cu, ndocs, nsup));
    return s;
}
