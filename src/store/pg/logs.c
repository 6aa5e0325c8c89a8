/* store/pg/logs: inserting a task's log lines, a batch in one INSERT ... unnest() of
 * array literals. The rest of logs is written once, in store/logs.c. */
#include "store/pg/pg_int.h"
#include "core/err.h"
#include "core/buf.h"

#include <stdlib.h>
#include <string.h>

static const struct pg_query log_insert = {
    "inserting log lines",
    "INSERT INTO task_logs (task_id, ts, level, message, context, attempt) SELECT "
    "$1, te_ts(u.ts), u.level, u.message, u.context::jsonb, (SELECT attempt FROM "
    "tasks WHERE id = $1) FROM unnest($2::bigint[], $3::int[], $4::text[], "
    "$5::text[]) AS u(ts, level, message, context)"};

int pg_log_arrays_open(struct log_arrays *a)
{
    struct buf *const all[5] = {&a->ts, &a->lv, &a->msg, &a->ctx, &a->own};

    return pg_arrays_open(all, 5);
}

int pg_log_arrays_add(struct log_arrays *a, const struct log_entry *e, size_t n,
                      const char *owner)
{
    struct num x;
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < n; i++) {
        char *c = e[i].context ? json_dumps(e[i].context, JSON_COMPACT) : strdup("{}");
        if (!c || pg_array_add(&a->ts, num(&x, e[i].ts), false) < 0 ||
            pg_array_add(&a->lv, num(&x, e[i].level), false) < 0 ||
            pg_array_add(&a->msg, e[i].message ? e[i].message : "", false) < 0 ||
            pg_array_add(&a->ctx, c, false) < 0 ||
            (owner && pg_array_add(&a->own, owner, false) < 0))
            rc = ERR_NOMEM;
        free(c);
    }
    return rc;
}

int pg_log_arrays_close(struct log_arrays *a)
{
    struct buf *const all[5] = {&a->ts, &a->lv, &a->msg, &a->ctx, &a->own};

    return pg_arrays_close(all, 5);
}

int pg_log_arrays_build(struct log_arrays *a, const struct log_entry *e, size_t n)
{
    int rc = pg_log_arrays_open(a);

    if (rc == 0)
        rc = pg_log_arrays_add(a, e, n, NULL);
    return rc == 0 ? pg_log_arrays_close(a) : rc;
}

void pg_log_arrays_reset(struct log_arrays *a)
{
    buf_reset(&a->ts);
    buf_reset(&a->lv);
    buf_reset(&a->msg);
    buf_reset(&a->ctx);
    buf_reset(&a->own);
}

int pg_insert_logs(struct db_conn *dc, const char *task_id, const struct log_entry *e,
                   size_t n)
{
    struct pgconn *pc = pg_conn(dc);
    struct log_arrays a;
    int rc = pg_log_arrays_build(&a, e, n);

    if (rc == 0) {
        const char *v[5] = {task_id, a.ts.data, a.lv.data, a.msg.data, a.ctx.data};
        PQclear(pg_run(pc, &log_insert, 5, v, &rc));
    }
    pg_log_arrays_reset(&a);
    return rc;
}
