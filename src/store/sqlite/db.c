/* store/sqlite/db: the SQLite backend's connections (one writer, a pool of readers),
 * transactions, the statement cache, value binding and column reading, open and
 * close, and the ops table (store_sqlite_ops). See sqlite_int.h for the DESIGN. */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"
#include "core/clock.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char export_logs_sql[] =
    "SELECT json_group_array(json_object('timestamp', " SQ_TIME("ts") ", 'level', CASE level "
    "WHEN 0 THEN 'debug' WHEN 1 THEN 'info' WHEN 2 THEN 'warning' WHEN 3 THEN 'error' WHEN 4 "
    "THEN 'critical' ELSE 'info' END, 'message', message, 'context', json(context))) FROM "
    "(SELECT ts, level, message, context FROM task_logs WHERE task_id = ?1 ORDER BY id)";

static const char export_convs_sql[] =
    "SELECT json_group_array(json_object('id', c.id, 'task_id', c.task_id, 'session_id', "
    "c.session_id, 'model_name', c.model_name, 'model_config', json(c.model_config), "
    "'llm_config', json(c.model_config), 'started_at', " SQ_TIME("c.started_at") ", "
    "'ended_at', CASE WHEN c.ended_at IS NULL THEN NULL ELSE " SQ_TIME("c.ended_at") " END, "
    "'total_messages', c.total_messages, 'total_tokens', c.total_tokens, 'metadata', "
    "json(c.metadata), 'success', json(c.metadata -> '$.success'), 'messages', "
    "(SELECT json_group_array(json_object('timestamp', " SQ_TIME("m.ts") ", 'role', m.role, "
    "'content', json(m.content), 'step', m.step, 'metadata', json(m.metadata))) FROM (SELECT "
    "ts, role, content, step, metadata FROM llm_messages WHERE conversation_seq = c.seq "
    "ORDER BY id) m), 'chat', (SELECT json_group_array(json_object('role', m.role, 'content', "
    "CASE WHEN json_type(m.content) = 'text' THEN m.content ->> '$' ELSE m.content END)) FROM "
    "(SELECT role, content FROM llm_messages WHERE conversation_seq = c.seq ORDER BY id) m))) "
    "FROM (SELECT * FROM llm_conversations WHERE task_id = ?1 ORDER BY seq) c";

