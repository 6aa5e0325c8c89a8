/* store/sqlite/logs: task log lines, and the export's logs and conversations as JSON
 * text made by SQLite. */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"
#include "model/proto.h"

#include <stdlib.h>

/* RFC 3339 with microseconds, as clock_format writes it. */
#define SQ_TIME(col)                                                                       \
    "(strftime('%Y-%m-%dT%H:%M:%S', " col " / 1000000, 'unixepoch') || "                    \
    "printf('.%06dZ', " col " % 1000000))"

enum {
    L_INSERT,
    L_PAGE,
    L_COUNT,
    L_EXPORT_LOGS,
    L_EXPORT_CONVS,
    L_N
};

static const struct sq_query log_q[L_N] = {
    [L_INSERT] = {"inserting a log line",
                  "INSERT INTO task_logs (task_id, ts, level, message, context, attempt) VALUES "
                  "(?1,?2,?3,?4,?5,(SELECT attempt FROM tasks WHERE id = ?1))"},
    [L_PAGE] = {"listing logs",
                "SELECT ts, level, message, context, attempt FROM task_logs WHERE task_id = ?1 "
                "AND level >= ?2 ORDER BY id LIMIT ?3 OFFSET ?4"},
    [L_COUNT] = {"counting logs",
                 "SELECT count(*) FROM task_logs WHERE task_id = ?1 AND level >= ?2"},
    /* Reads on the export path are kept prepared too: one prepare per connection. */
    [L_EXPORT_LOGS] = {
        "exporting a task",
        "SELECT json_group_array(json_object('timestamp', " SQ_TIME("ts") ", 'level', CASE "
        "level WHEN 0 THEN 'debug' WHEN 1 THEN 'info' WHEN 2 THEN 'warning' WHEN 3 THEN "
        "'error' WHEN 4 THEN 'critical' ELSE 'info' END, 'message', message, 'context', "
        "json(context), 'attempt', attempt)) FROM (SELECT ts, level, message, context, attempt "
        "FROM task_logs WHERE task_id = ?1 ORDER BY id)"},
    [L_EXPORT_CONVS] = {
        "exporting a task",
        "SELECT json_group_array(json_object('id', c.id, 'task_id', c.task_id, 'session_id', "
        "c.session_id, 'model_name', c.model_name, 'model_config', json(c.model_config), "
        "'llm_config', json(c.model_config), 'started_at', " SQ_TIME("c.started_at") ", "
        "'ended_at', CASE WHEN c.ended_at IS NULL THEN NULL ELSE " SQ_TIME("c.ended_at") " "
        "END, 'total_messages', c.total_messages, 'total_tokens', c.total_tokens, "
        "'metadata', json(c.metadata), 'success', json(c.metadata -> '$.success'), "
        "'attempt', c.attempt, "
        "'messages', (SELECT json_group_array(json_object('timestamp', " SQ_TIME("m.ts") ", "
        "'role', m.role, 'content', json(m.content), 'step', m.step, 'metadata', "
        "json(m.metadata))) FROM (SELECT ts, role, content, step, metadata FROM llm_messages "
        "WHERE conversation_seq = c.seq ORDER BY id) m), 'chat', (SELECT "
        "json_group_array(json_object('role', m.role, 'content', CASE WHEN "
        "json_type(m.content) = 'text' THEN m.content ->> '$' ELSE m.content END)) FROM "
        "(SELECT role, content FROM llm_messages WHERE conversation_seq = c.seq ORDER BY id) "
        "m))) FROM (SELECT * FROM llm_conversations WHERE task_id = ?1 ORDER BY seq) c"},
};

int sq_insert_logs(struct conn *c, void *batch)
{
    const struct sq_batch *b = batch;
    const struct log_entry *e = b->items;
    int rc = 0;

    /* The statement stays prepared on c, so a line costs a bind and a step. */
    for (size_t i = 0; rc == 0 && i < b->n; i++) {
        const struct db_arg args[5] = {DB_T(b->task_id), DB_I(e[i].ts), DB_I(e[i].level),
                                       DB_T(e[i].message), DB_O(e[i].context)};
        rc = sq_run(c, &log_q[L_INSERT], args, 5, NULL);
    }
    return rc;
}

int sq_logs_append(struct store *st, const char *task_id, const struct log_entry *e, size_t n)
{
    return sq_in_write(st, sq_insert_logs, &(struct sq_batch){task_id, e, n});
}

int sq_logs_list(struct store *st, const char *task_id, int min_level, int64_t limit,
                 int64_t offset, json_t **logs, int64_t *total)
{
    const struct db_arg args[4] = {DB_T(task_id), DB_I(min_level), DB_I(limit), DB_I(offset)};
    struct rows_array page = {.build = rows_log};
    struct rd r = sq_rd_get(st);
    int64_t n = 0;
    int rc = sq_take(r.c, &log_q[L_PAGE], args, 4, rows_take_array, &page);

    /* A short page ends the list, so its total is known; only a full or empty page (offset
     * past the end) needs counting. No window function: it would materialise every row. */
    if (rc == 0) {
        n = offset + (int64_t)json_array_size(page.v);
        if (json_array_size(page.v) == 0 || json_array_size(page.v) >= (size_t)limit)
            rc = sq_one_i64(r.c, &log_q[L_COUNT], args, 2, &n);
    }
    sq_rd_put(&r);
    if (rc == 0)
        *total = n;
    return rows_give(rc, page.v, logs);
}

int sq_export_extras(struct store *st, const char *task_id, bool logs, bool convs,
                     struct buf *out)
{
    struct rd r = sq_rd_get(st);
    struct rows_export logs_part = {"logs", out}, convs_part = {"conversations", out};
    int rc = 0;

    if (logs)
        rc = sq_take(r.c, &log_q[L_EXPORT_LOGS], &DB_T(task_id), 1, rows_take_export,
                     &logs_part);
    if (rc == 0 && convs)
        rc = sq_take(r.c, &log_q[L_EXPORT_CONVS], &DB_T(task_id), 1, rows_take_export,
                     &convs_part);
    sq_rd_put(&r);
    return rc;
}
