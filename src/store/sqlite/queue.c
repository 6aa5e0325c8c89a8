/* store/sqlite/queue: claim (pick and lease in one BEGIN IMMEDIATE), finish, reap
 * and recover. */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* SQLite's GLOB has the * ? [...] of supported_problems patterns. */
static int claim_matching(struct conn *c, const struct claim_req *req, struct task **out)
{
    char sql[4096];
    size_t n;
    sqlite3_stmt *s = NULL;
    int rc, step;

    if (req->n_patterns > 64)
        return ERR_INVALID;
    n = (size_t)snprintf(sql, sizeof(sql),
                         "UPDATE tasks SET status = 'running', worker_id = ?1, lease_token = ?2, "
                         "started_at = MAX(?3, created_at), updated_at = MAX(?3, created_at), "
                         "deadline_at = MAX(?3, created_at) + timeout_seconds * 1000000 WHERE seq = (SELECT seq FROM tasks WHERE status = 'pending' "
                         "AND backend_type = ?4 AND (0");
    for (size_t i = 0; i < req->n_patterns; i++)
        n += (size_t)snprintf(sql + n, sizeof(sql) - n, " OR problem_id GLOB ?%zu", i + 5);
    snprintf(sql + n, sizeof(sql) - n,
             ") ORDER BY priority DESC, seq LIMIT 1) RETURNING " TASK_COLS);
    if (sqlite3_prepare_v2(c->db, sql, -1, &s, NULL) != SQLITE_OK)
        return sq_fail_db(c->db, "preparing a claim");
    sq_bind_text(s, 1, req->worker_id);
    sq_bind_text(s, 2, req->lease_token);
    sqlite3_bind_int64(s, 3, req->now);
    sq_bind_text(s, 4, req->backend_type);
    for (size_t i = 0; i < req->n_patterns; i++)
        sq_bind_text(s, (int)i + 5, req->patterns[i]);
    step = sqlite3_step(s);
    if (step == SQLITE_ROW) {
        *out = sq_row_task(s);
        rc = *out ? 0 : ERR_NOMEM;
    } else {
        rc = step == SQLITE_DONE ? ERR_NOTFOUND : sq_fail_db(c->db, "claiming");
    }
    sqlite3_finalize(s);
    return rc;
}

