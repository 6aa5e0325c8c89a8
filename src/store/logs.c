/* store/logs: task log lines (listed, appended), and the export's logs and
 * conversations as JSON text made by the database, written once for both backends
 * (store/db.h). How the lines of a batch are inserted is each backend's insert_logs:
 * one INSERT ... unnest() on PostgreSQL, a prepared INSERT a line on SQLite. */
#include "store/db.h"
#include "core/err.h"

/* RFC 3339 with microseconds, as clock_format writes it. */
#define SQ_TIME(col)                                                                       \
    "(strftime('%Y-%m-%dT%H:%M:%S', " col " / 1000000, 'unixepoch') || "                    \
    "printf('.%06dZ', " col " % 1000000))"
#define PG_TIME(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
/* An array of rows as JSON text on one line (json_agg would add newlines). */
#define PG_ARRAY(expr, order)                                                              \
    "'[' || COALESCE(string_agg((" expr ")::text, ',' ORDER BY " order "), '') || ']'"

enum { L_PAGE, L_COUNT, L_EXPORT_LOGS, L_EXPORT_CONVS, L_N };

static const struct db_stmt log_q[L_N] = {
    [L_PAGE] = {"listing logs",
                "SELECT ts, level, message, context, attempt FROM task_logs WHERE task_id = ?1 "
                "AND level >= ?2 ORDER BY id LIMIT ?3 OFFSET ?4",
                "SELECT te_us(ts), level, message, context::text, attempt FROM task_logs WHERE "
                "task_id = $1 AND level >= $2 ORDER BY id LIMIT $3 OFFSET $4"},
    [L_COUNT] = DB_SQL("counting logs",
                       "SELECT count(*) FROM task_logs WHERE task_id = $1 AND level >= $2"),
    /* Reads on the export path are kept prepared too: one prepare per connection. */
    [L_EXPORT_LOGS] = {
        "exporting a task",
        "SELECT json_group_array(json_object('timestamp', " SQ_TIME("ts") ", 'level', CASE "
        "level WHEN 0 THEN 'debug' WHEN 1 THEN 'info' WHEN 2 THEN 'warning' WHEN 3 THEN "
        "'error' WHEN 4 THEN 'critical' ELSE 'info' END, 'message', message, 'context', "
        "json(context), 'attempt', attempt)) FROM (SELECT ts, level, message, context, attempt "
        "FROM task_logs WHERE task_id = ?1 ORDER BY id)",
        "SELECT " PG_ARRAY("json_build_object('timestamp', " PG_TIME("ts") ", 'level', CASE "
                           "level WHEN 0 THEN 'debug' WHEN 1 THEN 'info' WHEN 2 THEN 'warning' "
                           "WHEN 3 THEN 'error' WHEN 4 THEN 'critical' ELSE 'info' END, "
                           "'message', message, 'context', context, 'attempt', attempt)", "id")
        " FROM task_logs WHERE task_id = $1"},
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
        "m))) FROM (SELECT * FROM llm_conversations WHERE task_id = ?1 ORDER BY seq) c",
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

/* The context of append_body. */
struct append {
    const char *task_id;
    const struct log_entry *e;
    size_t n;
};

static int append_body(struct db_conn *c, void *ctx)
{
    struct append *x = ctx;

    return db_insert_logs(c, x->task_id, x->e, x->n);
}

int db_logs_append(struct store *st, const char *task_id, const struct log_entry *e, size_t n)
{
    struct append x = {task_id, e, n};

    return n ? db_on_write(st, append_body, &x) : 0;
}

/* The context of list_body. */
struct list {
    const struct db_arg *args;
    int64_t limit, offset;
    struct rows_array page;
    int64_t total;
};

/* A short page ends the list, so its total is known; only a full or empty page (offset
 * past the end) needs counting. No window function: it would materialise every row. */
static int list_body(struct db_conn *c, void *ctx)
{
    struct list *x = ctx;
    int rc = db_take(c, &log_q[L_PAGE], x->args, 4, rows_take_array, &x->page);
    size_t got = rc == 0 ? json_array_size(x->page.v) : 0;

    if (rc < 0)
        return rc;
    x->total = x->offset + (int64_t)got;
    if (got == 0 || got >= (size_t)x->limit)
        rc = db_one_i64(c, &log_q[L_COUNT], x->args, 2, &x->total);
    return rc;
}

int db_logs_list(struct store *st, const char *task_id, int min_level, int64_t limit,
                 int64_t offset, json_t **logs, int64_t *total)
{
    const struct db_arg args[4] = {DB_T(task_id), DB_I(min_level), DB_I(limit), DB_I(offset)};
    struct list x = {args, limit, offset, {.build = rows_log}, 0};
    int rc = db_on_read(st, list_body, &x);

    if (rc == 0)
        *total = x.total;
    return rows_give(rc, x.page.v, logs);
}

/* The context of export_body. */
struct export {
    const char *task_id;
    bool logs, convs;
    struct buf *out;
};

static int export_body(struct db_conn *c, void *ctx)
{
    struct export *x = ctx;
    struct rows_export logs_part = {"logs", x->out}, convs_part = {"conversations", x->out};
    int rc = 0;

    if (x->logs)
        rc = db_take(c, &log_q[L_EXPORT_LOGS], &DB_T(x->task_id), 1, rows_take_export,
                     &logs_part);
    if (rc == 0 && x->convs)
        rc = db_take(c, &log_q[L_EXPORT_CONVS], &DB_T(x->task_id), 1, rows_take_export,
                     &convs_part);
    return rc;
}

int db_export_extras(struct store *st, const char *task_id, bool logs, bool convs,
                     struct buf *out)
{
    struct export x = {task_id, logs, convs, out};

    return db_on_read(st, export_body, &x);
}
