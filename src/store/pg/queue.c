/* store/pg/queue: claim (FOR UPDATE SKIP LOCKED), finish, reap and recover. */
#include "store/pg/pg_int.h"
#include "store/rules.h"
#include "core/batcher.h"
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

/* The claim's parts, with the parameters' SQL: the next pending tasks (lim of them) for
 * workers none of whom the task avoids (avoided: true when the task's avoid_worker is
 * one of them) with the time now, backend type b and supported problems re (one regular
 * expression, or NULL), locked SKIP LOCKED, as CTE next (cond: a further condition); and
 * their leases as CTE claimed: FROM from (which names next's rows and, per row, the
 * worker w, its lease and now), returning the task's columns and ret. */
#define PG_NEXT(avoided, now, b, re, cond, lim)                                             \
    "next AS MATERIALIZED (SELECT seq, priority FROM tasks WHERE status = 'pending' AND "    \
    "backend_type = " b " AND (" re "::text IS NULL OR problem_id ~ " re "::text) AND "        \
    "(retry_at IS NULL OR retry_at <= te_ts(" now ")) AND (avoid_worker IS NULL OR NOT ("    \
    avoided ") OR avoid_until <= te_ts(" now "))" cond " ORDER BY priority DESC, seq LIMIT "   \
    lim " FOR UPDATE SKIP LOCKED), "
#define PG_CLAIMED(w, lease, now, from, ret)                                                \
    "claimed AS (UPDATE tasks t SET status = 'running', retry_at = NULL, worker_id = " w ", " \
    "lease_token = " lease ", started_at = GREATEST(te_ts(" now "), t.created_at), "          \
    "updated_at = GREATEST(te_ts(" now "), t.created_at), deadline_at = GREATEST(te_ts("     \
    now "), t.created_at) + t.timeout_seconds * interval '1 second' FROM " from " RETURNING " \
    TASK_COLS_T ret "), "

/* An end's new values of the task, with the parameters' SQL: status st, result res
 * (JSON text), error err, error class cls, the time now, and retry the time of the next
 * attempt, NULL for an end: when set, not an end but a retry (the queue's decision):
 * the attempt recorded, the task pending again, its worker asked to wait as long again
 * before it takes it back. */
#define PG_END_SET(st, res, err, cls, now, retry)                                           \
    "status = CASE WHEN " retry " IS NULL THEN " st " ELSE 'pending' END, result = CASE "   \
    "WHEN " retry " IS NULL THEN (" res ")::jsonb END, error = CASE WHEN " retry " IS NULL "  \
    "THEN " err " END, error_class = CASE WHEN " retry " IS NULL THEN " cls " END, "          \
    "completed_at = CASE WHEN " retry " IS NULL THEN te_ts(" now ") END, attempts = CASE "   \
    "WHEN " retry " IS NULL THEN attempts ELSE attempts || jsonb_build_array("               \
    "jsonb_build_object('attempt', attempt, 'worker_id', worker_id, 'started_at', "          \
    "te_us(started_at), 'ended_at', " now ", 'error', " err ", 'error_class', " cls ")) "     \
    "END, attempt = attempt + CASE WHEN " retry " IS NULL THEN 0 ELSE 1 END, worker_id = "   \
    "CASE WHEN " retry " IS NULL THEN worker_id END, lease_token = CASE WHEN " retry " IS "   \
    "NULL THEN lease_token END, started_at = CASE WHEN " retry " IS NULL THEN started_at "   \
    "END, deadline_at = CASE WHEN " retry " IS NULL THEN deadline_at END, retry_at = "       \
    "te_ts(" retry "), avoid_worker = CASE WHEN " retry " IS NOT NULL THEN worker_id END, "  \
    "avoid_until = te_ts(2 * " retry " - " now "), updated_at = te_ts(" now ") "