/* Reads on the export path are cached too: one prepare per connection, not per task. */
static const char *const sql_text[Q_N] = {
    [Q_TASK_INSERT] =
        "INSERT INTO tasks (" TASK_INSERT_COLS ") VALUES (?1,?2,'pending',?3,?4,?5,?6,?7,?8,?9,"
        "NULL,NULL,NULL,NULL,?10,?11,?12,?12,NULL,NULL,NULL)",
    [Q_TASK_BY_ID] = "SELECT " TASK_COLS " FROM tasks WHERE id = ?1",
    [Q_TASK_BY_KEY] = "SELECT " TASK_COLS " FROM tasks WHERE idempotency_key = ?1",
    [Q_TASK_CANCEL] =
        "UPDATE tasks SET status = 'cancelled', completed_at = ?2, updated_at = ?2, "
        "error = COALESCE(error, CASE status WHEN 'running' THEN "
        "'cancelled by request while running' ELSE 'cancelled by request' END) "
        "WHERE id = ?1 AND status IN ('pending', 'running') RETURNING " TASK_COLS,
    [Q_TASK_CLAIM_ANY] =
        "UPDATE tasks SET status = 'running', worker_id = ?1, lease_token = ?2, "
        "started_at = MAX(?3, created_at), updated_at = MAX(?3, created_at), deadline_at = "
        "MAX(?3, created_at) + timeout_seconds * 1000000 "
        "WHERE seq = (SELECT seq FROM tasks WHERE status = 'pending' AND backend_type = ?4 "
        "ORDER BY priority DESC, seq LIMIT 1) RETURNING " TASK_COLS,
    [Q_TASK_FINISH] =
        "UPDATE tasks SET status = ?3, result = ?4, error = ?5, completed_at = ?6, "
        "updated_at = ?6 WHERE id = ?1 AND status = 'running' AND lease_token = ?2 "
        "RETURNING worker_id",
    [Q_TASK_LEASE] = "SELECT status, lease_token FROM tasks WHERE id = ?1",
    [Q_WORKER_BUSY] = "UPDATE workers SET status = 'busy', current_task_id = ?2, "
                      "last_heartbeat = ?3 WHERE id = ?1",
    [Q_WORKER_DONE] =
        "UPDATE workers SET status = CASE WHEN status = 'offline' THEN 'offline' ELSE "
        "'idle' END, current_task_id = NULL, tasks_completed = tasks_completed + ?2, "
        "tasks_failed = tasks_failed + ?3 WHERE id = ?1",
    [Q_CONV_FINISH] = "UPDATE llm_conversations SET ended_at = COALESCE(ended_at, ?2), "
                      "metadata = json_set(metadata, '$.success', json(?3)) WHERE task_id = ?1",
    [Q_LOG_INSERT] =
        "INSERT INTO task_logs (task_id, ts, level, message, context) VALUES (?1,?2,?3,?4,?5)",
    [Q_CONV_FIND] = "SELECT seq FROM llm_conversations WHERE task_id = ?1 AND session_id = ?2",
    [Q_CONV_INSERT] =
        "INSERT INTO llm_conversations (id, task_id, session_id, model_config, started_at) "
        "VALUES (?1, ?2, ?3, COALESCE((SELECT json_extract(parameters, '$.agent_config') "
        "FROM tasks WHERE id = ?2), '{}'), ?4) RETURNING seq",
    [Q_CONV_BUMP] = "UPDATE llm_conversations SET total_messages = total_messages + 1, "
                    "total_tokens = CASE WHEN ?2 IS NULL THEN total_tokens ELSE "
                    "COALESCE(total_tokens, 0) + ?2 END, ended_at = ?3, "
                    "model_name = COALESCE(model_name, ?4) WHERE seq = ?1",
    [Q_MSG_INSERT] = "INSERT INTO llm_messages (conversation_seq, ts, role, content, step, "
                     "metadata) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [Q_LOGS_PAGE] = "SELECT ts, level, message, context FROM task_logs "
                    "WHERE task_id = ?1 AND level >= ?2 ORDER BY id LIMIT ?3 OFFSET ?4",
    [Q_TASK_CONVS] = "SELECT " CONV_COLS " FROM llm_conversations c WHERE c.task_id = ?1 "
                     "ORDER BY c.seq",
    [Q_CONV_MSGS] = "SELECT ts, role, content, step, metadata FROM llm_messages "
                    "WHERE conversation_seq = ?1 ORDER BY id",
    [Q_EXPORT_LOGS] = export_logs_sql,
    [Q_EXPORT_CONVS] = export_convs_sql,
};

int sq_fail_db(sqlite3 *db, const char *what)
{
    log_error("sqlite: %s: %s", what, sqlite3_errmsg(db));
    return ERR_STORE;
}

int sq_exec_sql(sqlite3 *db, const char *sql)
{
    char *msg = NULL;

    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        log_error("sqlite: %s", msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return ERR_STORE;
    }
    return 0;
}

sqlite3_stmt *sq_stmt(struct conn *c, enum q q)
{
    if (!c->stmts[q] && sqlite3_prepare_v3(c->db, sql_text[q], -1, SQLITE_PREPARE_PERSISTENT,
                                           &c->stmts[q], NULL) != SQLITE_OK) {
        log_error("sqlite: prepare: %s", sqlite3_errmsg(c->db));
        return NULL;
    }
    return c->stmts[q];
}

void sq_done(sqlite3_stmt *s)
{
    if (s) {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
    }
}

void sq_bind_text(sqlite3_stmt *s, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, i);
}

/* Binds a JSON value as compact text (NULL stays NULL). ERR_NOMEM if it cannot dump. */
int sq_bind_json(sqlite3_stmt *s, int i, const json_t *v)
{
    char *text;

    if (!v) {
        sqlite3_bind_null(s, i);
        return 0;
    }
    text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text)
        return ERR_NOMEM;
    sqlite3_bind_text(s, i, text, -1, free);
    return 0;
}

/* Binds v as JSON text, or the literal "{}" when v is NULL. */
int sq_bind_object(sqlite3_stmt *s, int i, const json_t *v)
{
    if (!v) {
        sqlite3_bind_text(s, i, "{}", 2, SQLITE_STATIC);
        return 0;
    }
    return sq_bind_json(s, i, v);
}

