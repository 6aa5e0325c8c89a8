/* experiment: spec validation and slot expansion (see experiment.h). */
#include "model/experiment.h"
#include "core/clock.h"
#include "core/err.h"

#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fields of the spec that are the experiment's own, not its tasks' template. */
static const char *const own_fields[] = {"name", "problems", "agent_configs", "attempts",
                                         "callback_url", "metadata"};

static bool is_own_field(const char *key)
{
    for (size_t i = 0; i < sizeof(own_fields) / sizeof(own_fields[0]); i++)
        if (!strcmp(key, own_fields[i]))
            return true;
    return false;
}

static void fail(json_t *errors, const char *field, const char *message)
{
    json_array_append_new(errors, json_pack("{s:s, s:s}", "field", field, "message", message));
}

void experiment_spec_reset(struct experiment_spec *s)
{
    free(s->name);
    json_decref(s->problems);
    json_decref(s->agent_configs);
    json_decref(s->templ);
    free(s->callback_url);
    json_decref(s->metadata);
    memset(s, 0, sizeof(*s));
}

/* Adds to ids (no repeats) the catalog ids pattern names: itself when it is a known id,
 * else every id the glob matches. False when it names none. */
static bool expand_pattern(const json_t *catalog, const char *pattern, json_t *ids,
                           json_t *seen)
{
    size_t i;
    const json_t *e;
    bool any = false;

    json_array_foreach(catalog, i, e) {
        const char *id = json_string_value(json_object_get(e, "id"));

        if (!id || (strcmp(id, pattern) && fnmatch(pattern, id, 0) != 0))
            continue;
        any = true;
        if (!json_object_get(seen, id)) {
            json_object_set_new(seen, id, json_true());
            json_array_append_new(ids, json_string(id));
        }
    }
    return any;
}

/* The problems list: ids or globs, each matching at least one catalog id. */
static json_t *resolve_problems(const json_t *v, const json_t *catalog, json_t *errors)
{
    json_t *ids = json_array(), *seen = json_object(), *p;
    size_t i;
    char msg[400];

    if (!json_is_array(v) || json_array_size(v) == 0) {
        fail(errors, "problems", "must be a non-empty list of problem ids or globs");
        goto out;
    }
    json_array_foreach(v, i, p) {
        const char *pat = json_string_value(p);

        if (!pat || !*pat || strlen(pat) > TASK_PROBLEM_ID_MAX) {
            snprintf(msg, sizeof(msg), "item %zu must be a problem id or a glob of 1 to 256 "
                                       "characters", i);
            fail(errors, "problems", msg);
        } else if (!expand_pattern(catalog, pat, ids, seen)) {
            snprintf(msg, sizeof(msg), "%.256s matches no problem in the catalog "
                                       "(GET /api/v1/problems)", pat);
            fail(errors, "problems", msg);
        }
    }
out:
    json_decref(seen);
    return ids;
}

static void check_configs(const json_t *v, json_t *errors, json_t **out)
{
    size_t i;
    json_t *c;

    if (!v || json_is_null(v)) {
        *out = json_pack("[{}]");
        return;
    }
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > 1000) {
        fail(errors, "agent_configs", "must be a list of 1 to 1000 objects");
        return;
    }
    json_array_foreach(v, i, c) {
        if (!json_is_object(c)) {
            fail(errors, "agent_configs", "every item must be an object (an agent config)");
            return;
        }
    }
    /* Unknown fields in a config are kept as given: the agent reads them. */
    *out = json_deep_copy(v);
}

/* The spec's own fields: name, attempts, callback_url, metadata. */
static void check_own(json_t *body, json_t *errors, struct experiment_spec *s)
{
    json_t *v = json_object_get(body, "name");

    if (!json_is_string(v) || json_string_length(v) < 1 ||
        json_string_length(v) > EXPERIMENT_NAME_MAX)
        fail(errors, "name", "is required: a string of 1 to 200 characters");
    else
        s->name = strdup(json_string_value(v));
    v = json_object_get(body, "attempts");
    s->attempts = 1;
    if (v && (!json_is_integer(v) || json_integer_value(v) < 1 ||
              json_integer_value(v) > EXPERIMENT_ATTEMPTS_MAX))
        fail(errors, "attempts", "must be an integer from 1 to 100");
    else if (v)
        s->attempts = (int)json_integer_value(v);
    v = json_object_get(body, "metadata");
    if (v && !json_is_object(v) && !json_is_null(v))
        fail(errors, "metadata", "must be an object");
    s->metadata = json_is_object(v) ? json_deep_copy(v) : json_object();
}

