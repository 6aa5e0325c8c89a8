/* store/pg/tasks: insert, read, list and cancel tasks; leases and state counts. */
#include "store/pg/pg_int.h"
#include "store/rules.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    T_INSERT,
    T_BY_ID,
    T_BY_KEY,
    T_CANCEL,
    T_LEASE,
    T_COUNTS,
    T_AVERAGES,
    T_N
};

static const struct pg_query task_q[T_N] = {
    [T_INSERT] = {"inserting a task",
                  "INSERT INTO tasks (id, problem_id, status, priority, "
                  "backend_type, mode, parameters, metadata, callback_url, idempotency_key, "
                  "max_steps, timeout_seconds, created_at, updated_at, max_retries) VALUES ($1, "
                  "$2, 'pending', $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9, $10, $11, te_ts($12), "
                  "te_ts($12), $13) ON CONFLICT (idempotency_key) DO NOTHING RETURNING seq"},
    [T_BY_ID] = {"loading a task", "SELECT " TASK_COLS " FROM tasks WHERE id = $1"},
    [T_BY_KEY] = {"loading a task", "SELECT " TASK_COLS " FROM tasks WHERE idempotency_key = $1"},
    [T_CANCEL] = {"cancelling a task",
                  "UPDATE tasks SET status = 'cancelled', completed_at = te_ts($2), updated_at "
                  "= te_ts($2), error = " RULE_ERR_CANCELLED " WHERE id = $1 AND status IN "
                  "('pending', 'running') RETURNING " TASK_COLS},
    [T_LEASE] = {"reading a lease", "SELECT status, lease_token FROM tasks WHERE id = $1"},
    [T_COUNTS] = {"stats", "SELECT status, sum(n) FROM task_counts GROUP BY status"},
    [T_AVERAGES] = {"stats",
                    "SELECT extract(epoch FROM avg(started_at - created_at)), extract(epoch "
                    "FROM avg(completed_at - started_at)) FROM tasks WHERE started_at IS NOT "
                    "NULL"},
};

int pg_load_task(struct pgconn *pc, bool by_key, const char *key, struct task **out)
{
    const char *v[1] = {key};

    return pg_take(pc, &task_q[by_key ? T_BY_KEY : T_BY_ID], 1, v, rows_take_task, out);
}

int pg_task_insert(struct store *st, struct task *t, struct task **existing)
{
    struct pgconn *pc = pg_conn_get(P(st));
    struct num n1, n2, n3, n4, n5;
    bool ok = true;
    char *params = pg_json_text(t->parameters, &ok), *meta = pg_json_text(t->metadata, &ok);
    const char *v[13] = {t->id, t->problem_id, num(&n1, t->priority), t->backend_type, t->mode,
                         params, meta, t->callback_url, t->idempotency_key,
                         num(&n2, t->max_steps), num(&n3, t->timeout_seconds),
                         num(&n4, t->created_at), num(&n5, t->max_retries)};
    struct pg_cursor cur;
    int rc = ERR_NOMEM;

    *existing = NULL;
    if (ok) {
        rc = pg_open_q(&cur, pc, &task_q[T_INSERT], 13, v);
        if (rc == 0 && PQntuples(cur.r) == 0 && t->idempotency_key)
            rc = pg_load_task(pc, true, t->idempotency_key, existing); /* a known key */
        else if (rc == 0)
            pg_tasks_queued(P(st)); /* committed: other servers' workers may claim it */
        rc = pg_end(&cur, rc);
    }
    free(params);
    free(meta);
    pg_conn_put(P(st), pc);
    return rc;
}

int pg_task_get(struct store *st, const char *id, struct task **out)
{
    const char *v[1] = {id};

    return pg_read_with(st, &task_q[T_BY_ID], 1, v, rows_take_task, out);
}

/* A task filter as parameters and the WHERE that uses them, numbered in order. */
struct filter {
    char where[600];
    const char *v[10];
    int n;
    struct num nums[3];
};

/* Adds one condition whose format has one %d, the parameter's number. */
static void filter_add(struct filter *q, const char *fmt, const char *value)
{
    size_t len = strlen(q->where);

    q->v[q->n++] = value;
    snprintf(q->where + len, sizeof(q->where) - len, fmt, q->n);
}

