// The generation fixtures (tests/fixtures/generate/NAME.json, written by the
// committed fixture script from transformers' greedy generate): prompts,
// max_new and transformers' tokens. For the tests that read them.
#pragma once
#include <cjson/cJSON.h>
#include <stdlib.h>

#include "common.h"
#include "test.h"

// The parsed fixture, or NULL after a failed CHECK naming the file.
static inline cJSON *t_gen_fixture(const char *name) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/generate/%s.json", name);
    char *text;
    size_t len;
    if (es_read_file(&text, &len, path)) {
        CHECK(0, "%s", es_last_error());
        return NULL;
    }
    cJSON *fx = cJSON_Parse(text);
    free(text);
    CHECK(fx, "%s: not valid JSON", path);
    return fx;
}
