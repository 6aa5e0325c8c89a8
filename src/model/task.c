/* task: model, JSON form and request validation (see task.h). */
#include "model/task.h"
#include "core/clock.h"
#include "core/err.h"

#include <stdlib.h>
#include <string.h>

static const char *const status_names[TASK_N_STATUS] = {
    "pending", "running", "completed", "failed", "timeout", "cancelled",
};

const char *task_status_name(enum task_status s)
{
    return (unsigned)s < TASK_N_STATUS ? status_names[s] : "unknown";
}

int task_status_parse(const char *name)
{
    for (int i = 0; i < TASK_N_STATUS; i++)
        if (!strcmp(name, status_names[i]))
            return i;
    return -1;
}

static const char *const class_names[] = {NULL, "infrastructure", "agent"};

const char *task_error_class_name(enum task_error_class c)
{
    return (unsigned)c < 3 ? class_names[c] : NULL;
}

enum task_error_class task_error_class_parse(const char *name)
{
    for (int i = 1; name && i < 3; i++)
        if (!strcmp(name, class_names[i]))
            return (enum task_error_class)i;
    return TASK_CLASS_NONE;
}

bool task_status_terminal(enum task_status s)
{
    return s != TASK_PENDING && s != TASK_RUNNING;
}

struct task *task_new(void)
{
    return calloc(1, sizeof(struct task));
}

void task_free(struct task *t)
{
    if (!t)
        return;
    free(t->problem_id);
    free(t->backend_type);
    free(t->mode);
    json_decref(t->parameters);
    json_decref(t->metadata);
    free(t->callback_url);
    free(t->idempotency_key);
    free(t->worker_id);
    free(t->lease_token);
    json_decref(t->result);
    free(t->error);
    json_decref(t->attempts);
    free(t->experiment_id);
    json_decref(t->slot);
    free(t);
}

