/* store/tasks: reading, listing and cancelling tasks, leases and state counts, written
 * once for both backends (store/db.h). Inserting a task stays in each backend
 * (sqlite/tasks.c, pg/tasks.c): PostgreSQL inserts, answers a known idempotency key
 * and wakes the workers in one statement; SQLite looks the key up first, inside its
 * write transaction. */
#include "store/db.h"
#include "store/rules.h"
#include "core/err.h"

#include <stdio.h>
#include <string.h>

enum { T_BY_ID, T_BY_KEY, T_CANCEL, T_LEASE, T_COUNTS, T_AVERAGES, T_N };

static const struct db_stmt task_q[T_N] = {
    [T_BY_ID] = {"loading a task", "SELECT " TASK_COLS_SQ " FROM tasks WHERE id = ?1",
                 "SELECT " TASK_COLS_PG " FROM tasks WHERE id = $1"},
    [T_BY_KEY] = {"loading a task",
                  "SELECT " TASK_COLS_SQ " FROM tasks WHERE idempotency_key = ?1",
                  "SELECT " TASK_COLS_PG " FROM tasks WHERE idempotency_key = $1"},
    [T_CANCEL] = {"cancelling a task",
                  "UPDATE tasks SET status = 'cancelled', completed_at = ?2, updated_at = ?2, "
                  "error = " RULE_ERR_CANCELLED " WHERE id = ?1 AND status IN ('pending', "
                  "'running') RETURNING " TASK_COLS_SQ,
                  "UPDATE tasks SET status = 'cancelled', completed_at = te_ts($2), updated_at "
                  "= te_ts($2), error = " RULE_ERR_CANCELLED " WHERE id = $1 AND status IN "
                  "('pending', 'running') RETURNING " TASK_COLS_PG},
    [T_LEASE] = DB_SQL("reading a lease", "SELECT status, lease_token FROM tasks WHERE id = $1"),
    [T_COUNTS] = {"stats", "SELECT status, n FROM task_counts",
                  "SELECT status, sum(n) FROM task_counts GROUP BY status"},
    [T_AVERAGES] = {"stats",
                    "SELECT avg(started_at - created_at) / 1e6, avg(CASE WHEN completed_at IS NOT "
                    "NULL THEN completed_at - started_at END) / 1e6 FROM tasks WHERE started_at "
                    "IS NOT NULL",
                    "SELECT extract(epoch FROM avg(started_at - created_at)), extract(epoch "
                    "FROM avg(completed_at - started_at)) FROM tasks WHERE started_at IS NOT "
                    "NULL"},
};

int db_load_task(struct db_conn *c, bool by_key, const char *key, struct task **out)
{
    return db_take(c, &task_q[by_key ? T_BY_KEY : T_BY_ID], &DB_T(key), 1, rows_take_task, out);
}

int db_task_get(struct store *st, const char *id, struct task **out)
{
    return db_read_with(st, &task_q[T_BY_ID], &DB_T(id), 1, rows_take_task, out);
}

/* A task filter as parameters and the WHERE that uses them in each dialect, numbered
 * $1.. in order. */
struct filter {
    char where_sq[600], where_pg[600];
    struct db_arg args[10];
    int n;
};

/* Adds one condition whose formats (SQLite's, PostgreSQL's) have one %d, the
 * parameter's number. */
static void filter_add(struct filter *q, const char *fmt_sq, const char *fmt_pg,
                       struct db_arg value)
{
    size_t sq = strlen(q->where_sq), pg = strlen(q->where_pg);

    q->args[q->n++] = value;
    snprintf(q->where_sq + sq, sizeof(q->where_sq) - sq, fmt_sq, q->n);
    snprintf(q->where_pg + pg, sizeof(q->where_pg) - pg, fmt_pg, q->n);
}

static void filter_build(struct filter *q, const struct task_filter *f)
{
    memset(q, 0, sizeof(*q));
    snprintf(q->where_sq, sizeof(q->where_sq), "WHERE 1=1");
    snprintf(q->where_pg, sizeof(q->where_pg), "WHERE true");
    if (f->status >= 0)
        filter_add(q, " AND status = $%d", " AND status = $%d",
                   DB_T(task_status_name((enum task_status)f->status)));
    if (f->problem_id)
        filter_add(q, " AND problem_id = $%d", " AND problem_id = $%d", DB_T(f->problem_id));
    if (f->worker_id)
        filter_add(q, " AND worker_id = $%d", " AND worker_id = $%d", DB_T(f->worker_id));
    if (f->since)
        filter_add(q, " AND created_at >= $%d", " AND created_at >= te_ts($%d)", DB_I(f->since));
    if (f->until)
        filter_add(q, " AND created_at < $%d", " AND created_at < te_ts($%d)", DB_I(f->until));
    if (f->after_seq)
        filter_add(q, " AND seq > $%d", " AND seq > $%d", DB_I(f->after_seq));
    if (f->experiment_id)
        filter_add(q, " AND experiment_id = $%d AND slot_current",
                   " AND experiment_id = $%d AND slot_current", DB_T(f->experiment_id));
}