/* The end's parts: $1 id, $2 lease, $3 status, $4 result, $5 error, $6 now, $7 success
 * (JSON), $8-$11 log arrays, $12 error class, $13 the time of the next attempt (see
 * PG_END_SET). Its logs (CTE l, kept even when the end is refused; none for a task that
 * does not exist, which is then ERR_NOTFOUND); the task (CTE t, returning its worker);
 * its conversations (CTE c). */
#define PG_END                                                                              \
    "WITH l AS (INSERT INTO task_logs (task_id, ts, level, message, context, attempt) "       \
    "SELECT $1, te_ts(u.ts), u.level, u.message, u.context::jsonb, a.attempt FROM "          \
    "unnest($8::bigint[], $9::int[], $10::text[], $11::text[]) AS u(ts, level, message, "     \
    "context), (SELECT attempt FROM tasks WHERE id = $1) a), "                               \
    "t AS (UPDATE tasks SET " PG_END_SET("$3", "$4", "$5::text", "$12::text", "$6::bigint",  \
                                         "$13::bigint")                                      \
    "WHERE id = $1 AND status = 'running' AND lease_token = $2 RETURNING "                   \
    "COALESCE(worker_id, avoid_worker) AS worker_id), "                                      \
    "c AS (UPDATE llm_conversations SET ended_at = COALESCE(ended_at, te_ts($6)), metadata = " \
    "jsonb_set(metadata, '{success}', $7::jsonb) WHERE task_id = $1 AND EXISTS (SELECT 1 "    \
    "FROM t)), "
/* the end's worker counts, for the end's status st */
#define PG_END_COUNTS(st)                                                                   \
    "tasks_completed = workers.tasks_completed + (" st " = 'completed')::int, tasks_failed = " \
    "workers.tasks_failed + (" st " <> 'completed')::int "

enum {
    Q_CLAIM, Q_FINISH, Q_FINISH_CLAIM, Q_FINISH_CLAIM_MANY, Q_REAP_SILENT, Q_REAP_DEADLINES,
    Q_RECOVER_RETRY,
    Q_RECOVER_TASKS, Q_RECOVER_WORKERS, Q_N
};

