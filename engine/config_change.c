#include "config_change.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "json.h"

static int changes_training(const char *key) { return strncmp(key, "run.", 4) || !strcmp(key, "run.seed"); }

int es_config_changes(char *changed, size_t cap, const char *ckpt_dir, const char *config_json) {
    char path[4200];
    char *txt;
    size_t len;
    changed[0] = 0;
    snprintf(path, sizeof path, "%s/trainer_state.json", ckpt_dir);
    if (es_read_file(&txt, &len, path)) return ES_ERR;
    cJSON *state = es_json_parse(txt, len);
    free(txt);
    cJSON *now = es_json_parse(config_json, strlen(config_json));
    const cJSON *then = cJSON_GetObjectItemCaseSensitive(state, "config");
    int rc = ES_OK;
    if (!state || !now) rc = es_fail("%s: not valid JSON (corrupt checkpoint)", path);
    for (const cJSON *v = now && cJSON_IsObject(then) ? now->child : NULL; v && !rc; v = v->next) {
        const cJSON *old = cJSON_GetObjectItemCaseSensitive(then, v->string);
        if (!changes_training(v->string) || (old && cJSON_Compare(old, v, 1))) continue;
        size_t n = strlen(changed);
        snprintf(changed + n, cap - n, "%s%s", n ? ", " : "", v->string);
    }
    cJSON_Delete(state);
    cJSON_Delete(now);
    return rc;
}
