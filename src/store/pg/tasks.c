/* store/pg/tasks: insert, read, list and cancel tasks; leases and state counts. */
#include "store/pg/pg_int.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct task *pg_row_task(PGresult *r, int row)
{
    struct task *t = task_new();

    if (!t)
        return NULL;
    snprintf(t->id, sizeof(t->id), "%s", PQgetvalue(r, row, 0));
    t->problem_id = pg_get_dup(r, row, 1);
    t->status = (enum task_status)task_status_parse(PQgetvalue(r, row, 2));
    t->priority = (int)pg_get_i64(r, row, 3);
    t->backend_type = pg_get_dup(r, row, 4);
    t->mode = pg_get_dup(r, row, 5);
    t->parameters = pg_get_json(r, row, 6);
    t->metadata = pg_get_json(r, row, 7);
    t->callback_url = pg_get_dup(r, row, 8);
    t->idempotency_key = pg_get_dup(r, row, 9);
    t->worker_id = pg_get_dup(r, row, 10);
    t->lease_token = pg_get_dup(r, row, 11);
    t->result = pg_get_json(r, row, 12);
    t->error = pg_get_dup(r, row, 13);
    t->max_steps = (int)pg_get_i64(r, row, 14);
    t->timeout_seconds = (int)pg_get_i64(r, row, 15);
    t->created_at = pg_get_i64(r, row, 16);
    t->updated_at = pg_get_i64(r, row, 17);
    t->started_at = pg_get_i64(r, row, 18);
    t->completed_at = pg_get_i64(r, row, 19);
    t->deadline_at = pg_get_i64(r, row, 20);
    t->seq = pg_get_i64(r, row, 21);
    if (!t->problem_id || !t->backend_type || !t->mode) {
        task_free(t);
        return NULL;
    }
    return t;
}

/* ---- tasks ---- */

static int load_task(struct pgconn *pc, enum q q, const char *key, struct task **out)
{
    const char *v[1] = {key};
    int rc;
    PGresult *r = pg_run(pc, q, 1, v, &rc);

    if (!r)
        return rc;
    if (PQntuples(r) == 0) {
        rc = ERR_NOTFOUND;
    } else {
        *out = pg_row_task(r, 0);
        rc = *out ? 0 : ERR_NOMEM;
    }
    PQclear(r);
    return rc;
}

int pg_task_insert(struct store *st, struct task *t, struct task **existing)
{
    struct pgconn *pc = pg_conn_get(P(st));
    struct num n1, n2, n3, n4;
    bool ok = true;
    char *params = pg_json_text(t->parameters, &ok), *meta = pg_json_text(t->metadata, &ok);
    const char *v[12] = {t->id, t->problem_id, num(&n1, t->priority), t->backend_type, t->mode,
                         params, meta, t->callback_url, t->idempotency_key,
                         num(&n2, t->max_steps), num(&n3, t->timeout_seconds),
                         num(&n4, t->created_at)};
    PGresult *r = NULL;
    int rc = ERR_NOMEM;

    *existing = NULL;
    if (!ok)
        goto out;
    r = pg_run(pc, Q_TASK_INSERT, 12, v, &rc);
    if (r && PQntuples(r) == 0 && t->idempotency_key)
        rc = load_task(pc, Q_TASK_BY_KEY, t->idempotency_key, existing); /* a known key */
out:
    PQclear(r);
    free(params);
    free(meta);
    pg_conn_put(P(st), pc);
    return rc;
}

int pg_task_get(struct store *st, const char *id, struct task **out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    int rc = load_task(pc, Q_TASK_BY_ID, id, out);

    pg_conn_put(P(st), pc);
    return rc;
}

