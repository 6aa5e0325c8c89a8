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
                  "INSERT INTO tasks (" TASK_INSERT_COLS ") VALUES (?1,?2,'pending',?3,?4,?5,?6,"
                  "?7,?8,?9,NULL,NULL,NULL,NULL,?10,?11,?12,?12,NULL,NULL,NULL)"},
    [T_BY_ID] = {"loading a task", "SELECT " TASK_COLS " FROM tasks WHERE id = ?1"},
    [T_BY_KEY] = {"loading a task", "SELECT " TASK_COLS " FROM tasks WHERE idempotency_key = ?1"},
    [T_CANCEL] = {"cancelling a task",
                  "UPDATE tasks SET status = 'cancelled', completed_at = ?2, updated_at = ?2, "
                  "error = " RULE_ERR_CANCELLED " WHERE id = ?1 AND status IN ('pending', "
                  "'running') RETURNING " TASK_COLS},
    [T_LEASE] = {"reading a lease", "SELECT status, lease_token FROM tasks WHERE id = ?1"},
    [T_COUNTS] = {"stats", "SELECT status, n FROM task_counts"},
    [T_AVERAGES] = {"stats",
                    "SELECT avg(started_at - created_at), avg(CASE WHEN completed_at IS NOT NULL "
                    "THEN completed_at - started_at END) FROM tasks WHERE started_at IS NOT NULL"},
};

/* The task of the first row of cur (0), ERR_NOTFOUND when there is none, or the error. */
static int one_task(struct sq_cursor *cur, struct task **out)
{
    int rc = rows_one(&cur->base);

    if (rc == 0) {
        *out = rows_task(&cur->base.row);
        rc = *out ? 0 : ERR_NOMEM;
    }
    return rc;
}

int sq_load_task(struct conn *c, bool by_key, const char *key, struct task **out)
{
    struct sq_cursor cur;
    int rc = sq_open_q(&cur, c, &task_q[by_key ? T_BY_KEY : T_BY_ID]);

    if (rc == 0) {
        sq_bind_text(cur.s, 1, key);
        rc = one_task(&cur, out);
    }
    return sq_end(&cur, rc);
}

static int insert_row(struct conn *c, const struct task *t)
{
    const int flags = JSON_COMPACT | JSON_ENCODE_ANY;
    char *params = t->parameters ? json_dumps(t->parameters, flags) : NULL;
    char *meta = t->metadata ? json_dumps(t->metadata, flags) : NULL;
    int rc = (t->parameters && !params) || (t->metadata && !meta) ? ERR_NOMEM : 0;

    if (rc == 0)
        rc = sq_run(c, &task_q[T_INSERT],
                    (struct sq_arg[]){SQ_T(t->id), SQ_T(t->problem_id), SQ_I(t->priority),
                                      SQ_T(t->backend_type), SQ_T(t->mode), SQ_T(params),
                                      SQ_T(meta), SQ_T(t->callback_url),
                                      SQ_T(t->idempotency_key), SQ_I(t->max_steps),
                                      SQ_I(t->timeout_seconds), SQ_I(t->created_at)},
                    12, NULL);
    free(params);
    free(meta);
    return rc;
}

int sq_task_insert(struct store *st, struct task *t, struct task **existing)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    int rc;

    if (!c)
        return ERR_STORE;
    *existing = NULL;
    if (t->idempotency_key) {
        rc = sq_load_task(c, true, t->idempotency_key, existing);
        if (rc != ERR_NOTFOUND)
            return sq_writer_end(ss, rc); /* a known key (0), or the error */
    }
    return sq_writer_end(ss, insert_row(c, t));
}

int sq_task_get(struct store *st, const char *id, struct task **out)
{
    struct rd r = sq_rd_get(st);
    int rc = sq_load_task(r.c, false, id, out);

    sq_rd_put(&r);
    return rc;
}

/* The WHERE of a task filter; the parameters are numbered as bind_filter binds them. */
static void filter_where(const struct task_filter *f, char *where, size_t cap)
{
    snprintf(where, cap, "WHERE 1=1%s%s%s%s%s%s", f->status >= 0 ? " AND status = ?1" : "",
             f->problem_id ? " AND problem_id = ?2" : "",
             f->worker_id ? " AND worker_id = ?3" : "", f->since ? " AND created_at >= ?4" : "",
             f->until ? " AND created_at < ?5" : "", f->after_seq ? " AND seq > ?8" : "");
}

static void bind_filter(sqlite3_stmt *s, const struct task_filter *f)
{
    if (f->status >= 0)
        sq_bind_text(s, 1, task_status_name((enum task_status)f->status));
    if (f->problem_id)
        sq_bind_text(s, 2, f->problem_id);
    if (f->worker_id)
        sq_bind_text(s, 3, f->worker_id);
    if (f->since)
        sqlite3_bind_int64(s, 4, f->since);
    if (f->until)
        sqlite3_bind_int64(s, 5, f->until);
    if (f->after_seq)
        sqlite3_bind_int64(s, 8, f->after_seq);
}

static int list_total(struct conn *c, const struct task_filter *f, const char *where,
                      int64_t *total)
{
    char sql[1024];
    struct sq_cursor cur;
    int rc;

    /* Filtered by state at most: the kept counts answer without a scan. */
    if (!f->problem_id && !f->worker_id && !f->since && !f->until && !f->after_seq)
        snprintf(sql, sizeof(sql), "SELECT COALESCE(sum(n), 0) FROM task_counts%s",
                 f->status >= 0 ? " WHERE status = ?1" : "");
    else
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM tasks %s", where);
    rc = sq_open_sql(&cur, c, "listing tasks", sql);
    if (rc == 0) {
        bind_filter(cur.s, f);
        rc = rows_one(&cur.base);
    }
    if (rc == 0)
        *total = sqlite3_column_int64(cur.s, 0);
    return sq_end(&cur, rc);
}

