#include "packer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define DEFAULT_WINDOW 1024
#define MAX_DOC_LEN (1u << 30)

struct es_packer {
    es_pack_config pc;
    size_t ndocs;
    const es_doc_info *docs;
    const uint32_t *const *toks;
    es_doc_info *own_docs;        // the dataset adapter's copies (NULL otherwise)
    const uint32_t **own_toks;
    uint32_t *kept;               // (ndocs) kept tokens per document
    size_t kept_total, sup_total;
    uint32_t longest;             // kept tokens of the longest document
    int capacity;
    // plan of the current epoch: bin b holds docs bin_docs[bin_start[b] .. bin_start[b+1])
    uint64_t epoch, pos;          // pos: micro-batches of the epoch taken, all ranks together
    size_t nbins;
    size_t *bin_start;            // (ndocs + 1)
    size_t *bin_docs;             // (ndocs)
    // scratch for filling one document
    float *wscratch;
    uint32_t *iscratch;
};

static void plan_epoch(es_packer *p);

void es_pack_config_defaults(es_pack_config *pc) {
    memset(pc, 0, sizeof *pc);
    pc->mode = ES_TRUNC_SEQ;
    pc->window = ES_WIN_LEAD;
    pc->ratio = 1.0;
    for (int s = 0; s < ES_NSECTIONS; s++) pc->weights[s] = 1.0f;
    pc->nranks = 1;
}

void es_pack_config_untruncated(es_pack_config *full, const es_pack_config *pc, uint32_t longest) {
    *full = *pc;
    full->ratio = 1.0;
    full->drop_answer = 0;
    full->label_mask = 0;
    if (longest > (uint32_t)full->capacity) full->capacity = 0;
}

int es_supervision_parse(float w[ES_NSECTIONS], const char *spec) {
    static const struct { const char *name; float w[ES_NSECTIONS]; } presets[] = {
        {"ans", {0, 0, 1}},       {"promptAns", {1, 0, 1}}, {"cot", {0, 1, 0}},
        {"cotAns", {0, 1, 1}},    {"promptCot", {1, 1, 0}}, {"promptcotAns", {1, 1, 1}},
    };
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (!strcmp(spec, presets[i].name)) {
            memcpy(w, presets[i].w, sizeof presets[i].w);
            return ES_OK;
        }
    float v[ES_NSECTIONS];
    const char *s = spec;
    for (int k = 0; k < ES_NSECTIONS; k++) {
        char *end;
        v[k] = strtof(s, &end);
        if (end == s || !isfinite(v[k]) || v[k] < 0) break;
        s = end;
        if (k < ES_NSECTIONS - 1) {
            if (*s != ',') break;
            s++;
        } else if (*s == 0 && (v[0] > 0 || v[1] > 0 || v[2] > 0)) {
            memcpy(w, v, sizeof v);
            return ES_OK;
        }
    }
    return es_fail("supervise: '%s' is neither a preset (ans, promptAns, cot, cotAns, promptCot, "
                   "promptcotAns) nor three weights 'prompt,cot,answer' >= 0, not all 0", spec);
}

int es_trunc_mode_parse(es_trunc_mode *mode, const char *s) {
    if (!strcmp(s, "seq")) *mode = ES_TRUNC_SEQ;
    else if (!strcmp(s, "cot")) *mode = ES_TRUNC_COT;
    else return es_fail("trunc_mode: '%s' is not seq or cot", s);
    return ES_OK;
}

int es_trunc_window_parse(es_trunc_window *win, const char *s) {
    if (!strcmp(s, "lead")) *win = ES_WIN_LEAD;
    else if (!strcmp(s, "middle")) *win = ES_WIN_MIDDLE;
    else if (!strcmp(s, "tail")) *win = ES_WIN_TAIL;
    else return es_fail("trunc_window: '%s' is not lead, middle or tail", s);
    return ES_OK;
}

// Start of a window of k tokens inside n.
static uint32_t window_start(es_trunc_window win, uint32_t n, uint32_t k) {
    if (win == ES_WIN_MIDDLE) return (n - k) / 2;
    if (win == ES_WIN_TAIL) return n - k;
    return 0;
}

