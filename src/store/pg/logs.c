/* store/pg/logs: task log lines (batched through unnest), and the export's logs
 * and conversations as JSON text made by PostgreSQL. */
#include "store/pg/pg_int.h"
#include "core/err.h"
#include "core/log.h"
#include "core/buf.h"
#include "model/proto.h"

#include <stdlib.h>
#include <string.h>

/* RFC 3339 with microseconds, as clock_format writes it. */
#define PG_TIME(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
/* An array of rows as JSON text on one line (json_agg would add newlines). */
#define PG_ARRAY(expr, order) "'[' || COALESCE(string_agg((" expr ")::text, ',' ORDER BY " order "), '') || ']'"

enum {
    L_INSERT,
    L_PAGE,
    L_COUNT,
    L_EXPORT_LOGS,
    L_EXPORT_CONVS,
    L_N
};

static const struct pg_query log_q[L_N] = {
    [L_INSERT] = {"inserting log lines",
                  "INSERT INTO task_logs (task_id, ts, level, message, context, attempt) SELECT "
                  "$1, te_ts(u.ts), u.level, u.message, u.context::jsonb, (SELECT attempt FROM "
                  "tasks WHERE id = $1) FROM unnest($2::bigint[], $3::int[], $4::text[], "
                  "$5::text[]) AS u(ts, level, message, context)"},
    [L_PAGE] = {"listing logs",
                "SELECT te_us(ts), level, message, context::text, attempt FROM task_logs WHERE "
                "task_id = $1 AND level >= $2 ORDER BY id LIMIT $3 OFFSET $4"},
    [L_COUNT] = {"counting logs",
                 "SELECT count(*) FROM task_logs WHERE task_id = $1 AND level >= $2"},
    [L_EXPORT_LOGS] = {
        "exporting a task",
        "SELECT " PG_ARRAY("json_build_object('timestamp', " PG_TIME("ts") ", 'level', CASE "
                           "level WHEN 0 THEN 'debug' WHEN 1 THEN 'info' WHEN 2 THEN 'warning' "
                           "WHEN 3 THEN 'error' WHEN 4 THEN 'critical' ELSE 'info' END, "
                           "'message', message, 'context', context, 'attempt', attempt)", "id")
        " FROM task_logs WHERE task_id = $1"},
    [L_EXPORT_CONVS] = {
        "exporting a task",
        "SELECT " PG_ARRAY("json_build_object('id', c.id, 'task_id', c.task_id, "
        "'session_id', c.session_id, 'model_name', c.model_name, 'model_config', "
        "c.model_config, 'llm_config', c.model_config, 'started_at', "
        PG_TIME("c.started_at") ", 'ended_at', " PG_TIME("c.ended_at") ", "
        "'total_messages', c.total_messages, 'total_tokens', c.total_tokens, "
        "'metadata', c.metadata, 'success', c.metadata -> 'success', 'attempt', c.attempt, "
        "'messages', "
        "(SELECT (" PG_ARRAY("json_build_object('timestamp', " PG_TIME("m.ts")
        ", 'role', m.role, 'content', m.content, 'step', m.step, 'metadata', "
        "m.metadata)", "m.id") ")::json FROM llm_messages m WHERE "
        "m.conversation_seq = c.seq), 'chat', (SELECT (" PG_ARRAY(
        "json_build_object('role', m.role, 'content', CASE WHEN "
        "jsonb_typeof(m.content) = 'string' THEN m.content #>> '{}' ELSE "
        "m.content::text END)", "m.id") ")::json FROM llm_messages m WHERE "
        "m.conversation_seq = c.seq))", "c.seq")
        " FROM llm_conversations c WHERE c.task_id = $1"},
};

int pg_log_arrays_build(struct log_arrays *a, const struct log_entry *e, size_t n)
{
    struct buf *const all[4] = {&a->ts, &a->lv, &a->msg, &a->ctx};
    struct num x;
    int rc = pg_arrays_open(all, 4);

    for (size_t i = 0; rc == 0 && i < n; i++) {
        char *c = e[i].context ? json_dumps(e[i].context, JSON_COMPACT) : strdup("{}");
        if (!c || pg_array_add(&a->ts, num(&x, e[i].ts), false) < 0 ||
            pg_array_add(&a->lv, num(&x, e[i].level), false) < 0 ||
            pg_array_add(&a->msg, e[i].message ? e[i].message : "", false) < 0 ||
            pg_array_add(&a->ctx, c, false) < 0)
            rc = ERR_NOMEM;
        free(c);
    }
    return rc == 0 ? pg_arrays_close(all, 4) : rc;
}

void pg_log_arrays_reset(struct log_arrays *a)
{
    buf_reset(&a->ts);
    buf_reset(&a->lv);
    buf_reset(&a->msg);
    buf_reset(&a->ctx);
}

int pg_logs_append(struct store *st, const char *task_id, const struct log_entry *e, size_t n)
{
    struct log_arrays a;
    int rc;

    if (n == 0)
        return 0;
    rc = pg_log_arrays_build(&a, e, n);
    if (rc == 0) {
        const char *v[5] = {task_id, a.ts.data, a.lv.data, a.msg.data, a.ctx.data};
        rc = pg_write(st, &log_q[L_INSERT], 5, v, NULL);
    }
    pg_log_arrays_reset(&a);
    return rc;
}

int pg_logs_list(struct store *st, const char *task_id, int min_level, int64_t limit,
                 int64_t offset, json_t **logs, int64_t *total)
{
    struct num a, b, c;
    const char *v[4] = {task_id, num(&a, min_level), num(&b, limit), num(&c, offset)};

    return pg_read_page(st, &log_q[L_COUNT], &log_q[L_PAGE], 4, v, rows_log, logs, total);
}

int pg_export_extras(struct store *st, const char *task_id, bool logs, bool convs,
                     struct buf *out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    const char *v[1] = {task_id};
    struct rows_export logs_part = {"logs", out}, convs_part = {"conversations", out};
    int rc = 0;

    if (logs)
        rc = pg_take(pc, &log_q[L_EXPORT_LOGS], 1, v, rows_take_export, &logs_part);
    if (rc == 0 && convs)
        rc = pg_take(pc, &log_q[L_EXPORT_CONVS], 1, v, rows_take_export, &convs_part);
    pg_conn_put(P(st), pc);
    return rc;
}