int pg_task_list(struct store *st, const struct task_filter *f, struct task_page *out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    char where[512] = "WHERE true", sql[1024];
    const char *v[8];
    struct num a, b, c, d, e;
    int n = 0, rc;
    PGresult *r = NULL;

    memset(out, 0, sizeof(*out));
    if (f->status >= 0) {
        v[n++] = task_status_name((enum task_status)f->status);
        snprintf(where + strlen(where), sizeof(where) - strlen(where), " AND status = $%d", n);
    }
    if (f->problem_id) {
        v[n++] = f->problem_id;
        snprintf(where + strlen(where), sizeof(where) - strlen(where), " AND problem_id = $%d",
                 n);
    }
    if (f->worker_id) {
        v[n++] = f->worker_id;
        snprintf(where + strlen(where), sizeof(where) - strlen(where), " AND worker_id = $%d", n);
    }
    if (f->since) {
        v[n++] = num(&a, f->since);
        snprintf(where + strlen(where), sizeof(where) - strlen(where),
                 " AND created_at >= te_ts($%d)", n);
    }
    if (f->until) {
        v[n++] = num(&b, f->until);
        snprintf(where + strlen(where), sizeof(where) - strlen(where),
                 " AND created_at < te_ts($%d)", n);
    }
    if (f->after_seq) {
        v[n++] = num(&e, f->after_seq);
        snprintf(where + strlen(where), sizeof(where) - strlen(where), " AND seq > $%d", n);
    }
    if (!f->no_total) {
        /* Filtered by state at most: the kept counts answer without a scan. */
        if (!f->problem_id && !f->worker_id && !f->since && !f->until && !f->after_seq)
            snprintf(sql, sizeof(sql), "SELECT COALESCE(sum(n), 0) FROM task_counts%s",
                     f->status >= 0 ? " WHERE status = $1" : "");
        else
            snprintf(sql, sizeof(sql), "SELECT count(*) FROM tasks %s", where);
        r = pg_run_sql(pc, sql, n, v, &rc);
        if (!r)
            goto out;
        out->total = pg_get_i64(r, 0, 0);
        PQclear(r);
    }
    v[n] = num(&c, f->limit);
    v[n + 1] = num(&d, f->offset);
    snprintf(sql, sizeof(sql), "SELECT " TASK_COLS " FROM tasks %s ORDER BY seq %s LIMIT $%d "
             "OFFSET $%d", where, f->oldest_first ? "ASC" : "DESC", n + 1, n + 2);
    r = pg_run_sql(pc, sql, n + 2, v, &rc);
    if (!r)
        goto out;
    out->items = calloc((size_t)PQntuples(r) + 1, sizeof(*out->items));
    if (!out->items) {
        rc = ERR_NOMEM;
        goto out;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        out->items[i] = pg_row_task(r, i);
        if (!out->items[i]) {
            rc = ERR_NOMEM;
            goto out;
        }
        out->n++;
    }
out:
    PQclear(r);
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
    int rc;
    PGresult *r = pg_run(pc, Q_TASK_CANCEL, 2, v, &rc);

    if (r && PQntuples(r) == 1) {
        *out = pg_row_task(r, 0);
        rc = *out ? 0 : ERR_NOMEM;
    } else if (r) {
        rc = load_task(pc, Q_TASK_BY_ID, id, out);
        if (rc == 0)
            rc = ERR_CONFLICT; /* ended already */
    }
    PQclear(r);
    pg_conn_put(P(st), pc);
    return rc;
}

int pg_task_lease_status(struct store *st, const char *id, const char *lease_token,
                         enum task_status *status)
{
    struct pgconn *pc = pg_conn_get(P(st));
    const char *v[1] = {id};
    int rc;
    PGresult *r = pg_run(pc, Q_TASK_LEASE, 1, v, &rc);

    if (r) {
        if (PQntuples(r) == 0) {
            rc = ERR_NOTFOUND;
        } else {
            *status = (enum task_status)task_status_parse(PQgetvalue(r, 0, 0));
            rc = !PQgetisnull(r, 0, 1) && lease_token &&
                         !strcmp(PQgetvalue(r, 0, 1), lease_token)
                     ? 0
                     : ERR_FORBIDDEN;
        }
    }
    PQclear(r);
    pg_conn_put(P(st), pc);
    return rc;
}

int pg_task_stats(struct store *st, bool with_averages, struct task_stats *out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    int rc;
    PGresult *r;

    memset(out, 0, sizeof(*out));
    out->avg_wait_seconds = out->avg_run_seconds = -1;
    r = pg_run_sql(pc, "SELECT status, sum(n) FROM task_counts GROUP BY status", 0, NULL, &rc);
    for (int i = 0; r && i < PQntuples(r); i++) {
        int s = task_status_parse(PQgetvalue(r, i, 0));
        if (s >= 0) {
            out->counts[s] = pg_get_i64(r, i, 1);
            out->total += out->counts[s];
        }
    }
    PQclear(r);
    if (rc == 0 && with_averages) {
        r = pg_run_sql(pc, "SELECT extract(epoch FROM avg(started_at - created_at)), "
                        "extract(epoch FROM avg(completed_at - started_at)) FROM tasks "
                        "WHERE started_at IS NOT NULL", 0, NULL, &rc);
        if (r && !PQgetisnull(r, 0, 0))
            out->avg_wait_seconds = strtod(PQgetvalue(r, 0, 0), NULL);
        if (r && !PQgetisnull(r, 0, 1))
            out->avg_run_seconds = strtod(PQgetvalue(r, 0, 1), NULL);
        PQclear(r);
    }
    pg_conn_put(P(st), pc);
    return rc;
}