void es_doc_keep(es_kept_spans *ks, const es_doc_info *d, const es_pack_config *pc) {
    uint32_t end = d->len;
    memset(ks, 0, sizeof *ks);
    if (pc->label_mask > 0) {
        ks->a1 = end;
        return;
    }
    if (pc->drop_answer && d->cot_end > 0) end = d->cot_end;
    if (pc->mode == ES_TRUNC_SEQ) {
        uint32_t k = (uint32_t)floor((double)end * pc->ratio);
        if (k < 1) k = 1;
        ks->a0 = window_start(pc->window, end, k);
        ks->a1 = ks->a0 + k;
        return;
    }
    if (pc->ratio >= 1.0) {
        ks->a1 = end;
        return;
    }
    uint32_t ncot = d->cot_end - d->cot_begin;
    uint32_t c = (uint32_t)floor((double)ncot * pc->ratio);
    uint32_t b0 = d->cot_begin + window_start(pc->window, ncot, c);
    ks->a1 = d->cot_begin;
    if (b0 == ks->a1) {
        ks->a1 += c;  // contiguous with the prompt: one span
    } else {
        ks->b0 = b0;
        ks->b1 = b0 + c;
    }
    if (ks->a1 == 0 && ks->b1 == ks->b0) ks->a1 = 1;  // never an empty document
}

static es_section section_of(const es_doc_info *d, uint32_t j) {
    if (j < d->cot_begin) return ES_SEC_PROMPT;
    return j < d->cot_end ? ES_SEC_COT : ES_SEC_ANSWER;
}

// Writes document i's kept tokens, targets, weights, positions and source
// indices; returns the number of supervised labels.
static int fill_doc(es_packer *p, size_t i, int32_t *tok, int32_t *tgt, float *w, int32_t *pos,
                    int32_t *src) {
    const es_doc_info *d = &p->docs[i];
    const uint32_t *t = p->toks[i];
    es_kept_spans ks;
    es_doc_keep(&ks, d, &p->pc);
    int n = 0;
    for (uint32_t j = ks.a0; j < ks.a1; j++) src[n++] = (int32_t)j;
    for (uint32_t j = ks.b0; j < ks.b1; j++) src[n++] = (int32_t)j;
    int nsup = 0;
    for (int k = 0; k < n; k++) {
        tok[k] = (int32_t)t[src[k]];
        pos[k] = k;
        if (k + 1 < n) {
            tgt[k] = (int32_t)t[src[k + 1]];
            w[k] = p->pc.weights[section_of(d, (uint32_t)src[k + 1])];
        } else {
            tgt[k] = -1;
            w[k] = 0;
        }
        if (w[k] > 0) p->iscratch[nsup++] = (uint32_t)k;
    }
    if (p->pc.label_mask > 0 && nsup > 0) {
        // Keep a random subset of floor(S * (1 - f)) labels (at least one), fixed per
        // document so the control supervises the same labels every epoch.
        int keep = (int)floor((double)nsup * (1.0 - p->pc.label_mask));
        if (keep < 1) keep = 1;
        es_rng r;
        es_rng_seed(&r, p->pc.seed ^ (0x9E3779B97F4A7C15ull * (i + 1)));
        for (int k = 0; k < keep; k++) {
            int j = k + (int)(es_rng_u64(&r) % (uint64_t)(nsup - k));
            uint32_t tmp = p->iscratch[k];
            p->iscratch[k] = p->iscratch[j];
            p->iscratch[j] = tmp;
        }
        for (int k = keep; k < nsup; k++) w[p->iscratch[k]] = 0;
        nsup = keep;
    }
    return nsup;
}