char *sq_col_dup(sqlite3_stmt *s, int i)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    return t ? strdup((const char *)t) : NULL;
}

json_t *sq_col_json(sqlite3_stmt *s, int i)
{
    const char *t = (const char *)sqlite3_column_text(s, i);
    return t ? json_loads(t, JSON_DECODE_ANY, NULL) : NULL;
}

json_t *sq_col_json_or_null(sqlite3_stmt *s, int i)
{
    json_t *v = sq_col_json(s, i);
    return v ? v : json_null();
}

json_t *sq_col_time(sqlite3_stmt *s, int i)
{
    char text[40];

    if (sqlite3_column_type(s, i) == SQLITE_NULL)
        return json_null();
    clock_format(sqlite3_column_int64(s, i), text, sizeof(text));
    return json_string(text);
}

json_t *sq_col_str(sqlite3_stmt *s, int i)
{
    const char *t = (const char *)sqlite3_column_text(s, i);
    return t ? json_string(t) : json_null();
}

/* ---- connections ---- */

static int conn_open(struct conn *c, const char *path)
{
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;

    memset(c, 0, sizeof(*c));
    if (sqlite3_open_v2(path, &c->db, flags, NULL) != SQLITE_OK) {
        int rc = sq_fail_db(c->db, path);
        sqlite3_close(c->db);
        c->db = NULL;
        return rc;
    }
    sqlite3_busy_timeout(c->db, 10000);
    /* synchronous=FULL: a committed task survives a power cut, not just a crash. */
    return sq_exec_sql(c->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
                           "PRAGMA foreign_keys=ON; PRAGMA temp_store=MEMORY;");
}

static void conn_close(struct conn *c)
{
    for (int i = 0; i < Q_N; i++)
        sqlite3_finalize(c->stmts[i]);
    sqlite3_close(c->db);
    memset(c, 0, sizeof(*c));
}

struct conn *sq_writer_begin(struct sqlite_store *s)
{
    pthread_mutex_lock(&s->wlock);
    if (sq_exec_sql(s->writer.db, "BEGIN IMMEDIATE") < 0) {
        pthread_mutex_unlock(&s->wlock);
        return NULL;
    }
    return &s->writer;
}

/* Commits when rc >= 0, else rolls back; releases the writer; returns rc (or
 * ERR_STORE when the commit itself fails). */
int sq_writer_end(struct sqlite_store *s, int rc)
{
    if (rc >= 0) {
        if (sq_exec_sql(s->writer.db, "COMMIT") < 0) {
            sq_exec_sql(s->writer.db, "ROLLBACK");
            rc = ERR_STORE;
        }
    } else if (!sqlite3_get_autocommit(s->writer.db)) {
        sq_exec_sql(s->writer.db, "ROLLBACK");
    }
    pthread_mutex_unlock(&s->wlock);
    return rc;
}

static struct conn *reader_get(struct sqlite_store *s)
{
    struct conn *c = NULL;

    pthread_mutex_lock(&s->rlock);
    while (!c) {
        for (int i = 0; i < N_READERS && !c; i++)
            if (!s->readers[i].busy)
                c = &s->readers[i];
        if (!c)
            pthread_cond_wait(&s->rcond, &s->rlock);
    }
    c->busy = true;
    pthread_mutex_unlock(&s->rlock);
    return c;
}

static void reader_put(struct sqlite_store *s, struct conn *c)
{
    pthread_mutex_lock(&s->rlock);
    c->busy = false;
    pthread_cond_signal(&s->rcond);
    pthread_mutex_unlock(&s->rlock);
}

static void ensure_parent_dir(const char *path)
{
    char *dir = strdup(path), *slash;

    if (!dir)
        return;
    slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        for (char *p = dir + 1; *p; p++) {
            if (*p == '/') {
                *p = '\0';
                mkdir(dir, 0755);
                *p = '/';
            }
        }
        mkdir(dir, 0755);
    }
    free(dir);
}

static void sq_close(struct store *st);

