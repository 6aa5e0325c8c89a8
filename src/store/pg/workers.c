/* store/pg/workers: worker rows (register, heartbeat, status, reads). */
#include "store/pg/pg_int.h"
#include "store/rules.h"
#include "core/err.h"
#include "core/log.h"
#include "core/buf.h"

#include <stdlib.h>
#include <string.h>

#define WORKER_COLS                                                                        \
    "id, backend_type, status, te_us(last_heartbeat), current_task_id, capabilities::text, " \
    "metadata::text, tasks_completed, tasks_failed, te_us(registered_at), "                \
    "name_prefix IS NOT NULL"

enum {
    W_REGISTER,
    W_TOKEN,
    W_HEARTBEAT,
    W_STATUS,
    W_LIST,
    W_BY_ID,
    W_COUNTS,
    W_N
};

static const struct pg_query worker_q[W_N] = {
    /* The upsert's WHERE keeps an internal row from being taken over by an external
     * registration, and the other way round; an external worker registering again
     * loses its running tasks in the same statement. */
    [W_REGISTER] = {"registering a worker",
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
    [W_TOKEN] = {"reading a worker", "SELECT token_hash FROM workers WHERE id = $1"},
    [W_HEARTBEAT] = {"heartbeat",
                     "UPDATE workers SET last_heartbeat = te_ts($2), status = CASE WHEN status = "
                     "'offline' THEN 'idle' ELSE status END WHERE id = ANY ($1::text[])"},
    [W_STATUS] = {"worker status",
                  "UPDATE workers SET status = $2, current_task_id = NULL, metadata = "
                  "COALESCE($3::jsonb, metadata) WHERE id = $1"},
    [W_LIST] = {"listing workers",
                "SELECT " WORKER_COLS " FROM workers WHERE ($1::text IS NULL OR status = $1) "
                "AND ($2::text IS NULL OR backend_type = $2) ORDER BY id"},
    [W_BY_ID] = {"reading a worker", "SELECT " WORKER_COLS " FROM workers WHERE id = $1"},
    [W_COUNTS] = {"counting workers", "SELECT status, count(*) FROM workers GROUP BY status"},
};

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
    rc = pg_write(st, &worker_q[W_REGISTER], 6, v, &changed);
    free(caps);
    return rc == 0 && changed == 0 ? ERR_CONFLICT : rc;
}

int pg_worker_token(struct store *st, const char *id, char **token_hash)
{
    const char *v[1] = {id};

    return pg_read_with(st, &worker_q[W_TOKEN], 1, v, rows_take_text, token_hash);
}

int pg_worker_heartbeat(struct store *st, const char *const *ids, size_t n, int64_t now)
{
    struct buf arr;
    struct num x;
    int rc;

    if (n == 0)
        return 0;
    buf_init(&arr, SIZE_MAX / 2);
    rc = buf_append(&arr, "{", 1);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = pg_array_add(&arr, ids[i], false);
    if (rc == 0)
        rc = buf_append(&arr, "}", 1);
    if (rc == 0) {
        const char *v[2] = {arr.data, num(&x, now)};
        rc = pg_write(st, &worker_q[W_HEARTBEAT], 2, v, NULL);
    }
    buf_reset(&arr);
    return rc;
}

int pg_worker_set_status(struct store *st, const char *id, const char *status,
                         json_t *metadata)
{
    bool ok = true;
    char *meta = pg_json_text(metadata, &ok);
    const char *v[3] = {id, status, meta};
    int rc = ok ? pg_write(st, &worker_q[W_STATUS], 3, v, NULL) : ERR_NOMEM;

    free(meta);
    return rc;
}

int pg_worker_list(struct store *st, const char *status, const char *backend_type,
                   json_t **out)
{
    const char *v[2] = {status, backend_type};

    return pg_read(st, &worker_q[W_LIST], 2, v, rows_worker, out);
}

int pg_worker_get(struct store *st, const char *id, json_t **out)
{
    const char *v[1] = {id};

    return pg_read_one(st, &worker_q[W_BY_ID], 1, v, rows_worker, out);
}

int pg_worker_counts(struct store *st, int64_t counts[3])
{
    return pg_read_with(st, &worker_q[W_COUNTS], 0, NULL, rows_take_worker_counts, counts);
}
