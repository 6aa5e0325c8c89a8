/* store/sqlite/tasks: insert, read, list and cancel tasks; leases and state counts. */
#include "store/sqlite/sqlite_int.h"
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

static const struct sq_query task_q[T_N] = {
    [T_INSERT] = {"inserting a task",
                  "INSERT INTO tasks (" TASK_INSERT_COLS ", max_retries, experiment_id, slot) "
                  "VALUES (?1,?2,'pending',?3,?4,?5,?6,?7,?8,?9,NULL,NULL,NULL,NULL,?10,?11,?12,"
                  "?12,NULL,NULL,NULL,?13,?14,?15)"},
    [T_BY_ID] = {"loading a task", "SELECT " TASK_COLS " FROM tasks WHERE id = ?1"},
    [T_BY_KEY] = {"loading a task", "SELECT " TASK_COLS " FROM tasks WHERE idempotency_key = ?1"},
    [T_CANCEL] = {"cancelling a task",
                  "UPDATE tasks SET status = 'cancelled', completed_at = ?2, updated_at = ?2, "
                  "error = " RULE_ERR_CANCELLED " WHERE id = ?1 AND status IN ('pending', "
                  "'running') RETURNING " TASK_COLS},
    [T_LEASE] = {"reading a lease", "SELECT status, lease_token FROM tasks WHERE id = ?1"},
    [T_COUNTS] = {"stats", "SELECT status, n FROM task_counts"},
    [T_AVERAGES] = {"stats",
                    "SELECT avg(started_at - created_at) / 1e6, avg(CASE WHEN completed_at IS NOT "
                    "NULL THEN completed_at - started_at END) / 1e6 FROM tasks WHERE started_at "
                    "IS NOT NULL"},
};

int sq_load_task(struct conn *c, bool by_key, const char *key, struct task **out)
{
    return sq_take(c, &task_q[by_key ? T_BY_KEY : T_BY_ID], &DB_T(key), 1, rows_take_task, out);
}

int sq_insert_task(struct conn *c, const struct task *t)
{
    const struct db_arg args[15] = {
        DB_T(t->id), DB_T(t->problem_id), DB_I(t->priority), DB_T(t->backend_type),
        DB_T(t->mode), DB_J(t->parameters), DB_J(t->metadata), DB_T(t->callback_url),
        DB_T(t->idempotency_key), DB_I(t->max_steps), DB_I(t->timeout_seconds),
        DB_I(t->created_at), DB_I(t->max_retries), DB_T(t->experiment_id), DB_J(t->slot)};

    return sq_run(c, &task_q[T_INSERT], args, 15, NULL);
}

/* The context of insert's body. */
struct insert {
    struct task *t;
    struct task **existing;
};

static int insert(struct conn *c, void *ctx)
{
    struct insert *x = ctx;
    int rc;

    if (x->t->idempotency_key) {
        rc = sq_load_task(c, true, x->t->idempotency_key, x->existing);
        if (rc != ERR_NOTFOUND)
            return rc; /* a known key (0), or the error */
    }
    return sq_insert_task(c, x->t);
}

int sq_task_insert(struct store *st, struct task *t, struct task **existing)
{
    struct insert x = {t, existing};
    int rc;

    *existing = NULL;
    rc = sq_in_write(st, insert, &x);
    if (rc < 0) {
        task_free(*existing); /* read, but the transaction failed */
        *existing = NULL;
    }
    return rc;
}

int sq_task_get(struct store *st, const char *id, struct task **out)
{
    return sq_read_with(st, &task_q[T_BY_ID], &DB_T(id), 1, rows_take_task, out);
}

/* The WHERE of a task filter; its parameters are numbered as filter_args places them
 * (?6 and ?7 are the page's limit and offset). */
static void filter_where(const struct task_filter *f, char *where, size_t cap)
{
    snprintf(where, cap, "WHERE 1=1%s%s%s%s%s%s%s", f->status >= 0 ? " AND status = ?1" : "",
             f->problem_id ? " AND problem_id = ?2" : "",
             f->worker_id ? " AND worker_id = ?3" : "", f->since ? " AND created_at >= ?4" : "",
             f->until ? " AND created_at < ?5" : "", f->after_seq ? " AND seq > ?8" : "",
             f->experiment_id ? " AND experiment_id = ?9 AND slot_current" : "");
}