static void filter_build(struct filter *q, const struct task_filter *f)
{
    memset(q, 0, sizeof(*q));
    snprintf(q->where, sizeof(q->where), "WHERE true");
    if (f->status >= 0)
        filter_add(q, " AND status = $%d", task_status_name((enum task_status)f->status));
    if (f->problem_id)
        filter_add(q, " AND problem_id = $%d", f->problem_id);
    if (f->worker_id)
        filter_add(q, " AND worker_id = $%d", f->worker_id);
    if (f->since)
        filter_add(q, " AND created_at >= te_ts($%d)", num(&q->nums[0], f->since));
    if (f->until)
        filter_add(q, " AND created_at < te_ts($%d)", num(&q->nums[1], f->until));
    if (f->after_seq)
        filter_add(q, " AND seq > $%d", num(&q->nums[2], f->after_seq));
    if (f->experiment_id)
        filter_add(q, " AND experiment_id = $%d AND slot_current", f->experiment_id);
}

static int list_total(struct pgconn *pc, const struct task_filter *f, const struct filter *q,
                      int64_t *total)
{
    char sql[1400];
    struct rows_ints x = {.n = 1};
    int rc;

    /* Filtered by state at most: the kept counts answer without a scan. */
    if (!f->problem_id && !f->worker_id && !f->since && !f->until && !f->after_seq &&
        !f->experiment_id)
        snprintf(sql, sizeof(sql), "SELECT COALESCE(sum(n), 0) FROM task_counts%s",
                 f->status >= 0 ? " WHERE status = $1" : "");
    else
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM tasks %s", q->where);
    rc = pg_take_sql(pc, sql, q->n, q->v, rows_take_ints, &x);
    if (rc == 0)
        *total = x.v[0];
    return rc;
}

int pg_task_list(struct store *st, const struct task_filter *f, struct task_page *out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    struct num limit, offset;
    struct filter q;
    char sql[1400];
    int rc = 0;

    memset(out, 0, sizeof(*out));
    filter_build(&q, f);
    if (!f->no_total)
        rc = list_total(pc, f, &q, &out->total);
    q.v[q.n] = num(&limit, f->limit);
    q.v[q.n + 1] = num(&offset, f->offset);
    snprintf(sql, sizeof(sql), "SELECT " TASK_COLS " FROM tasks %s ORDER BY seq %s LIMIT $%d "
             "OFFSET $%d", q.where, f->oldest_first ? "ASC" : "DESC", q.n + 1, q.n + 2);
    if (rc == 0)
        rc = pg_take_sql(pc, sql, q.n + 2, q.v, rows_take_tasks, out);
    pg_conn_put(P(st), pc);
    if (rc < 0)
        store_task_page_reset(out);
    return rc;
}

int pg_task_cancel(struct store *st, const char *id, int64_t now, struct task **out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    struct num n;
    const char *v[2] = {id, num(&n, now)};
    int rc = pg_take(pc, &task_q[T_CANCEL], 2, v, rows_take_task, out);

    if (rc == ERR_NOTFOUND) {
        rc = pg_load_task(pc, false, id, out);
        if (rc == 0)
            rc = ERR_CONFLICT; /* ended already */
    }
    pg_conn_put(P(st), pc);
    return rc;
}

int pg_task_lease_status(struct store *st, const char *id, const char *lease_token,
                         enum task_status *status)
{
    const char *v[1] = {id};
    struct rows_lease l = {.token = lease_token};
    int rc = pg_read_with(st, &task_q[T_LEASE], 1, v, rows_take_lease, &l);

    if (rc == 0 || rc == ERR_FORBIDDEN)
        *status = l.status;
    return rc;
}

int pg_task_stats(struct store *st, bool with_averages, struct task_stats *out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    int rc;

    memset(out, 0, sizeof(*out));
    out->avg_wait_seconds = out->avg_run_seconds = -1;
    rc = pg_take(pc, &task_q[T_COUNTS], 0, NULL, rows_take_task_counts, out);
    if (rc == 0 && with_averages)
        rc = pg_take(pc, &task_q[T_AVERAGES], 0, NULL, rows_take_averages, out);
    pg_conn_put(P(st), pc);
    return rc;
}
