/* store/sqlite/workers: worker rows (register, heartbeat, status, reads). */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"

#include <stdlib.h>
#include <string.h>

/* ---- workers ---- */

int sq_worker_register(struct store *st, const struct worker_reg *reg)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (!c)
        return ERR_STORE;
    /* The upsert's WHERE keeps an internal row from being taken over by an external
     * registration, and the other way round. */
    if (sqlite3_prepare_v2(c->db,
                           "INSERT INTO workers (id, backend_type, status, last_heartbeat, "
                           "capabilities, registered_at, token_hash, name_prefix) VALUES "
                           "(?1, ?2, 'idle', ?3, ?4, ?3, ?5, ?6) ON CONFLICT (id) DO UPDATE SET "
                           "backend_type = ?2, status = 'idle', last_heartbeat = ?3, "
                           "capabilities = ?4, token_hash = ?5, name_prefix = ?6, "
                           "current_task_id = NULL WHERE (workers.name_prefix IS NULL) = "
                           "(?6 IS NULL)",
                           -1, &s, NULL) != SQLITE_OK)
        return sq_writer_end(ss, sq_fail_db(c->db, "registering a worker"));
    sq_bind_text(s, 1, reg->id);
    sq_bind_text(s, 2, reg->backend_type);
    sqlite3_bind_int64(s, 3, reg->now);
    rc = sq_bind_object(s, 4, reg->capabilities);
    sq_bind_text(s, 5, reg->token_hash);
    sq_bind_text(s, 6, reg->name_prefix);
    if (rc == 0 && sqlite3_step(s) != SQLITE_DONE)
        rc = sq_fail_db(c->db, "registering a worker");
    else if (rc == 0 && sqlite3_changes(c->db) == 0)
        rc = ERR_CONFLICT;
    sqlite3_finalize(s);
    if (rc == 0 && reg->token_hash)
        rc = sq_run_update(c,
                        "UPDATE tasks SET status = 'failed', completed_at = ?2, updated_at = ?2, "
                        "error = 'worker ' || worker_id || ' registered again while running this "
                        "task; the run was lost' WHERE status = 'running' AND worker_id = ?1",
                        reg->id, reg->now, 0, NULL);
    return sq_writer_end(ss, rc);
}

int sq_worker_token(struct store *st, const char *id, char **token_hash)
{
    struct rd r = sq_rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (sqlite3_prepare_v2(r.c->db, "SELECT token_hash FROM workers WHERE id = ?1", -1, &s,
                           NULL) != SQLITE_OK) {
        rc = sq_fail_db(r.c->db, "reading a worker");
    } else {
        sq_bind_text(s, 1, id);
        if (sqlite3_step(s) == SQLITE_ROW)
            *token_hash = sq_col_dup(s, 0);
        else
            rc = ERR_NOTFOUND;
    }
    sqlite3_finalize(s);
    sq_rd_put(&r);
    return rc;
}

int sq_worker_heartbeat(struct store *st, const char *const *ids, size_t n, int64_t now)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (!c)
        return ERR_STORE;
    if (sqlite3_prepare_v2(c->db, "UPDATE workers SET last_heartbeat = ?2, status = CASE "
                                  "WHEN status = 'offline' THEN 'idle' ELSE status END "
                                  "WHERE id = ?1", -1, &s, NULL) != SQLITE_OK)
        return sq_writer_end(ss, sq_fail_db(c->db, "heartbeat"));
    for (size_t i = 0; rc == 0 && i < n; i++) {
        sq_bind_text(s, 1, ids[i]);
        sqlite3_bind_int64(s, 2, now);
        if (sqlite3_step(s) != SQLITE_DONE)
            rc = sq_fail_db(c->db, "heartbeat");
        sqlite3_reset(s);
    }
    sqlite3_finalize(s);
    return sq_writer_end(ss, rc);
}