/* The claim itself, inside the caller's write transaction. */
static int claim_in(struct conn *c, const struct claim_req *req, struct task **out)
{
    sqlite3_stmt *s;
    struct task *t = NULL;
    int rc, step;

    if (req->n_patterns) {
        rc = claim_matching(c, req, &t);
    } else {
        s = sq_stmt(c, Q_TASK_CLAIM_ANY);
        if (!s)
            return ERR_STORE;
        sq_bind_text(s, 1, req->worker_id);
        sq_bind_text(s, 2, req->lease_token);
        sqlite3_bind_int64(s, 3, req->now);
        sq_bind_text(s, 4, req->backend_type);
        step = sqlite3_step(s);
        if (step == SQLITE_ROW) {
            t = sq_row_task(s);
            rc = t ? 0 : ERR_NOMEM;
        } else {
            rc = step == SQLITE_DONE ? ERR_NOTFOUND : sq_fail_db(c->db, "claiming");
        }
        sq_done(s);
    }
    if (rc == 0) {
        s = sq_stmt(c, Q_WORKER_BUSY);
        if (!s) {
            rc = ERR_STORE;
        } else {
            sq_bind_text(s, 1, req->worker_id);
            sq_bind_text(s, 2, t->id);
            sqlite3_bind_int64(s, 3, req->now);
            if (sqlite3_step(s) != SQLITE_DONE)
                rc = sq_fail_db(c->db, "marking a worker busy");
            sq_done(s);
        }
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
    rc = sq_writer_end(ss, claim_in(c, req, &t));
    if (rc == 0)
        *out = t;
    else
        task_free(t);
    return rc;
}

int sq_task_finish(struct store *st, const char *id, const char *lease_token,
                   const struct task_end *end)
{
    enum task_status status = end->status;
    json_t *result = end->result;
    const char *error = end->error;
    int64_t now = end->now;
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    sqlite3_stmt *s;
    char *worker = NULL;
    json_t *success;
    int rc, step;

    if (!c)
        return ERR_STORE;
    rc = sq_insert_logs(c, id, end->logs, end->n_logs);
    if (rc < 0)
        return sq_writer_end(ss, rc);
    s = sq_stmt(c, Q_TASK_FINISH);
    if (!s)
        return sq_writer_end(ss, ERR_STORE);
    sq_bind_text(s, 1, id);
    sq_bind_text(s, 2, lease_token);
    sq_bind_text(s, 3, task_status_name(status));
    rc = sq_bind_json(s, 4, result);
    sq_bind_text(s, 5, error);
    sqlite3_bind_int64(s, 6, now);
    if (rc == 0) {
        step = sqlite3_step(s);
        if (step == SQLITE_ROW)
            worker = sq_col_dup(s, 0);
        else
            rc = step == SQLITE_DONE ? ERR_CONFLICT : sq_fail_db(c->db, "finishing a task");
    }
    sq_done(s);
    if (rc == 0 && (s = sq_stmt(c, Q_WORKER_DONE))) {
        sq_bind_text(s, 1, worker);
        sqlite3_bind_int(s, 2, status == TASK_COMPLETED);
        sqlite3_bind_int(s, 3, status != TASK_COMPLETED);
        if (sqlite3_step(s) != SQLITE_DONE)
            rc = sq_fail_db(c->db, "counting a worker's task");
        sq_done(s);
    }
    if (rc == 0 && (s = sq_stmt(c, Q_CONV_FINISH))) {
        success = result ? json_object_get(result, "success") : NULL;
        sq_bind_text(s, 1, id);
        sqlite3_bind_int64(s, 2, now);
        sq_bind_text(s, 3, json_is_boolean(success) ? (json_is_true(success) ? "true" : "false")
                                                 : "null");
        if (sqlite3_step(s) != SQLITE_DONE)
            rc = sq_fail_db(c->db, "closing conversations");
        sq_done(s);
    }
    free(worker);
    if (rc == 0 && end->claim_next) {
        struct task *t = NULL;
        int crc = claim_in(c, end->claim_next, &t);
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
        if (sq_load_task(c, Q_TASK_BY_ID, id, &t) == ERR_NOTFOUND)
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
    int rc;

    memset(out, 0, sizeof(*out));
    if (!c)
        return ERR_STORE;
    /* Tasks of silent workers fail first, while the workers still read as alive. */
    rc = sq_run_update(c,
                    "UPDATE tasks SET status = 'failed', completed_at = ?2, updated_at = ?2, "
                    "error = 'worker ' || worker_id || ' stopped sending heartbeats (silent "
                    "for more than ' || (?3 / 1000000) || ' s); the run was lost' WHERE status "
                    "= 'running' AND worker_id IN (SELECT id FROM workers WHERE status != "
                    "'offline' AND last_heartbeat < ?2 - ?3)",
                    NULL, now, heartbeat_timeout_us, &out->tasks_failed);
    if (rc == 0)
        rc = sq_run_update(c, "UPDATE workers SET tasks_failed = tasks_failed + (SELECT count(*) "
                           "FROM tasks t WHERE t.id = workers.current_task_id AND t.status = "
                           "'failed'), status = 'offline', current_task_id = NULL WHERE status "
                           "!= 'offline' AND last_heartbeat < ?2 - ?3",
                        NULL, now, heartbeat_timeout_us, &out->workers_offline);
    /* A running task past its deadline by more than the heartbeat timeout has no
     * worker enforcing it (the worker's own timer fires first when it is alive). */
    if (rc == 0)
        rc = sq_run_update(c,
                        "UPDATE tasks SET status = 'timeout', completed_at = ?2, updated_at = "
                        "?2, error = 'timed out after ' || timeout_seconds || ' s; its worker did "
                        "not stop it in time' WHERE status = 'running' AND deadline_at < ?2 - ?3",
                        NULL, now, heartbeat_timeout_us, &out->tasks_timed_out);
    return sq_writer_end(ss, rc);
}

int sq_recover(struct store *st, const char *name_prefix, int64_t now, int *n_failed)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    int rc;

    *n_failed = 0;
    if (!c)
        return ERR_STORE;
    rc = sq_run_update(c,
                    "UPDATE tasks SET status = 'failed', completed_at = ?2, updated_at = ?2, "
                    "error = 'the server restarted while internal worker ' || worker_id || ' "
                    "was running this task; the run was lost' WHERE status = 'running' AND "
                    "worker_id IN (SELECT id FROM workers WHERE name_prefix = ?1)",
                    name_prefix, now, 0, n_failed);
    if (rc == 0)
        rc = sq_run_update(c, "UPDATE workers SET status = 'offline', current_task_id = NULL "
                           "WHERE name_prefix = ?1", name_prefix, now, 0, NULL);
    return sq_writer_end(ss, rc);
}
