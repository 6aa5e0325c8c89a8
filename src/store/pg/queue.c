/* store/pg/queue: claim (FOR UPDATE SKIP LOCKED), finish, reap and recover. */
#include "store/pg/pg_int.h"
#include "store/rules.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A lost attempt (its worker went silent, or this server restarted under it) goes back
 * to pending when it has retries left: the attempt is recorded, the next waits
 * RETRY_BASE_SECONDS (base) x 2^(attempt-1), and its worker waits as long again. now and
 * base are the parameters' SQL. */
#define PG_LOST_RETRY(now, base, error)                                                    \
    "status = 'pending', attempts = attempts || jsonb_build_array(jsonb_build_object("      \
    "'attempt', attempt, 'worker_id', worker_id, 'started_at', te_us(started_at), "           \
    "'ended_at', " now ", 'error', " error ", 'error_class', 'infrastructure')), attempt = "  \
    "attempt + 1, worker_id = NULL, lease_token = NULL, started_at = NULL, deadline_at = "   \
    "NULL, retry_at = te_ts(" now " + (" base " << (attempt - 1))), avoid_worker = "          \
    "worker_id, avoid_until = te_ts(" now " + 2 * (" base " << (attempt - 1))), updated_at = " \
    "te_ts(" now ") "

/* The claim's parts, with the parameters' SQL: the next pending task for worker w with
 * the time now, backend type b and supported problems re (one regular expression, or
 * NULL), locked SKIP LOCKED, as CTE next (cond: a further condition); and its lease as
 * CTE claimed, leased with token lease. */
#define PG_NEXT(w, now, b, re, cond)                                                        \
    "next AS MATERIALIZED (SELECT seq FROM tasks WHERE status = 'pending' AND backend_type = " \
    b " AND (" re "::text IS NULL OR problem_id ~ " re "::text) AND (retry_at IS NULL OR "    \
    "retry_at <= te_ts(" now ")) AND (avoid_worker IS NULL OR avoid_worker <> " w " OR "      \
    "avoid_until <= te_ts(" now "))" cond " ORDER BY priority DESC, seq LIMIT 1 FOR UPDATE "    \
    "SKIP LOCKED), "
#define PG_CLAIMED(w, lease, now)                                                          \
    "claimed AS (UPDATE tasks t SET status = 'running', retry_at = NULL, worker_id = " w ", " \
    "lease_token = " lease ", started_at = GREATEST(te_ts(" now "), t.created_at), "          \
    "updated_at = GREATEST(te_ts(" now "), t.created_at), deadline_at = GREATEST(te_ts("     \
    now "), t.created_at) + t.timeout_seconds * interval '1 second' FROM next WHERE t.seq = " \
    "next.seq RETURNING " TASK_COLS_T "), "

/* The end's parts: $1 id, $2 lease, $3 status, $4 result, $5 error, $6 now, $7 success
 * (JSON), $8-$11 log arrays, $12 error class, $13 the time of the next attempt. Its logs
 * (CTE l, kept even when the end is refused; none for a task that does not exist, which
 * is then ERR_NOTFOUND); the task (CTE t, returning its worker);
 * its conversations (CTE c). $13 set: not an end but a retry (the queue's decision):
 * the attempt recorded, the task pending again, its worker asked to wait as long again
 * before it takes it back. */
