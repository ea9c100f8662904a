// Next-token choice from logits: greedy, or temperature with nucleus (top-p).
#include <math.h>
#include <stdlib.h>

#include "generate.h"

static int argmax(const float *x, int V) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static const float *g_sort_p;  // qsort has no context argument
static int by_prob_desc(const void *a, const void *b) {
    float pa = g_sort_p[*(const int *)a], pb = g_sort_p[*(const int *)b];
    if (pa != pb) return pa < pb ? 1 : -1;
    return *(const int *)a - *(const int *)b;  // ties: smaller id first, deterministic
}

int es_sample(const float *logits, int V, float temperature, float top_p, es_rng *rng,
              float *work) {
    if (temperature <= 0.0f) return argmax(logits, V);
    float *p = work;
    int *order = (int *)(work + V);  // floats and ints are both 4 bytes
    float mx = logits[argmax(logits, V)];
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        p[i] = expf((logits[i] - mx) / temperature);
        sum += p[i];
    }
    int keep = V;
    if (top_p < 1.0f) {
        for (int i = 0; i < V; i++) order[i] = i;
        g_sort_p = p;
        qsort(order, (size_t)V, sizeof *order, by_prob_desc);
        double mass = 0.0;
        for (keep = 0; keep < V;) {
            mass += p[order[keep++]];
            if (mass >= top_p * sum) break;
        }
        sum = mass;
    }
    double u = es_rng_uniform(rng) * sum, acc = 0.0;
    for (int i = 0; i < keep; i++) {
        int id = top_p < 1.0f ? order[i] : i;
        acc += p[id];
        if (u < acc) return id;
    }
    // Rounding left u at the very top: the last kept token with mass.
    for (int i = keep - 1; i >= 0; i--) {
        int id = top_p < 1.0f ? order[i] : i;
        if (p[id] > 0.0f) return id;
    }
    return argmax(logits, V);
}
