/* store/sqlite/events: the event journal (live streams, charts). */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"

#include <stdlib.h>

enum {
    E_HEAD,
    E_AFTER,
    E_LOGS_AFTER,
    E_PRUNE,
    E_SERIES,
    E_N
};

static const struct sq_query event_q[E_N] = {
    [E_HEAD] = {"reading the event head",
                "SELECT (SELECT COALESCE(max(id), 0) FROM task_events), "
                "(SELECT COALESCE(max(id), 0) FROM task_logs)"},
    [E_AFTER] = {"reading events",
                 "SELECT id, ts, kind, task_id, worker_id, status, problem_id, experiment_id "
                 "FROM task_events WHERE id > ?1 ORDER BY id LIMIT ?2"},
    [E_LOGS_AFTER] = {"reading new logs",
                      "SELECT id, task_id, ts, level, message, context FROM task_logs "
                      "WHERE id > ?1 ORDER BY id LIMIT ?2"},
    [E_PRUNE] = {"pruning events",
                 "DELETE FROM task_events WHERE ts < ?1 AND id < (SELECT max(id) FROM "
                 "task_events)"},
    [E_SERIES] = {"reading the time series",
                  "SELECT ts / ?2 * ?2, sum(status = 'pending'), sum(status = 'running'), "
                  "sum(status = 'completed'), sum(status IN ('failed', 'timeout')), "
                  "sum(status = 'cancelled'), avg(wait_us) FROM task_events "
                  "WHERE ts >= ?1 AND kind = 'task' GROUP BY 1 ORDER BY 1"},
};

int sq_events_head(struct store *st, int64_t *event_id, int64_t *log_id)
{
    struct rows_ints x = {.n = 2};
    int rc = sq_read_with(st, &event_q[E_HEAD], NULL, 0, rows_take_ints, &x);

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
    return sq_read(st, &event_q[q], (struct db_arg[]){DB_I(a1), DB_I(a2)}, 2, build, out);
}

int sq_events_after(struct store *st, int64_t after, int limit, json_t **out)
{
    return read2(st, E_AFTER, after, limit, rows_event, out);
}

int sq_logs_after(struct store *st, int64_t after, int limit, json_t **out)
{
    return read2(st, E_LOGS_AFTER, after, limit, rows_new_log, out);
}

int sq_events_prune(struct store *st, int64_t before)
{
    return sq_write(st, &event_q[E_PRUNE], &DB_I(before), 1, NULL);
}

int sq_task_timeseries(struct store *st, int64_t since, int64_t bucket_us, json_t **out)
{
    return read2(st, E_SERIES, since, bucket_us, rows_bucket, out);
}
