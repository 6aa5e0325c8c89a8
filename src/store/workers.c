/* store/workers: worker rows (register, heartbeat, status, reads), written once for
 * both backends (store/db.h). */
#include "store/db.h"
#include "store/rules.h"
#include "core/err.h"

#define WORKER_COLS_SQ                                                                     \
    "id, backend_type, status, last_heartbeat, current_task_id, capabilities, metadata, "   \
    "tasks_completed, tasks_failed, registered_at, name_prefix IS NOT NULL"
#define WORKER_COLS_PG                                                                     \
    "id, backend_type, status, te_us(last_heartbeat), current_task_id, capabilities::text, " \
    "metadata::text, tasks_completed, tasks_failed, te_us(registered_at), "                \
    "name_prefix IS NOT NULL"

enum { W_REGISTER, W_LOSE_RUNS, W_TOKEN, W_HEARTBEAT, W_STATUS, W_LIST, W_BY_ID, W_COUNTS, W_N };

static const struct db_stmt worker_q[W_N] = {
    /* The upsert's WHERE keeps an internal row from being taken over by an external
     * registration, and the other way round. An external worker registering again
     * loses its running tasks: on PostgreSQL in the same statement, on SQLite in
     * W_LOSE_RUNS, inside the same write transaction. */
    [W_REGISTER] = {"registering a worker",
                    "INSERT INTO workers (id, backend_type, status, last_heartbeat, "
                    "capabilities, registered_at, token_hash, name_prefix) VALUES (?1, ?2, "
                    "'idle', ?3, ?4, ?3, ?5, ?6) ON CONFLICT (id) DO UPDATE SET backend_type = "
                    "?2, status = 'idle', last_heartbeat = ?3, capabilities = ?4, token_hash = "
                    "?5, name_prefix = ?6, current_task_id = NULL WHERE (workers.name_prefix IS "
                    "NULL) = (?6 IS NULL)",
                    "WITH w AS (INSERT INTO workers (id, backend_type, status, last_heartbeat, "
                    "capabilities, registered_at, token_hash, name_prefix) VALUES ($1, $2, "
                    "'idle', te_ts($3), $4::jsonb, te_ts($3), $5, $6) ON CONFLICT (id) DO "
                    "UPDATE SET backend_type = $2, status = 'idle', last_heartbeat = te_ts($3), "
                    "capabilities = $4::jsonb, token_hash = $5, name_prefix = $6, "
                    "current_task_id = NULL WHERE (workers.name_prefix IS NULL) = ($6::text IS "
                    "NULL) RETURNING id), "
                    "lost AS (UPDATE tasks SET status = 'failed', completed_at = te_ts($3), "
                    "updated_at = te_ts($3), error = " RULE_ERR_REREGISTERED " WHERE status = "
                    "'running' AND worker_id = $1 AND $5::text IS NOT NULL AND EXISTS (SELECT 1 "
                    "FROM w)) SELECT 1 FROM w"},
    [W_LOSE_RUNS] = {"registering a worker",
                     "UPDATE tasks SET status = 'failed', completed_at = ?3, updated_at = ?3, "
                     "error = " RULE_ERR_REREGISTERED " WHERE status = 'running' AND "
                     "worker_id = ?1",
                     NULL},
    [W_TOKEN] = DB_SQL("reading a worker", "SELECT token_hash FROM workers WHERE id = $1"),
    /* $1: the ids as a JSON array. On PostgreSQL a row being written (by an end that
     * also updates other workers' rows, store/pg/queue.c) is passed over, not waited
     * for: two statements locking several worker rows in different orders could
     * deadlock, and a beat missed is made up by the next (each comes at most a third of
     * the heartbeat timeout after the last). */
    [W_HEARTBEAT] = {"heartbeat",
                     "UPDATE workers SET last_heartbeat = ?2, status = CASE WHEN status = "
                     "'offline' THEN 'idle' ELSE status END WHERE id IN (SELECT value FROM "
                     "json_each(?1))",
                     "UPDATE workers SET last_heartbeat = te_ts($2), status = CASE WHEN status = "
                     "'offline' THEN 'idle' ELSE status END WHERE id IN (SELECT id FROM workers "
                     "WHERE id IN (SELECT jsonb_array_elements_text($1::jsonb)) FOR UPDATE "
                     "SKIP LOCKED)"},
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

/* The registration: the upsert, then (an external worker) the runs it lost.
 * ERR_CONFLICT when the upsert's WHERE kept the row. */
static int register_body(struct db_conn *c, void *ctx)
{
    const struct worker_reg *reg = ctx;
    const struct db_arg args[6] = {DB_T(reg->id), DB_T(reg->backend_type), DB_I(reg->now),
                                   DB_O(reg->capabilities), DB_T(reg->token_hash),
                                   DB_T(reg->name_prefix)};
    int changed = 0;
    int rc = db_run(c, &worker_q[W_REGISTER], args, 6, &changed);

    if (rc == 0 && changed == 0)
        rc = ERR_CONFLICT;
    if (rc == 0 && reg->token_hash)
        rc = db_run(c, &worker_q[W_LOSE_RUNS], args, 3, NULL);
    return rc;
}

/* PostgreSQL's registration is one statement, committed alone; SQLite's two share its
 * write transaction (what on_write is there). */
int db_worker_register(struct store *st, const struct worker_reg *reg)
{
    struct worker_reg r = *reg; /* a copy: the body's context is not const */

    return db_on_write(st, register_body, &r);
}

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
