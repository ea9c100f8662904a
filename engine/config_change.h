// Resuming with a changed run config: which changed keys alter the training.
#pragma once
#include <stddef.h>

// Names, comma-separated into `changed` ("" if none), the keys whose values
// differ between the config saved in a checkpoint's trainer_state.json and
// config_json (this run's resolved config), counting only keys that change
// the training: everything but run.* (cadence, run.steps, run.epochs, threads,
// device, out...), where run.seed does count. A checkpoint without a saved
// config names nothing.
int es_config_changes(char *changed, size_t cap, const char *ckpt_dir, const char *config_json);
