/* store/sqlite/queue: claim (pick and lease in one BEGIN IMMEDIATE), finish, reap
 * and recover. */
#include "store/sqlite/sqlite_int.h"
#include "store/rules.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A lost attempt (its worker went silent, or this server restarted under it) goes back
 * to pending when it has retries left: the attempt is recorded, the next waits
 * RETRY_BASE_SECONDS (?4) x 2^(attempt-1), and its worker waits as long again. */
#define SQ_LOST_RETRY(error)                                                               \
    "status = 'pending', attempts = json_insert(attempts, '$[#]', json_object('attempt', "  \
    "attempt, 'worker_id', worker_id, 'started_at', started_at, 'ended_at', ?2, 'error', "   \
    error ", 'error_class', 'infrastructure')), attempt = attempt + 1, worker_id = NULL, "    \
    "lease_token = NULL, started_at = NULL, deadline_at = NULL, retry_at = ?2 + (?4 << "      \
    "(attempt - 1)), avoid_worker = worker_id, avoid_until = ?2 + 2 * (?4 << (attempt - "     \
    "1)), updated_at = ?2 "

enum {
    Q_CLAIM, Q_WORKER_BUSY, Q_FINISH, Q_RETRY, Q_WORKER_DONE, Q_CONV_FINISH, Q_REAP_RETRY,
    Q_REAP_SILENT_TASKS, Q_REAP_SILENT_WORKERS, Q_REAP_DEADLINES, Q_RECOVER_RETRY,
    Q_RECOVER_TASKS, Q_RECOVER_WORKERS, Q_N
};

static const struct sq_query queue_q[Q_N] = {
    /* ?5: the supported_problems as one regular expression (store/rules.c), or NULL. */
    [Q_CLAIM] = {"claiming",
                 "UPDATE tasks SET status = 'running', worker_id = ?1, lease_token = ?2, "
                 "started_at = MAX(?3, created_at), updated_at = MAX(?3, created_at), "
                 "deadline_at = MAX(?3, created_at) + timeout_seconds * 1000000, retry_at = "
                 "NULL WHERE seq = (SELECT seq FROM tasks WHERE status = 'pending' AND "
                 "backend_type = ?4 AND (?5 IS NULL OR problem_id REGEXP ?5) AND (retry_at IS "
                 "NULL OR retry_at <= ?3) AND (avoid_worker IS NULL OR avoid_worker != ?1 OR "
                 "avoid_until <= ?3) ORDER BY priority DESC, seq LIMIT 1) RETURNING " TASK_COLS},
    [Q_WORKER_BUSY] = {"marking a worker busy",
                       "UPDATE workers SET status = 'busy', current_task_id = ?2, "
                       "last_heartbeat = ?3 WHERE id = ?1"},
    [Q_FINISH] = {"finishing a task",
                  "UPDATE tasks SET status = ?3, result = ?4, error = ?5, completed_at = ?6, "
                  "updated_at = ?6, error_class = ?7 WHERE id = ?1 AND status = 'running' AND "
                  "lease_token = ?2 RETURNING worker_id"},
    /* A failed attempt with retries left (the queue's decision, ?8 the time of the next):
     * recorded in attempts, the task pending again, its worker asked to wait as long
     * again before it takes it back. */
    [Q_RETRY] = {"retrying a task",
                 "UPDATE tasks SET status = 'pending', attempts = json_insert(attempts, '$[#]', "
                 "json_object('attempt', attempt, 'worker_id', worker_id, 'started_at', "
                 "started_at, 'ended_at', ?6, 'error', ?5, 'error_class', ?7)), attempt = "
                 "attempt + 1, worker_id = NULL, lease_token = NULL, started_at = NULL, "
                 "deadline_at = NULL, result = NULL, error = NULL, error_class = NULL, retry_at = "
                 "?8, avoid_worker = worker_id, avoid_until = ?8 + (?8 - ?6), updated_at = ?6 "
                 "WHERE id = ?1 AND status = 'running' AND lease_token = ?2 RETURNING "
                 "avoid_worker"},
    [Q_WORKER_DONE] = {"counting a worker's task",
                       "UPDATE workers SET status = CASE WHEN status = 'offline' THEN 'offline' "
                       "ELSE 'idle' END, current_task_id = NULL, tasks_completed = "
                       "tasks_completed + ?2, tasks_failed = tasks_failed + ?3 WHERE id = ?1"},
    [Q_CONV_FINISH] = {"closing conversations",
                       "UPDATE llm_conversations SET ended_at = COALESCE(ended_at, ?2), "
                       "metadata = json_set(metadata, '$.success', json(?3)) WHERE task_id = ?1"},
    /* Tasks of silent workers are retried or fail first, while the workers still read
     * as alive. */
    [Q_REAP_RETRY] = {"reaping",
                      "UPDATE tasks SET " SQ_LOST_RETRY(RULE_ERR_SILENT("?3")) "WHERE status = "
                      "'running' AND attempt <= max_retries AND worker_id IN (SELECT id FROM "
                      "workers WHERE status != 'offline' AND last_heartbeat < ?2 - ?3)"},
    [Q_REAP_SILENT_TASKS] = {"reaping",
                             "UPDATE tasks SET status = 'failed', completed_at = ?2, updated_at "
                             "= ?2, error = " RULE_ERR_SILENT("?3") ", error_class = "
                             "'infrastructure' WHERE status = 'running' AND worker_id IN (SELECT "
                             "id FROM workers WHERE status != 'offline' AND last_heartbeat < ?2 "
                             "- ?3)"},
    [Q_REAP_SILENT_WORKERS] = {"reaping",
                               "UPDATE workers SET tasks_failed = tasks_failed + (SELECT "
                               "count(*) FROM tasks t WHERE t.id = workers.current_task_id AND "
                               "t.status = 'failed'), status = 'offline', current_task_id = "
                               "NULL WHERE status != 'offline' AND last_heartbeat < ?2 - ?3"},
    /* A running task past its deadline by more than the heartbeat timeout has no
     * worker enforcing it (the worker's own timer fires first when it is alive). */
    [Q_REAP_DEADLINES] = {"reaping",
                          "UPDATE tasks SET status = 'timeout', completed_at = ?2, updated_at = "
                          "?2, error = " RULE_ERR_DEADLINE " WHERE status = 'running' AND "
                          "deadline_at < ?2 - ?3"},
    [Q_RECOVER_RETRY] = {"recovering",
                         "UPDATE tasks SET " SQ_LOST_RETRY(RULE_ERR_RESTARTED) "WHERE status = "
                         "'running' AND attempt <= max_retries AND worker_id IN (SELECT id FROM "
                         "workers WHERE name_prefix = ?1)"},
    [Q_RECOVER_TASKS] = {"recovering",
                         "UPDATE tasks SET status = 'failed', completed_at = ?2, updated_at = ?2, "
                         "error = " RULE_ERR_RESTARTED ", error_class = 'infrastructure' WHERE "
                         "status = 'running' AND worker_id IN (SELECT id FROM workers WHERE "
                         "name_prefix = ?1)"},
    [Q_RECOVER_WORKERS] = {"recovering",
                           "UPDATE workers SET status = 'offline', current_task_id = NULL WHERE "
                           "name_prefix = ?1"},
};

