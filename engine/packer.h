// The packer: truncation, supervision allocation and packing of documents
// into micro-batches. Truncation happens here, so the model never sees the
// dropped tokens at all.
//
// A document is an es_doc_info (sections) plus its tokens. Each document is
// reduced to its kept tokens (one or two spans of the original), then the
// documents of a shuffle window are packed best-fit-decreasing into
// micro-batches of `capacity` tokens. The epochs' micro-batches form one
// stream that does not depend on the number of ranks; it is dealt to the ranks
// round-robin, so every example is used exactly once per epoch and the ranks'
// shares are disjoint.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "shard.h"

// Default capacities are rounded up to a multiple of this many tokens.
#define ES_CAPACITY_ROUND 64

typedef enum { ES_TRUNC_SEQ = 0, ES_TRUNC_COT } es_trunc_mode;
typedef enum { ES_WIN_LEAD = 0, ES_WIN_MIDDLE, ES_WIN_TAIL } es_trunc_window;
typedef enum { ES_SEC_PROMPT = 0, ES_SEC_COT, ES_SEC_ANSWER, ES_NSECTIONS } es_section;

// Supervision allocation: loss weights of the prompt, CoT and answer sections.
// `spec` is a preset (ans, promptAns, cot, cotAns, promptCot, promptcotAns)
// or explicit weights "wp,wc,wa" (each finite and >= 0, not all 0).
int es_supervision_parse(float w[ES_NSECTIONS], const char *spec);
// Parses "seq"/"cot" and "lead"/"middle"/"tail".
int es_trunc_mode_parse(es_trunc_mode *mode, const char *s);
int es_trunc_window_parse(es_trunc_window *win, const char *s);

typedef struct {
    es_trunc_mode mode;
    es_trunc_window window;
    double ratio;          // lead-span proportion r in (0, 1]
    int drop_answer;       // keep [0, cot_end) (up to and including </think>) before truncating
    double label_mask;     // control in [0, 1): 0 = off; otherwise no truncation, and this
                           // fraction of each document's supervised labels is masked at random
    float weights[ES_NSECTIONS];  // section loss weights
    int capacity;          // tokens per micro-batch; 0 = capacity_factor x the longest kept
                           // document, rounded up to 64 (memory then follows r)
    double capacity_factor;  // used when capacity == 0; 0 means 1
    int shuffle_window;    // documents packed together (0 = 1024)
    uint64_t seed;
    int rank, nranks;
} es_pack_config;

// Defaults: seq, lead, r = 1, weights of promptcotAns, capacity 0, window 1024,
// seed 0, rank 0 of 1.
void es_pack_config_defaults(es_pack_config *pc);

// The baseline of pc: the same packing without truncation (r = 1, no answer
// drop, no label mask); pc's capacity when the longest example (`longest`
// tokens) fits it, else the default one.
void es_pack_config_untruncated(es_pack_config *full, const es_pack_config *pc, uint32_t longest);

// The kept part of one document: original token indices [a0, a1) then [b0, b1).
typedef struct {
    uint32_t a0, a1, b0, b1;
} es_kept_spans;

// Which tokens of a document survive truncation (at least one always does).
void es_doc_keep(es_kept_spans *ks, const es_doc_info *d, const es_pack_config *pc);

// One packed micro-batch (host arrays, capacity entries each).
// The label at position t is token t+1 of the same document, so weight[t] is
// the section weight of token t+1 (the paper supervises tokens by section: a
// token is supervised when it is predicted). The last token of each document
// predicts nothing: target -1, weight 0.
typedef struct {
    int n;              // tokens
    int ndocs;
    int capacity;
    int32_t *tokens;    // (capacity)
    int32_t *targets;   // (capacity)
    float *weights;     // (capacity)
    int32_t *pos;       // (capacity) restarts at 0 per document
    int32_t *src;       // (capacity) index of the token in its original document
    int32_t *cu_seqlens;  // (capacity + 1)
    int64_t *doc_ids;   // (capacity) dataset index of each document
    int nsup;           // positions with weight > 0
} es_microbatch;

// Iterator position, saved in checkpoints. The same on every rank and for
// any number of ranks.
typedef struct {
    uint64_t epoch;
    uint64_t pos;  // micro-batches of the epoch already taken, all ranks together
} es_packer_state;

typedef struct es_packer es_packer;

// Packs `ndocs` in-memory documents: docs[i] and its tokens toks[i] (both
// kept alive by the caller). Validates every document's sections and tokens
// (< vocab when vocab > 0).
int es_packer_create(es_packer **out, const es_doc_info *docs, const uint32_t *const *toks,
                     size_t ndocs, uint32_t vocab, const es_pack_config *pc);
// Same over an opened dataset.
int es_packer_from_dataset(es_packer **out, const es_dataset *ds, const es_pack_config *pc);
void es_packer_free(es_packer *p);

int es_packer_capacity(const es_packer *p);
// Tokens of the longest kept document.
int es_packer_longest(const es_packer *p);
// Rounds of es_packer_next in the current epoch (packing differs a little
// between epochs). The same on every rank: the last round may hand some ranks
// an empty micro-batch (n == 0) so that collectives stay in step.
size_t es_packer_steps_per_epoch(const es_packer *p);
// Micro-batches of the current epoch, all ranks together.
size_t es_packer_epoch_batches(const es_packer *p);
// Tokens kept, and labels supervised, over the whole dataset for one epoch.
size_t es_packer_kept_tokens(const es_packer *p);
size_t es_packer_supervised_tokens(const es_packer *p);

// One round: rank r takes the r-th of the next nranks micro-batches of the
// epoch, or an empty one (n == 0) where the epoch has fewer left. Moves to
// the next epoch after its last micro-batch.
void es_packer_next(es_packer *p, es_microbatch *mb);
// One optimizer step of `count` micro-batches of the stream, which may run on
// into the next epoch: micro-batch j of the step goes to rank j % nranks, into
// mbs[j / nranks]. Fills the ceil(count / nranks) entries of mbs (empty where
// this rank's share is shorter) and returns that number. Whatever the number
// of ranks, step k takes the same micro-batches.
size_t es_packer_next_step(es_packer *p, es_microbatch *mbs, size_t count);
es_packer_state es_packer_get_state(const es_packer *p);
int es_packer_set_state(es_packer *p, es_packer_state st);

void es_microbatch_alloc(es_microbatch *mb, int capacity);
void es_microbatch_free(es_microbatch *mb);
