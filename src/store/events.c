/* store/events: the event journal (live streams, charts), written once for both
 * backends (store/db.h). */
#include "store/db.h"
#include "core/err.h"

enum { E_HEAD, E_AFTER, E_LOGS_AFTER, E_PRUNE, E_SERIES, E_N };

static const struct db_stmt event_q[E_N] = {
    [E_HEAD] = DB_SQL("reading the event head",
                      "SELECT (SELECT COALESCE(max(id), 0) FROM task_events), "
                      "(SELECT COALESCE(max(id), 0) FROM task_logs)"),
    [E_AFTER] = DB_SQL("reading events",
                       "SELECT id, ts, kind, task_id, worker_id, status, problem_id, "
                       "experiment_id FROM task_events WHERE id > $1 ORDER BY id LIMIT $2"),
    [E_LOGS_AFTER] = {"reading new logs",
                      "SELECT id, task_id, ts, level, message, context FROM task_logs "
                      "WHERE id > ?1 ORDER BY id LIMIT ?2",
                      "SELECT id, task_id, te_us(ts), level, message, context::text FROM "
                      "task_logs WHERE id > $1 ORDER BY id LIMIT $2"},
    [E_PRUNE] = DB_SQL("pruning events",
                       "DELETE FROM task_events WHERE ts < $1 AND id < (SELECT max(id) FROM "
                       "task_events)"),
    [E_SERIES] = {"reading the time series",
                  "SELECT ts / ?2 * ?2, sum(status = 'pending'), sum(status = 'running'), "
                  "sum(status = 'completed'), sum(status IN ('failed', 'timeout')), "
                  "sum(status = 'cancelled'), avg(wait_us) FROM task_events "
                  "WHERE ts >= ?1 AND kind = 'task' GROUP BY 1 ORDER BY 1",
                  "SELECT ts / $2 * $2, count(*) FILTER (WHERE status = 'pending'), count(*) "
                  "FILTER (WHERE status = 'running'), count(*) FILTER (WHERE status = "
                  "'completed'), count(*) FILTER (WHERE status IN ('failed', 'timeout')), "
                  "count(*) FILTER (WHERE status = 'cancelled'), avg(wait_us) FROM task_events "
                  "WHERE ts >= $1 AND kind = 'task' GROUP BY 1 ORDER BY 1"},
};

int db_events_head(struct store *st, int64_t *event_id, int64_t *log_id)
{
    struct rows_ints x = {.n = 2};
    int rc = db_read_with(st, &event_q[E_HEAD], NULL, 0, rows_take_ints, &x);

    if (rc == 0) {
        *event_id = x.v[0];
        *log_id = x.v[1];
    }
    return rc;
}

/* q with two integer parameters, each row through build() into a new array. */
static int read2(struct store *st, int q, int64_t a1, int64_t a2,
                 json_t *(*build)(const struct store_row *r), json_t **out)
{
    return db_read(st, &event_q[q], (struct db_arg[]){DB_I(a1), DB_I(a2)}, 2, build, out);
}

int db_events_after(struct store *st, int64_t after, int limit, json_t **out)
{
    return read2(st, E_AFTER, after, limit, rows_event, out);
}

int db_logs_after(struct store *st, int64_t after, int limit, json_t **out)
{
    return read2(st, E_LOGS_AFTER, after, limit, rows_new_log, out);
}

int db_events_prune(struct store *st, int64_t before)
{
    return db_write(st, &event_q[E_PRUNE], &DB_I(before), 1, NULL);
}

int db_task_timeseries(struct store *st, int64_t since, int64_t bucket_us, json_t **out)
{
    return read2(st, E_SERIES, since, bucket_us, rows_bucket, out);
}