int sq_worker_set_status(struct store *st, const char *id, const char *status,
                         json_t *metadata)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (!c)
        return ERR_STORE;
    if (sqlite3_prepare_v2(c->db, "UPDATE workers SET status = ?2, current_task_id = NULL, "
                                  "metadata = COALESCE(?3, metadata) WHERE id = ?1", -1, &s,
                           NULL) != SQLITE_OK)
        return sq_writer_end(ss, sq_fail_db(c->db, "worker status"));
    sq_bind_text(s, 1, id);
    sq_bind_text(s, 2, status);
    rc = sq_bind_json(s, 3, metadata);
    if (rc == 0 && sqlite3_step(s) != SQLITE_DONE)
        rc = sq_fail_db(c->db, "worker status");
    sqlite3_finalize(s);
    return sq_writer_end(ss, rc);
}

#define WORKER_COLS                                                                        \
    "id, backend_type, status, last_heartbeat, current_task_id, capabilities, metadata, "   \
    "tasks_completed, tasks_failed, registered_at, name_prefix IS NOT NULL"

static json_t *row_worker(sqlite3_stmt *s)
{
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:o, s:b}", "id",
                     sq_col_str(s, 0), "backend_type", sq_col_str(s, 1), "status", sq_col_str(s, 2),
                     "last_heartbeat", sq_col_time(s, 3), "current_task_id", sq_col_str(s, 4),
                     "capabilities", sq_col_json_or_null(s, 5), "metadata", sq_col_json_or_null(s, 6),
                     "tasks_completed", (json_int_t)sqlite3_column_int64(s, 7), "tasks_failed",
                     (json_int_t)sqlite3_column_int64(s, 8), "registered_at", sq_col_time(s, 9),
                     "internal", sqlite3_column_int(s, 10));
}

int sq_worker_list(struct store *st, const char *status, const char *backend_type,
                   json_t **out)
{
    struct rd r = sq_rd_get(st);
    sqlite3_stmt *s = NULL;
    json_t *arr = json_array();
    int rc = 0;

    if (!arr) {
        rc = ERR_NOMEM;
        goto out;
    }
    if (sqlite3_prepare_v2(r.c->db, "SELECT " WORKER_COLS " FROM workers WHERE (?1 IS NULL OR "
                                    "status = ?1) AND (?2 IS NULL OR backend_type = ?2) "
                                    "ORDER BY id", -1, &s, NULL) != SQLITE_OK) {
        rc = sq_fail_db(r.c->db, "listing workers");
        goto out;
    }
    sq_bind_text(s, 1, status);
    sq_bind_text(s, 2, backend_type);
    while (rc == 0 && sqlite3_step(s) == SQLITE_ROW) {
        json_t *o = row_worker(s);
        if (!o || json_array_append_new(arr, o))
            rc = ERR_NOMEM;
    }
    if (rc == 0) {
        *out = arr;
        arr = NULL;
    }
out:
    sqlite3_finalize(s);
    json_decref(arr);
    sq_rd_put(&r);
    return rc;
}

int sq_worker_get(struct store *st, const char *id, json_t **out)
{
    struct rd r = sq_rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc;

    if (sqlite3_prepare_v2(r.c->db, "SELECT " WORKER_COLS " FROM workers WHERE id = ?1", -1, &s,
                           NULL) != SQLITE_OK) {
        rc = sq_fail_db(r.c->db, "reading a worker");
    } else {
        sq_bind_text(s, 1, id);
        if (sqlite3_step(s) == SQLITE_ROW) {
            *out = row_worker(s);
            rc = *out ? 0 : ERR_NOMEM;
        } else {
            rc = ERR_NOTFOUND;
        }
    }
    sqlite3_finalize(s);
    sq_rd_put(&r);
    return rc;
}

int sq_worker_counts(struct store *st, int64_t counts[3])
{
    struct rd r = sq_rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    counts[0] = counts[1] = counts[2] = 0;
    if (sqlite3_prepare_v2(r.c->db, "SELECT status, count(*) FROM workers GROUP BY status", -1,
                           &s, NULL) != SQLITE_OK) {
        rc = sq_fail_db(r.c->db, "counting workers");
    } else {
        while (sqlite3_step(s) == SQLITE_ROW) {
            const char *name = (const char *)sqlite3_column_text(s, 0);
            int i = !strcmp(name, WORKER_IDLE) ? 0 : !strcmp(name, WORKER_BUSY) ? 1 : 2;
            counts[i] += sqlite3_column_int64(s, 1);
        }
    }
    sqlite3_finalize(s);
    sq_rd_put(&r);
    return rc;
}