#define PG_END                                                                              \
    "WITH l AS (INSERT INTO task_logs (task_id, ts, level, message, context, attempt) "       \
    "SELECT $1, te_ts(u.ts), u.level, u.message, u.context::jsonb, a.attempt FROM "          \
    "unnest($8::bigint[], $9::int[], $10::text[], $11::text[]) AS u(ts, level, message, "     \
    "context), (SELECT attempt FROM tasks WHERE id = $1) a), "                               \
    "t AS (UPDATE tasks SET status = CASE WHEN $13::bigint IS NULL THEN $3 ELSE 'pending' "   \
    "END, result = CASE WHEN $13::bigint IS NULL THEN $4::jsonb END, error = CASE WHEN "     \
    "$13::bigint IS NULL THEN $5::text END, error_class = CASE WHEN $13::bigint IS NULL THEN " \
    "$12::text END, completed_at = CASE WHEN $13::bigint IS NULL THEN te_ts($6) END, "       \
    "attempts = CASE WHEN $13::bigint IS NULL THEN attempts ELSE attempts || "                \
    "jsonb_build_array(jsonb_build_object('attempt', attempt, 'worker_id', worker_id, "       \
    "'started_at', te_us(started_at), 'ended_at', $6::bigint, 'error', $5::text, "            \
    "'error_class', $12::text)) END, attempt = attempt + CASE WHEN $13::bigint IS NULL THEN " \
    "0 ELSE 1 END, worker_id = CASE WHEN $13::bigint IS NULL THEN worker_id END, "            \
    "lease_token = CASE WHEN $13::bigint IS NULL THEN lease_token END, started_at = CASE "   \
    "WHEN $13::bigint IS NULL THEN started_at END, deadline_at = CASE WHEN $13::bigint IS "   \
    "NULL THEN deadline_at END, retry_at = te_ts($13::bigint), avoid_worker = CASE WHEN "     \
    "$13::bigint IS NOT NULL THEN worker_id END, avoid_until = te_ts(2 * $13::bigint - "      \
    "$6::bigint), updated_at = te_ts($6) WHERE id = $1 AND status = 'running' AND "           \
    "lease_token = $2 RETURNING COALESCE(worker_id, avoid_worker) AS worker_id), "           \
    "c AS (UPDATE llm_conversations SET ended_at = COALESCE(ended_at, te_ts($6)), metadata = " \
    "jsonb_set(metadata, '{success}', $7::jsonb) WHERE task_id = $1 AND EXISTS (SELECT 1 "    \
    "FROM t)), "
/* the end's worker counts */
#define PG_END_COUNTS                                                                       \
    "tasks_completed = tasks_completed + ($3 = 'completed')::int, tasks_failed = "           \
    "tasks_failed + ($3 <> 'completed')::int "

enum {
    Q_CLAIM, Q_FINISH, Q_FINISH_CLAIM, Q_REAP_SILENT, Q_REAP_DEADLINES, Q_RECOVER_RETRY,
    Q_RECOVER_TASKS, Q_RECOVER_WORKERS, Q_N
};

