/* openenv_proto: see openenv_proto.h. */
#include "http/openenv_proto.h"

#include <fnmatch.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

void openenv_utf8_trim(char *s)
{
    size_t n = strlen(s), i = n, need;

    while (i > 0 && n - i < 4 && ((unsigned char)s[i - 1] & 0xC0) == 0x80)
        i--;                                   /* back over continuation bytes */
    if (i == 0 || ((unsigned char)s[i - 1] & 0x80) == 0)
        return;                                /* ends in ASCII (or only continuations) */
    i--;                                       /* the lead byte */
    need = ((unsigned char)s[i] & 0xE0) == 0xC0 ? 2 : ((unsigned char)s[i] & 0xF0) == 0xE0 ? 3 : 4;
    if (n - i < need)
        s[i] = '\0';
}

json_t *openenv_error(const char *code, json_t *errors, const char *message)
{
    json_t *data = json_pack("{s:s, s:s}", "message", message, "code", code);

    if (data && errors)
        json_object_set_new(data, "errors", errors);
    else
        json_decref(errors);
    return json_pack("{s:s, s:o}", "type", "error", "data", data ? data : json_object());
}

json_t *openenv_field_error(const char *loc, const char *type, const char *msg)
{
    return json_pack("[{s:s, s:[s], s:s}]", "type", type, "loc", loc, "msg", msg);
}

static json_t *invalid(const char *loc, const char *type, const char *msg)
{
    return openenv_error("VALIDATION_ERROR", openenv_field_error(loc, type, msg),
                         "Invalid message");
}

static const struct {
    const char *name;
    enum openenv_type type;
    bool has_data;           /* the message may carry "data" */
} types[] = {
    {"reset", OPENENV_RESET, true},
    {"step", OPENENV_STEP, true},
    {"state", OPENENV_STATE, false},
    {"close", OPENENV_CLOSE, false},
};

int openenv_parse(const char *text, size_t len, json_t **msg, json_t **data, json_t **error)
{
    json_error_t jerr;
    json_t *m = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr), *v;
    const char *type, *key;
    char why[300];

    *error = NULL;
    if (!m) {
        snprintf(why, sizeof(why), "Invalid JSON: %s", jerr.text);
        openenv_utf8_trim(why);
        *error = openenv_error("INVALID_JSON", NULL, why);
        return -1;
    }
    if (!json_is_object(m)) {
        json_decref(m);
        *error = invalid("message", "dict_type", "Input should be a valid dictionary");
        return -1;
    }
    type = json_string_value(json_object_get(m, "type"));
    for (size_t i = 0; type && i < sizeof(types) / sizeof(types[0]); i++) {
        if (strcmp(type, types[i].name))
            continue;
        json_object_foreach(m, key, v)
            if (strcmp(key, "type") && (!types[i].has_data || strcmp(key, "data"))) {
                *error = invalid(key, "extra_forbidden", "Extra inputs are not permitted");
                json_decref(m); /* after: key is m's */
                return -1;
            }
        *data = json_object_get(m, "data");
        if (*data && !json_is_object(*data)) {
            json_decref(m);
            *error = invalid("data", "dict_type", "Input should be a valid dictionary");
            return -1;
        }
        *msg = m;
        return (int)types[i].type;
    }
    snprintf(why, sizeof(why), "Unknown message type: %.200s", type ? type : "");
    openenv_utf8_trim(why);
    json_decref(m); /* after: type was m's */
    *error = openenv_error("UNKNOWN_TYPE", NULL, why);
    return -1;
}

const char *openenv_action(json_t *data, size_t max, json_t **error)
{
    const char *key, *a = json_string_value(json_object_get(data, "action"));
    json_t *v;

    *error = NULL;
    if (!json_is_object(data)) {
        *error = invalid("data", "missing", "Field required");
        return NULL;
    }
    json_object_foreach(data, key, v)
        if (strcmp(key, "action") && strcmp(key, "metadata")) {
            *error = invalid(key, "extra_forbidden", "Extra inputs are not permitted");
            return NULL;
        }
    if (!a || !*a || strlen(a) > max) {
        *error = invalid("action", !json_object_get(data, "action") ? "missing" : "string_type",
                         "must be a non-empty string (one API call in one fenced code "
                         "block, e.g. ```\\nexec_shell(\"kubectl get pods\")\\n```)");
        return NULL;
    }
    return a;
}

static json_t *or_null(const json_t *v)
{
    return v ? json_incref((json_t *)(uintptr_t)v) : json_null();
}

json_t *openenv_reset_observation(const json_t *row, const char *problem_id,
                                  const char *session_id)
{
    const char *desc = json_string_value(json_object_get(row, "task_description"));
    const char *instr = json_string_value(json_object_get(row, "instructions"));
    json_t *obs = json_pack("{s:s+++, s:o, s:o, s:o, s:s, s:s}", "text", instr ? instr : "",
                            instr && desc ? "\n\n" : "", "", desc ? desc : "",
                            "task_description", or_null(json_object_get(row, "task_description")),
                            "instructions", or_null(json_object_get(row, "instructions")),
                            "actions", or_null(json_object_get(row, "actions")), "problem_id",
                            problem_id, "session_id", session_id);

    return json_pack("{s:s, s:{s:o, s:n, s:b}}", "type", "observation", "data", "observation",
                     obs ? obs : json_object(), "reward", "done", 0);
}

json_t *openenv_step_observation(const json_t *answer, int step)
{
    bool done = json_is_true(json_object_get(answer, "done"));
    json_t *obs = json_pack("{s:o, s:i}", "text", or_null(json_object_get(answer, "observation")),
                            "step", step);

    if (done && obs)
        json_object_set_new(obs, "results", or_null(json_object_get(answer, "results")));
    return json_pack("{s:s, s:{s:o, s:o, s:b}}", "type", "observation", "data", "observation",
                     obs ? obs : json_object(), "reward",
                     or_null(json_object_get(answer, "reward")), "done", done);
}

const char *openenv_draw(const json_t *catalog, const char *pattern, unsigned long long seed)
{
    size_t i, n = 0, k;
    const json_t *it;

    json_array_foreach(catalog, i, it) {
        const char *id = json_string_value(json_object_get(it, "id"));
        n += id && (!pattern || fnmatch(pattern, id, 0) == 0);
    }
    if (!n)
        return NULL;
    k = (size_t)(seed % n);
    json_array_foreach(catalog, i, it) {
        const char *id = json_string_value(json_object_get(it, "id"));
        if (id && (!pattern || fnmatch(pattern, id, 0) == 0) && k-- == 0)
            return id;
    }
    return NULL;
}
