/* store/sqlite/workers: worker rows (register, heartbeat, status, reads). */
#include "store/sqlite/sqlite_int.h"
#include "store/rules.h"
#include "core/err.h"
#include "core/log.h"

#include <stdlib.h>
#include <string.h>

#define WORKER_COLS                                                                        \
    "id, backend_type, status, last_heartbeat, current_task_id, capabilities, metadata, "   \
    "tasks_completed, tasks_failed, registered_at, name_prefix IS NOT NULL"

enum {
    W_REGISTER,
    W_LOSE_RUNS,
    W_TOKEN,
    W_HEARTBEAT,
    W_STATUS,
    W_LIST,
    W_BY_ID,
    W_COUNTS,
    W_N
};

static const struct sq_query worker_q[W_N] = {
    /* The upsert's WHERE keeps an internal row from being taken over by an external
     * registration, and the other way round. */
    [W_REGISTER] = {"registering a worker",
                    "INSERT INTO workers (id, backend_type, status, last_heartbeat, "
                    "capabilities, registered_at, token_hash, name_prefix) VALUES (?1, ?2, "
                    "'idle', ?3, ?4, ?3, ?5, ?6) ON CONFLICT (id) DO UPDATE SET backend_type = "
                    "?2, status = 'idle', last_heartbeat = ?3, capabilities = ?4, token_hash = "
                    "?5, name_prefix = ?6, current_task_id = NULL WHERE (workers.name_prefix IS "
                    "NULL) = (?6 IS NULL)"},
    [W_LOSE_RUNS] = {"registering a worker",
                     "UPDATE tasks SET status = 'failed', completed_at = ?2, updated_at = ?2, "
                     "error = " RULE_ERR_REREGISTERED " WHERE status = 'running' AND worker_id "
                     "= ?1"},
    [W_TOKEN] = {"reading a worker", "SELECT token_hash FROM workers WHERE id = ?1"},
    [W_HEARTBEAT] = {"heartbeat",
                     "UPDATE workers SET last_heartbeat = ?2, status = CASE WHEN status = "
                     "'offline' THEN 'idle' ELSE status END WHERE id IN (SELECT value FROM "
                     "json_each(?1))"},
    [W_STATUS] = {"worker status",
                  "UPDATE workers SET status = ?2, current_task_id = NULL, metadata = "
                  "COALESCE(?3, metadata) WHERE id = ?1"},
    [W_LIST] = {"listing workers",
                "SELECT " WORKER_COLS " FROM workers WHERE (?1 IS NULL OR status = ?1) AND "
                "(?2 IS NULL OR backend_type = ?2) ORDER BY id"},
    [W_BY_ID] = {"reading a worker", "SELECT " WORKER_COLS " FROM workers WHERE id = ?1"},
    [W_COUNTS] = {"counting workers", "SELECT status, count(*) FROM workers GROUP BY status"},
};

/* The registration, inside sq_in_write: the upsert, then (an external worker) the
 * runs it lost. ERR_CONFLICT when the upsert's WHERE kept the row. */
static int registration(struct conn *c, void *ctx)
{
    const struct worker_reg *reg = ctx;
    const struct db_arg args[6] = {DB_T(reg->id), DB_T(reg->backend_type), DB_I(reg->now),
                                   DB_O(reg->capabilities), DB_T(reg->token_hash),
                                   DB_T(reg->name_prefix)};
    int changed = 0;
    int rc = sq_run(c, &worker_q[W_REGISTER], args, 6, &changed);

    if (rc == 0 && changed == 0)
        rc = ERR_CONFLICT;
    if (rc == 0 && reg->token_hash)
        rc = sq_run(c, &worker_q[W_LOSE_RUNS], (struct db_arg[]){DB_T(reg->id), DB_I(reg->now)},
                    2, NULL);
    return rc;
}

int sq_worker_register(struct store *st, const struct worker_reg *reg)
{
    struct worker_reg r = *reg; /* a copy: the body's context is not const */

    return sq_in_write(st, registration, &r);
}

int sq_worker_token(struct store *st, const char *id, char **token_hash)
{
    return sq_read_with(st, &worker_q[W_TOKEN], &DB_T(id), 1, rows_take_text, token_hash);
}

int sq_worker_heartbeat(struct store *st, const char *const *ids, size_t n, int64_t now)
{
    json_t *arr = json_array();
    int rc = arr ? 0 : ERR_NOMEM;

    for (size_t i = 0; rc == 0 && i < n; i++)
        if (json_array_append_new(arr, json_string(ids[i])))
            rc = ERR_NOMEM;
    if (rc == 0)
        rc = sq_write(st, &worker_q[W_HEARTBEAT], (struct db_arg[]){DB_J(arr), DB_I(now)}, 2,
                      NULL);
    json_decref(arr);
    return rc;
}

int sq_worker_set_status(struct store *st, const char *id, const char *status,
                         json_t *metadata)
{
    return sq_write(st, &worker_q[W_STATUS],
                    (struct db_arg[]){DB_T(id), DB_T(status), DB_J(metadata)}, 3, NULL);
}

int sq_worker_list(struct store *st, const char *status, const char *backend_type,
                   json_t **out)
{
    return sq_read(st, &worker_q[W_LIST], (struct db_arg[]){DB_T(status), DB_T(backend_type)},
                   2, rows_worker, out);
}

int sq_worker_get(struct store *st, const char *id, json_t **out)
{
    return sq_read_one(st, &worker_q[W_BY_ID], &DB_T(id), 1, rows_worker, out);
}

int sq_worker_counts(struct store *st, int64_t counts[3])
{
    return sq_read_with(st, &worker_q[W_COUNTS], NULL, 0, rows_take_worker_counts, counts);
}