static int check_config(const es_pack_config *pc) {
    if (!(pc->ratio > 0 && pc->ratio <= 1))
        return es_fail("packer: lead-span proportion %g is outside (0, 1]", pc->ratio);
    if (!(pc->label_mask >= 0 && pc->label_mask < 1))
        return es_fail("packer: label_mask %g is outside [0, 1)", pc->label_mask);
    if (pc->label_mask > 0 && pc->ratio < 1)
        return es_fail("packer: label_mask replaces truncation; set the proportion to 1");
    if ((unsigned)pc->mode > ES_TRUNC_COT || (unsigned)pc->window > ES_WIN_TAIL)
        return es_fail("packer: unknown truncation mode or window");
    if (pc->nranks < 1 || pc->rank < 0 || pc->rank >= pc->nranks)
        return es_fail("packer: rank %d of %d is invalid", pc->rank, pc->nranks);
    if (pc->capacity < 0 || pc->shuffle_window < 0)
        return es_fail("packer: capacity and shuffle window must be >= 0");
    for (int s = 0; s < ES_NSECTIONS; s++)
        if (!(pc->weights[s] >= 0 && isfinite(pc->weights[s])))
            return es_fail("packer: section weight %g is not finite and >= 0", pc->weights[s]);
    return ES_OK;
}

int es_packer_create(es_packer **out, const es_doc_info *docs, const uint32_t *const *toks,
                     size_t ndocs, uint32_t vocab, const es_pack_config *pc) {
    *out = NULL;
    if (check_config(pc) != ES_OK) return ES_ERR;
    if (ndocs == 0) return es_fail("packer: no documents");
    uint32_t maxlen = 0;
    for (size_t i = 0; i < ndocs; i++) {
        const es_doc_info *d = &docs[i];
        if (d->len == 0 || d->len > MAX_DOC_LEN || d->cot_begin > d->cot_end || d->cot_end > d->len)
            return es_fail("packer: document %zu has bad sections (len %u, cot [%u, %u))", i,
                           d->len, d->cot_begin, d->cot_end);
        for (uint32_t j = 0; vocab > 0 && j < d->len; j++)
            if (toks[i][j] >= vocab)
                return es_fail("packer: document %zu token %u is %u, outside the vocabulary of %u",
                               i, j, toks[i][j], vocab);
        if (d->len > maxlen) maxlen = d->len;
    }
    es_packer *p = es_xcalloc(1, sizeof *p);
    p->pc = *pc;
    // A float proportion such as 0.7f is 0.69999998: round to 6 decimals so that
    // floor(len * r) agrees with the decimal value the user wrote.
    p->pc.ratio = round(pc->ratio * 1e6) / 1e6;
    if (p->pc.shuffle_window == 0) p->pc.shuffle_window = DEFAULT_WINDOW;
    p->ndocs = ndocs;
    p->docs = docs;
    p->toks = toks;
    p->kept = es_xmalloc(ndocs * sizeof *p->kept);
    p->wscratch = es_xmalloc(maxlen * sizeof *p->wscratch);
    p->iscratch = es_xmalloc(maxlen * sizeof *p->iscratch);
    int32_t *scratch = es_xmalloc(4 * (size_t)maxlen * sizeof *scratch);
    uint32_t maxkept = 0;
    for (size_t i = 0; i < ndocs; i++) {
        es_kept_spans ks;
        es_doc_keep(&ks, &docs[i], &p->pc);
        p->kept[i] = (ks.a1 - ks.a0) + (ks.b1 - ks.b0);
        p->kept_total += p->kept[i];
        if (p->kept[i] > maxkept) maxkept = p->kept[i];
        p->sup_total += (size_t)fill_doc(p, i, scratch, scratch + maxlen, p->wscratch,
                                         scratch + 2 * (size_t)maxlen, scratch + 3 * (size_t)maxlen);
    }
    free(scratch);
    p->longest = maxkept;
    p->capacity = pc->capacity;
    if (p->capacity == 0) {
        double want = (double)maxkept * (pc->capacity_factor > 0 ? pc->capacity_factor : 1.0);
        p->capacity = (int)(((size_t)ceil(want) + ES_CAPACITY_ROUND - 1) / ES_CAPACITY_ROUND * ES_CAPACITY_ROUND);
    } else if ((uint32_t)p->capacity < maxkept) {
        int cap = p->capacity;
        es_packer_free(p);
        return es_fail("packer: capacity %d is smaller than the longest kept document (%u tokens)",
                       cap, maxkept);
    }
    p->bin_start = es_xmalloc((ndocs + 1) * sizeof *p->bin_start);
    p->bin_docs = es_xmalloc(ndocs * sizeof *p->bin_docs);
    plan_epoch(p);
    *out = p;
    return ES_OK;
}