static int sq_open(const char *path, struct store **out)
{
    struct sqlite_store *s = calloc(1, sizeof(*s));
    int rc = ERR_NOMEM;

    if (!s)
        return ERR_NOMEM;
    s->base.ops = &store_sqlite_ops;
    pthread_mutex_init(&s->wlock, NULL);
    pthread_mutex_init(&s->rlock, NULL);
    pthread_cond_init(&s->rcond, NULL);
    s->path = strdup(path);
    if (!s->path)
        goto fail;
    if (strcmp(path, ":memory:") != 0)
        ensure_parent_dir(path);
    rc = conn_open(&s->writer, path);
    if (rc < 0)
        goto fail;
    rc = sq_migrate(s->writer.db);
    if (rc < 0)
        goto fail;
    for (int i = 0; i < N_READERS; i++) {
        /* An in-memory database is private to its connection: read through the writer. */
        if (!strcmp(path, ":memory:"))
            break;
        rc = conn_open(&s->readers[i], path);
        if (rc < 0)
            goto fail;
    }
    *out = &s->base;
    return 0;
fail:
    sq_close(&s->base);
    return rc < 0 ? rc : ERR_STORE;
}

static void sq_close(struct store *st)
{
    struct sqlite_store *s = S(st);

    for (int i = 0; i < N_READERS; i++)
        conn_close(&s->readers[i]);
    conn_close(&s->writer);
    pthread_mutex_destroy(&s->wlock);
    pthread_mutex_destroy(&s->rlock);
    pthread_cond_destroy(&s->rcond);
    free(s->path);
    free(s);
}

struct rd sq_rd_get(struct store *st)
{
    struct sqlite_store *s = S(st);
    struct rd r = {.s = s};

    if (s->readers[0].db) {
        r.c = reader_get(s);
    } else {
        pthread_mutex_lock(&s->wlock);
        r.c = &s->writer;
        r.is_writer = true;
    }
    return r;
}

void sq_rd_put(struct rd *r)
{
    if (r->is_writer)
        pthread_mutex_unlock(&r->s->wlock);
    else
        reader_put(r->s, r->c);
}

static int sq_ping(struct store *st)
{
    struct rd r = sq_rd_get(st);
    int rc = sq_exec_sql(r.c->db, "SELECT 1");

    sq_rd_put(&r);
    return rc;
}

/* ---- recovery ---- */

int sq_run_update(struct conn *c, const char *sql, const char *t1, int64_t i2, int64_t i3,
               int *changes)
{
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (sqlite3_prepare_v2(c->db, sql, -1, &s, NULL) != SQLITE_OK)
        return sq_fail_db(c->db, "preparing an update");
    sq_bind_text(s, 1, t1);
    sqlite3_bind_int64(s, 2, i2);
    sqlite3_bind_int64(s, 3, i3);
    if (sqlite3_step(s) != SQLITE_DONE)
        rc = sq_fail_db(c->db, "updating");
    else if (changes)
        *changes += sqlite3_changes(c->db);
    sqlite3_finalize(s);
    return rc;
}

const struct store_ops store_sqlite_ops = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .ping = sq_ping,
    .task_insert = sq_task_insert,
    .task_get = sq_task_get,
    .task_list = sq_task_list,
    .task_cancel = sq_task_cancel,
    .task_claim = sq_task_claim,
    .task_finish = sq_task_finish,
    .task_lease_status = sq_task_lease_status,
    .task_stats = sq_task_stats,
    .logs_append = sq_logs_append,
    .logs_list = sq_logs_list,
    .messages_append = sq_messages_append,
    .conversations_list = sq_conversations_list,
    .conversation_get = sq_conversation_get,
    .task_conversations = sq_task_conversations,
    .conversation_stats = sq_conversation_stats,
    .worker_register = sq_worker_register,
    .worker_token = sq_worker_token,
    .worker_heartbeat = sq_worker_heartbeat,
    .worker_set_status = sq_worker_set_status,
    .worker_list = sq_worker_list,
    .worker_get = sq_worker_get,
    .worker_counts = sq_worker_counts,
    .reap = sq_reap,
    .recover = sq_recover,
    .webhooks_due = sq_webhooks_due,
    .webhook_result = sq_webhook_result,
    .events_head = sq_events_head,
    .events_after = sq_events_after,
    .logs_after = sq_logs_after,
    .events_prune = sq_events_prune,
    .task_timeseries = sq_task_timeseries,
    .export_extras = sq_export_extras,
    .session_ready = sq_session_ready,
    .session_get = sq_session_get,
    .session_step = sq_session_step,
    .session_next = sq_session_next,
    .session_answer = sq_session_answer,
    .session_end = sq_session_end,
    .session_idle = sq_session_idle,
};