static const struct pg_query queue_q[Q_N] = {
    /* $1 worker, $2 lease, $3 now, $4 backend type, $5 supported problems */
    [Q_CLAIM] = {"claiming",
                 "WITH " PG_NEXT("$1", "$3", "$4", "$5", "") PG_CLAIMED("$1", "$2", "$3")
                 "busy AS (UPDATE workers SET status = 'busy', current_task_id = (SELECT id "
                 "FROM claimed), last_heartbeat = te_ts($3) WHERE id = $1 AND EXISTS (SELECT 1 "
                 "FROM claimed)) SELECT * FROM claimed"},
    [Q_FINISH] = {"finishing a task",
                  PG_END "w AS (UPDATE workers SET status = CASE WHEN workers.status = "
                  "'offline' THEN 'offline' ELSE 'idle' END, current_task_id = NULL, "
                  PG_END_COUNTS "FROM t WHERE workers.id = t.worker_id) "
                  "SELECT (SELECT count(*) FROM t), EXISTS (SELECT 1 FROM tasks WHERE id = $1)"},
    /* The end and the same worker's next claim in one statement (#17: one round trip and
     * one commit a task, where BEGIN, two statements and COMMIT took four): the claim
     * only when the end was taken; the worker row written once, busy with the next task
     * or idle. The ended task is not claimed again here even when it goes back to
     * pending: the statement sees it running. $14 worker, $15 the next lease, $16 now,
     * $17 backend type, $18 supported problems. The claimed task's columns, then the
     * end's outcome (rows changed, the task exists); the task's are NULL when none was
     * claimed. */
    [Q_FINISH_CLAIM] = {"finishing a task",
                        PG_END PG_NEXT("$14", "$16", "$17", "$18", " AND EXISTS (SELECT 1 FROM t)")
                        PG_CLAIMED("$14", "$15", "$16")
                        "w AS (UPDATE workers SET status = CASE WHEN EXISTS (SELECT 1 FROM "
                        "claimed) THEN 'busy' WHEN workers.status = 'offline' THEN 'offline' "
                        "ELSE 'idle' END, current_task_id = (SELECT id FROM claimed), "
                        "last_heartbeat = CASE WHEN EXISTS (SELECT 1 FROM claimed) THEN "
                        "te_ts($16) ELSE last_heartbeat END, " PG_END_COUNTS "FROM t WHERE "
                        "workers.id = t.worker_id) "
                        "SELECT claimed.*, (SELECT count(*) FROM t), EXISTS (SELECT 1 FROM tasks "
                        "WHERE id = $1) FROM (SELECT 1) one LEFT JOIN claimed ON true"},
    /* One statement: silent workers go offline and their tasks fail together; SKIP
     * LOCKED lets servers reaping at the same moment split the work, never double it. */
    [Q_REAP_SILENT] = {"reaping",
                       "WITH silent AS (SELECT id FROM workers WHERE status <> 'offline' AND "
                       "last_heartbeat < te_ts($1::bigint - $2::bigint) FOR UPDATE SKIP "
                       "LOCKED), retried AS (UPDATE tasks SET " PG_LOST_RETRY("$1::bigint",
                       "$3::bigint", RULE_ERR_SILENT("$2::bigint")) "WHERE status = 'running' "
                       "AND attempt <= max_retries AND worker_id IN (SELECT id FROM silent) "
                       "RETURNING avoid_worker AS worker_id), failed AS (UPDATE tasks SET status "
                       "= 'failed', completed_at = te_ts($1), updated_at = te_ts($1), error = "
                       RULE_ERR_SILENT("$2::bigint") ", error_class = 'infrastructure' WHERE "
                       "status = 'running' AND attempt > max_retries AND worker_id IN (SELECT id "
                       "FROM silent) RETURNING worker_id), off AS (UPDATE workers w SET status = "
                       "'offline', current_task_id = NULL, tasks_failed = w.tasks_failed + "
                       "(SELECT count(*) FROM failed f WHERE f.worker_id = w.id) WHERE w.id IN "
                       "(SELECT id FROM silent) RETURNING w.id) SELECT (SELECT count(*) FROM off), "
                       "(SELECT count(*) FROM failed), (SELECT count(*) FROM retried)"},
    [Q_REAP_DEADLINES] = {"reaping",
                          "UPDATE tasks SET status = 'timeout', completed_at = te_ts($1), "
                          "updated_at = te_ts($1), error = " RULE_ERR_DEADLINE " WHERE status = "
                          "'running' AND deadline_at < te_ts($1::bigint - $2::bigint)"},
    [Q_RECOVER_RETRY] = {"recovering",
                         "UPDATE tasks SET " PG_LOST_RETRY("$2::bigint", "$3::bigint",
                         RULE_ERR_RESTARTED) "WHERE status = 'running' AND attempt <= max_retries "
                         "AND worker_id IN (SELECT id FROM workers WHERE name_prefix = $1)"},
    [Q_RECOVER_TASKS] = {"recovering",
                         "UPDATE tasks SET status = 'failed', completed_at = te_ts($2), "
                         "updated_at = te_ts($2), error = " RULE_ERR_RESTARTED ", error_class = "
                         "'infrastructure' WHERE status = 'running' AND worker_id IN (SELECT id "
                         "FROM workers WHERE name_prefix = $1)"},
    [Q_RECOVER_WORKERS] = {"recovering",
                           "UPDATE workers SET status = 'offline', current_task_id = NULL WHERE "
                           "name_prefix = $1"},
};

/* The claim on pc: *out the claimed task (caller frees), or NULL when none waits. */
static int claim_on(struct pgconn *pc, const struct claim_req *req, struct task **out)
{
    struct num n;
    char *re = NULL;
    int rc = rules_globs_regex(req->patterns, req->n_patterns, &re);
    const char *v[5] = {req->worker_id, req->lease_token, num(&n, req->now), req->backend_type,
                        re};

    *out = NULL;
    if (rc == 0)
        rc = pg_take(pc, &queue_q[Q_CLAIM], 5, v, rows_take_task, out);
    free(re);
    return rc == ERR_NOTFOUND ? 0 : rc;
}

int pg_task_claim(struct store *st, const struct claim_req *req, struct task **out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    struct task *t = NULL;
    int rc = claim_on(pc, req, &t);

    pg_conn_put(P(st), pc);
    if (rc == 0 && !t)
        rc = ERR_NOTFOUND;
    if (rc == 0)
        *out = t;
    return rc;
}

/* The end on pc, with end->claim_next the next claim in the same statement (*next the
 * claimed task, caller frees, or NULL). 0, ERR_CONFLICT (lease not held) or ERR_NOTFOUND
 * (no such task); a refused end still stores its logs and claims nothing. */