int es_packer_from_dataset(es_packer **out, const es_dataset *ds, const es_pack_config *pc) {
    size_t n = ds->ndocs;
    es_doc_info *docs = es_xmalloc((n ? n : 1) * sizeof *docs);
    const uint32_t **toks = es_xmalloc((n ? n : 1) * sizeof *toks);
    for (size_t i = 0; i < n; i++) toks[i] = es_dataset_doc(ds, i, &docs[i]);
    // The dataset validated its tokens against its vocabulary already.
    if (es_packer_create(out, docs, toks, n, 0, pc) != ES_OK) {
        free(docs);
        free(toks);
        return ES_ERR;
    }
    (*out)->own_docs = docs;
    (*out)->own_toks = toks;
    return ES_OK;
}

void es_packer_free(es_packer *p) {
    if (!p) return;
    free(p->own_docs);
    free(p->own_toks);
    free(p->kept);
    free(p->bin_start);
    free(p->bin_docs);
    free(p->wscratch);
    free(p->iscratch);
    free(p);
}

int es_packer_capacity(const es_packer *p) { return p->capacity; }
int es_packer_longest(const es_packer *p) { return (int)p->longest; }
size_t es_packer_kept_tokens(const es_packer *p) { return p->kept_total; }
size_t es_packer_supervised_tokens(const es_packer *p) { return p->sup_total; }

// Sort key (kept length, shuffled order, doc): longest first, ties by shuffled
// order, so the sort is deterministic.
static int by_kept_desc(const void *a, const void *b) {
    const size_t *x = a, *y = b;
    if (x[0] != y[0]) return x[0] > y[0] ? -1 : 1;
    return x[1] < y[1] ? -1 : x[1] > y[1];
}

// Builds the epoch's bins: shuffle, then best-fit-decreasing per window,
// then shuffle the window's bins so lengths do not come in order.
static void plan_epoch(es_packer *p) {
    size_t n = p->ndocs, W = (size_t)p->pc.shuffle_window < n ? (size_t)p->pc.shuffle_window : n;
    es_rng r;
    es_rng_seed(&r, p->pc.seed * 0x100000001B3ull + p->epoch);
    size_t *perm = es_xmalloc(n * sizeof *perm);
    for (size_t i = 0; i < n; i++) perm[i] = i;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(es_rng_u64(&r) % i);
        size_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
    size_t *keys = es_xmalloc(3 * W * sizeof *keys);  // (kept, order, doc) per document
    size_t *bin_of = es_xmalloc(W * sizeof *bin_of);
    size_t *space = es_xmalloc(W * sizeof *space);
    size_t *order = es_xmalloc(W * sizeof *order);
    p->nbins = 0;
    size_t filled = 0;
    for (size_t w0 = 0; w0 < n; w0 += W) {
        size_t m = n - w0 < W ? n - w0 : W, nb = 0;
        for (size_t k = 0; k < m; k++) {
            keys[3 * k] = p->kept[perm[w0 + k]];
            keys[3 * k + 1] = k;
            keys[3 * k + 2] = perm[w0 + k];
        }
        qsort(keys, m, 3 * sizeof *keys, by_kept_desc);
        for (size_t k = 0; k < m; k++) {
            size_t len = keys[3 * k], best = nb;
            for (size_t b = 0; b < nb; b++)
                if (space[b] >= len && (best == nb || space[b] < space[best])) best = b;
            if (best == nb) space[nb++] = (size_t)p->capacity;
            space[best] -= len;
            bin_of[k] = best;
        }
        for (size_t b = 0; b < nb; b++) order[b] = b;
        for (size_t b = nb; b > 1; b--) {
            size_t j = (size_t)(es_rng_u64(&r) % b);
            size_t t = order[b - 1];
            order[b - 1] = order[j];
            order[j] = t;
        }
        // Emit bins in shuffled order; inside a bin, documents in packing order.
        for (size_t ob = 0; ob < nb; ob++) {
            size_t b = order[ob];
            p->bin_start[p->nbins++] = filled;
            for (size_t k = 0; k < m; k++)
                if (bin_of[k] == b) p->bin_docs[filled++] = keys[3 * k + 2];
        }
    }
    p->bin_start[p->nbins] = filled;
    free(perm);
    free(keys);
    free(bin_of);
    free(space);
    free(order);
}

