/* experiment: an experiment's spec (CONTRACT.md "Experiments"), its validation, and
 * the slots it expands to.
 *
 * DESIGN
 * An experiment is problems x agent configs x attempts; each (problem, config,
 * attempt) slot is one task. The spec's task fields (max_steps, timeout_minutes,
 * priority, backend_type, max_retries, parameters, ...) are validated once, as a task
 * request template, by the same validator a task's request goes through
 * (task_request_parse), so a field is checked and named the same way in both; the
 * slots then become tasks with experiment_slot_task. Problems are ids or globs
 * (fnmatch) over the catalog, expanded in catalog order, each id once. */
#ifndef TASKEXEC_EXPERIMENT_H
#define TASKEXEC_EXPERIMENT_H

#include "model/task.h"

#include <jansson.h>
#include <stdint.h>

#define EXPERIMENT_NAME_MAX 200
#define EXPERIMENT_ATTEMPTS_MAX 100

struct experiment_spec {
    char *name;
    json_t *problems;        /* the resolved problem ids, in order (array of strings) */
    json_t *agent_configs;   /* array of objects, at least one */
    int attempts;
    json_t *templ;           /* the request body each slot's task starts from */
    char *callback_url;      /* NULL: none */
    json_t *metadata;        /* object */
};

/* An experiment as stored, with its current tasks counted per state. */
struct experiment {
    char id[TASK_ID_LEN + 1];
    char *name;
    json_t *spec;            /* experiment_spec_to_json */
    json_t *metadata;        /* object */
    char *callback_url;      /* NULL: none */
    int64_t created_at;      /* us */
    int64_t cancelled_at;    /* us; 0: not cancelled */
    int64_t ended_at;        /* us: the last task's end once all have ended; else 0 */
    int64_t task_count;      /* slots (each slot's current task) */
    int64_t counts[TASK_N_STATUS];
};

/* experiment_new: a zeroed experiment (caller frees with experiment_free, NULL-safe). */
struct experiment *experiment_new(void);
void experiment_free(struct experiment *e);
/* experiment_status: "running" while a task has not ended; then "cancelled" when it was
 * cancelled, else "completed". */
const char *experiment_status(const struct experiment *e);
/* experiment_to_json: the API's form (new reference; NULL without memory). */
json_t *experiment_to_json(const struct experiment *e);

/* experiment_spec_parse: validates body against catalog (borrowed array of
 * {"id",...}) with at most max_tasks slots. 0 with *out filled (free with
 * experiment_spec_reset); ERR_INVALID with *errors a new array of {"field","message"}
 * (caller json_decref's) and *out empty; ERR_NOMEM. */
int experiment_spec_parse(json_t *body, const json_t *catalog, int max_tasks,
                          const struct task_defaults *defs, struct experiment_spec *out,
                          json_t **errors) __attribute__((warn_unused_result));
void experiment_spec_reset(struct experiment_spec *s);

/* experiment_spec_to_json: what is stored to rerun slots later: {"name","problems",
 * "agent_configs","attempts","template"} (new reference; NULL without memory).
 * experiment_spec_from_json reads it back (0, or ERR_INVALID when it is not one). */
json_t *experiment_spec_to_json(const struct experiment_spec *s);
int experiment_spec_from_json(const json_t *stored, struct experiment_spec *out)
    __attribute__((warn_unused_result));

/* experiment_task_count: the slots of s. */
int64_t experiment_task_count(const struct experiment_spec *s);

/* experiment_slot_task: the task of slot i (0 <= i < count; problem-major, then agent
 * config, then attempt) of experiment id: a pending task without id or times, with
 * experiment_id and slot set (caller frees). NULL when out of memory. */
struct task *experiment_slot_task(const struct experiment_spec *s, const char *id, int64_t i,
                                  const struct task_defaults *defs);

/* experiment_task_for: the task of one slot (problem, config index, attempt), for reruns
 * too; NULL when out of memory or the config index is out of range. */
struct task *experiment_task_for(const struct experiment_spec *s, const char *id,
                                 const char *problem_id, int config_index, int attempt,
                                 const struct task_defaults *defs);

#endif
