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
                  "INSERT INTO task_logs (task_id, ts, level, message, context) VALUES (?1,?2,"
                  "?3,?4,?5)"},
    [L_PAGE] = {"listing logs",
                "SELECT ts, level, message, context FROM task_logs WHERE task_id = ?1 AND "
                "level >= ?2 ORDER BY id LIMIT ?3 OFFSET ?4"},
    [L_COUNT] = {"counting logs",
                 "SELECT count(*) FROM task_logs WHERE task_id = ?1 AND level >= ?2"},
    /* Reads on the export path are kept prepared too: one prepare per connection. */
    [L_EXPORT_LOGS] = {
        "exporting a task",
        "SELECT json_group_array(json_object('timestamp', " SQ_TIME("ts") ", 'level', CASE "
        "level WHEN 0 THEN 'debug' WHEN 1 THEN 'info' WHEN 2 THEN 'warning' WHEN 3 THEN "
        "'error' WHEN 4 THEN 'critical' ELSE 'info' END, 'message', message, 'context', "
        "json(context))) FROM (SELECT ts, level, message, context FROM task_logs WHERE "
        "task_id = ?1 ORDER BY id)"},
    [L_EXPORT_CONVS] = {
        "exporting a task",
        "SELECT json_group_array(json_object('id', c.id, 'task_id', c.task_id, 'session_id', "
        "c.session_id, 'model_name', c.model_name, 'model_config', json(c.model_config), "
        "'llm_config', json(c.model_config), 'started_at', " SQ_TIME("c.started_at") ", "
        "'ended_at', CASE WHEN c.ended_at IS NULL THEN NULL ELSE " SQ_TIME("c.ended_at") " "
        "END, 'total_messages', c.total_messages, 'total_tokens', c.total_tokens, "
        "'metadata', json(c.metadata), 'success', json(c.metadata -> '$.success'), "
        "'messages', (SELECT json_group_array(json_object('timestamp', " SQ_TIME("m.ts") ", "
        "'role', m.role, 'content', json(m.content), 'step', m.step, 'metadata', "
        "json(m.metadata))) FROM (SELECT ts, role, content, step, metadata FROM llm_messages "
        "WHERE conversation_seq = c.seq ORDER BY id) m), 'chat', (SELECT "
        "json_group_array(json_object('role', m.role, 'content', CASE WHEN "
        "json_type(m.content) = 'text' THEN m.content ->> '$' ELSE m.content END)) FROM "
        "(SELECT role, content FROM llm_messages WHERE conversation_seq = c.seq ORDER BY id) "
        "m))) FROM (SELECT * FROM llm_conversations WHERE task_id = ?1 ORDER BY seq) c"},
};

int sq_insert_logs(struct conn *c, const char *task_id, const struct log_entry *e, size_t n)
{
    struct sq_cursor cur;
    int rc;

    if (n == 0)
        return 0;
    rc = sq_open_q(&cur, c, &log_q[L_INSERT]);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        sq_bind_text(cur.s, 1, task_id);
        sqlite3_bind_int64(cur.s, 2, e[i].ts);
        sqlite3_bind_int(cur.s, 3, e[i].level);
        sq_bind_text(cur.s, 4, e[i].message);
        rc = sq_bind_object(cur.s, 5, e[i].context);
        if (rc == 0)
            rc = sq_exec(&cur);
        sqlite3_reset(cur.s);
    }
    return sq_end(&cur, rc);
}

int sq_logs_append(struct store *st, const char *task_id, const struct log_entry *e, size_t n)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);

    if (!c)
        return ERR_STORE;
    return sq_writer_end(ss, sq_insert_logs(c, task_id, e, n));
}

int sq_logs_list(struct store *st, const char *task_id, int min_level, int64_t limit,
                 int64_t offset, json_t **logs, int64_t *total)
{
    struct rd r = sq_rd_get(st);
    struct sq_cursor cur;
    json_t *arr = json_array();
    int64_t n = 0;
    int rc = arr ? sq_open_q(&cur, r.c, &log_q[L_PAGE]) : ERR_NOMEM;

    if (rc == 0) {
        sq_bind_text(cur.s, 1, task_id);
        sqlite3_bind_int(cur.s, 2, min_level);
        sqlite3_bind_int64(cur.s, 3, limit);
        sqlite3_bind_int64(cur.s, 4, offset);
        rc = rows_collect(&cur.base, rows_log, arr);
    }
    if (arr)
        rc = sq_end(&cur, rc);
    /* A short page ends the list, so its total is known; only a full or empty page (offset
     * past the end) needs counting. No window function: it would materialise every row. */
    if (rc == 0) {
        n = offset + (int64_t)json_array_size(arr);
        if (json_array_size(arr) == 0 || json_array_size(arr) >= (size_t)limit)
            rc = sq_one_i64(r.c, &log_q[L_COUNT],
                            (struct sq_arg[]){SQ_T(task_id), SQ_I(min_level)}, 2, &n);
    }
    sq_rd_put(&r);
    if (rc == 0) {
        *logs = arr;
        *total = n;
    } else {
        json_decref(arr);
    }
    return rc;
}

/* Appends ,"key": and the JSON text statement q makes for task_id. */
static int export_part(struct conn *c, int q, const char *task_id, const char *key,
                       struct buf *out)
{
    struct sq_cursor cur;
    int rc = sq_open_q(&cur, c, &log_q[q]);

    if (rc == 0) {
        sq_bind_text(cur.s, 1, task_id);
        rc = rows_one(&cur.base);
    }
    if (rc == ERR_NOTFOUND) /* an aggregate always has its row */
        rc = sq_fail_db(c->db, cur.what);
    if (rc == 0 && (buf_appendf(out, ",\"%s\":", key) < 0 ||
                    buf_append(out, sqlite3_column_text(cur.s, 0),
                               (size_t)sqlite3_column_bytes(cur.s, 0)) < 0))
        rc = ERR_NOMEM;
    return sq_end(&cur, rc);
}

int sq_export_extras(struct store *st, const char *task_id, bool logs, bool convs,
                     struct buf *out)
{
    struct rd r = sq_rd_get(st);
    int rc = 0;

    if (logs)
        rc = export_part(r.c, L_EXPORT_LOGS, task_id, "logs", out);
    if (rc == 0 && convs)
        rc = export_part(r.c, L_EXPORT_CONVS, task_id, "conversations", out);
    sq_rd_put(&r);
    return rc;
}
