// The distillation loss over a packed micro-batch, fused with the LM head:
// only supervised rows (weight > 0) are gathered, and their logits are made
// R rows at a time, so no more than one chunk of logits (R, V) is ever alive.
// Per chunk: logits = rows @ lm_head^T, the teacher's likewise (online) or its
// stored top-k (offline), distill_loss in place, then matmul_bwd gives the
// rows' gradient (scattered back into dhidden) and accumulates the LM head's.
#pragma once
#include <stdint.h>

#include "backend.h"
#include "model.h"
#include "packer.h"
#include "shard.h"
#include "staging.h"

typedef struct {
    es_backend *be;
    int max_tokens, C, Ct, V, K, chunk;
    void *rows, *targets, *weights;  // (max_tokens) int32, int32, fp32
    void *h, *dh;                    // (chunk, C) student rows and their gradient
    void *th;                        // (chunk, Ct) teacher rows (online teacher only)
    void *logits, *tlogits;          // (chunk, V)
    void *tids, *tlogp;              // (max_tokens, K) offline teacher entries
    es_staging stage;                // host rows, targets, weights, tids, tlogp for upload_async
} es_distill;

// Logits one LM-head chunk may hold (student and teacher) when the run leaves
// the chunk size to the engine: at Qwen3's vocabulary in bf16, 2560 rows with
// an online teacher, 5120 without. Small chunks make the fp32 LM-head weight
// gradient a memory-bound GEMM, read and written once per chunk.
#define ES_DISTILL_LOGIT_BYTES ((size_t)3 << 29)

// Workspace for micro-batches of up to max_tokens tokens, student width C,
// vocabulary V, `chunk` rows per LM-head chunk (0: as many as
// ES_DISTILL_LOGIT_BYTES of logits hold, in multiples of 256, at least 256). teacher_C: hidden size of an
// online teacher (0 for none); topk: entries of an offline teacher (0 for none).
int es_distill_create(es_distill *d, es_backend *be, int max_tokens, int C, int V, int chunk,
                      int teacher_C, int topk);
void es_distill_free(es_distill *d);

// The loss terms of one micro-batch.
typedef struct {
    float alpha;       // weight of cross-entropy; 1 - alpha on KD
    float tau;         // KD temperature (must be 1 with an offline teacher)
    float grad_scale;  // 1 / supervised tokens of the whole optimizer step, all ranks
} es_distill_params;

// The teacher side: an online teacher's hidden rows (N, Ct) and LM head
// (V, Ct), or an offline teacher's host entries ids/logp (N, K) (first id < 0:
// none at that position), or neither (cross-entropy only).
typedef struct {
    const void *hidden;
    const void *lm_head;
    const int32_t *topk_ids;
    const float *topk_logp;
} es_teacher_rows;

// Over device buffers: hidden (N, C) and lm_head (V, C) of the student.
// dhidden (N, C) is overwritten with d(loss)/d(hidden) (zero on unsupervised
// rows); dlm_head (V, C) fp32 accumulates. With dhidden == NULL only the
// loss is computed (evaluation) and neither gradient is touched. sums (a
// device fp64 buffer of 2): the weighted CE and KD sums of this micro-batch
// are added to sums[0], sums[1] in fp32, chunk by chunk (backend.h's
// distill_loss), so the host reads them when it chooses. The micro-batch's
// indices go up with upload_async: nothing here waits for the device.
int es_distill_loss(es_distill *d, double *sums, void *dhidden, float *dlm_head,
                    const void *hidden, const void *lm_head, const es_teacher_rows *teacher,
                    const es_microbatch *mb, const es_distill_params *p);

// The same for models already run forward on mb: student (trainable) and an
// optional online teacher; topk_ids/logp as in es_teacher_rows (or NULL).
int es_distill_model(es_distill *d, double *sums, void *dhidden, es_model *student,
                     const es_model *teacher, const int32_t *topk_ids, const float *topk_logp,
                     const es_microbatch *mb, const es_distill_params *p);

// Fills the offline teacher entries (mb->n, K) of a micro-batch from the
// dataset. A position whose next kept token is not the next token of the
// original document (at a truncation gap) gets none: the stored teacher
// predicted a different token there.
int es_microbatch_topk(int32_t *ids, float *logp, const es_microbatch *mb, const es_dataset *ds);
