// The run configuration of `essence train` / `essence bench`: one JSON file
// plus --set key=value overrides. Every field has a documented default
// (configs/README.md is generated from the same table: essence train --help-config).
#pragma once

#define ES_MAX_SHARDS 64

typedef struct {
    // student / teacher
    char student_path[512];    // Hugging Face directory to start from
    char student_preset[512];  // or a config.json to initialise randomly
    char teacher_path[512];    // optional Hugging Face directory
    char teacher_preset[512];  // or a config.json: random weights, for cost measurements
    char tokenizer[512];       // directory holding tokenizer.json (checked against shards)
    // data
    char train[ES_MAX_SHARDS][512];
    int ntrain;
    char val[ES_MAX_SHARDS][512];
    int nval;
    // truncation and supervision
    float lsp;               // lead-span proportion r in (0, 1]
    char trunc_mode[8];      // seq | cot
    char trunc_window[8];    // lead | middle | tail
    int drop_answer;         // keep up to </think>, drop the answer
    float label_mask;        // control: mask this fraction of labels instead (0 = off)
    char supervise[64];      // preset name, or weights "wp,wc,wa"
    // loss
    float alpha;             // weight of CE; 1 - alpha on KD
    float tau;               // KD temperature
    int chunk_rows;          // rows per LM-head chunk
    // optimizer
    float lr, min_lr_ratio, wd, beta1, beta2, eps, clip;
    char schedule[16];       // constant | cosine | linear | onecycle
    float warmup;            // fraction of steps
    // batching
    int capacity;            // tokens per micro-batch (0 = longest kept document, rounded)
    float capacity_factor;   // with capacity 0: this many times the longest kept document
    int step_examples;       // accumulate micro-batches up to this many examples per step
    int step_tokens;         // or up to this many kept tokens per step (0 = off)
    int shuffle_window;      // documents per packing window
    // schedule of the run
    int epochs;
    int steps;               // 0 = as many as the epochs give
    int val_every;           // steps (0 = only at the end)
    int log_every;
    int ckpt_every;          // steps (0 = only at the end)
    int keep;                // checkpoints kept
    int max_bad_steps;       // non-finite steps in a row before aborting
    unsigned long long seed;
    char device[8];          // cpu | cuda | auto
    char out[512];           // run directory (checkpoints, metrics.jsonl)
    int threads;             // OpenMP threads (0 = all)
    int zero1;               // shard the optimizer state across ranks (ZeRO-1)
    int overlap_comm;        // all-reduce gradient buckets during backward
    int comm_bucket;         // elements per all-reduce bucket at least
    char recompute[8];       // none | mlp | full: activations recomputed in backward
} es_run_config;

void es_run_config_defaults(es_run_config *rc);
// Applies a JSON file's fields; unknown keys and bad values are refused naming the key.
int es_run_config_load(es_run_config *rc, const char *path);
// Applies one "key=value" override (same keys as the JSON, dotted).
int es_run_config_set(es_run_config *rc, const char *kv);
// Cross-field checks (paths present, ranges).
int es_run_config_validate(const es_run_config *rc);
// Prints the resolved config as JSON (also stored in checkpoints).
char *es_run_config_to_json(const es_run_config *rc);
// Prints every key with its type, default and meaning (markdown table).
void es_run_config_print_help(void);