size_t es_packer_steps_per_epoch(const es_packer *p) {
    return (p->nbins + (size_t)p->pc.nranks - 1) / (size_t)p->pc.nranks;
}

size_t es_packer_epoch_batches(const es_packer *p) { return p->nbins; }

// Moves to the next epoch once every micro-batch of this one is taken.
static void roll_epoch(es_packer *p) {
    if (p->pos < p->nbins) return;
    p->epoch++;
    p->pos = 0;
    plan_epoch(p);
}

// Fills mb with micro-batch b of the epoch's plan, or leaves it empty when
// b is past the plan's end.
static void fill_bin(es_packer *p, es_microbatch *mb, size_t b) {
    mb->n = 0;
    mb->ndocs = 0;
    mb->nsup = 0;
    mb->cu_seqlens[0] = 0;
    if (b >= p->nbins) return;
    for (size_t k = p->bin_start[b]; k < p->bin_start[b + 1]; k++) {
        size_t i = p->bin_docs[k];
        int at = mb->n;
        mb->nsup += fill_doc(p, i, mb->tokens + at, mb->targets + at, mb->weights + at,
                             mb->pos + at, mb->src + at);
        mb->n += (int)p->kept[i];
        mb->doc_ids[mb->ndocs++] = (int64_t)i;
        mb->cu_seqlens[mb->ndocs] = mb->n;
    }
}

void es_packer_next(es_packer *p, es_microbatch *mb) {
    roll_epoch(p);
    size_t left = p->nbins - p->pos, round = left < (size_t)p->pc.nranks ? left : (size_t)p->pc.nranks;
    fill_bin(p, mb, p->pos + (size_t)p->pc.rank);
    p->pos += round;
}

size_t es_packer_next_step(es_packer *p, es_microbatch *mbs, size_t count) {
    size_t nr = (size_t)p->pc.nranks, share = (count + nr - 1) / nr;
    for (size_t a = 0; a < share; a++) fill_bin(p, &mbs[a], SIZE_MAX);
    for (size_t j = 0; j < count; j++) {
        roll_epoch(p);
        if (j % nr == (size_t)p->pc.rank) fill_bin(p, &mbs[j / nr], p->pos);
        p->pos++;
    }
    return share;
}

es_packer_state es_packer_get_state(const es_packer *p) {
    es_packer_state st = {p->epoch, p->pos};
    return st;
}

int es_packer_set_state(es_packer *p, es_packer_state st) {
    p->epoch = st.epoch;
    p->pos = 0;
    plan_epoch(p);
    if (st.pos > p->nbins)
        return es_fail("packer: saved position %llu is past the %zu micro-batches of epoch %llu",
                       (unsigned long long)st.pos, p->nbins, (unsigned long long)st.epoch);
    p->pos = st.pos;
    return ES_OK;
}

void es_microbatch_alloc(es_microbatch *mb, int capacity) {
    memset(mb, 0, sizeof *mb);
    size_t c = (size_t)capacity;
    mb->capacity = capacity;
    mb->tokens = es_xmalloc(c * sizeof *mb->tokens);
    mb->targets = es_xmalloc(c * sizeof *mb->targets);
    mb->weights = es_xmalloc(c * sizeof *mb->weights);
    mb->pos = es_xmalloc(c * sizeof *mb->pos);
    mb->src = es_xmalloc(c * sizeof *mb->src);
    mb->cu_seqlens = es_xmalloc((c + 1) * sizeof *mb->cu_seqlens);
    mb->doc_ids = es_xmalloc(c * sizeof *mb->doc_ids);
}

void es_microbatch_free(es_microbatch *mb) {
    free(mb->tokens);
    free(mb->targets);
    free(mb->weights);
    free(mb->pos);
    free(mb->src);
    free(mb->cu_seqlens);
    free(mb->doc_ids);
    memset(mb, 0, sizeof *mb);
}
