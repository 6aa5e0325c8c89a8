/* store/sqlite/tasks: insert, read, list and cancel tasks; leases and state counts. */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads a row of TASK_COLS into a new task (caller frees). NULL when out of memory. */
struct task *sq_row_task(sqlite3_stmt *s)
{
    struct task *t = task_new();
    const char *id = (const char *)sqlite3_column_text(s, 0);
    const char *status = (const char *)sqlite3_column_text(s, 2);

    if (!t)
        return NULL;
    snprintf(t->id, sizeof(t->id), "%s", id ? id : "");
    t->problem_id = sq_col_dup(s, 1);
    t->status = status ? (enum task_status)task_status_parse(status) : TASK_PENDING;
    t->priority = sqlite3_column_int(s, 3);
    t->backend_type = sq_col_dup(s, 4);
    t->mode = sq_col_dup(s, 5);
    t->parameters = sq_col_json(s, 6);
    t->metadata = sq_col_json(s, 7);
    t->callback_url = sq_col_dup(s, 8);
    t->idempotency_key = sq_col_dup(s, 9);
    t->worker_id = sq_col_dup(s, 10);
    t->lease_token = sq_col_dup(s, 11);
    t->result = sq_col_json(s, 12);
    t->error = sq_col_dup(s, 13);
    t->max_steps = sqlite3_column_int(s, 14);
    t->timeout_seconds = sqlite3_column_int(s, 15);
    t->created_at = sqlite3_column_int64(s, 16);
    t->updated_at = sqlite3_column_int64(s, 17);
    t->started_at = sqlite3_column_int64(s, 18);
    t->completed_at = sqlite3_column_int64(s, 19);
    t->deadline_at = sqlite3_column_int64(s, 20);
    t->seq = sqlite3_column_int64(s, 21);
    if (!t->problem_id || !t->backend_type || !t->mode) {
        task_free(t);
        return NULL;
    }
    return t;
}

/* ---- tasks ---- */

int sq_load_task(struct conn *c, enum q q, const char *key, struct task **out)
{
    sqlite3_stmt *s = sq_stmt(c, q);
    int rc, step;

    if (!s)
        return ERR_STORE;
    sq_bind_text(s, 1, key);
    step = sqlite3_step(s);
    if (step == SQLITE_ROW) {
        *out = sq_row_task(s);
        rc = *out ? 0 : ERR_NOMEM;
    } else if (step == SQLITE_DONE) {
        rc = ERR_NOTFOUND;
    } else {
        rc = sq_fail_db(c->db, "loading a task");
    }
    sq_done(s);
    return rc;
}

int sq_task_insert(struct store *st, struct task *t, struct task **existing)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    sqlite3_stmt *s;
    int rc = ERR_STORE;

    if (!c)
        return ERR_STORE;
    *existing = NULL;
    if (t->idempotency_key) {
        rc = sq_load_task(c, Q_TASK_BY_KEY, t->idempotency_key, existing);
        if (rc == 0)
            return sq_writer_end(ss, 0);
        if (rc != ERR_NOTFOUND)
            return sq_writer_end(ss, rc);
    }
    s = sq_stmt(c, Q_TASK_INSERT);
    if (!s)
        return sq_writer_end(ss, ERR_STORE);
    sq_bind_text(s, 1, t->id);
    sq_bind_text(s, 2, t->problem_id);
    sqlite3_bind_int(s, 3, t->priority);
    sq_bind_text(s, 4, t->backend_type);
    sq_bind_text(s, 5, t->mode);
    rc = sq_bind_json(s, 6, t->parameters);
    if (rc == 0)
        rc = sq_bind_json(s, 7, t->metadata);
    sq_bind_text(s, 8, t->callback_url);
    sq_bind_text(s, 9, t->idempotency_key);
    sqlite3_bind_int(s, 10, t->max_steps);
    sqlite3_bind_int(s, 11, t->timeout_seconds);
    sqlite3_bind_int64(s, 12, t->created_at);
    if (rc == 0 && sqlite3_step(s) != SQLITE_DONE)
        rc = sq_fail_db(c->db, "inserting a task");
    sq_done(s);
    return sq_writer_end(ss, rc);
}

int sq_task_get(struct store *st, const char *id, struct task **out)
{
    struct rd r = sq_rd_get(st);
    int rc = sq_load_task(r.c, Q_TASK_BY_ID, id, out);

    sq_rd_put(&r);
    return rc;
}

