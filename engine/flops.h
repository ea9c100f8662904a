// Exact FLOP counts of a step, from the packed batch itself: matmuls on the
// kept tokens, attention per document (causal: quadratic in each document's
// length), and the LM head on the supervised rows only.
#pragma once
#include <stdint.h>

#include "model.h"

typedef struct {
    double matmul;     // projections and MLP
    double attention;  // QK^T and PV, causal
    double head;       // LM head on supervised rows
} es_flops;

// Forward FLOPs of a model on documents with the given lengths, with
// `nsup` rows through the LM head. Backward costs twice the forward.
es_flops es_flops_forward(const es_config *cfg, const int32_t *cu_seqlens, int ndocs, int nsup);
double es_flops_total(es_flops f);
// Training FLOPs of one micro-batch: student forward + backward (3x) and
// teacher forward (1x; teacher may be NULL). These are model FLOPs, which MFU
// uses by convention: the forward work that activation recomputation
// (run.recompute) repeats in backward is hardware FLOPs and is not counted.
double es_flops_train(const es_config *student, const es_config *teacher, const int32_t *cu_seqlens,
                      int ndocs, int nsup);