static const struct pg_query queue_q[Q_N] = {
    /* $1 worker, $2 lease, $3 now, $4 backend type, $5 supported problems */
    [Q_CLAIM] = {"claiming",
                 "WITH " PG_NEXT("avoid_worker = $1", "$3", "$4", "$5", "", "1")
                 PG_CLAIMED("$1", "$2", "$3", "next WHERE t.seq = next.seq", "")
                 "busy AS (UPDATE workers SET status = 'busy', current_task_id = (SELECT id "
                 "FROM claimed), last_heartbeat = te_ts($3) WHERE id = $1 AND EXISTS (SELECT 1 "
                 "FROM claimed)) SELECT * FROM claimed"},
    [Q_FINISH] = {"finishing a task",
                  PG_END "w AS (UPDATE workers SET status = CASE WHEN workers.status = "
                  "'offline' THEN 'offline' ELSE 'idle' END, current_task_id = NULL, "
                  PG_END_COUNTS("$3") "FROM t WHERE workers.id = t.worker_id) "
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
                        PG_END PG_NEXT("avoid_worker = $14", "$16", "$17", "$18",
                                       " AND EXISTS (SELECT 1 FROM t)", "1")
                        PG_CLAIMED("$14", "$15", "$16", "next WHERE t.seq = next.seq", "")
                        "w AS (UPDATE workers SET status = CASE WHEN EXISTS (SELECT 1 FROM "
                        "claimed) THEN 'busy' WHEN workers.status = 'offline' THEN 'offline' "
                        "ELSE 'idle' END, current_task_id = (SELECT id FROM claimed), "
                        "last_heartbeat = CASE WHEN EXISTS (SELECT 1 FROM claimed) THEN "
                        "te_ts($16) ELSE last_heartbeat END, " PG_END_COUNTS("$3") "FROM t WHERE "
                        "workers.id = t.worker_id) "
                        "SELECT claimed.*, (SELECT count(*) FROM t), EXISTS (SELECT 1 FROM tasks "
                        "WHERE id = $1) FROM (SELECT 1) one LEFT JOIN claimed ON true"},
    /* Q_FINISH_CLAIM for several workers at once (#17: the statement, its triggers and
     * its commit once for all). An element of each array per end, in the order of the
     * ends: $1 id, $2 lease, $3 status, $4 result, $5 error, $6 now, $7 success, $8 error
     * class, $9 retry (see PG_END_SET), $10 worker, $11 its next lease; the log lines'
     * $12 end (its position, from 1), $13-$16 as Q_FINISH's; $17 backend type, $18
     * supported problems and $19 now, of the claims. The ends whose task is running
     * under their lease are taken (CTE lk). Each row is found by its id: OFFSET 0 keeps
     * the state's test out of the lookup, or the planner, which sees few running tasks,
     * walks the state index through every dead 'running' entry since the last vacuum,
     * as it did on a queue just filled (a drain at 1,800 tasks/s instead of 2,500).
     * Each row is locked SKIP LOCKED, so this statement never waits on a row another
     * holds, and never holds two rows another waits on in the opposite order; an end not
     * taken goes once more in the next batch, then alone, which gives its answer and
     * stores its logs. As many pending tasks as ends taken are claimed, the first for
     * the first end's worker and so on; a task that asks to avoid one of the group's
     * workers waits for a claim of another. A row per end, in order: the task claimed
     * for its worker (NULL columns when none), then 1 when the end was taken. */
    [Q_FINISH_CLAIM_MANY] = {"finishing tasks",
        "WITH u AS MATERIALIZED (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], "
        "$4::text[], $5::text[], $6::bigint[], $7::text[], $8::text[], $9::bigint[], "
        "$10::text[], $11::text[]) WITH ORDINALITY AS u(e_id, e_lease, e_status, e_result, "
        "e_error, e_now, e_success, e_class, e_retry, e_worker, e_next_lease, n)), "
        "lk AS MATERIALIZED (SELECT x.seq, u.n FROM u CROSS JOIN LATERAL (SELECT seq, status, "
        "lease_token FROM tasks WHERE id = u.e_id OFFSET 0 FOR UPDATE SKIP LOCKED) x WHERE "
        "x.status = 'running' AND x.lease_token = u.e_lease), "
        "l AS (INSERT INTO task_logs (task_id, ts, level, message, context, attempt) SELECT "
        "u.e_id, te_ts(g.ts), g.level, g.message, g.context::jsonb, a.attempt FROM "
        "unnest($12::bigint[], $13::bigint[], $14::int[], $15::text[], $16::text[]) WITH "
        "ORDINALITY AS g(n, ts, level, message, context, o) JOIN lk USING (n) JOIN u USING "
        "(n) JOIN tasks a ON a.seq = lk.seq ORDER BY g.o), "
        "t AS (UPDATE tasks SET " PG_END_SET("u.e_status", "u.e_result", "u.e_error",
                                             "u.e_class", "u.e_now", "u.e_retry")
        "FROM lk JOIN u USING (n) WHERE tasks.seq = lk.seq RETURNING u.n, "
        "COALESCE(tasks.worker_id, tasks.avoid_worker) AS worker_id), "
        "c AS (UPDATE llm_conversations lc SET ended_at = COALESCE(lc.ended_at, "
        "te_ts(u.e_now)), metadata = jsonb_set(lc.metadata, '{success}', u.e_success::jsonb) "
        "FROM lk JOIN u USING (n) WHERE lc.task_id = u.e_id), "
        "want AS (SELECT n, u.e_worker, u.e_next_lease, u.e_now, row_number() OVER (ORDER BY "
        "n) AS k FROM lk JOIN u USING (n)), "
        PG_NEXT("avoid_worker = ANY ($10::text[])", "$19", "$17", "$18", "",
                "(SELECT count(*) FROM lk)")
        "nextk AS (SELECT seq, row_number() OVER (ORDER BY priority DESC, seq) AS k FROM "
        "next), "
        PG_CLAIMED("want.e_worker", "want.e_next_lease", "want.e_now",
                   "nextk JOIN want USING (k) WHERE t.seq = nextk.seq", ", want.n AS cn")
        "w AS (UPDATE workers SET status = CASE WHEN cl.cn IS NOT NULL THEN 'busy' WHEN "
        "workers.status = 'offline' THEN 'offline' ELSE 'idle' END, current_task_id = cl.id, "
        "last_heartbeat = CASE WHEN cl.cn IS NOT NULL THEN te_ts(u.e_now) ELSE "
        "workers.last_heartbeat END, " PG_END_COUNTS("u.e_status") "FROM t JOIN u ON u.n = "
        "t.n LEFT JOIN claimed cl ON cl.cn = t.n WHERE workers.id = t.worker_id) "
        "SELECT cl.*, (lk.n IS NOT NULL)::int FROM u LEFT JOIN lk USING (n) LEFT JOIN claimed "
        "cl ON cl.cn = u.n ORDER BY u.n"},
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

/* An end's values as text parameters, in the order of Q_FINISH_CLAIM_MANY's arrays:
 * id, lease, status, result, error, now, success (JSON), error class, retry. */
#define END_VALS 9
struct end_vals {
    struct num now, retry;
    char *res;                 /* owned: end_vals_free */
    const char *v[END_VALS];
};

static int end_vals_make(struct end_vals *ev, const char *id, const char *lease_token,
                         const struct task_end *e)
{
    json_t *success = e->result ? json_object_get(e->result, "success") : NULL;
    bool ok = true;

    ev->res = pg_json_text(e->result, &ok);
    const char *v[END_VALS] = {
        id, lease_token, task_status_name(e->status), ev->res, e->error, num(&ev->now, e->now),
        json_is_boolean(success) ? (json_is_true(success) ? "true" : "false") : "null",
        task_error_class_name(e->error_class), e->retry_at ? num(&ev->retry, e->retry_at) : NULL};
    memcpy(ev->v, v, sizeof(v));
    return ok ? 0 : ERR_NOMEM;
}

static void end_vals_free(struct end_vals *ev)
{
    free(ev->res);
}

/* The end on pc, with end->claim_next the next claim in the same statement (re: its
 * problems as one expression, or NULL; *next the claimed task, caller frees, or NULL).
 * 0, ERR_CONFLICT (lease not held) or ERR_NOTFOUND (no such task); a refused end still
 * stores its logs and claims nothing. */
static int finish_on(struct pgconn *pc, const char *id, const char *lease_token,
                     const struct task_end *end, const char *re, struct task **next)
{
    const struct claim_req *cn = end->claim_next;
    struct log_arrays a;
    struct end_vals ev;
    struct num cnow;
    struct pg_cursor cur;
    int rc = pg_log_arrays_build(&a, end->logs, end->n_logs);

    if (end_vals_make(&ev, id, lease_token, end) < 0 && rc == 0)
        rc = ERR_NOMEM;
    if (rc == 0) {
        const char *v[18] = {ev.v[0], ev.v[1], ev.v[2], ev.v[3], ev.v[4], ev.v[5], ev.v[6],
                             a.ts.data, a.lv.data, a.msg.data, a.ctx.data, ev.v[7], ev.v[8],
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
    }
    pg_log_arrays_reset(&a);
    end_vals_free(&ev);
    return rc;
}

/* ---- internal workers' ends, written together ----
 * An internal worker's end carries its next claim; those made while others are being
 * written go in one statement (Q_FINISH_CLAIM_MANY) (#17: draining a queue, the
 * statement's triggers, executor start-up and commit were half the database's time, once
 * a task; the statement costs about as much for 2 ends as for 8). An end made alone is
 * written at once. Workers that end tasks back to back (short tasks) come back together
 * after each statement, so the next statement waits, at most FINISH_LINGER_US after the
 * last one, for as many as were in flight (core/batcher.h): without it the first back went
 * alone and the rest behind it. A second statement beside one being written only for a
 * full batch: two at a time split the workers into two groups of 2-5, and each
 * statement's claim, begun before the other's commit, locked rows the other had just
 * claimed (below). Measured on the 2-core machine, 8 workers draining 20,000 tasks,
 * alternated: statements of 8, 2,839-3,595 tasks/s, against 2,096-2,415 with two
 * statements at a time of 2-5 (3 writers were worse still, 1,540-2,110).
 *
 * An end not taken because its row was locked goes once more in the next batch: a
 * concurrent claim whose snapshot predates this task's own claim finds the row pending
 * there, and PostgreSQL keeps the lock it took to recheck the newer version even though
 * the row no longer qualifies (held until that claim's commit; a tenth to a fifth of the
 * ends when statements overlapped, next to none now). */
#define FINISH_WRITERS 2
#define FINISH_BATCH_MAX 32
#define FINISH_MIN_BESIDE FINISH_BATCH_MAX
#define FINISH_LINGER_US 500
#define FINISH_AGAIN 2          /* not taken in a batch: once more in the next */

/* One waiting end, on its caller's stack. */
struct pg_finish {
    struct batch_item base;
    const char *id, *lease_token;
    const struct task_end *end; /* with claim_next */
    char *re;                   /* claim_next's problems as one expression (owned), NULL */
    struct task *next;          /* claimed (the caller's once done) */
    int rc;
    int again;                  /* times it was not taken in a batch */
};

static struct pg_finish *finish_of(struct batch_item *it)
{
    return (struct pg_finish *)it;
}

static bool same_str(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* Ends may be written together when their next claims ask for the same tasks. */
static bool finish_joins(const struct batch_item *first, const struct batch_item *item)
{
    const struct pg_finish *a = (const struct pg_finish *)first,
                           *b = (const struct pg_finish *)item;

    return same_str(a->end->claim_next->backend_type, b->end->claim_next->backend_type) &&
           same_str(a->re, b->re);
}

#define FINISH_COLS 11

/* The array literals of Q_FINISH_CLAIM_MANY's $1-$16 for batch, in a (FINISH_COLS of
 * them, then the logs' in logs); *now the latest end's time. */
static int finish_arrays(struct buf *a, struct log_arrays *logs, struct batch_item *batch,
                         int64_t *now)
{
    struct buf *all[FINISH_COLS];
    int rc, n = 0;

    for (int i = 0; i < FINISH_COLS; i++)
        all[i] = &a[i];
    rc = pg_arrays_open(all, FINISH_COLS);
    if (pg_log_arrays_open(logs) < 0 && rc == 0)
        rc = ERR_NOMEM;
    *now = 0;
    for (struct batch_item *it = batch; rc == 0 && it; it = it->next) {
        struct pg_finish *f = finish_of(it);
        const struct task_end *e = f->end;
        struct end_vals ev;
        struct num pos;
        const char *v[FINISH_COLS - END_VALS] = {e->claim_next->worker_id,
                                                 e->claim_next->lease_token};

        rc = end_vals_make(&ev, f->id, f->lease_token, e);
        for (int i = 0; rc == 0 && i < FINISH_COLS; i++) {
            const char *x = i < END_VALS ? ev.v[i] : v[i - END_VALS];

            rc = pg_array_add(&a[i], x ? x : "", !x);
        }
        if (rc == 0)
            rc = pg_log_arrays_add(logs, e->logs, e->n_logs, num(&pos, ++n));
        if (e->now > *now)
            *now = e->now;
        end_vals_free(&ev);
    }
    if (rc == 0)
        rc = pg_arrays_close(all, FINISH_COLS);
    return rc == 0 ? pg_log_arrays_close(logs) : rc;
}

/* f's row of Q_FINISH_CLAIM_MANY: 0 (the end taken; f->next its claim, if any), 1 (not
 * taken) or an error. */
static int take_row(struct pg_cursor *cur, struct pg_finish *f)
{
    const struct store_row *row = &cur->base.row;
    int rc = rows_one(&cur->base);

    if (rc < 0)
        return rc == ERR_NOTFOUND ? ERR_STORE : rc; /* a row per end, always */
    if (row->ops->i64(row, PQnfields(cur->r) - 1) != 1)
        return 1;
    if (!row->ops->is_null(row, 0) && !(f->next = rows_task(row)))
        return ERR_NOMEM; /* as finish_on: the claimed task is the reaper's */
    return 0;
}

/* Several ends on pc in one statement. Those it did not take are written alone, as are
 * all when it failed for a reason other than the connection (a value refused, a
 * deadlock), so each gets the answer it would have had alone. */
static void finish_many(struct pgconn *pc, struct batch_item *batch)
{
    const struct claim_req *cn = finish_of(batch)->end->claim_next;
    struct buf a[FINISH_COLS] = {0};
    struct log_arrays logs = {0};
    struct pg_cursor cur;
    struct num now;
    int64_t latest;
    int rc = finish_arrays(a, &logs, batch, &latest);

    if (rc == 0) {
        const char *v[19] = {a[0].data, a[1].data, a[2].data, a[3].data, a[4].data,
                             a[5].data, a[6].data, a[7].data, a[8].data, a[9].data,
                             a[10].data, logs.own.data, logs.ts.data, logs.lv.data,
                             logs.msg.data, logs.ctx.data, cn->backend_type,
                             finish_of(batch)->re, num(&now, latest)};

        rc = pg_open_q(&cur, pc, &queue_q[Q_FINISH_CLAIM_MANY], 19, v);
        for (struct batch_item *it = batch; rc == 0 && it; it = it->next)
            finish_of(it)->rc = take_row(&cur, finish_of(it));
        int read = pg_end(&cur, rc); /* once run, each row gave its own answer */

        rc = rc < 0 ? read : 0;
    }
    for (int i = 0; i < FINISH_COLS; i++)
        buf_reset(&a[i]);
    pg_log_arrays_reset(&logs);
    for (struct batch_item *it = batch; it; it = it->next) {
        struct pg_finish *f = finish_of(it);

        if (rc < 0 && rc != ERR_STORE && rc != ERR_NOMEM)
            f->rc = rc; /* the connection: the caller tries again */
        else if (rc == 0 && f->rc == 1 && !f->again++)
            f->rc = FINISH_AGAIN;
        else if (rc < 0 || f->rc == 1)
            f->rc = finish_on(pc, f->id, f->lease_token, f->end, f->re, &f->next);
    }
}

/* The batcher's run. */
static void finish_batch(void *ctx, struct batch_item *batch)
{
    struct pg_store *s = ctx;
    struct pgconn *pc = pg_conn_get(s);

    if (!batch->next) {
        struct pg_finish *f = finish_of(batch);

        f->rc = finish_on(pc, f->id, f->lease_token, f->end, f->re, &f->next);
    } else {
        finish_many(pc, batch);
    }
    pg_conn_put(s, pc);
}

void pg_finishes_init(struct pg_store *s)
{
    batcher_init(&s->finishes, FINISH_WRITERS, FINISH_BATCH_MAX, finish_joins, finish_batch,
                 s);
    s->finishes.min_beside = FINISH_MIN_BESIDE;
    s->finishes.linger_us = FINISH_LINGER_US;
}

int pg_task_finish(struct store *st, const char *id, const char *lease_token,
                   const struct task_end *end)
{
    const struct claim_req *cn = end->claim_next;
    struct pg_finish f = {.id = id, .lease_token = lease_token, .end = end};

    if (!cn) {
        struct pgconn *pc = pg_conn_get(P(st));

        f.rc = finish_on(pc, id, lease_token, end, NULL, &f.next);
        pg_conn_put(P(st), pc);
    } else if ((f.rc = rules_globs_regex(cn->patterns, cn->n_patterns, &f.re)) == 0) {
        do
            batcher_do(&P(st)->finishes, &f.base);
        while (f.rc == FINISH_AGAIN);
    }
    free(f.re);
    if (f.rc == 0 && f.next)
        *end->next = f.next;
    else
        task_free(f.next);
    return f.rc;
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
