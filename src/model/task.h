/* task: the task model, its JSON form, and validation of create requests. */
#ifndef TASKEXEC_TASK_H
#define TASKEXEC_TASK_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

enum task_status {
    TASK_PENDING = 0,
    TASK_RUNNING,
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_TIMEOUT,
    TASK_CANCELLED,
};
#define TASK_N_STATUS 6

#define TASK_ID_LEN 36          /* a UUID in text */
#define TASK_PROBLEM_ID_MAX 256
#define TASK_PRIORITY_MAX 1000000
#define TASK_TIMEOUT_SECONDS_MAX 86400
#define TASK_MAX_RETRIES_MAX 10

/* Why a task failed (CONTRACT.md "Retries of infrastructure failures"): only an
 * infrastructure failure is retried. TASK_CLASS_NONE: not failed, or not classified. */
enum task_error_class { TASK_CLASS_NONE = 0, TASK_CLASS_INFRASTRUCTURE, TASK_CLASS_AGENT };

struct task {
    char id[TASK_ID_LEN + 1];
    char *problem_id;
    enum task_status status;
    int priority;
    char *backend_type;
    char *mode;              /* "batch" or "interactive" (sessions) */
    json_t *parameters;      /* effective: max_steps, timeout_minutes, agent_config, ... */
    json_t *metadata;        /* object */
    char *callback_url;      /* NULL when unset */
    char *idempotency_key;   /* NULL when unset */
    char *worker_id;         /* NULL until claimed */
    char *lease_token;       /* NULL until claimed; never shown in task JSON */
    json_t *result;          /* NULL when unset */
    char *error;             /* NULL when unset */
    int max_steps;
    int timeout_seconds;
    int64_t created_at, updated_at, started_at, completed_at, deadline_at; /* us; 0 = unset */
    int64_t seq;             /* queue order, for keyset paging; not shown */
    /* retries */
    int max_retries;         /* infrastructure failures retried at most this often */
    int attempt;             /* from 1 */
    enum task_error_class error_class;
    json_t *attempts;        /* the earlier attempts, oldest first; NULL: none */
    int64_t retry_at;        /* pending again after a failure: not claimed before (us) */
    /* experiments */
    char *experiment_id;     /* NULL: not part of one */
    json_t *slot;            /* {"problem_id","agent_config_index","attempt"}; NULL: none */
};

/* Defaults the validator fills in. */
struct task_defaults {
    int max_steps;
    int timeout_minutes;
    int max_retries;
};

const char *task_error_class_name(enum task_error_class c); /* NULL for NONE */
/* task_error_class_parse: "infrastructure" or "agent"; TASK_CLASS_NONE otherwise. */
enum task_error_class task_error_class_parse(const char *name);

/* How a task runs: to its end on its own, or step by step (a session). The text form is
 * the "mode" field of the API and of struct task. */
enum task_mode { TASK_BATCH = 0, TASK_INTERACTIVE };

/* task_mode_of: t's mode (a NULL or unknown mode is batch). */
enum task_mode task_mode_of(const struct task *t);
const char *task_mode_name(enum task_mode m);
/* task_mode_parse: name to mode; -1 when it names none. */
int task_mode_parse(const char *name);

const char *task_status_name(enum task_status s);
/* task_status_parse: name to status; -1 when it names none. */
int task_status_parse(const char *name);
bool task_status_terminal(enum task_status s);

/* task_new: a zeroed task; caller frees with task_free. NULL when out of memory. */
struct task *task_new(void);
/* task_free: frees t and everything it owns; NULL-safe. */
void task_free(struct task *t);

/* task_to_json: the task as the API shows it (CONTRACT.md "A task in JSON").
 * Returns a new reference (caller json_decref's), NULL when out of memory. */
json_t *task_to_json(const struct task *t);

/* task_request_parse: validates a create request body (a parsed JSON value) and
 * the Idempotency-Key header (may be NULL). On success *out is a new pending
 * task without id or times (caller frees). On ERR_INVALID, *errors is a new
 * array of {"field","message"} objects (caller json_decref's) and *out is
 * untouched. */
int task_request_parse(json_t *body, const char *idempotency_header,
                       const struct task_defaults *defs, struct task **out, json_t **errors)
    __attribute__((warn_unused_result));

/* task_valid_problem_id / task_valid_name: the character rules of CONTRACT.md. */
bool task_valid_problem_id(const char *s);
bool task_valid_name(const char *s, size_t max);

#endif