/* The claim itself, inside the caller's write transaction. */
int sq_claim_in(struct conn *c, const struct claim_req *req, struct task **out)
{
    struct task *t = NULL;
    char *re = NULL;
    int rc = rules_globs_regex(req->patterns, req->n_patterns, &re);

    if (rc == 0) {
        const struct db_arg args[5] = {DB_T(req->worker_id), DB_T(req->lease_token),
                                       DB_I(req->now), DB_T(req->backend_type), DB_T(re)};
        rc = sq_take(c, &queue_q[Q_CLAIM], args, 5, rows_take_task, &t);
    }
    free(re);
    if (rc == 0) {
        const struct db_arg args[3] = {DB_T(req->worker_id), DB_T(t->id), DB_I(req->now)};
        rc = sq_run(c, &queue_q[Q_WORKER_BUSY], args, 3, NULL);
    }
    if (rc == 0)
        *out = t;
    else
        task_free(t);
    return rc;
}

/* The context of claim's body. */
struct claim {
    const struct claim_req *req;
    struct task *t;                 /* the claimed task, freed by the caller on error */
};

static int claim(struct db_conn *dc, void *ctx)
{
    struct conn *c = sq_conn(dc);
    struct claim *x = ctx;

    return sq_claim_in(c, x->req, &x->t);
}

int sq_task_claim(struct store *st, const struct claim_req *req, struct task **out)
{
    struct claim x = {req, NULL};
    int rc = sq_in_write(st, claim, &x);

    if (rc == 0)
        *out = x.t;
    else
        task_free(x.t);
    return rc;
}

/* The end itself: ERR_CONFLICT when the lease is not held (or the task is not running);
 * *worker is the worker that ran it (caller frees). */
static int finish_row(struct conn *c, const char *id, const char *lease_token,
                      const struct task_end *end, char **worker)
{
    const struct db_arg args[8] = {DB_T(id), DB_T(lease_token),
                                   DB_T(task_status_name(end->status)), DB_J(end->result),
                                   DB_T(end->error), DB_I(end->now),
                                   DB_T(task_error_class_name(end->error_class)),
                                   DB_I(end->retry_at)};
    int rc = end->retry_at ? sq_take(c, &queue_q[Q_RETRY], args, 8, rows_take_text, worker)
                           : sq_take(c, &queue_q[Q_FINISH], args, 7, rows_take_text, worker);

    return rc == ERR_NOTFOUND ? ERR_CONFLICT : rc;
}

