// The list of a checkpoint's files with the size and CRC-32C of each, kept
// as "files" in its trainer_state.json, so that resume can tell a damaged,
// truncated or missing file before loading anything from it.
#pragma once
#include <cjson/cJSON.h>

// {"name": {"bytes": N, "crc32c": "xxxxxxxx"}, ...} for every regular file
// of dir but trainer_state.json (which holds the list), names sorted.
int es_ckpt_files_record(cJSON **files, const char *dir);
// Checks each listed file of dir, streaming; ES_ERR with one line naming the
// first missing, truncated or damaged one.
int es_ckpt_files_verify(const cJSON *files, const char *dir);
