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

static int upsert(struct conn *c, const struct worker_reg *reg)
{
    struct sq_cursor cur;
    int rc = sq_open_q(&cur, c, &worker_q[W_REGISTER]);

    if (rc == 0) {
        sq_bind_text(cur.s, 1, reg->id);
        sq_bind_text(cur.s, 2, reg->backend_type);
        sqlite3_bind_int64(cur.s, 3, reg->now);
        rc = sq_bind_object(cur.s, 4, reg->capabilities);
    }
    if (rc == 0) {
        sq_bind_text(cur.s, 5, reg->token_hash);
        sq_bind_text(cur.s, 6, reg->name_prefix);
        rc = sq_exec(&cur);
    }
    if (rc == 0 && sqlite3_changes(c->db) == 0)
        rc = ERR_CONFLICT;
    return sq_end(&cur, rc);
}

int sq_worker_register(struct store *st, const struct worker_reg *reg)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    int rc;

    if (!c)
        return ERR_STORE;
    rc = upsert(c, reg);
    if (rc == 0 && reg->token_hash)
        rc = sq_run(c, &worker_q[W_LOSE_RUNS], (struct sq_arg[]){SQ_T(reg->id), SQ_I(reg->now)},
                    2, NULL);
    return sq_writer_end(ss, rc);
}

int sq_worker_token(struct store *st, const char *id, char **token_hash)
{
    struct rd r = sq_rd_get(st);
    struct sq_cursor cur;
    int rc = sq_open_q(&cur, r.c, &worker_q[W_TOKEN]);

    if (rc == 0) {
        sq_bind_text(cur.s, 1, id);
        rc = rows_one(&cur.base);
    }
    if (rc == 0)
        *token_hash = rows_dup(&cur.base.row, 0);
    rc = sq_end(&cur, rc);
    sq_rd_put(&r);
    return rc;
}

int sq_worker_heartbeat(struct store *st, const char *const *ids, size_t n, int64_t now)
{
    json_t *arr = json_array();
    char *text = NULL;
    int rc = arr ? 0 : ERR_NOMEM;

    for (size_t i = 0; rc == 0 && i < n; i++)
        if (json_array_append_new(arr, json_string(ids[i])))
            rc = ERR_NOMEM;
    if (rc == 0 && !(text = json_dumps(arr, JSON_COMPACT)))
        rc = ERR_NOMEM;
    if (rc == 0)
        rc = sq_write(st, &worker_q[W_HEARTBEAT], (struct sq_arg[]){SQ_T(text), SQ_I(now)}, 2,
                      NULL);
    free(text);
    json_decref(arr);
    return rc;
}

int sq_worker_set_status(struct store *st, const char *id, const char *status,
                         json_t *metadata)
{
    char *meta = metadata ? json_dumps(metadata, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    int rc = metadata && !meta ? ERR_NOMEM : 0;

    if (rc == 0)
        rc = sq_write(st, &worker_q[W_STATUS],
                      (struct sq_arg[]){SQ_T(id), SQ_T(status), SQ_T(meta)}, 3, NULL);
    free(meta);
    return rc;
}

int sq_worker_list(struct store *st, const char *status, const char *backend_type,
                   json_t **out)
{
    return sq_read(st, &worker_q[W_LIST], (struct sq_arg[]){SQ_T(status), SQ_T(backend_type)},
                   2, rows_worker, out);
}

int sq_worker_get(struct store *st, const char *id, json_t **out)
{
    return sq_read_one(st, &worker_q[W_BY_ID], &SQ_T(id), 1, rows_worker, out);
}

int sq_worker_counts(struct store *st, int64_t counts[3])
{
    struct rd r = sq_rd_get(st);
    struct sq_cursor cur;
    int64_t n[3] = {0, 0, 0};
    int rc = sq_open_q(&cur, r.c, &worker_q[W_COUNTS]);

    while (rc == 0 && (rc = sq_next(&cur)) == STORE_ROW) {
        n[rows_worker_slot((const char *)sqlite3_column_text(cur.s, 0))] +=
            sqlite3_column_int64(cur.s, 1);
        rc = 0;
    }
    rc = sq_end(&cur, rc);
    sq_rd_put(&r);
    if (rc == 0)
        memcpy(counts, n, sizeof(n));
    return rc;
}
