/* store/sqlite/queue: claim (pick and lease in one BEGIN IMMEDIATE), finish, reap
 * and recover. */
#include "store/sqlite/sqlite_int.h"
#include "store/rules.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    Q_CLAIM,
    Q_WORKER_BUSY,
    Q_FINISH,
    Q_WORKER_DONE,
    Q_CONV_FINISH,
    Q_REAP_SILENT_TASKS,
    Q_REAP_SILENT_WORKERS,
    Q_REAP_DEADLINES,
    Q_RECOVER_TASKS,
    Q_RECOVER_WORKERS,
    Q_N
};

static const struct sq_query queue_q[Q_N] = {
    /* ?5: the supported_problems as one regular expression (store/rules.c), or NULL. */
    [Q_CLAIM] = {"claiming",
                 "UPDATE tasks SET status = 'running', worker_id = ?1, lease_token = ?2, "
                 "started_at = MAX(?3, created_at), updated_at = MAX(?3, created_at), "
                 "deadline_at = MAX(?3, created_at) + timeout_seconds * 1000000 WHERE seq = "
                 "(SELECT seq FROM tasks WHERE status = 'pending' AND backend_type = ?4 AND "
                 "(?5 IS NULL OR problem_id REGEXP ?5) ORDER BY priority DESC, seq LIMIT 1) "
                 "RETURNING " TASK_COLS},
    [Q_WORKER_BUSY] = {"marking a worker busy",
                       "UPDATE workers SET status = 'busy', current_task_id = ?2, "
                       "last_heartbeat = ?3 WHERE id = ?1"},
    [Q_FINISH] = {"finishing a task",
                  "UPDATE tasks SET status = ?3, result = ?4, error = ?5, completed_at = ?6, "
                  "updated_at = ?6 WHERE id = ?1 AND status = 'running' AND lease_token = ?2 "
                  "RETURNING worker_id"},
    [Q_WORKER_DONE] = {"counting a worker's task",
                       "UPDATE workers SET status = CASE WHEN status = 'offline' THEN 'offline' "
                       "ELSE 'idle' END, current_task_id = NULL, tasks_completed = "
                       "tasks_completed + ?2, tasks_failed = tasks_failed + ?3 WHERE id = ?1"},
    [Q_CONV_FINISH] = {"closing conversations",
                       "UPDATE llm_conversations SET ended_at = COALESCE(ended_at, ?2), "
                       "metadata = json_set(metadata, '$.success', json(?3)) WHERE task_id = ?1"},
    /* Tasks of silent workers fail first, while the workers still read as alive. */
    [Q_REAP_SILENT_TASKS] = {"reaping",
                             "UPDATE tasks SET status = 'failed', completed_at = ?2, updated_at "
                             "= ?2, error = " RULE_ERR_SILENT("?3") " WHERE status = 'running' "
                             "AND worker_id IN (SELECT id FROM workers WHERE status != "
                             "'offline' AND last_heartbeat < ?2 - ?3)"},
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
    [Q_RECOVER_TASKS] = {"recovering",
                         "UPDATE tasks SET status = 'failed', completed_at = ?2, updated_at = ?2, "
                         "error = " RULE_ERR_RESTARTED " WHERE status = 'running' AND worker_id "
                         "IN (SELECT id FROM workers WHERE name_prefix = ?1)"},
    [Q_RECOVER_WORKERS] = {"recovering",
                           "UPDATE workers SET status = 'offline', current_task_id = NULL WHERE "
                           "name_prefix = ?1"},
};

static int claim_row(struct conn *c, const struct claim_req *req, struct task **out)
{
    struct sq_cursor cur;
    char *re = NULL;
    int rc = rules_globs_regex(req->patterns, req->n_patterns, &re);

    if (rc == 0)
        rc = sq_open_q(&cur, c, &queue_q[Q_CLAIM]);
    else
        return rc;
    if (rc == 0) {
        sq_bind_text(cur.s, 1, req->worker_id);
        sq_bind_text(cur.s, 2, req->lease_token);
        sqlite3_bind_int64(cur.s, 3, req->now);
        sq_bind_text(cur.s, 4, req->backend_type);
        sq_bind_text(cur.s, 5, re);
        rc = rows_one(&cur.base);
    }
    if (rc == 0) {
        *out = rows_task(&cur.base.row);
        rc = *out ? 0 : ERR_NOMEM;
    }
    free(re);
    return sq_end(&cur, rc);
}

/* The claim itself, inside the caller's write transaction. */
int sq_claim_in(struct conn *c, const struct claim_req *req, struct task **out)
{
    struct sq_cursor cur;
    struct task *t = NULL;
    int rc = claim_row(c, req, &t);

    if (rc == 0)
        rc = sq_open_q(&cur, c, &queue_q[Q_WORKER_BUSY]);
    if (rc == 0) {
        sq_bind_text(cur.s, 1, req->worker_id);
        sq_bind_text(cur.s, 2, t->id);
        sqlite3_bind_int64(cur.s, 3, req->now);
        rc = sq_end(&cur, sq_exec(&cur));
    }
    if (rc == 0)
        *out = t;
    else
        task_free(t);
    return rc;
}