/* The template every slot's task starts from: the spec minus its own fields. Its task
 * fields are checked by the task validator with a stand-in problem id, and
 * callback_url by the same rule (it is the experiment's, not each task's). */
static json_t *make_template(json_t *body, const struct task_defaults *defs, json_t *errors,
                             char **callback_url)
{
    json_t *templ = json_object(), *probe, *errs = NULL, *v, *e;
    struct task *t = NULL;
    const char *key;
    size_t i;

    json_object_foreach(body, key, v)
        if (!is_own_field(key))
            json_object_set(templ, key, v);
    probe = json_deep_copy(templ);
    json_object_set_new(probe, "problem_id", json_string("probe"));
    if ((v = json_object_get(body, "callback_url")))
        json_object_set(probe, "callback_url", v);
    if (task_request_parse(probe, NULL, defs, &t, &errs) == ERR_INVALID) {
        json_array_foreach(errs, i, e)
            json_array_append(errors, e);
    } else if (t && t->callback_url) {
        *callback_url = strdup(t->callback_url);
    }
    /* Not fields of an experiment's tasks, at the top level or in parameters: every
     * slot is a batch task, keyed by its slot, and the callback is the experiment's. */
    for (const char *const *k = (const char *const[]){"mode", "idempotency_key", NULL}; *k;
         k++)
        if (json_object_get(templ, *k) || json_object_get(json_object_get(templ, "parameters"), *k))
            fail(errors, *k, "is not a field of an experiment's tasks");
    if (json_object_get(json_object_get(templ, "parameters"), "callback_url"))
        fail(errors, "callback_url", "is the experiment's own: give it at the top level");
    task_free(t);
    json_decref(errs);
    json_decref(probe);
    return templ;
}

int experiment_spec_parse(json_t *body, const json_t *catalog, int max_tasks,
                          const struct task_defaults *defs, struct experiment_spec *out,
                          json_t **errors)
{
    struct experiment_spec s = {0};
    json_t *errs = json_array();
    char msg[200];

    if (!errs)
        return ERR_NOMEM;
    if (!json_is_object(body)) {
        fail(errs, "body", "must be a JSON object");
    } else {
        check_own(body, errs, &s);
        s.problems = resolve_problems(json_object_get(body, "problems"), catalog, errs);
        check_configs(json_object_get(body, "agent_configs"), errs, &s.agent_configs);
        s.templ = make_template(body, defs, errs, &s.callback_url);
    }
    if (json_array_size(errs) == 0 && experiment_task_count(&s) > max_tasks) {
        snprintf(msg, sizeof(msg), "the experiment would make %lld tasks (problems x "
                 "agent_configs x attempts); at most %d are allowed (MAX_EXPERIMENT_TASKS)",
                 (long long)experiment_task_count(&s), max_tasks);
        fail(errs, "problems", msg);
    }
    if (json_array_size(errs) > 0) {
        experiment_spec_reset(&s);
        *errors = errs;
        return ERR_INVALID;
    }
    json_decref(errs);
    if (!s.name || !s.problems || !s.agent_configs || !s.templ || !s.metadata) {
        experiment_spec_reset(&s);
        return ERR_NOMEM;
    }
    *out = s;
    return 0;
}

int64_t experiment_task_count(const struct experiment_spec *s)
{
    return (int64_t)json_array_size(s->problems) * (int64_t)json_array_size(s->agent_configs) *
           s->attempts;
}

struct task *experiment_task_for(const struct experiment_spec *s, const char *id,
                                 const char *problem_id, int config_index, int attempt,
                                 const struct task_defaults *defs)
{
    json_t *config = json_array_get(s->agent_configs, (size_t)config_index);
    json_t *body, *errs = NULL;
    struct task *t = NULL;

    if (!config)
        return NULL;
    body = json_deep_copy(s->templ);
    if (!body || json_object_set_new(body, "problem_id", json_string(problem_id)) ||
        json_object_set(body, "agent_config", config))
        goto out;
    /* A config given inside the template's parameters would clash with the slot's. */
    json_object_del(json_object_get(body, "parameters"), "agent_config");
    if (task_request_parse(body, NULL, defs, &t, &errs) != 0)
        goto out;
    t->experiment_id = strdup(id);
    t->slot = json_pack("{s:s, s:i, s:i}", "problem_id", problem_id, "agent_config_index",
                        config_index, "attempt", attempt);
    if (!t->experiment_id || !t->slot) {
        task_free(t);
        t = NULL;
    }
out:
    json_decref(errs);
    json_decref(body);
    return t;
}