int sq_task_list(struct store *st, const struct task_filter *f, struct task_page *out)
{
    char where[512] = "WHERE 1=1", sql[1024];
    struct rd r = sq_rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc = 0, step;
    size_t cap = 0;

    memset(out, 0, sizeof(*out));
    if (f->status >= 0)
        strcat(where, " AND status = ?1");
    if (f->problem_id)
        strcat(where, " AND problem_id = ?2");
    if (f->worker_id)
        strcat(where, " AND worker_id = ?3");
    if (f->since)
        strcat(where, " AND created_at >= ?4");
    if (f->until)
        strcat(where, " AND created_at < ?5");
    if (f->after_seq)
        strcat(where, " AND seq > ?8");
    for (int pass = f->no_total ? 1 : 0; pass < 2 && rc == 0; pass++) {
        /* Filtered by state at most: the kept counts answer without a scan. */
        if (pass == 0 && !f->problem_id && !f->worker_id && !f->since && !f->until &&
            !f->after_seq)
            snprintf(sql, sizeof(sql), "SELECT COALESCE(sum(n), 0) FROM task_counts%s",
                     f->status >= 0 ? " WHERE status = ?1" : "");
        else if (pass == 0)
            snprintf(sql, sizeof(sql), "SELECT count(*) FROM tasks %s", where);
        else
            snprintf(sql, sizeof(sql), "SELECT " TASK_COLS " FROM tasks %s ORDER BY seq %s "
                     "LIMIT ?6 OFFSET ?7", where, f->oldest_first ? "ASC" : "DESC");
        if (sqlite3_prepare_v2(r.c->db, sql, -1, &s, NULL) != SQLITE_OK) {
            rc = sq_fail_db(r.c->db, "listing tasks");
            break;
        }
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
        if (pass == 1) {
            sqlite3_bind_int64(s, 6, f->limit);
            sqlite3_bind_int64(s, 7, f->offset);
        }
        while ((step = sqlite3_step(s)) == SQLITE_ROW) {
            if (pass == 0) {
                out->total = sqlite3_column_int64(s, 0);
                continue;
            }
            if (out->n == cap) {
                size_t ncap = cap ? cap * 2 : 16;
                struct task **p = realloc(out->items, ncap * sizeof(*p));
                if (!p) {
                    rc = ERR_NOMEM;
                    break;
                }
                out->items = p;
                cap = ncap;
            }
            out->items[out->n] = sq_row_task(s);
            if (!out->items[out->n]) {
                rc = ERR_NOMEM;
                break;
            }
            out->n++;
        }
        if (rc == 0 && step != SQLITE_DONE)
            rc = sq_fail_db(r.c->db, "listing tasks");
        sqlite3_finalize(s);
        s = NULL;
    }
    sq_rd_put(&r);
    if (rc < 0)
        store_task_page_reset(out);
    return rc;
}

int sq_task_cancel(struct store *st, const char *id, int64_t now, struct task **out)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    sqlite3_stmt *s;
    struct task *t = NULL;
    int rc, step;

    if (!c)
        return ERR_STORE;
    s = sq_stmt(c, Q_TASK_CANCEL);
    if (!s)
        return sq_writer_end(ss, ERR_STORE);
    sq_bind_text(s, 1, id);
    sqlite3_bind_int64(s, 2, now);
    step = sqlite3_step(s);
    if (step == SQLITE_ROW) {
        *out = sq_row_task(s);
        rc = *out ? 0 : ERR_NOMEM;
    } else if (step == SQLITE_DONE) {
        rc = ERR_NOTFOUND;
    } else {
        rc = sq_fail_db(c->db, "cancelling a task");
    }
    sq_done(s);
    if (rc == ERR_NOTFOUND) {
        /* Terminal already (409) or no such task (404)? */
        rc = sq_load_task(c, Q_TASK_BY_ID, id, &t);
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
    sqlite3_stmt *s = sq_stmt(r.c, Q_TASK_LEASE);
    int rc = ERR_STORE, step;

    if (s) {
        sq_bind_text(s, 1, id);
        step = sqlite3_step(s);
        if (step == SQLITE_ROW) {
            const char *st_name = (const char *)sqlite3_column_text(s, 0);
            const char *lease = (const char *)sqlite3_column_text(s, 1);
            *status = (enum task_status)task_status_parse(st_name ? st_name : "");
            rc = lease && lease_token && !strcmp(lease, lease_token) ? 0 : ERR_FORBIDDEN;
        } else {
            rc = step == SQLITE_DONE ? ERR_NOTFOUND : sq_fail_db(r.c->db, "reading a lease");
        }
        sq_done(s);
    }
    sq_rd_put(&r);
    return rc;
}

int sq_task_stats(struct store *st, bool with_averages, struct task_stats *out)
{
    struct rd r = sq_rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    memset(out, 0, sizeof(*out));
    out->avg_wait_seconds = out->avg_run_seconds = -1;
    if (sqlite3_prepare_v2(r.c->db, "SELECT status, n FROM task_counts", -1, &s, NULL) !=
        SQLITE_OK) {
        rc = sq_fail_db(r.c->db, "stats");
        goto out;
    }
    while (sqlite3_step(s) == SQLITE_ROW) {
        int i = task_status_parse((const char *)sqlite3_column_text(s, 0));
        if (i >= 0) {
            out->counts[i] = sqlite3_column_int64(s, 1);
            out->total += out->counts[i];
        }
    }
    sqlite3_finalize(s);
    s = NULL;
    if (!with_averages)
        goto out;
    if (sqlite3_prepare_v2(r.c->db,
                           "SELECT avg(started_at - created_at), "
                           "avg(CASE WHEN completed_at IS NOT NULL THEN completed_at - "
                           "started_at END) FROM tasks WHERE started_at IS NOT NULL",
                           -1, &s, NULL) != SQLITE_OK) {
        rc = sq_fail_db(r.c->db, "stats");
        goto out;
    }
    if (sqlite3_step(s) == SQLITE_ROW) {
        if (sqlite3_column_type(s, 0) != SQLITE_NULL)
            out->avg_wait_seconds = sqlite3_column_double(s, 0) / 1e6;
        if (sqlite3_column_type(s, 1) != SQLITE_NULL)
            out->avg_run_seconds = sqlite3_column_double(s, 1) / 1e6;
    }
out:
    sqlite3_finalize(s);
    sq_rd_put(&r);
    return rc;
}