static json_t *time_or_null(int64_t us)
{
    char text[40];

    if (!us)
        return json_null();
    clock_format(us, text, sizeof(text));
    return json_string(text);
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

/* A new reference to v, or to a fresh empty object / null when v is unset. */
static json_t *obj_or_empty(json_t *v)
{
    return v ? json_incref(v) : json_object();
}

static json_t *obj_or_null(json_t *v)
{
    return v ? json_incref(v) : json_null();
}

static const char *const mode_names[] = {"batch", "interactive"};

enum task_mode task_mode_of(const struct task *t)
{
    return t->mode && !strcmp(t->mode, mode_names[TASK_INTERACTIVE]) ? TASK_INTERACTIVE
                                                                      : TASK_BATCH;
}

const char *task_mode_name(enum task_mode m)
{
    return mode_names[m == TASK_INTERACTIVE];
}

int task_mode_parse(const char *name)
{
    for (int i = 0; i < 2; i++)
        if (!strcmp(name, mode_names[i]))
            return i;
    return -1;
}

json_t *task_to_json(const struct task *t)
{
    json_t *o = json_object();

    if (!o)
        return NULL;
    if (json_object_set_new(o, "id", json_string(t->id)) ||
        json_object_set_new(o, "problem_id", json_string(t->problem_id)) ||
        json_object_set_new(o, "status", json_string(task_status_name(t->status))) ||
        json_object_set_new(o, "priority", json_integer(t->priority)) ||
        json_object_set_new(o, "backend_type", str_or_null(t->backend_type)) ||
        json_object_set_new(o, "mode", json_string(task_mode_name(task_mode_of(t)))) ||
        json_object_set_new(o, "parameters", obj_or_empty(t->parameters)) ||
        json_object_set_new(o, "metadata", obj_or_empty(t->metadata)) ||
        json_object_set_new(o, "callback_url", str_or_null(t->callback_url)) ||
        json_object_set_new(o, "idempotency_key", str_or_null(t->idempotency_key)) ||
        json_object_set_new(o, "worker_id", str_or_null(t->worker_id)) ||
        json_object_set_new(o, "result", obj_or_null(t->result)) ||
        json_object_set_new(o, "error", str_or_null(t->error)) ||
        json_object_set_new(o, "created_at", time_or_null(t->created_at)) ||
        json_object_set_new(o, "updated_at", time_or_null(t->updated_at)) ||
        json_object_set_new(o, "started_at", time_or_null(t->started_at)) ||
        json_object_set_new(o, "completed_at", time_or_null(t->completed_at)) ||
        json_object_set_new(o, "error_class", str_or_null(task_error_class_name(t->error_class))) ||
        json_object_set_new(o, "attempt", json_integer(t->attempt ? t->attempt : 1)) ||
        json_object_set_new(o, "max_retries", json_integer(t->max_retries)) ||
        json_object_set_new(o, "attempts", t->attempts ? json_incref(t->attempts) : json_array()) ||
        json_object_set_new(o, "retry_at", time_or_null(t->retry_at)) ||
        json_object_set_new(o, "experiment_id", str_or_null(t->experiment_id)) ||
        json_object_set_new(o, "slot", obj_or_null(t->slot))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

bool task_valid_name(const char *s, size_t max)
{
    size_t n = 0;

    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-' || c == ':'))
            return false;
    }
    return n >= 1 && n <= max;
}

bool task_valid_problem_id(const char *s)
{
    return task_valid_name(s, TASK_PROBLEM_ID_MAX);
}

/* Validation state: errors collect; nothing is written until all pass. */
struct check {
    json_t *errors;
};

static void fail(struct check *c, const char *field, const char *message)
{
    json_t *e = json_pack("{s:s, s:s}", "field", field, "message", message);

    if (e)
        json_array_append_new(c->errors, e);
}

/* Looks a field up at the top level and in "parameters"; a field given in both
 * places with different values is an error. Returns a borrowed value or NULL. */
static json_t *field(struct check *c, const json_t *body, const json_t *params, const char *key)
{
    json_t *top = json_object_get(body, key);
    json_t *in = params ? json_object_get(params, key) : NULL;

    if (top && in && !json_equal(top, in)) {
        fail(c, key, "given both at the top level and in parameters, with different values");
        return NULL;
    }
    return top ? top : in;
}

static bool int_in(const json_t *v, long long lo, long long hi, long long *out)
{
    if (!json_is_integer(v))
        return false;
    *out = json_integer_value(v);
    return *out >= lo && *out <= hi;
}

static bool valid_url(const char *s)
{
    const char *host;

    if (!strncmp(s, "http://", 7))
        host = s + 7;
    else if (!strncmp(s, "https://", 8))
        host = s + 8;
    else
        return false;
    if (strlen(s) > 2048 || *host == '\0' || *host == '/' || *host == ':')
        return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return false;
    return true;
}

/* Keys that are task fields, not executor parameters. */
static const char *const task_fields[] = {
    "problem_id", "parameters", "agent_config", "max_steps", "timeout_minutes", "timeout",
    "callback_url", "metadata", "priority", "backend_type", "idempotency_key", "mode",
    "max_retries",
};

static bool is_task_field(const char *key)
{
    for (size_t i = 0; i < sizeof(task_fields) / sizeof(task_fields[0]); i++)
        if (!strcmp(key, task_fields[i]))
            return true;
    return false;
}

static void check_problem_id(struct check *c, const json_t *body, char **out)
{
    json_t *v = json_object_get(body, "problem_id");

    if (!v)
        fail(c, "problem_id", "is required");
    else if (!json_is_string(v) || !task_valid_problem_id(json_string_value(v)))
        fail(c, "problem_id", "must be a string of 1 to 256 characters from [A-Za-z0-9_.:-]");
    else
        *out = strdup(json_string_value(v));
}

static void check_timeout(struct check *c, const json_t *body, const json_t *params,
                          const struct task_defaults *defs, int *seconds)
{
    json_t *mins = field(c, body, params, "timeout_minutes");
    json_t *secs = field(c, body, params, "timeout");
    long long v;

    *seconds = defs->timeout_minutes * 60;
    if (mins && secs) {
        fail(c, "timeout", "give timeout_minutes or timeout (seconds), not both");
    } else if (mins) {
        if (!int_in(mins, 1, 1440, &v))
            fail(c, "timeout_minutes", "must be an integer from 1 to 1440");
        else
            *seconds = (int)v * 60;
    } else if (secs) {
        if (!int_in(secs, 1, TASK_TIMEOUT_SECONDS_MAX, &v))
            fail(c, "timeout", "must be an integer number of seconds from 1 to 86400");
        else
            *seconds = (int)v;
    }
}

static void check_string(struct check *c, const json_t *v, const char *name, size_t max,
                         char **out)
{
    if (!v || json_is_null(v))
        return;
    if (!json_is_string(v) || !task_valid_name(json_string_value(v), max)) {
        char msg[160];
        snprintf(msg, sizeof(msg), "must be a string of 1 to %zu characters from [A-Za-z0-9_.:-]",
                 max);
        fail(c, name, msg);
        return;
    }
    *out = strdup(json_string_value(v));
}

static void check_idempotency(struct check *c, const json_t *body, const char *header,
                              char **out)
{
    json_t *v = json_object_get(body, "idempotency_key");
    const char *key = header;

    if (v) {
        if (!json_is_string(v) || json_string_length(v) < 1 || json_string_length(v) > 255) {
            fail(c, "idempotency_key", "must be a string of 1 to 255 characters");
            return;
        }
        if (header && strcmp(header, json_string_value(v)) != 0) {
            fail(c, "idempotency_key", "differs from the Idempotency-Key header");
            return;
        }
        key = json_string_value(v);
    }
    if (!key)
        return;
    if (strlen(key) < 1 || strlen(key) > 255) {
        fail(c, "Idempotency-Key", "must be 1 to 255 characters");
        return;
    }
    *out = strdup(key);
}

/* Checks each field into t, every failure into c (problem_id, agent_config,
 * max_steps, timeout, callback_url, metadata, priority, backend_type, mode,
 * Idempotency-Key, max_retries). */
static void check_fields(struct check *c, json_t *body, json_t *params,
                         const char *idempotency_header, const struct task_defaults *defs,
                         struct task *t)
{
    json_t *v;
    long long n;

    check_problem_id(c, body, &t->problem_id);
    v = field(c, body, params, "agent_config");
    if (v && !json_is_object(v) && !json_is_null(v))
        fail(c, "agent_config", "must be an object");
    v = field(c, body, params, "max_steps");
    t->max_steps = defs->max_steps;
    if (v && !json_is_null(v)) {
        if (!int_in(v, 1, 1000, &n))
            fail(c, "max_steps", "must be an integer from 1 to 1000");
        else
            t->max_steps = (int)n;
    }
    check_timeout(c, body, params, defs, &t->timeout_seconds);
    v = field(c, body, params, "callback_url");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || !valid_url(json_string_value(v)))
            fail(c, "callback_url", "must be an http:// or https:// URL with a host");
        else
            t->callback_url = strdup(json_string_value(v));
    }
    v = field(c, body, params, "metadata");
    if (v && !json_is_object(v) && !json_is_null(v))
        fail(c, "metadata", "must be an object");
    else
        t->metadata = json_is_object(v) ? json_deep_copy(v) : json_object();
    v = field(c, body, params, "priority");
    if (v && !json_is_null(v)) {
        if (!int_in(v, -TASK_PRIORITY_MAX, TASK_PRIORITY_MAX, &n))
            fail(c, "priority", "must be an integer from -1000000 to 1000000");
        else
            t->priority = (int)n;
    }
    check_string(c, field(c, body, params, "backend_type"), "backend_type", 64,
                 &t->backend_type);
    v = field(c, body, params, "mode");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || task_mode_parse(json_string_value(v)) < 0)
            fail(c, "mode", "must be \"batch\" or \"interactive\"");
        else
            t->mode = strdup(json_string_value(v));
    }
    check_idempotency(c, body, idempotency_header, &t->idempotency_key);
    v = field(c, body, params, "max_retries");
    t->max_retries = defs->max_retries;
    if (v && !json_is_null(v)) {
        if (!int_in(v, 0, TASK_MAX_RETRIES_MAX, &n))
            fail(c, "max_retries", "must be an integer from 0 to 10");
        else
            t->max_retries = (int)n;
    }
}