struct task *experiment_slot_task(const struct experiment_spec *s, const char *id, int64_t i,
                                  const struct task_defaults *defs)
{
    int64_t per_problem = (int64_t)json_array_size(s->agent_configs) * s->attempts;
    const char *problem = json_string_value(json_array_get(s->problems,
                                                           (size_t)(i / per_problem)));
    int64_t rest = i % per_problem;

    if (!problem)
        return NULL;
    return experiment_task_for(s, id, problem, (int)(rest / s->attempts),
                               (int)(rest % s->attempts) + 1, defs);
}

json_t *experiment_spec_to_json(const struct experiment_spec *s)
{
    return json_pack("{s:s, s:O, s:O, s:i, s:O}", "name", s->name, "problems", s->problems,
                     "agent_configs", s->agent_configs, "attempts", s->attempts, "template",
                     s->templ);
}

int experiment_spec_from_json(const json_t *stored, struct experiment_spec *out)
{
    const char *name = json_string_value(json_object_get(stored, "name"));
    json_t *problems = json_object_get(stored, "problems");
    json_t *configs = json_object_get(stored, "agent_configs");
    json_t *templ = json_object_get(stored, "template");

    memset(out, 0, sizeof(*out));
    if (!name || !json_is_array(problems) || !json_is_array(configs) ||
        !json_is_object(templ))
        return ERR_INVALID;
    out->name = strdup(name);
    out->problems = json_incref(problems);
    out->agent_configs = json_incref(configs);
    out->templ = json_incref(templ);
    out->attempts = (int)json_integer_value(json_object_get(stored, "attempts"));
    out->metadata = json_object();
    if (!out->name || !out->metadata) {
        experiment_spec_reset(out);
        return ERR_NOMEM;
    }
    return 0;
}

struct experiment *experiment_new(void)
{
    return calloc(1, sizeof(struct experiment));
}

void experiment_free(struct experiment *e)
{
    if (!e)
        return;
    free(e->name);
    json_decref(e->spec);
    json_decref(e->metadata);
    free(e->callback_url);
    free(e);
}

const char *experiment_status(const struct experiment *e)
{
    if (e->counts[TASK_PENDING] + e->counts[TASK_RUNNING] > 0)
        return "running";
    return e->cancelled_at ? "cancelled" : "completed";
}

static json_t *time_json(int64_t us)
{
    char text[40];

    if (!us)
        return json_null();
    clock_format(us, text, sizeof(text));
    return json_string(text);
}

json_t *experiment_to_json(const struct experiment *e)
{
    json_t *counts = json_object(), *o;
    int64_t ended = 0;

    for (int i = 0; counts && i < TASK_N_STATUS; i++) {
        json_object_set_new(counts, task_status_name((enum task_status)i),
                            json_integer(e->counts[i]));
        if (task_status_terminal((enum task_status)i))
            ended += e->counts[i];
    }
    o = json_pack("{s:s, s:s, s:s, s:I, s:o, s:I, s:f, s:O, s:O, s:O, s:s*, s:o, s:o, s:o}",
                  "id", e->id, "name", e->name ? e->name : "", "status", experiment_status(e),
                  "task_count", (json_int_t)e->task_count, "counts", counts, "ended",
                  (json_int_t)ended, "progress",
                  e->task_count ? (double)ended / (double)e->task_count : 1.0, "problems",
                  json_object_get(e->spec, "problems") ?: json_null(), "agent_configs",
                  json_object_get(e->spec, "agent_configs") ?: json_null(), "metadata",
                  e->metadata ?: json_null(), "callback_url", e->callback_url, "created_at",
                  time_json(e->created_at), "ended_at",
                  time_json(strcmp(experiment_status(e), "running") ? e->ended_at : 0),
                  "cancelled_at", time_json(e->cancelled_at));
    if (o)
        json_object_set_new(o, "attempts",
                            json_integer(json_integer_value(json_object_get(e->spec,
                                                                            "attempts"))));
    return o;
}