/* The context of list_body. */
struct list {
    const struct task_filter *f;
    struct filter q;
    struct task_page *out;
};

static int list_total(struct db_conn *c, struct list *x)
{
    const struct task_filter *f = x->f;
    char sq[1024], pg[1024];
    struct db_stmt count = {"listing tasks", sq, pg};
    struct rows_ints total = {.n = 1};
    int rc;

    /* Filtered by state at most: the kept counts answer without a scan. */
    if (!f->problem_id && !f->worker_id && !f->since && !f->until && !f->after_seq &&
        !f->experiment_id) {
        snprintf(sq, sizeof(sq), "SELECT COALESCE(sum(n), 0) FROM task_counts%s",
                 f->status >= 0 ? " WHERE status = $1" : "");
        snprintf(pg, sizeof(pg), "%s", sq);
    } else {
        snprintf(sq, sizeof(sq), "SELECT count(*) FROM tasks %s", x->q.where_sq);
        snprintf(pg, sizeof(pg), "SELECT count(*) FROM tasks %s", x->q.where_pg);
    }
    rc = db_take_once(c, &count, x->q.args, x->q.n, rows_take_ints, &total);
    if (rc == 0)
        x->out->total = total.v[0];
    return rc;
}

static int list_body(struct db_conn *c, void *ctx)
{
    struct list *x = ctx;
    const char *order = x->f->oldest_first ? "ASC" : "DESC";
    int n = x->q.n;
    char sq[1400], pg[1400];
    struct db_stmt page = {"listing tasks", sq, pg};
    int rc = x->f->no_total ? 0 : list_total(c, x);

    x->q.args[n] = DB_I(x->f->limit);
    x->q.args[n + 1] = DB_I(x->f->offset);
    snprintf(sq, sizeof(sq), "SELECT " TASK_COLS_SQ " FROM tasks %s ORDER BY seq %s LIMIT $%d "
             "OFFSET $%d", x->q.where_sq, order, n + 1, n + 2);
    snprintf(pg, sizeof(pg), "SELECT " TASK_COLS_PG " FROM tasks %s ORDER BY seq %s LIMIT $%d "
             "OFFSET $%d", x->q.where_pg, order, n + 1, n + 2);
    return rc == 0 ? db_take_once(c, &page, x->q.args, n + 2, rows_take_tasks, x->out) : rc;
}

int db_task_list(struct store *st, const struct task_filter *f, struct task_page *out)
{
    struct list x = {.f = f, .out = out};
    int rc;

    memset(out, 0, sizeof(*out));
    filter_build(&x.q, f);
    rc = db_on_read(st, list_body, &x);
    if (rc < 0)
        store_task_page_reset(out);
    return rc;
}

/* The context of cancel_body. */
struct cancel {
    const char *id;
    int64_t now;
    struct task **out;
};

static int cancel_body(struct db_conn *c, void *ctx)
{
    struct cancel *x = ctx;
    int rc = db_take(c, &task_q[T_CANCEL], (struct db_arg[]){DB_T(x->id), DB_I(x->now)}, 2,
                     rows_take_task, x->out);

    if (rc == ERR_NOTFOUND) {
        /* Terminal already (409) or no such task (404)? */
        rc = db_load_task(c, false, x->id, x->out);
        if (rc == 0)
            rc = ERR_CONFLICT;
    }
    /* NOTFOUND and CONFLICT wrote nothing: a rollback is harmless and rc stays. */
    return rc;
}

int db_task_cancel(struct store *st, const char *id, int64_t now, struct task **out)
{
    struct cancel x = {id, now, out};

    return db_on_write(st, cancel_body, &x);
}

int db_task_lease_status(struct store *st, const char *id, const char *lease_token,
                         enum task_status *status)
{
    struct rows_lease l = {.token = lease_token};
    int rc = db_read_with(st, &task_q[T_LEASE], &DB_T(id), 1, rows_take_lease, &l);

    if (rc == 0 || rc == ERR_FORBIDDEN)
        *status = l.status;
    return rc;
}

/* The context of stats_body. */
struct stats {
    bool with_averages;
    struct task_stats *out;
};

static int stats_body(struct db_conn *c, void *ctx)
{
    struct stats *x = ctx;
    int rc = db_take(c, &task_q[T_COUNTS], NULL, 0, rows_take_task_counts, x->out);

    if (rc == 0 && x->with_averages)
        rc = db_take(c, &task_q[T_AVERAGES], NULL, 0, rows_take_averages, x->out);
    return rc;
}

int db_task_stats(struct store *st, bool with_averages, struct task_stats *out)
{
    struct stats x = {with_averages, out};

    memset(out, 0, sizeof(*out));
    out->avg_wait_seconds = out->avg_run_seconds = -1;
    return db_on_read(st, stats_body, &x);
}
