/* store/pg/logs: task log lines (batched through unnest), and the export's logs
 * and conversations as JSON text made by PostgreSQL. */
#include "store/pg/pg_int.h"
#include "core/err.h"
#include "core/log.h"
#include "core/buf.h"
#include "model/proto.h"

#include <stdlib.h>
#include <string.h>


int pg_log_arrays_build(struct log_arrays *a, const struct log_entry *e, size_t n)
{
    struct buf *all[4] = {&a->ts, &a->lv, &a->msg, &a->ctx};
    struct num x;
    int rc = 0;

    for (int k = 0; k < 4; k++) {
        buf_init(all[k], SIZE_MAX / 2);
        if (buf_append(all[k], "{", 1) < 0)
            rc = ERR_NOMEM;
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char *c = e[i].context ? json_dumps(e[i].context, JSON_COMPACT) : strdup("{}");
        if (!c || pg_array_add(&a->ts, num(&x, e[i].ts), false) < 0 ||
            pg_array_add(&a->lv, num(&x, e[i].level), false) < 0 ||
            pg_array_add(&a->msg, e[i].message ? e[i].message : "", false) < 0 ||
            pg_array_add(&a->ctx, c, false) < 0)
            rc = ERR_NOMEM;
        free(c);
    }
    for (int k = 0; rc == 0 && k < 4; k++)
        if (buf_append(all[k], "}", 1) < 0)
            rc = ERR_NOMEM;
    return rc;
}

void pg_log_arrays_reset(struct log_arrays *a)
{
    buf_reset(&a->ts);
    buf_reset(&a->lv);
    buf_reset(&a->msg);
    buf_reset(&a->ctx);
}

/* ---- logs and conversations ---- */

int pg_logs_append(struct store *st, const char *task_id, const struct log_entry *e,
                   size_t n)
{
    struct log_arrays a;
    int rc;

    if (n == 0)
        return 0;
    rc = pg_log_arrays_build(&a, e, n);
    if (rc == 0) {
        struct pgconn *pc = pg_conn_get(P(st));
        const char *v[5] = {task_id, a.ts.data, a.lv.data, a.msg.data, a.ctx.data};
        PQclear(pg_run(pc, Q_LOG_INSERT, 5, v, &rc));
        pg_conn_put(P(st), pc);
    }
    pg_log_arrays_reset(&a);
    return rc;
}

int pg_logs_list(struct store *st, const char *task_id, int min_level, int64_t limit,
                 int64_t offset, json_t **logs, int64_t *total)
{
    struct pgconn *pc = pg_conn_get(P(st));
    struct num a, b, c;
    const char *v[4] = {task_id, num(&a, min_level), num(&b, limit), num(&c, offset)};
    json_t *arr = json_array();
    int rc = arr ? 0 : ERR_NOMEM;
    PGresult *r = NULL;

    if (rc == 0)
        r = pg_run_sql(pc, "SELECT te_us(ts), level, message, context::text FROM task_logs WHERE "
                        "task_id = $1 AND level >= $2 ORDER BY id LIMIT $3 OFFSET $4", 4, v, &rc);
    for (int i = 0; r && rc == 0 && i < PQntuples(r); i++) {
        json_t *o = json_pack("{s:o, s:s, s:o, s:o}", "timestamp", pg_get_time(r, i, 0), "level",
                              proto_level_name((int)pg_get_i64(r, i, 1)), "message",
                              pg_get_str(r, i, 2), "context", pg_get_json_or_null(r, i, 3));
        if (!o || json_array_append_new(arr, o))
            rc = ERR_NOMEM;
    }
    PQclear(r);
    r = NULL;
    if (rc == 0)
        r = pg_run_sql(pc, "SELECT count(*) FROM task_logs WHERE task_id = $1 AND level >= $2", 2,
                    v, &rc);
    if (r)
        *total = pg_get_i64(r, 0, 0);
    PQclear(r);
    pg_conn_put(P(st), pc);
    if (rc == 0)
        *logs = arr;
    else
        json_decref(arr);
    return rc;
}

/* ---- the export's logs and conversations, as JSON text made by PostgreSQL ---- */

/* RFC 3339 with microseconds, as clock_format writes it. */
#define PG_TIME(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* An array of rows as JSON text on one line (json_agg would add newlines). */
#define PG_ARRAY(expr, order) "'[' || COALESCE(string_agg((" expr ")::text, ',' ORDER BY " order "), '') || ']'"

int pg_export_extras(struct store *st, const char *task_id, bool logs, bool convs,
                     struct buf *out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    const char *v[1] = {task_id};
    int rc = 0;
    PGresult *r;

    if (logs) {
        r = pg_run_sql(pc, "SELECT " PG_ARRAY("json_build_object('timestamp', " PG_TIME("ts")
                        ", 'level', CASE level WHEN 0 THEN 'debug' WHEN 1 THEN 'info' WHEN 2 "
                        "THEN 'warning' WHEN 3 THEN 'error' WHEN 4 THEN 'critical' ELSE 'info' "
                        "END, 'message', message, 'context', context)", "id")
                        " FROM task_logs WHERE task_id = $1", 1, v, &rc);
        if (r && rc == 0 && (buf_append(out, ",\"logs\":", 8) < 0 ||
                             buf_append(out, PQgetvalue(r, 0, 0),
                                        (size_t)PQgetlength(r, 0, 0)) < 0))
            rc = ERR_NOMEM;
        PQclear(r);
    }
    if (rc == 0 && convs) {
        r = pg_run_sql(pc, "SELECT " PG_ARRAY("json_build_object('id', c.id, 'task_id', c.task_id, "
                        "'session_id', c.session_id, 'model_name', c.model_name, 'model_config', "
                        "c.model_config, 'llm_config', c.model_config, 'started_at', "
                        PG_TIME("c.started_at") ", 'ended_at', " PG_TIME("c.ended_at") ", "
                        "'total_messages', c.total_messages, 'total_tokens', c.total_tokens, "
                        "'metadata', c.metadata, 'success', c.metadata -> 'success', 'messages', "
                        "(SELECT (" PG_ARRAY("json_build_object('timestamp', " PG_TIME("m.ts")
                        ", 'role', m.role, 'content', m.content, 'step', m.step, 'metadata', "
                        "m.metadata)", "m.id") ")::json FROM llm_messages m WHERE "
                        "m.conversation_seq = c.seq), 'chat', (SELECT (" PG_ARRAY(
                        "json_build_object('role', m.role, 'content', CASE WHEN "
                        "jsonb_typeof(m.content) = 'string' THEN m.content #>> '{}' ELSE "
                        "m.content::text END)", "m.id") ")::json FROM llm_messages m WHERE "
                        "m.conversation_seq = c.seq))", "c.seq")
                        " FROM llm_conversations c WHERE c.task_id = $1", 1, v, &rc);
        if (r && rc == 0 && (buf_append(out, ",\"conversations\":", 17) < 0 ||
                             buf_append(out, PQgetvalue(r, 0, 0),
                                        (size_t)PQgetlength(r, 0, 0)) < 0))
            rc = ERR_NOMEM;
        PQclear(r);
    }
    pg_conn_put(P(st), pc);
    return rc;
}
