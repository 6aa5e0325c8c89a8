/* store/sqlite/events: the event journal (live streams, charts). */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"
#include "model/proto.h"

#include <stdlib.h>

/* ---- the event journal (live streams, charts) ---- */

int sq_events_head(struct store *st, int64_t *event_id, int64_t *log_id)
{
    struct rd r = sq_rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (sqlite3_prepare_v2(r.c->db, "SELECT (SELECT COALESCE(max(id), 0) FROM task_events), "
                                    "(SELECT COALESCE(max(id), 0) FROM task_logs)", -1, &s,
                           NULL) != SQLITE_OK ||
        sqlite3_step(s) != SQLITE_ROW) {
        rc = sq_fail_db(r.c->db, "reading the event head");
    } else {
        *event_id = sqlite3_column_int64(s, 0);
        *log_id = sqlite3_column_int64(s, 1);
    }
    sqlite3_finalize(s);
    sq_rd_put(&r);
    return rc;
}

/* Runs sql (two integer arguments) on a reader and maps each row to an array element. */
static int sq_rows(struct store *st, const char *what, const char *sql, int64_t a1, int64_t a2,
                   json_t *(*row)(sqlite3_stmt *s), json_t **out)
{
    struct rd r = sq_rd_get(st);
    sqlite3_stmt *s = NULL;
    json_t *arr = json_array();
    int rc = arr ? 0 : ERR_NOMEM;

    if (rc == 0 && sqlite3_prepare_v2(r.c->db, sql, -1, &s, NULL) != SQLITE_OK)
        rc = sq_fail_db(r.c->db, what);
    if (rc == 0) {
        sqlite3_bind_int64(s, 1, a1);
        sqlite3_bind_int64(s, 2, a2);
    }
    while (rc == 0 && sqlite3_step(s) == SQLITE_ROW) {
        json_t *o = row(s);
        if (!o || json_array_append_new(arr, o))
            rc = ERR_NOMEM;
    }
    sqlite3_finalize(s);
    sq_rd_put(&r);
    if (rc == 0)
        *out = arr;
    else
        json_decref(arr);
    return rc;
}

static json_t *row_event(sqlite3_stmt *s)
{
    return json_pack("{s:I, s:I, s:o, s:o, s:o, s:o, s:o}", "id",
                     (json_int_t)sqlite3_column_int64(s, 0), "ts_us",
                     (json_int_t)sqlite3_column_int64(s, 1), "kind", sq_col_str(s, 2), "task_id",
                     sq_col_str(s, 3), "worker_id", sq_col_str(s, 4), "status", sq_col_str(s, 5),
                     "problem_id", sq_col_str(s, 6));
}

int sq_events_after(struct store *st, int64_t after, int limit, json_t **out)
{
    return sq_rows(st, "reading events", "SELECT id, ts, kind, task_id, worker_id, status, "
                   "problem_id FROM task_events WHERE id > ?1 ORDER BY id LIMIT ?2", after, limit,
                   row_event, out);
}

static json_t *row_new_log(sqlite3_stmt *s)
{
    return json_pack("{s:I, s:o, s:I, s:s, s:o, s:o}", "id",
                     (json_int_t)sqlite3_column_int64(s, 0), "task_id", sq_col_str(s, 1), "ts_us",
                     (json_int_t)sqlite3_column_int64(s, 2), "level",
                     proto_level_name(sqlite3_column_int(s, 3)), "message", sq_col_str(s, 4),
                     "context", sq_col_json_or_null(s, 5));
}

int sq_logs_after(struct store *st, int64_t after, int limit, json_t **out)
{
    return sq_rows(st, "reading new logs", "SELECT id, task_id, ts, level, message, context "
                   "FROM task_logs WHERE id > ?1 ORDER BY id LIMIT ?2", after, limit,
                   row_new_log, out);
}

int sq_events_prune(struct store *st, int64_t before)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    int rc, changes = 0;

    if (!c)
        return ERR_STORE;
    rc = sq_run_update(c, "DELETE FROM task_events WHERE ts < ?2 AND id < (SELECT max(id) FROM "
                       "task_events)", NULL, before, 0, &changes);
    return sq_writer_end(ss, rc);
}

static json_t *row_bucket(sqlite3_stmt *s)
{
    json_t *wait = sqlite3_column_type(s, 6) == SQLITE_NULL
                       ? json_null()
                       : json_real(sqlite3_column_double(s, 6) / 1000.0);

    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "start_us",
                     (json_int_t)sqlite3_column_int64(s, 0), "submitted",
                     (json_int_t)sqlite3_column_int64(s, 1), "started",
                     (json_int_t)sqlite3_column_int64(s, 2), "completed",
                     (json_int_t)sqlite3_column_int64(s, 3), "failed",
                     (json_int_t)sqlite3_column_int64(s, 4), "cancelled",
                     (json_int_t)sqlite3_column_int64(s, 5), "queue_wait_ms", wait);
}

int sq_task_timeseries(struct store *st, int64_t since, int64_t bucket_us, json_t **out)
{
    return sq_rows(st, "reading the time series",
                   "SELECT ts / ?2 * ?2, sum(status = 'pending'), sum(status = 'running'), "
                   "sum(status = 'completed'), sum(status IN ('failed', 'timeout')), "
                   "sum(status = 'cancelled'), avg(wait_us) FROM task_events "
                   "WHERE ts >= ?1 AND kind = 'task' GROUP BY 1 ORDER BY 1", since, bucket_us,
                   row_bucket, out);
}