/* What follows an accepted end: the worker's counts, its conversations closed. */
static int finish_after(struct conn *c, const char *id, const struct task_end *end,
                        const char *worker)
{
    json_t *success = end->result ? json_object_get(end->result, "success") : NULL;
    const char *ok = json_is_boolean(success) ? (json_is_true(success) ? "true" : "false")
                                              : "null";
    const struct db_arg counts[3] = {DB_T(worker), DB_I(end->status == TASK_COMPLETED),
                                     DB_I(end->status != TASK_COMPLETED)};
    const struct db_arg convs[3] = {DB_T(id), DB_I(end->now), DB_T(ok)};
    int rc = sq_run(c, &queue_q[Q_WORKER_DONE], counts, 3, NULL);

    return rc == 0 ? sq_run(c, &queue_q[Q_CONV_FINISH], convs, 3, NULL) : rc;
}

/* The context of finish's body. */
struct finish {
    const char *id, *lease_token;
    const struct task_end *end;
    int refused;                    /* ERR_CONFLICT or ERR_NOTFOUND: the end was refused */
    struct task *next;              /* claimed with the end; freed by the caller on error */
};

/* A refused end: ERR_NOTFOUND when the task does not exist, else ERR_CONFLICT (its
 * lease is gone). */
static int refusal(struct conn *c, const char *id)
{
    struct task *t = NULL;
    int rc = db_load_task(&c->base, false, id, &t) == ERR_NOTFOUND ? ERR_NOTFOUND : ERR_CONFLICT;

    task_free(t);
    return rc;
}

/* The logs, the end, what follows it and the optional next claim. A refused end still
 * commits (the logs are kept) and is reported through refused; a failed next claim
 * rolls back the whole, so the end is retried. */
static int finish(struct db_conn *dc, void *ctx)
{
    struct conn *c = sq_conn(dc);
    struct finish *x = ctx;
    char *worker = NULL;
    int rc = sq_insert_logs(&c->base, x->id, x->end->logs, x->end->n_logs);

    if (rc == 0)
        rc = finish_row(c, x->id, x->lease_token, x->end, &worker);
    if (rc == 0)
        rc = finish_after(c, x->id, x->end, worker);
    free(worker);
    if (rc == ERR_CONFLICT) {
        x->refused = refusal(c, x->id);
        return 0;
    }
    if (rc == 0 && x->end->claim_next) {
        rc = sq_claim_in(c, x->end->claim_next, &x->next);
        if (rc == ERR_NOTFOUND)
            rc = 0; /* nothing waits: the end alone commits */
    }
    return rc;
}

int sq_task_finish(struct store *st, const char *id, const char *lease_token,
                   const struct task_end *end)
{
    struct finish x = {id, lease_token, end, 0, NULL};
    int rc = sq_in_write(st, finish, &x);

    if (rc == 0 && x.next)
        *end->next = x.next;
    else
        task_free(x.next);
    return rc == 0 ? x.refused : rc;
}

/* The context of reap's body. */
struct reap {
    int64_t now, timeout_us, retry_base_us;
    struct reap_result *out;
};

static int reap(struct db_conn *dc, void *ctx)
{
    struct conn *c = sq_conn(dc);
    struct reap *x = ctx;
    const struct db_arg args[4] = {DB_T(NULL), DB_I(x->now), DB_I(x->timeout_us),
                                   DB_I(x->retry_base_us)};
    int rc = sq_run(c, &queue_q[Q_REAP_RETRY], args, 4, &x->out->tasks_retried);

    if (rc == 0)
        rc = sq_run(c, &queue_q[Q_REAP_SILENT_TASKS], args, 3, &x->out->tasks_failed);

    if (rc == 0)
        rc = sq_run(c, &queue_q[Q_REAP_SILENT_WORKERS], args, 3, &x->out->workers_offline);
    if (rc == 0)
        rc = sq_run(c, &queue_q[Q_REAP_DEADLINES], args, 3, &x->out->tasks_timed_out);
    return rc;
}

int sq_reap(struct store *st, int64_t now, int64_t heartbeat_timeout_us, int64_t retry_base_us,
            struct reap_result *out)
{
    struct reap x = {now, heartbeat_timeout_us, retry_base_us, out};

    memset(out, 0, sizeof(*out));
    return sq_in_write(st, reap, &x);
}

/* The context of recover's body. */
struct recover {
    const char *name_prefix;
    int64_t now, retry_base_us;
    int *n_failed;
};

static int recover(struct db_conn *dc, void *ctx)
{
    struct conn *c = sq_conn(dc);
    struct recover *x = ctx;
    const struct db_arg args[4] = {DB_T(x->name_prefix), DB_I(x->now), DB_I(0),
                                   DB_I(x->retry_base_us)};
    int rc = sq_run(c, &queue_q[Q_RECOVER_RETRY], args, 4, x->n_failed);

    if (rc == 0)
        rc = sq_run(c, &queue_q[Q_RECOVER_TASKS], args, 2, x->n_failed);

    return rc == 0 ? sq_run(c, &queue_q[Q_RECOVER_WORKERS], args, 1, NULL) : rc;
}

int sq_recover(struct store *st, const char *name_prefix, int64_t now, int64_t retry_base_us,
               int *n_failed)
{
    struct recover x = {name_prefix, now, retry_base_us, n_failed};

    *n_failed = 0;
    return sq_in_write(st, recover, &x);
}
