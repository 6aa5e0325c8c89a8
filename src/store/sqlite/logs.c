/* store/sqlite/logs: task log lines, and the export's logs and conversations as JSON
 * text made by SQLite. */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"
#include "model/proto.h"

#include <stdlib.h>

/* ---- logs and conversations ---- */

int sq_insert_logs(struct conn *c, const char *task_id, const struct log_entry *e,
                size_t n)
{
    sqlite3_stmt *s = n ? sq_stmt(c, Q_LOG_INSERT) : NULL;
    int rc = 0;

    if (n && !s)
        return ERR_STORE;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        sq_bind_text(s, 1, task_id);
        sqlite3_bind_int64(s, 2, e[i].ts);
        sqlite3_bind_int(s, 3, e[i].level);
        sq_bind_text(s, 4, e[i].message);
        rc = sq_bind_object(s, 5, e[i].context);
        if (rc == 0 && sqlite3_step(s) != SQLITE_DONE)
            rc = sq_fail_db(c->db, "inserting a log line");
        sq_done(s);
    }
    return rc;
}

int sq_logs_append(struct store *st, const char *task_id, const struct log_entry *e,
                   size_t n)
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
    sqlite3_stmt *s = NULL;
    json_t *arr = json_array();
    int rc = 0;

    if (!arr) {
        rc = ERR_NOMEM;
        goto out;
    }
    if (!(s = sq_stmt(r.c, Q_LOGS_PAGE))) {
        rc = sq_fail_db(r.c->db, "listing logs");
        goto out;
    }
    sq_bind_text(s, 1, task_id);
    sqlite3_bind_int(s, 2, min_level);
    sqlite3_bind_int64(s, 3, limit);
    sqlite3_bind_int64(s, 4, offset);
    *total = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
        json_t *o = json_pack("{s:o, s:s, s:o, s:o}", "timestamp", sq_col_time(s, 0), "level",
                              proto_level_name(sqlite3_column_int(s, 1)), "message",
                              sq_col_str(s, 2), "context", sq_col_json_or_null(s, 3));
        if (!o || json_array_append_new(arr, o)) {
            rc = ERR_NOMEM;
            goto out;
        }
    }
    /* A short page ends the list, so its total is known; only a full or empty page (offset
     * past the end) needs counting. No window function: it would materialise every row. */
    *total = offset + (int64_t)json_array_size(arr);
    if (json_array_size(arr) == 0 || json_array_size(arr) >= (size_t)limit) {
        sqlite3_stmt *c = NULL;
        if (sqlite3_prepare_v2(r.c->db, "SELECT count(*) FROM task_logs WHERE task_id = ?1 "
                                        "AND level >= ?2", -1, &c, NULL) == SQLITE_OK) {
            sq_bind_text(c, 1, task_id);
            sqlite3_bind_int(c, 2, min_level);
            if (sqlite3_step(c) == SQLITE_ROW)
                *total = sqlite3_column_int64(c, 0);
        }
        sqlite3_finalize(c);
    }
    *logs = arr;
    arr = NULL;
out:
    sq_done(s);
    json_decref(arr);
    sq_rd_put(&r);
    return rc;
}

/* ---- the export's logs and conversations, as JSON text made by SQLite ---- */

static int export_part(struct conn *c, enum q q, const char *task_id, const char *key,
                       struct buf *out)
{
    sqlite3_stmt *s = sq_stmt(c, q);
    int rc = 0;

    if (!s)
        return ERR_STORE;
    sq_bind_text(s, 1, task_id);
    if (sqlite3_step(s) != SQLITE_ROW)
        rc = sq_fail_db(c->db, "exporting a task");
    else if (buf_appendf(out, ",\"%s\":", key) < 0 ||
             buf_append(out, sqlite3_column_text(s, 0), (size_t)sqlite3_column_bytes(s, 0)) < 0)
        rc = ERR_NOMEM;
    sq_done(s);
    return rc;
}

int sq_export_extras(struct store *st, const char *task_id, bool logs, bool convs,
                     struct buf *out)
{
    struct rd r = sq_rd_get(st);
    int rc = 0;

    if (logs)
        rc = export_part(r.c, Q_EXPORT_LOGS, task_id, "logs", out);
    if (rc == 0 && convs)
        rc = export_part(r.c, Q_EXPORT_CONVS, task_id, "conversations", out);
    sq_rd_put(&r);
    return rc;
}
