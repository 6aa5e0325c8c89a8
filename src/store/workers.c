/* store/workers: worker rows (heartbeat, status, reads), written once for both
 * backends (store/db.h). Registering stays in each backend (sqlite/workers.c,
 * pg/workers.c): PostgreSQL registers, and fails a re-registering external worker's
 * runs, in one statement; SQLite in two inside its write transaction. */
#include "store/db.h"
#include "core/err.h"

#define WORKER_COLS_SQ                                                                     \
    "id, backend_type, status, last_heartbeat, current_task_id, capabilities, metadata, "   \
    "tasks_completed, tasks_failed, registered_at, name_prefix IS NOT NULL"
#define WORKER_COLS_PG                                                                     \
    "id, backend_type, status, te_us(last_heartbeat), current_task_id, capabilities::text, " \
    "metadata::text, tasks_completed, tasks_failed, te_us(registered_at), "                \
    "name_prefix IS NOT NULL"

enum { W_TOKEN, W_HEARTBEAT, W_STATUS, W_LIST, W_BY_ID, W_COUNTS, W_N };

static const struct db_stmt worker_q[W_N] = {
    [W_TOKEN] = DB_SQL("reading a worker", "SELECT token_hash FROM workers WHERE id = $1"),
    /* $1: the ids as a JSON array. */
    [W_HEARTBEAT] = {"heartbeat",
                     "UPDATE workers SET last_heartbeat = ?2, status = CASE WHEN status = "
                     "'offline' THEN 'idle' ELSE status END WHERE id IN (SELECT value FROM "
                     "json_each(?1))",
                     "UPDATE workers SET last_heartbeat = te_ts($2), status = CASE WHEN status = "
                     "'offline' THEN 'idle' ELSE status END WHERE id IN (SELECT "
                     "jsonb_array_elements_text($1::jsonb))"},
    [W_STATUS] = {"worker status",
                  "UPDATE workers SET status = ?2, current_task_id = NULL, metadata = "
                  "COALESCE(?3, metadata) WHERE id = ?1",
                  "UPDATE workers SET status = $2, current_task_id = NULL, metadata = "
                  "COALESCE($3::jsonb, metadata) WHERE id = $1"},
    [W_LIST] = {"listing workers",
                "SELECT " WORKER_COLS_SQ " FROM workers WHERE (?1 IS NULL OR status = ?1) AND "
                "(?2 IS NULL OR backend_type = ?2) ORDER BY id",
                "SELECT " WORKER_COLS_PG " FROM workers WHERE ($1::text IS NULL OR status = $1) "
                "AND ($2::text IS NULL OR backend_type = $2) ORDER BY id"},
    [W_BY_ID] = {"reading a worker", "SELECT " WORKER_COLS_SQ " FROM workers WHERE id = ?1",
                 "SELECT " WORKER_COLS_PG " FROM workers WHERE id = $1"},
    [W_COUNTS] = DB_SQL("counting workers",
                        "SELECT status, count(*) FROM workers GROUP BY status"),
};

int db_worker_token(struct store *st, const char *id, char **token_hash)
{
    return db_read_with(st, &worker_q[W_TOKEN], &DB_T(id), 1, rows_take_text, token_hash);
}

int db_worker_heartbeat(struct store *st, const char *const *ids, size_t n, int64_t now)
{
    json_t *arr;
    int rc = 0;

    if (n == 0)
        return 0;
    arr = json_array();
    rc = arr ? 0 : ERR_NOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (json_array_append_new(arr, json_string(ids[i])))
            rc = ERR_NOMEM;
    if (rc == 0)
        rc = db_write(st, &worker_q[W_HEARTBEAT], (struct db_arg[]){DB_J(arr), DB_I(now)}, 2,
                      NULL);
    json_decref(arr);
    return rc;
}

int db_worker_set_status(struct store *st, const char *id, const char *status,
                         json_t *metadata)
{
    return db_write(st, &worker_q[W_STATUS],
                    (struct db_arg[]){DB_T(id), DB_T(status), DB_J(metadata)}, 3, NULL);
}

int db_worker_list(struct store *st, const char *status, const char *backend_type,
                   json_t **out)
{
    return db_read(st, &worker_q[W_LIST], (struct db_arg[]){DB_T(status), DB_T(backend_type)},
                   2, rows_worker, out);
}

int db_worker_get(struct store *st, const char *id, json_t **out)
{
    return db_read_one(st, &worker_q[W_BY_ID], &DB_T(id), 1, rows_worker, out);
}

int db_worker_counts(struct store *st, int64_t counts[3])
{
    return db_read_with(st, &worker_q[W_COUNTS], NULL, 0, rows_take_worker_counts, counts);
}