static int finish_on(struct pgconn *pc, const char *id, const char *lease_token,
                     const struct task_end *end, struct task **next)
{
    const struct claim_req *cn = end->claim_next;
    struct log_arrays a;
    struct num n, r, cnow;
    struct pg_cursor cur;
    bool ok = true;
    char *res = pg_json_text(end->result, &ok), *re = NULL;
    json_t *success = end->result ? json_object_get(end->result, "success") : NULL;
    int rc = pg_log_arrays_build(&a, end->logs, end->n_logs);

    if (rc == 0 && cn)
        rc = rules_globs_regex(cn->patterns, cn->n_patterns, &re);
    if (rc == 0 && ok) {
        const char *v[18] = {id, lease_token, task_status_name(end->status), res, end->error,
                             num(&n, end->now),
                             json_is_boolean(success) ? (json_is_true(success) ? "true" : "false")
                                                      : "null",
                             a.ts.data, a.lv.data, a.msg.data, a.ctx.data,
                             task_error_class_name(end->error_class),
                             end->retry_at ? num(&r, end->retry_at) : NULL,
                             cn ? cn->worker_id : NULL, cn ? cn->lease_token : NULL,
                             cn ? num(&cnow, cn->now) : NULL, cn ? cn->backend_type : NULL, re};
        const struct store_row *row = &cur.base.row;
        int outcome = 0;

        rc = pg_open_q(&cur, pc, &queue_q[cn ? Q_FINISH_CLAIM : Q_FINISH], cn ? 18 : 13, v);
        if (rc == 0)
            rc = rows_one(&cur.base);
        if (rc == 0)
            outcome = PQnfields(cur.r) - 2; /* the end's columns come last */
        if (rc == 0 && row->ops->i64(row, outcome) != 1)
            rc = row->ops->boolean(row, outcome + 1) ? ERR_CONFLICT : ERR_NOTFOUND;
        if (rc == 0 && cn && !row->ops->is_null(row, 0)) {
            *next = rows_task(row);
            if (!*next)
                rc = ERR_NOMEM;
        }
        rc = pg_end(&cur, rc);
    } else if (rc == 0) {
        rc = ERR_NOMEM;
    }
    pg_log_arrays_reset(&a);
    free(res);
    free(re);
    return rc;
}

int pg_task_finish(struct store *st, const char *id, const char *lease_token,
                   const struct task_end *end)
{
    struct pgconn *pc = pg_conn_get(P(st));
    struct task *next = NULL;
    int rc = finish_on(pc, id, lease_token, end, &next);

    pg_conn_put(P(st), pc);
    if (rc == 0 && next)
        *end->next = next;
    else
        task_free(next);
    return rc;
}

int pg_reap(struct store *st, int64_t now, int64_t heartbeat_timeout_us, int64_t retry_base_us,
            struct reap_result *out)
{
    struct num a, b, c;
    const char *v[3] = {num(&a, now), num(&b, heartbeat_timeout_us), num(&c, retry_base_us)};
    struct rows_ints x = {.n = 3};
    int rc = pg_read_with(st, &queue_q[Q_REAP_SILENT], 3, v, rows_take_ints, &x);

    memset(out, 0, sizeof(*out));
    if (rc == 0) {
        out->workers_offline = (int)x.v[0];
        out->tasks_failed = (int)x.v[1];
        out->tasks_retried = (int)x.v[2];
        rc = pg_write(st, &queue_q[Q_REAP_DEADLINES], 2, v, &out->tasks_timed_out);
    }
    return rc;
}

int pg_recover(struct store *st, const char *name_prefix, int64_t now, int64_t retry_base_us,
               int *n_failed)
{
    struct num a, b;
    const char *v[3] = {name_prefix, num(&a, now), num(&b, retry_base_us)};
    int retried = 0, rc;

    *n_failed = 0;
    rc = pg_write(st, &queue_q[Q_RECOVER_RETRY], 3, v, &retried);
    if (rc == 0)
        rc = pg_write(st, &queue_q[Q_RECOVER_TASKS], 2, v, n_failed);
    *n_failed += retried;
    if (rc == 0)
        rc = pg_write(st, &queue_q[Q_RECOVER_WORKERS], 1, v, NULL);
    return rc;
}
