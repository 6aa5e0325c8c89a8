/* store/pg/queue: claim (FOR UPDATE SKIP LOCKED), finish, reap and recover. */
#include "store/pg/pg_int.h"
#include "store/rules.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    Q_CLAIM,
    Q_FINISH,
    Q_REAP_SILENT,
    Q_REAP_DEADLINES,
    Q_RECOVER_TASKS,
    Q_RECOVER_WORKERS,
    Q_N
};

static const struct pg_query queue_q[Q_N] = {
    /* $5: the supported_problems as one regular expression (store/rules.c), or NULL. */
    [Q_CLAIM] = {"claiming",
                 "WITH next AS MATERIALIZED (SELECT seq FROM tasks WHERE status = 'pending' AND "
                 "backend_type = $4 AND ($5::text IS NULL OR problem_id ~ $5::text) ORDER BY "
                 "priority DESC, seq LIMIT 1 FOR UPDATE SKIP LOCKED), "
                 "claimed AS (UPDATE tasks t SET status = 'running', worker_id = $1, "
                 "lease_token = $2, started_at = GREATEST(te_ts($3), t.created_at), updated_at "
                 "= GREATEST(te_ts($3), t.created_at), deadline_at = GREATEST(te_ts($3), "
                 "t.created_at) + t.timeout_seconds * interval '1 second' FROM next WHERE t.seq "
                 "= next.seq RETURNING " TASK_COLS_T "), "
                 "busy AS (UPDATE workers SET status = 'busy', current_task_id = (SELECT id "
                 "FROM claimed), last_heartbeat = te_ts($3) WHERE id = $1 AND EXISTS (SELECT 1 "
                 "FROM claimed)) SELECT * FROM claimed"},
    [Q_FINISH] = {"finishing a task",
                  "WITH l AS (INSERT INTO task_logs (task_id, ts, level, message, context) "
                  "SELECT $1, te_ts(u.ts), u.level, u.message, u.context::jsonb FROM "
                  "unnest($8::bigint[], $9::int[], $10::text[], $11::text[]) AS u(ts, level, "
                  "message, context)), "
                  "t AS (UPDATE tasks SET status = $3, result = $4::jsonb, error = $5, "
                  "completed_at = te_ts($6), updated_at = te_ts($6) WHERE id = $1 AND status = "
                  "'running' AND lease_token = $2 RETURNING worker_id), "
                  "w AS (UPDATE workers SET status = CASE WHEN workers.status = 'offline' THEN "
                  "'offline' ELSE 'idle' END, current_task_id = NULL, tasks_completed = "
                  "tasks_completed + ($3 = 'completed')::int, tasks_failed = tasks_failed + ($3 "
                  "<> 'completed')::int FROM t WHERE workers.id = t.worker_id), "
                  "c AS (UPDATE llm_conversations SET ended_at = COALESCE(ended_at, te_ts($6)), "
                  "metadata = jsonb_set(metadata, '{success}', $7::jsonb) WHERE task_id = $1 AND "
                  "EXISTS (SELECT 1 FROM t)) "
                  "SELECT (SELECT count(*) FROM t), EXISTS (SELECT 1 FROM tasks WHERE id = $1)"},
    /* One statement: silent workers go offline and their tasks fail together; SKIP
     * LOCKED lets servers reaping at the same moment split the work, never double it. */
    [Q_REAP_SILENT] = {"reaping",
                       "WITH silent AS (SELECT id FROM workers WHERE status <> 'offline' AND "
                       "last_heartbeat < te_ts($1::bigint - $2::bigint) FOR UPDATE SKIP "
                       "LOCKED), failed AS (UPDATE tasks SET status = 'failed', completed_at = "
                       "te_ts($1), updated_at = te_ts($1), error = " RULE_ERR_SILENT("$2::bigint")
                       " WHERE status = 'running' AND worker_id IN (SELECT id FROM silent) "
                       "RETURNING worker_id), off AS (UPDATE workers w SET status = 'offline', "
                       "current_task_id = NULL, tasks_failed = w.tasks_failed + (SELECT "
                       "count(*) FROM failed f WHERE f.worker_id = w.id) WHERE w.id IN (SELECT "
                       "id FROM silent) RETURNING w.id) SELECT (SELECT count(*) FROM off), "
                       "(SELECT count(*) FROM failed)"},
    [Q_REAP_DEADLINES] = {"reaping",
                          "UPDATE tasks SET status = 'timeout', completed_at = te_ts($1), "
                          "updated_at = te_ts($1), error = " RULE_ERR_DEADLINE " WHERE status = "
                          "'running' AND deadline_at < te_ts($1::bigint - $2::bigint)"},
    [Q_RECOVER_TASKS] = {"recovering",
                         "UPDATE tasks SET status = 'failed', completed_at = te_ts($2), "
                         "updated_at = te_ts($2), error = " RULE_ERR_RESTARTED " WHERE status = "
                         "'running' AND worker_id IN (SELECT id FROM workers WHERE name_prefix = "
                         "$1)"},
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

/* The end on pc: 0, ERR_CONFLICT (lease not held) or ERR_NOTFOUND (no such task). */
static int finish_on(struct pgconn *pc, const char *id, const char *lease_token,
                     const struct task_end *end)
{
    struct log_arrays a;
    struct num n;
    struct pg_cursor cur;
    bool ok = true;
    char *res = pg_json_text(end->result, &ok);
    json_t *success = end->result ? json_object_get(end->result, "success") : NULL;
    int rc = pg_log_arrays_build(&a, end->logs, end->n_logs);

    if (rc == 0 && ok) {
        const char *v[11] = {id, lease_token, task_status_name(end->status), res, end->error,
                             num(&n, end->now),
                             json_is_boolean(success) ? (json_is_true(success) ? "true" : "false")
                                                      : "null",
                             a.ts.data, a.lv.data, a.msg.data, a.ctx.data};
        rc = pg_open_q(&cur, pc, &queue_q[Q_FINISH], 11, v);
        if (rc == 0)
            rc = rows_one(&cur.base);
        if (rc == 0 && cur.base.row.ops->i64(&cur.base.row, 0) != 1)
            rc = cur.base.row.ops->boolean(&cur.base.row, 1) ? ERR_CONFLICT : ERR_NOTFOUND;
        rc = pg_end(&cur, rc);
    } else {
        rc = ERR_NOMEM;
    }
    pg_log_arrays_reset(&a);
    free(res);
    return rc;
}

/* The context of finish's body. */
struct finish {
    const char *id, *lease_token;
    const struct task_end *end;
    int refused;                    /* ERR_CONFLICT or ERR_NOTFOUND: the end was refused */
    struct task *next;              /* claimed with the end; freed by the caller on error */
};

/* The end and the next claim, committed together. A refused end still commits (its
 * logs are kept) and is reported through refused. */
static int finish_then_claim(struct pgconn *pc, void *ctx)
{
    struct finish *x = ctx;
    int rc = finish_on(pc, x->id, x->lease_token, x->end);

    if (rc == ERR_CONFLICT || rc == ERR_NOTFOUND) {
        x->refused = rc;
        return 0;
    }
    return rc == 0 ? claim_on(pc, x->end->claim_next, &x->next) : rc;
}

int pg_task_finish(struct store *st, const char *id, const char *lease_token,
                   const struct task_end *end)
{
    struct finish x = {id, lease_token, end, 0, NULL};
    struct pgconn *pc;
    int rc;

    if (!end->claim_next) { /* one statement: one transaction of its own */
        pc = pg_conn_get(P(st));
        rc = finish_on(pc, id, lease_token, end);
        pg_conn_put(P(st), pc);
        return rc;
    }
    rc = pg_in_tx(st, finish_then_claim, &x);
    if (rc == 0 && x.next)
        *end->next = x.next;
    else
        task_free(x.next);
    return rc == 0 ? x.refused : rc;
}

int pg_reap(struct store *st, int64_t now, int64_t heartbeat_timeout_us,
            struct reap_result *out)
{
    struct num a, b;
    const char *v[2] = {num(&a, now), num(&b, heartbeat_timeout_us)};
    struct rows_ints x = {.n = 2};
    int rc = pg_read_with(st, &queue_q[Q_REAP_SILENT], 2, v, rows_take_ints, &x);

    memset(out, 0, sizeof(*out));
    if (rc == 0) {
        out->workers_offline = (int)x.v[0];
        out->tasks_failed = (int)x.v[1];
        rc = pg_write(st, &queue_q[Q_REAP_DEADLINES], 2, v, &out->tasks_timed_out);
    }
    return rc;
}

int pg_recover(struct store *st, const char *name_prefix, int64_t now, int *n_failed)
{
    struct num a;
    const char *v[2] = {name_prefix, num(&a, now)};
    int rc;

    *n_failed = 0;
    rc = pg_write(st, &queue_q[Q_RECOVER_TASKS], 2, v, n_failed);
    if (rc == 0)
        rc = pg_write(st, &queue_q[Q_RECOVER_WORKERS], 1, v, NULL);
    return rc;
}
