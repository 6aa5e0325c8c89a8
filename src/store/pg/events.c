/* store/pg/events: the event journal (live streams, charts). */
#include "store/pg/pg_int.h"
#include "core/err.h"
#include "core/log.h"
#include "model/proto.h"

#include <stdlib.h>

/* ---- the event journal (live streams, charts) ---- */

int pg_events_head(struct store *st, int64_t *event_id, int64_t *log_id)
{
    struct pgconn *pc = pg_conn_get(P(st));
    int rc;
    PGresult *r = pg_run_sql(pc, "SELECT (SELECT COALESCE(max(id), 0) FROM task_events), "
                              "(SELECT COALESCE(max(id), 0) FROM task_logs)", 0, NULL, &rc);

    if (r && rc == 0) {
        *event_id = pg_get_i64(r, 0, 0);
        *log_id = pg_get_i64(r, 0, 1);
    }
    PQclear(r);
    pg_conn_put(P(st), pc);
    return rc;
}

static json_t *row_event(PGresult *r, int i)
{
    return json_pack("{s:I, s:I, s:o, s:o, s:o, s:o, s:o}", "id", (json_int_t)pg_get_i64(r, i, 0),
                     "ts_us", (json_int_t)pg_get_i64(r, i, 1), "kind", pg_get_str(r, i, 2), "task_id",
                     pg_get_str(r, i, 3), "worker_id", pg_get_str(r, i, 4), "status", pg_get_str(r, i, 5),
                     "problem_id", pg_get_str(r, i, 6));
}

int pg_events_after(struct store *st, int64_t after, int limit, json_t **out)
{
    return pg_rows(st, "SELECT id, ts, kind, task_id, worker_id, status, problem_id FROM "
                       "task_events WHERE id > $1 ORDER BY id LIMIT $2", after, limit, row_event,
                   out);
}

static json_t *row_new_log(PGresult *r, int i)
{
    return json_pack("{s:I, s:o, s:I, s:s, s:o, s:o}", "id", (json_int_t)pg_get_i64(r, i, 0),
                     "task_id", pg_get_str(r, i, 1), "ts_us", (json_int_t)pg_get_i64(r, i, 2), "level",
                     proto_level_name((int)pg_get_i64(r, i, 3)), "message", pg_get_str(r, i, 4),
                     "context", pg_get_json_or_null(r, i, 5));
}

int pg_logs_after(struct store *st, int64_t after, int limit, json_t **out)
{
    return pg_rows(st, "SELECT id, task_id, te_us(ts), level, message, context::text FROM "
                       "task_logs WHERE id > $1 ORDER BY id LIMIT $2", after, limit, row_new_log,
                   out);
}

int pg_events_prune(struct store *st, int64_t before)
{
    struct pgconn *pc = pg_conn_get(P(st));
    char b[24];
    const char *v[1] = {b};
    int rc;
    PGresult *r;

    snprintf(b, sizeof(b), "%lld", (long long)before);
    r = pg_run_sql(pc, "DELETE FROM task_events WHERE ts < $1 AND id < (SELECT max(id) FROM "
                    "task_events)", 1, v, &rc);
    PQclear(r);
    pg_conn_put(P(st), pc);
    return rc;
}

static json_t *row_bucket(PGresult *r, int i)
{
    json_t *wait = PQgetisnull(r, i, 6) ? json_null()
                                        : json_real(strtod(PQgetvalue(r, i, 6), NULL) / 1000.0);

    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "start_us",
                     (json_int_t)pg_get_i64(r, i, 0), "submitted", (json_int_t)pg_get_i64(r, i, 1),
                     "started", (json_int_t)pg_get_i64(r, i, 2), "completed",
                     (json_int_t)pg_get_i64(r, i, 3), "failed", (json_int_t)pg_get_i64(r, i, 4),
                     "cancelled", (json_int_t)pg_get_i64(r, i, 5), "queue_wait_ms", wait);
}

int pg_task_timeseries(struct store *st, int64_t since, int64_t bucket_us, json_t **out)
{
    return pg_rows(st, "SELECT ts / $2 * $2, count(*) FILTER (WHERE status = 'pending'), "
                       "count(*) FILTER (WHERE status = 'running'), count(*) FILTER (WHERE "
                       "status = 'completed'), count(*) FILTER (WHERE status IN ('failed', "
                       "'timeout')), count(*) FILTER (WHERE status = 'cancelled'), "
                       "avg(wait_us) FROM task_events WHERE ts >= $1 AND kind = 'task' "
                       "GROUP BY 1 ORDER BY 1", since, bucket_us, row_bucket, out);
}