/* Every value a list statement may use, at its number; a statement leaves out what
 * it does not use, and binding those is harmless. */
static void filter_args(const struct task_filter *f, struct db_arg a[9])
{
    a[0] = DB_T(f->status >= 0 ? task_status_name((enum task_status)f->status) : NULL);
    a[1] = DB_T(f->problem_id);
    a[2] = DB_T(f->worker_id);
    a[3] = DB_I(f->since);
    a[4] = DB_I(f->until);
    a[5] = DB_I(f->limit);
    a[6] = DB_I(f->offset);
    a[7] = DB_I(f->after_seq);
    a[8] = DB_T(f->experiment_id);
}

static int list_total(struct conn *c, const struct task_filter *f, const char *where,
                      const struct db_arg *args, int64_t *total)
{
    char sql[1024];
    struct rows_ints x = {.n = 1};
    int rc;

    /* Filtered by state at most: the kept counts answer without a scan. */
    if (!f->problem_id && !f->worker_id && !f->since && !f->until && !f->after_seq &&
        !f->experiment_id)
        snprintf(sql, sizeof(sql), "SELECT COALESCE(sum(n), 0) FROM task_counts%s",
                 f->status >= 0 ? " WHERE status = ?1" : "");
    else
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM tasks %s", where);
    rc = sq_take_sql(c, "listing tasks", sql, args, 9, rows_take_ints, &x);
    if (rc == 0)
        *total = x.v[0];
    return rc;
}

int sq_task_list(struct store *st, const struct task_filter *f, struct task_page *out)
{
    char where[512], sql[1024];
    struct db_arg args[9];
    struct rd r = sq_rd_get(st);
    int rc = 0;

    memset(out, 0, sizeof(*out));
    filter_where(f, where, sizeof(where));
    filter_args(f, args);
    snprintf(sql, sizeof(sql), "SELECT " TASK_COLS " FROM tasks %s ORDER BY seq %s "
             "LIMIT ?6 OFFSET ?7", where, f->oldest_first ? "ASC" : "DESC");
    if (!f->no_total)
        rc = list_total(r.c, f, where, args, &out->total);
    if (rc == 0)
        rc = sq_take_sql(r.c, "listing tasks", sql, args, 9, rows_take_tasks, out);
    sq_rd_put(&r);
    if (rc < 0)
        store_task_page_reset(out);
    return rc;
}

/* The context of cancel's body. */
struct cancel {
    const char *id;
    int64_t now;
    struct task **out;
};

static int cancel(struct conn *c, void *ctx)
{
    struct cancel *x = ctx;
    int rc = sq_take(c, &task_q[T_CANCEL], (struct db_arg[]){DB_T(x->id), DB_I(x->now)}, 2,
                     rows_take_task, x->out);

    if (rc == ERR_NOTFOUND) {
        /* Terminal already (409) or no such task (404)? */
        rc = sq_load_task(c, false, x->id, x->out);
        if (rc == 0)
            rc = ERR_CONFLICT;
    }
    /* NOTFOUND and CONFLICT wrote nothing: the rollback is harmless and rc stays. */
    return rc;
}

int sq_task_cancel(struct store *st, const char *id, int64_t now, struct task **out)
{
    struct cancel x = {id, now, out};

    return sq_in_write(st, cancel, &x);
}

int sq_task_lease_status(struct store *st, const char *id, const char *lease_token,
                         enum task_status *status)
{
    struct rows_lease l = {.token = lease_token};
    int rc = sq_read_with(st, &task_q[T_LEASE], &DB_T(id), 1, rows_take_lease, &l);

    if (rc == 0 || rc == ERR_FORBIDDEN)
        *status = l.status;
    return rc;
}

int sq_task_stats(struct store *st, bool with_averages, struct task_stats *out)
{
    struct rd r = sq_rd_get(st);
    int rc;

    memset(out, 0, sizeof(*out));
    out->avg_wait_seconds = out->avg_run_seconds = -1;
    rc = sq_take(r.c, &task_q[T_COUNTS], NULL, 0, rows_take_task_counts, out);
    if (rc == 0 && with_averages)
        rc = sq_take(r.c, &task_q[T_AVERAGES], NULL, 0, rows_take_averages, out);
    sq_rd_put(&r);
    return rc;
}
