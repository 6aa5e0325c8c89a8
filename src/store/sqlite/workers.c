/* store/sqlite/workers: registering a worker, in two statements inside the write
 * transaction: the upsert, then (an external worker) the runs it lost. The rest of the
 * workers' rows is written once, in store/workers.c. */
#include "store/sqlite/sqlite_int.h"
#include "store/rules.h"
#include "core/err.h"

/* The upsert's WHERE keeps an internal row from being taken over by an external
 * registration, and the other way round. */
static const struct sq_query register_q = {
    "registering a worker",
    "INSERT INTO workers (id, backend_type, status, last_heartbeat, "
    "capabilities, registered_at, token_hash, name_prefix) VALUES (?1, ?2, "
    "'idle', ?3, ?4, ?3, ?5, ?6) ON CONFLICT (id) DO UPDATE SET backend_type = "
    "?2, status = 'idle', last_heartbeat = ?3, capabilities = ?4, token_hash = "
    "?5, name_prefix = ?6, current_task_id = NULL WHERE (workers.name_prefix IS "
    "NULL) = (?6 IS NULL)"};

static const struct sq_query lose_runs_q = {
    "registering a worker",
    "UPDATE tasks SET status = 'failed', completed_at = ?2, updated_at = ?2, "
    "error = " RULE_ERR_REREGISTERED " WHERE status = 'running' AND worker_id "
    "= ?1"};

/* The registration, inside sq_in_write: the upsert, then (an external worker) the
 * runs it lost. ERR_CONFLICT when the upsert's WHERE kept the row. */
static int registration(struct db_conn *dc, void *ctx)
{
    struct conn *c = sq_conn(dc);
    const struct worker_reg *reg = ctx;
    const struct db_arg args[6] = {DB_T(reg->id), DB_T(reg->backend_type), DB_I(reg->now),
                                   DB_O(reg->capabilities), DB_T(reg->token_hash),
                                   DB_T(reg->name_prefix)};
    int changed = 0;
    int rc = sq_run(c, &register_q, args, 6, &changed);

    if (rc == 0 && changed == 0)
        rc = ERR_CONFLICT;
    if (rc == 0 && reg->token_hash)
        rc = sq_run(c, &lose_runs_q, (struct db_arg[]){DB_T(reg->id), DB_I(reg->now)},
                    2, NULL);
    return rc;
}

int sq_worker_register(struct store *st, const struct worker_reg *reg)
{
    struct worker_reg r = *reg; /* a copy: the body's context is not const */

    return sq_in_write(st, registration, &r);
}