static int page_add(struct task_page *out, size_t *cap, struct task *t)
{
    if (!t)
        return ERR_NOMEM;
    if (out->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        struct task **p = realloc(out->items, ncap * sizeof(*p));
        if (!p) {
            task_free(t);
            return ERR_NOMEM;
        }
        out->items = p;
        *cap = ncap;
    }
    out->items[out->n++] = t;
    return 0;
}

static int list_page(struct conn *c, const struct task_filter *f, const char *where,
                     struct task_page *out)
{
    char sql[1024];
    struct sq_cursor cur;
    size_t cap = 0;
    int rc;

    snprintf(sql, sizeof(sql), "SELECT " TASK_COLS " FROM tasks %s ORDER BY seq %s "
             "LIMIT ?6 OFFSET ?7", where, f->oldest_first ? "ASC" : "DESC");
    rc = sq_open_sql(&cur, c, "listing tasks", sql);
    if (rc == 0) {
        bind_filter(cur.s, f);
        sqlite3_bind_int64(cur.s, 6, f->limit);
        sqlite3_bind_int64(cur.s, 7, f->offset);
        while ((rc = sq_next(&cur)) == STORE_ROW) {
            rc = page_add(out, &cap, rows_task(&cur.base.row));
            if (rc < 0)
                break;
        }
    }
    return sq_end(&cur, rc);
}

int sq_task_list(struct store *st, const struct task_filter *f, struct task_page *out)
{
    char where[512];
    struct rd r = sq_rd_get(st);
    int rc = 0;

    memset(out, 0, sizeof(*out));
    filter_where(f, where, sizeof(where));
    if (!f->no_total)
        rc = list_total(r.c, f, where, &out->total);
    if (rc == 0)
        rc = list_page(r.c, f, where, out);
    sq_rd_put(&r);
    if (rc < 0)
        store_task_page_reset(out);
    return rc;
}

int sq_task_cancel(struct store *st, const char *id, int64_t now, struct task **out)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    struct sq_cursor cur;
    struct task *t = NULL;
    int rc;

    if (!c)
        return ERR_STORE;
    rc = sq_open_q(&cur, c, &task_q[T_CANCEL]);
    if (rc == 0) {
        sq_bind_text(cur.s, 1, id);
        sqlite3_bind_int64(cur.s, 2, now);
        rc = one_task(&cur, out);
    }
    rc = sq_end(&cur, rc);
    if (rc == ERR_NOTFOUND) {
        /* Terminal already (409) or no such task (404)? */
        rc = sq_load_task(c, false, id, &t);
        if (rc == 0) {
            *out = t;
            rc = ERR_CONFLICT;
        }
    }
    /* NOTFOUND and CONFLICT wrote nothing: the rollback is harmless and rc stays. */
    return sq_writer_end(ss, rc);
}

int sq_task_lease_status(struct store *st, const char *id, const char *lease_token,
                         enum task_status *status)
{
    struct rd r = sq_rd_get(st);
    struct sq_cursor cur;
    int rc = sq_open_q(&cur, r.c, &task_q[T_LEASE]);

    if (rc == 0) {
        sq_bind_text(cur.s, 1, id);
        rc = rows_one(&cur.base);
    }
    if (rc == 0) {
        const char *st_name = (const char *)sqlite3_column_text(cur.s, 0);
        const char *lease = (const char *)sqlite3_column_text(cur.s, 1);
        *status = (enum task_status)task_status_parse(st_name ? st_name : "");
        rc = lease && lease_token && !strcmp(lease, lease_token) ? 0 : ERR_FORBIDDEN;
    }
    rc = sq_end(&cur, rc);
    sq_rd_put(&r);
    return rc;
}

static int read_counts(struct conn *c, struct task_stats *out)
{
    struct sq_cursor cur;
    int rc = sq_open_q(&cur, c, &task_q[T_COUNTS]);

    while (rc == 0 && (rc = sq_next(&cur)) == STORE_ROW) {
        int i = task_status_parse((const char *)sqlite3_column_text(cur.s, 0));
        if (i >= 0) {
            out->counts[i] = sqlite3_column_int64(cur.s, 1);
            out->total += out->counts[i];
        }
        rc = 0;
    }
    return sq_end(&cur, rc);
}

static int read_averages(struct conn *c, struct task_stats *out)
{
    struct sq_cursor cur;
    int rc = sq_open_q(&cur, c, &task_q[T_AVERAGES]);

    if (rc == 0)
        rc = rows_one(&cur.base);
    if (rc == 0 && sqlite3_column_type(cur.s, 0) != SQLITE_NULL)
        out->avg_wait_seconds = sqlite3_column_double(cur.s, 0) / 1e6;
    if (rc == 0 && sqlite3_column_type(cur.s, 1) != SQLITE_NULL)
        out->avg_run_seconds = sqlite3_column_double(cur.s, 1) / 1e6;
    return sq_end(&cur, rc);
}

int sq_task_stats(struct store *st, bool with_averages, struct task_stats *out)
{
    struct rd r = sq_rd_get(st);
    int rc;

    memset(out, 0, sizeof(*out));
    out->avg_wait_seconds = out->avg_run_seconds = -1;
    rc = read_counts(r.c, out);
    if (rc == 0 && with_averages)
        rc = read_averages(r.c, out);
    sq_rd_put(&r);
    return rc;
}