/* Effective parameters: the given ones, unknown top-level fields, then the
 * resolved values, so an executor reads one object. Also fills the defaults of
 * backend_type and mode. Returns the object (caller decrefs), or NULL when out
 * of memory. */
static json_t *effective_params(struct check *c, json_t *body, json_t *params, struct task *t)
{
    json_t *eff = params ? json_deep_copy(params) : json_object();
    json_t *v;
    const char *key;

    if (!eff || (!t->backend_type && !(t->backend_type = strdup("default"))) ||
        (!t->mode && !(t->mode = strdup(task_mode_name(TASK_BATCH)))))
        goto fail;
    json_object_foreach(body, key, v) {
        if (!is_task_field(key) && json_object_set(eff, key, v))
            goto fail;
    }
    for (size_t i = 0; i < sizeof(task_fields) / sizeof(task_fields[0]); i++)
        if (strcmp(task_fields[i], "timeout"))
            json_object_del(eff, task_fields[i]);
    v = field(c, body, params, "agent_config");
    if (json_object_set_new(eff, "agent_config",
                            json_is_object(v) ? json_deep_copy(v) : json_object()) ||
        json_object_set_new(eff, "max_steps", json_integer(t->max_steps)))
        goto fail;
    if (t->timeout_seconds % 60 == 0) {
        if (json_object_set_new(eff, "timeout_minutes", json_integer(t->timeout_seconds / 60)))
            goto fail;
    } else if (json_object_set_new(eff, "timeout_minutes",
                                   json_real(t->timeout_seconds / 60.0))) {
        goto fail;
    }
    return eff;
fail:
    json_decref(eff);
    return NULL;
}

int task_request_parse(json_t *body, const char *idempotency_header,
                       const struct task_defaults *defs, struct task **out, json_t **errors)
{
    struct check c = {.errors = json_array()};
    struct task *t = task_new();
    json_t *params = NULL, *eff = NULL;
    int rc = ERR_NOMEM;

    if (!c.errors || !t)
        goto out;
    if (!json_is_object(body)) {
        fail(&c, "body", "must be a JSON object");
        goto check;
    }
    params = json_object_get(body, "parameters");
    if (params && !json_is_object(params)) {
        if (!json_is_null(params))
            fail(&c, "parameters", "must be an object");
        params = NULL;
    }
    check_fields(&c, body, params, idempotency_header, defs, t);
check:
    if (json_array_size(c.errors) > 0) {
        rc = ERR_INVALID;
        *errors = c.errors;
        c.errors = NULL;
        goto out;
    }
    eff = effective_params(&c, body, params, t);
    if (!eff || !t->problem_id || !t->metadata)
        goto out;
    t->parameters = eff;
    eff = NULL;
    t->status = TASK_PENDING;
    t->attempt = 1;
    *out = t;
    t = NULL;
    rc = 0;
out:
    json_decref(eff);
    json_decref(c.errors);
    task_free(t);
    return rc;
}