int sq_task_claim(struct store *st, const struct claim_req *req, struct task **out)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    struct task *t = NULL;
    int rc;

    if (!c)
        return ERR_STORE;
    rc = sq_writer_end(ss, sq_claim_in(c, req, &t));
    if (rc == 0)
        *out = t;
    else
        task_free(t);
    return rc;
}

/* The end itself: ERR_CONFLICT when the lease is not held (or the task is not running);
 * *worker is the worker that ran it (caller frees). */
static int finish_row(struct conn *c, const char *id, const char *lease_token,
                      const struct task_end *end, char **worker)
{
    struct sq_cursor cur;
    int rc = sq_open_q(&cur, c, &queue_q[Q_FINISH]);

    if (rc == 0) {
        sq_bind_text(cur.s, 1, id);
        sq_bind_text(cur.s, 2, lease_token);
        sq_bind_text(cur.s, 3, task_status_name(end->status));
        rc = sq_bind_json(cur.s, 4, end->result);
    }
    if (rc == 0) {
        sq_bind_text(cur.s, 5, end->error);
        sqlite3_bind_int64(cur.s, 6, end->now);
        rc = rows_one(&cur.base);
    }
    if (rc == 0)
        *worker = rows_dup(&cur.base.row, 0);
    return sq_end(&cur, rc == ERR_NOTFOUND ? ERR_CONFLICT : rc);
}

/* What follows an accepted end: the worker's counts, its conversations closed. */
static int finish_after(struct conn *c, const char *id, const struct task_end *end,
                        const char *worker)
{
    json_t *success = end->result ? json_object_get(end->result, "success") : NULL;
    struct sq_cursor cur;
    int rc = sq_open_q(&cur, c, &queue_q[Q_WORKER_DONE]);

    if (rc == 0) {
        sq_bind_text(cur.s, 1, worker);
        sqlite3_bind_int(cur.s, 2, end->status == TASK_COMPLETED);
        sqlite3_bind_int(cur.s, 3, end->status != TASK_COMPLETED);
        rc = sq_end(&cur, sq_exec(&cur));
    }
    if (rc == 0)
        rc = sq_open_q(&cur, c, &queue_q[Q_CONV_FINISH]);
    if (rc == 0) {
        sq_bind_text(cur.s, 1, id);
        sqlite3_bind_int64(cur.s, 2, end->now);
        sq_bind_text(cur.s, 3, json_is_boolean(success)
                                   ? (json_is_true(success) ? "true" : "false")
                                   : "null");
        rc = sq_end(&cur, sq_exec(&cur));
    }
    return rc;
}

int sq_task_finish(struct store *st, const char *id, const char *lease_token,
                   const struct task_end *end)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    char *worker = NULL;
    int rc;

    if (!c)
        return ERR_STORE;
    rc = sq_insert_logs(c, id, end->logs, end->n_logs);
    if (rc == 0)
        rc = finish_row(c, id, lease_token, end, &worker);
    if (rc == 0)
        rc = finish_after(c, id, end, worker);
    free(worker);
    if (rc == 0 && end->claim_next) {
        struct task *t = NULL;
        int crc = sq_claim_in(c, end->claim_next, &t);
        if (crc == 0) {
            rc = sq_writer_end(ss, 0);
            if (rc == 0)
                *end->next = t;
            else
                task_free(t);
            return rc;
        }
        if (crc != ERR_NOTFOUND)
            rc = crc; /* rolled back whole: the end is retried */
    }
    if (rc == ERR_CONFLICT) {
        struct task *t = NULL;
        /* Distinguish a task that does not exist from one whose lease is gone. */
        if (sq_load_task(c, false, id, &t) == ERR_NOTFOUND)
            rc = ERR_NOTFOUND;
        task_free(t);
        /* The end is refused, the logs are kept. */
        return sq_writer_end(ss, 0) < 0 ? ERR_STORE : rc;
    }
    return sq_writer_end(ss, rc);
}

int sq_reap(struct store *st, int64_t now, int64_t heartbeat_timeout_us,
            struct reap_result *out)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    const struct sq_arg args[3] = {SQ_T(NULL), SQ_I(now), SQ_I(heartbeat_timeout_us)};
    int rc;

    memset(out, 0, sizeof(*out));
    if (!c)
        return ERR_STORE;
    rc = sq_run(c, &queue_q[Q_REAP_SILENT_TASKS], args, 3, &out->tasks_failed);
    if (rc == 0)
        rc = sq_run(c, &queue_q[Q_REAP_SILENT_WORKERS], args, 3, &out->workers_offline);
    if (rc == 0)
        rc = sq_run(c, &queue_q[Q_REAP_DEADLINES], args, 3, &out->tasks_timed_out);
    return sq_writer_end(ss, rc);
}

int sq_recover(struct store *st, const char *name_prefix, int64_t now, int *n_failed)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    const struct sq_arg args[2] = {SQ_T(name_prefix), SQ_I(now)};
    int rc;

    *n_failed = 0;
    if (!c)
        return ERR_STORE;
    rc = sq_run(c, &queue_q[Q_RECOVER_TASKS], args, 2, n_failed);
    if (rc == 0)
        rc = sq_run(c, &queue_q[Q_RECOVER_WORKERS], args, 1, NULL);
    return sq_writer_end(ss, rc);
}
