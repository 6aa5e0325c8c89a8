/* store/pg/workers: worker rows (register, heartbeat, status, reads). */
#include "store/pg/pg_int.h"
#include "core/err.h"
#include "core/log.h"
#include "core/buf.h"

#include <stdlib.h>
#include <string.h>

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
    /* The upsert's WHERE keeps an internal row from being taken over by an external
     * registration, and the other way round; an external worker registering again
     * loses its running tasks in the same statement. */
    rc = pg_simple(st,
                "WITH w AS (INSERT INTO workers (id, backend_type, status, last_heartbeat, "
                "capabilities, registered_at, token_hash, name_prefix) VALUES ($1, $2, 'idle', "
                "te_ts($3), $4::jsonb, te_ts($3), $5, $6) ON CONFLICT (id) DO UPDATE SET "
                "backend_type = $2, status = 'idle', last_heartbeat = te_ts($3), capabilities = "
                "$4::jsonb, token_hash = $5, name_prefix = $6, current_task_id = NULL WHERE "
                "(workers.name_prefix IS NULL) = ($6::text IS NULL) RETURNING id), "
                "lost AS (UPDATE tasks SET status = 'failed', completed_at = te_ts($3), updated_at "
                "= te_ts($3), error = 'worker ' || worker_id || ' registered again while running "
                "this task; the run was lost' WHERE status = 'running' AND worker_id = $1 AND "
                "$5::text IS NOT NULL AND EXISTS (SELECT 1 FROM w)) "
                "SELECT 1 FROM w",
                6, v, &changed);
    free(caps);
    return rc == 0 && changed == 0 ? ERR_CONFLICT : rc;
}

int pg_worker_token(struct store *st, const char *id, char **token_hash)
{
    struct pgconn *pc = pg_conn_get(P(st));
    const char *v[1] = {id};
    int rc;
    PGresult *r = pg_run_sql(pc, "SELECT token_hash FROM workers WHERE id = $1", 1, v, &rc);

    if (r && PQntuples(r) == 0)
        rc = ERR_NOTFOUND;
    else if (r)
        *token_hash = pg_get_dup(r, 0, 0);
    PQclear(r);
    pg_conn_put(P(st), pc);
    return rc;
}

int pg_worker_heartbeat(struct store *st, const char *const *ids, size_t n, int64_t now)
{
    struct buf arr;
    struct num x;
    int rc = 0;

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
        rc = pg_simple(st, "UPDATE workers SET last_heartbeat = te_ts($2), status = CASE WHEN "
                        "status = 'offline' THEN 'idle' ELSE status END WHERE id = ANY "
                        "($1::text[])", 2, v, NULL);
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
    int rc = ok ? pg_simple(st, "UPDATE workers SET status = $2, current_task_id = NULL, metadata = "
                             "COALESCE($3::jsonb, metadata) WHERE id = $1", 3, v, NULL)
                : ERR_NOMEM;

    free(meta);
    return rc;
}

#define WORKER_COLS                                                                        \
    "id, backend_type, status, te_us(last_heartbeat), current_task_id, capabilities::text, " \
    "metadata::text, tasks_completed, tasks_failed, te_us(registered_at), "                \
    "name_prefix IS NOT NULL"

static json_t *row_worker(PGresult *r, int i)
{
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:o, s:b}", "id",
                     pg_get_str(r, i, 0), "backend_type", pg_get_str(r, i, 1), "status",
                     pg_get_str(r, i, 2), "last_heartbeat", pg_get_time(r, i, 3), "current_task_id",
                     pg_get_str(r, i, 4), "capabilities", pg_get_json_or_null(r, i, 5), "metadata",
                     pg_get_json_or_null(r, i, 6), "tasks_completed",
                     (json_int_t)pg_get_i64(r, i, 7), "tasks_failed", (json_int_t)pg_get_i64(r, i, 8),
                     "registered_at", pg_get_time(r, i, 9), "internal",
                     !strcmp(PQgetvalue(r, i, 10), "t"));
}

int pg_worker_list(struct store *st, const char *status, const char *backend_type,
                   json_t **out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    const char *v[2] = {status, backend_type};
    json_t *arr = json_array();
    int rc = arr ? 0 : ERR_NOMEM;
    PGresult *r = NULL;

    if (rc == 0)
        r = pg_run_sql(pc, "SELECT " WORKER_COLS " FROM workers WHERE ($1::text IS NULL OR status "
                        "= $1) AND ($2::text IS NULL OR backend_type = $2) ORDER BY id", 2, v,
                    &rc);
    for (int i = 0; r && rc == 0 && i < PQntuples(r); i++) {
        json_t *o = row_worker(r, i);
        if (!o || json_array_append_new(arr, o))
            rc = ERR_NOMEM;
    }
    PQclear(r);
    pg_conn_put(P(st), pc);
    if (rc == 0)
        *out = arr;
    else
        json_decref(arr);
    return rc;
}

int pg_worker_get(struct store *st, const char *id, json_t **out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    const char *v[1] = {id};
    int rc;
    PGresult *r = pg_run_sql(pc, "SELECT " WORKER_COLS " FROM workers WHERE id = $1", 1, v, &rc);

    if (r && PQntuples(r) == 0)
        rc = ERR_NOTFOUND;
    if (r && rc == 0) {
        *out = row_worker(r, 0);
        rc = *out ? 0 : ERR_NOMEM;
    }
    PQclear(r);
    pg_conn_put(P(st), pc);
    return rc;
}

int pg_worker_counts(struct store *st, int64_t counts[3])
{
    struct pgconn *pc = pg_conn_get(P(st));
    int rc;
    PGresult *r = pg_run_sql(pc, "SELECT status, count(*) FROM workers GROUP BY status", 0, NULL,
                          &rc);

    counts[0] = counts[1] = counts[2] = 0;
    for (int i = 0; r && i < PQntuples(r); i++) {
        const char *name = PQgetvalue(r, i, 0);
        int k = !strcmp(name, WORKER_IDLE) ? 0 : !strcmp(name, WORKER_BUSY) ? 1 : 2;
        counts[k] += pg_get_i64(r, i, 1);
    }
    PQclear(r);
    pg_conn_put(P(st), pc);
    return rc;
}
