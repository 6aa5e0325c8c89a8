/* store/pg/workers: registering a worker, in one statement (the upsert, and a
 * re-registering external worker's lost runs). The rest of the workers' rows is written
 * once, in store/workers.c. */
#include "store/pg/pg_int.h"
#include "store/rules.h"
#include "core/err.h"

#include <stdlib.h>
#include <string.h>

/* The upsert's WHERE keeps an internal row from being taken over by an external
 * registration, and the other way round; an external worker registering again
 * loses its running tasks in the same statement. */
static const struct pg_query register_q = {
    "registering a worker",
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
    "FROM w)) SELECT 1 FROM w"};

int pg_worker_register(struct store *st, const struct worker_reg *reg)
{
    struct num n;
    bool ok = true;
    char *caps = reg->capabilities ? pg_json_text(reg->capabilities, &ok) : strdup("{}");
    const char *v[6] = {reg->id, reg->backend_type, num(&n, reg->now), caps, reg->token_hash,
                        reg->name_prefix};
    int rc, changed = 0;

    if (!caps || !ok) {
        free(caps);
        return ERR_NOMEM;
    }
    rc = pg_write(st, &register_q, 6, v, &changed);
    free(caps);
    return rc == 0 && changed == 0 ? ERR_CONFLICT : rc;
}
