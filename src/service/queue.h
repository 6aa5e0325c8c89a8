/* queue: the rules of a task's state changes and their side effects, written once.
 *
 * DESIGN
 * Handlers, the internal workers and the external workers' routes all change a task's
 * state through these functions, so each change has one set of side effects: a submit
 * counts the task and wakes a worker; a cancel stops the run if a worker of this process
 * has it, logs why when a reason is given, and counts the end; a finish counts the end
 * with one formula (queue wait: created to started; run: started to ended). The worker
 * layer sits above this one, so waking workers and stopping a run come in as callbacks
 * (set by serve.c once the worker manager exists; NULL: nothing to wake or stop).
 * Every function is thread-safe as far as the store and metrics are. */
#ifndef TASKEXEC_QUEUE_H
#define TASKEXEC_QUEUE_H

#include "store/store.h"
#include "model/task.h"

#include <jansson.h>
#include <stdbool.h>

struct metrics;

/* What the queue uses; filled by serve.c, read-only once serving. */
struct queue {
    struct store *store;
    struct metrics *metrics;            /* NULL: nothing counted */
    struct task_defaults defaults;      /* DEFAULT_MAX_STEPS, _TIMEOUT_MINUTES, _MAX_RETRIES */
    int64_t retry_base_us;              /* RETRY_BASE_SECONDS */
    const char *webhook_allowed_hosts;  /* borrowed from the config; NULL: every host */
    bool strict_problems;               /* PROBLEM_VALIDATION=strict */
    json_t *problems;                   /* the catalog, borrowed; read-only */
    void (*wake_workers)(void *ctx);    /* a task was queued */
    bool (*stop_run)(void *ctx, const char *task_id); /* stop the run of task_id if here */
    void *workers;                      /* ctx of both callbacks */
};

/* queue_submit: validates a create request (body is borrowed; idempotency_key may be
 * NULL), gives it an id and queues it. On success *out is the new task, or, when the
 * Idempotency-Key names an earlier one, that task with *created false (caller frees).
 * ERR_INVALID: *errors is a new array of {"field","message"} (caller json_decref's).
 * Other codes come from the store. Outputs are untouched on error. */
int queue_submit(struct queue *q, json_t *body, const char *idempotency_key,
                 struct task **out, bool *created, json_t **errors)
    __attribute__((warn_unused_result));

/* queue_cancel: cancels task_id (pending or running): stops its run if a worker of this
 * process has it (another server's worker sees the state at its next lease check), logs
 * reason at level when reason is not NULL, and counts the end. *out (may be NULL) gets
 * the task as stored (caller frees), also on ERR_CONFLICT (it has already ended) so the
 * caller can say how. ERR_NOTFOUND, ERR_STORE as the store says. */
int queue_cancel(struct queue *q, const char *task_id, int level, const char *reason,
                 struct task **out) __attribute__((warn_unused_result));

/* queue_retry_at: when t, failed now as error_class, is retried: an infrastructure
 * failure with retries left (attempt <= max_retries) is pending again after
 * RETRY_BASE_SECONDS x 2^(attempt-1); 0 for a final end. */
int64_t queue_retry_at(const struct queue *q, const struct task *t,
                       enum task_error_class error_class, int64_t now);

/* queue_finish: records t's end under its lease (store_task_finish, end->now set by the
 * caller) and counts it. A failure is classified (unclassified: the agent's) and, when
 * queue_retry_at says so, becomes a retry instead of an end (logged, counted by class,
 * workers woken); end->error_class and end->retry_at then say what was done (retry_at 0:
 * an end). ERR_CONFLICT: it had already ended (nothing counted); other codes from
 * the store. */
int queue_finish(struct queue *q, const struct task *t, struct task_end *end)
    __attribute__((warn_unused_result));

/* queue_claim: claims the next task req matches (req->now is set here), for internal
 * and external workers alike, and counts how long the claim took. *out is the task
 * (caller frees); ERR_NOTFOUND when none is waiting; other codes from the store. */
int queue_claim(struct queue *q, struct claim_req *req, struct task **out)
    __attribute__((warn_unused_result));

/* queue_reap: marks offline the workers silent for heartbeat_timeout_us, fails their
 * tasks and times out the tasks past their deadline (store_reap), and logs a warning
 * when it did any of that. Returns 0 or the store's code; *out (may be NULL) gets the
 * counts on success. */
int queue_reap(struct queue *q, int64_t heartbeat_timeout_us, struct reap_result *out);

#endif
