// Strict JSON parsing: the one entry point for every JSON the engine reads.
#pragma once
#include <stddef.h>

#include <cjson/cJSON.h>

// Parses text[0..len) as exactly one JSON value, optionally followed by
// whitespace; NULL if it is not valid JSON or anything else follows (cJSON
// alone stops after the first value and would ignore the rest).
cJSON *es_json_parse(const char *text, size_t len);
