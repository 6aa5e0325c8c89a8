/* store_sqlite: the SQLite backend of store.h.
 *
 * DESIGN
 * One writer connection behind a mutex and a small pool of reader connections,
 * all on one WAL database. Every write runs in BEGIN IMMEDIATE on the writer, so
 * writes from our threads never meet SQLITE_BUSY among themselves and a claim
 * (pick + lease) is one atomic transaction; readers see the last committed state
 * without waiting for the writer. A busy timeout covers other processes sharing
 * the file. Hot statements are prepared once per connection and kept.
 * Times are integer microseconds since the epoch; JSON columns hold JSON text.
 * Lock order: a thread holds at most one connection at a time. */
#include "store/store.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "model/proto.h"
#include "core/uuidgen.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define N_READERS 4

enum q {
    Q_TASK_INSERT,
    Q_TASK_BY_ID,
    Q_TASK_BY_KEY,
    Q_TASK_CANCEL,
    Q_TASK_CLAIM_ANY,
    Q_TASK_FINISH,
    Q_TASK_LEASE,
    Q_WORKER_BUSY,
    Q_WORKER_DONE,
    Q_CONV_FINISH,
    Q_LOG_INSERT,
    Q_CONV_FIND,
    Q_CONV_INSERT,
    Q_CONV_BUMP,
    Q_MSG_INSERT,
    Q_LOGS_PAGE,
    Q_TASK_CONVS,
    Q_CONV_MSGS,
    Q_EXPORT_LOGS,
    Q_EXPORT_CONVS,
    Q_N
};

struct conn {
    sqlite3 *db;
    sqlite3_stmt *stmts[Q_N];   /* lazily prepared, persistent */
    bool busy;                  /* readers: lent out (guarded by pool lock) */
};

struct sqlite_store {
    struct store base;
    char *path;
    pthread_mutex_t wlock;      /* guards writer */
    struct conn writer;
    pthread_mutex_t rlock;      /* guards readers[].busy */
    pthread_cond_t rcond;
    struct conn readers[N_READERS];
};

#define TASK_INSERT_COLS                                                                   \
    "id, problem_id, status, priority, backend_type, mode, parameters, metadata, "         \
    "callback_url, idempotency_key, worker_id, lease_token, result, error, max_steps, "    \
    "timeout_seconds, created_at, updated_at, started_at, completed_at, deadline_at"
#define TASK_COLS TASK_INSERT_COLS ", seq"

#define CONV_COLS                                                                          \
    "c.seq, c.id, c.task_id, c.session_id, c.model_name, c.model_config, c.started_at, "    \
    "c.ended_at, c.total_messages, c.total_tokens, c.metadata"

/* RFC 3339 with microseconds, as clock_format writes it. */
#define SQ_TIME(col)                                                                       \
    "(strftime('%Y-%m-%dT%H:%M:%S', " col " / 1000000, 'unixepoch') || "                    \
    "printf('.%06dZ', " col " % 1000000))"

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

/* Migrations: append only; each runs once, in order, inside a transaction. */
/* Now in microseconds, inside SQL (worker rows carry no time of change). */
#define SQ_NOW_US "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)"

static const char *const migrations[] = {
    "CREATE TABLE tasks ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " id TEXT NOT NULL UNIQUE,"
    " problem_id TEXT NOT NULL,"
    " status TEXT NOT NULL CHECK (status IN ('pending','running','completed','failed',"
    "  'timeout','cancelled')),"
    " priority INTEGER NOT NULL DEFAULT 0,"
    " backend_type TEXT NOT NULL,"
    " mode TEXT NOT NULL DEFAULT 'batch',"
    " parameters TEXT NOT NULL,"
    " metadata TEXT NOT NULL,"
    " callback_url TEXT,"
    " idempotency_key TEXT UNIQUE,"
    " worker_id TEXT,"
    " lease_token TEXT,"
    " result TEXT,"
    " error TEXT,"
    " max_steps INTEGER NOT NULL,"
    " timeout_seconds INTEGER NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL,"
    " started_at INTEGER,"
    " completed_at INTEGER,"
    " deadline_at INTEGER,"
    " CHECK (status != 'running' OR worker_id IS NOT NULL));"
    "CREATE INDEX tasks_claim ON tasks (backend_type, priority DESC, seq) "
    " WHERE status = 'pending';"
    "CREATE INDEX tasks_running ON tasks (worker_id) WHERE status = 'running';"
    "CREATE INDEX tasks_deadline ON tasks (deadline_at) WHERE status = 'running';"
    "CREATE INDEX tasks_status_seq ON tasks (status, seq);"
    "CREATE INDEX tasks_problem_seq ON tasks (problem_id, seq);"
    "CREATE INDEX tasks_worker_seq ON tasks (worker_id, seq);"
    "CREATE INDEX tasks_created ON tasks (created_at);"
    "CREATE TABLE task_logs ("
    " id INTEGER PRIMARY KEY,"
    " task_id TEXT NOT NULL,"
    " ts INTEGER NOT NULL,"
    " level INTEGER NOT NULL,"
    " message TEXT NOT NULL,"
    " context TEXT NOT NULL);"
    "CREATE INDEX task_logs_task ON task_logs (task_id, id);"
    "CREATE TABLE llm_conversations ("
    " seq INTEGER PRIMARY KEY,"
    " id TEXT NOT NULL UNIQUE,"
    " task_id TEXT NOT NULL,"
    " session_id TEXT NOT NULL,"
    " model_name TEXT,"
    " model_config TEXT NOT NULL DEFAULT '{}',"
    " started_at INTEGER NOT NULL,"
    " ended_at INTEGER,"
    " total_messages INTEGER NOT NULL DEFAULT 0,"
    " total_tokens INTEGER,"
    " metadata TEXT NOT NULL DEFAULT '{}',"
    " UNIQUE (task_id, session_id));"
    "CREATE INDEX llm_conversations_started ON llm_conversations (started_at);"
    "CREATE TABLE llm_messages ("
    " id INTEGER PRIMARY KEY,"
    " conversation_seq INTEGER NOT NULL,"
    " ts INTEGER NOT NULL,"
    " role TEXT NOT NULL,"
    " content TEXT NOT NULL,"
    " step INTEGER,"
    " metadata TEXT NOT NULL);"
    "CREATE INDEX llm_messages_conv ON llm_messages (conversation_seq, id);"
    "CREATE TABLE workers ("
    " id TEXT PRIMARY KEY,"
    " backend_type TEXT NOT NULL,"
    " status TEXT NOT NULL CHECK (status IN ('idle','busy','offline')),"
    " last_heartbeat INTEGER NOT NULL,"
    " current_task_id TEXT,"
    " capabilities TEXT NOT NULL DEFAULT '{}',"
    " metadata TEXT NOT NULL DEFAULT '{}',"
    " tasks_completed INTEGER NOT NULL DEFAULT 0,"
    " tasks_failed INTEGER NOT NULL DEFAULT 0,"
    " registered_at INTEGER NOT NULL,"
    " token_hash TEXT,"
    " name_prefix TEXT);",
    /* 2: webhook deliveries, made due by a trigger on every terminal transition */
    "ALTER TABLE tasks ADD COLUMN webhook_state TEXT;"
    "ALTER TABLE tasks ADD COLUMN webhook_attempts INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE tasks ADD COLUMN webhook_next_at INTEGER;"
    "ALTER TABLE tasks ADD COLUMN webhook_error TEXT;"
    "CREATE INDEX tasks_webhooks_due ON tasks (webhook_next_at) WHERE webhook_state = 'pending';"
    "CREATE TRIGGER tasks_webhook AFTER UPDATE OF status ON tasks"
    " WHEN NEW.callback_url IS NOT NULL"
    "  AND NEW.status IN ('completed','failed','timeout','cancelled')"
    "  AND OLD.status IN ('pending','running')"
    " BEGIN UPDATE tasks SET webhook_state = 'pending', webhook_next_at = NEW.updated_at"
    "  WHERE seq = NEW.seq; END;",
    /* 3: tasks per state, kept by triggers, so totals and stats never count the table */
    "CREATE TABLE task_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL);"
    "INSERT INTO task_counts SELECT column1, (SELECT count(*) FROM tasks WHERE status = column1)"
    " FROM (VALUES ('pending'), ('running'), ('completed'), ('failed'), ('timeout'),"
    " ('cancelled'));"
    "CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks"
    " BEGIN UPDATE task_counts SET n = n + 1 WHERE status = NEW.status; END;"
    "CREATE TRIGGER tasks_count_update AFTER UPDATE OF status ON tasks"
    " WHEN OLD.status <> NEW.status"
    " BEGIN UPDATE task_counts SET n = n - 1 WHERE status = OLD.status;"
    " UPDATE task_counts SET n = n + 1 WHERE status = NEW.status; END;",
    /* 4: an event journal for live streams (SSE) and the dashboard's charts, written by
     * triggers so every writer, on every server, is seen; pruned by age */
    "CREATE TABLE task_events (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, kind TEXT NOT NULL,"
    " task_id TEXT, worker_id TEXT, status TEXT, problem_id TEXT, wait_us INTEGER);"
    "CREATE INDEX task_events_ts ON task_events (ts);"
    "CREATE TRIGGER tasks_event_insert AFTER INSERT ON tasks"
    " BEGIN INSERT INTO task_events (ts, kind, task_id, worker_id, status, problem_id)"
    " VALUES (NEW.updated_at, 'task', NEW.id, NEW.worker_id, NEW.status, NEW.problem_id); END;"
    "CREATE TRIGGER tasks_event_update AFTER UPDATE OF status ON tasks"
    " WHEN OLD.status <> NEW.status"
    " BEGIN INSERT INTO task_events (ts, kind, task_id, worker_id, status, problem_id, wait_us)"
    " VALUES (NEW.updated_at, 'task', NEW.id, NEW.worker_id, NEW.status, NEW.problem_id,"
    " CASE WHEN NEW.status = 'running' THEN NEW.started_at - NEW.created_at END); END;"
    "CREATE TRIGGER workers_event_insert AFTER INSERT ON workers"
    " BEGIN INSERT INTO task_events (ts, kind, task_id, worker_id, status)"
    " VALUES (" SQ_NOW_US ", 'worker', NEW.current_task_id, NEW.id, NEW.status); END;"
    "CREATE TRIGGER workers_event_update AFTER UPDATE ON workers"
    " WHEN OLD.status IS NOT NEW.status OR OLD.current_task_id IS NOT NEW.current_task_id"
    " BEGIN INSERT INTO task_events (ts, kind, task_id, worker_id, status)"
    " VALUES (" SQ_NOW_US ", 'worker', NEW.current_task_id, NEW.id, NEW.status); END;",
    /* 5: interactive sessions: the step in flight and the last answer of each */
    "CREATE TABLE sessions (task_id TEXT PRIMARY KEY, state TEXT NOT NULL,"
    " task_description TEXT, instructions TEXT, actions TEXT, max_steps INTEGER NOT NULL,"
    " step INTEGER NOT NULL DEFAULT 0, answered INTEGER NOT NULL DEFAULT 0, action TEXT,"
    " observation TEXT, done INTEGER NOT NULL DEFAULT 0, reward REAL, results TEXT,"
    " last_activity_at INTEGER NOT NULL);",
};
#define N_MIGRATIONS (int)(sizeof(migrations) / sizeof(migrations[0]))

static int run_update(struct conn *c, const char *sql, const char *t1, int64_t i2, int64_t i3,
                      int *changes);

static struct sqlite_store *S(struct store *st)
{
    return (struct sqlite_store *)st;
}

static int fail_db(sqlite3 *db, const char *what)
{
    log_error("sqlite: %s: %s", what, sqlite3_errmsg(db));
    return ERR_STORE;
}

static int exec_sql(sqlite3 *db, const char *sql)
{
    char *msg = NULL;

    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        log_error("sqlite: %s", msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return ERR_STORE;
    }
    return 0;
}

static sqlite3_stmt *stmt(struct conn *c, enum q q)
{
    if (!c->stmts[q] && sqlite3_prepare_v3(c->db, sql_text[q], -1, SQLITE_PREPARE_PERSISTENT,
                                           &c->stmts[q], NULL) != SQLITE_OK) {
        log_error("sqlite: prepare: %s", sqlite3_errmsg(c->db));
        return NULL;
    }
    return c->stmts[q];
}

static void done(sqlite3_stmt *s)
{
    if (s) {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
    }
}

static void bind_text(sqlite3_stmt *s, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, i);
}

/* Binds a JSON value as compact text (NULL stays NULL). ERR_NOMEM if it cannot dump. */
static int bind_json(sqlite3_stmt *s, int i, const json_t *v)
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
static int bind_object(sqlite3_stmt *s, int i, const json_t *v)
{
    if (!v) {
        sqlite3_bind_text(s, i, "{}", 2, SQLITE_STATIC);
        return 0;
    }
    return bind_json(s, i, v);
}

static char *col_dup(sqlite3_stmt *s, int i)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    return t ? strdup((const char *)t) : NULL;
}

static json_t *col_json(sqlite3_stmt *s, int i)
{
    const char *t = (const char *)sqlite3_column_text(s, i);
    return t ? json_loads(t, JSON_DECODE_ANY, NULL) : NULL;
}

static json_t *col_json_or_null(sqlite3_stmt *s, int i)
{
    json_t *v = col_json(s, i);
    return v ? v : json_null();
}

static json_t *col_time(sqlite3_stmt *s, int i)
{
    char text[40];

    if (sqlite3_column_type(s, i) == SQLITE_NULL)
        return json_null();
    clock_format(sqlite3_column_int64(s, i), text, sizeof(text));
    return json_string(text);
}

static json_t *col_str(sqlite3_stmt *s, int i)
{
    const char *t = (const char *)sqlite3_column_text(s, i);
    return t ? json_string(t) : json_null();
}

/* Reads a row of TASK_COLS into a new task (caller frees). NULL when out of memory. */
static struct task *row_task(sqlite3_stmt *s)
{
    struct task *t = task_new();
    const char *id = (const char *)sqlite3_column_text(s, 0);
    const char *status = (const char *)sqlite3_column_text(s, 2);

    if (!t)
        return NULL;
    snprintf(t->id, sizeof(t->id), "%s", id ? id : "");
    t->problem_id = col_dup(s, 1);
    t->status = status ? (enum task_status)task_status_parse(status) : TASK_PENDING;
    t->priority = sqlite3_column_int(s, 3);
    t->backend_type = col_dup(s, 4);
    t->mode = col_dup(s, 5);
    t->parameters = col_json(s, 6);
    t->metadata = col_json(s, 7);
    t->callback_url = col_dup(s, 8);
    t->idempotency_key = col_dup(s, 9);
    t->worker_id = col_dup(s, 10);
    t->lease_token = col_dup(s, 11);
    t->result = col_json(s, 12);
    t->error = col_dup(s, 13);
    t->max_steps = sqlite3_column_int(s, 14);
    t->timeout_seconds = sqlite3_column_int(s, 15);
    t->created_at = sqlite3_column_int64(s, 16);
    t->updated_at = sqlite3_column_int64(s, 17);
    t->started_at = sqlite3_column_int64(s, 18);
    t->completed_at = sqlite3_column_int64(s, 19);
    t->deadline_at = sqlite3_column_int64(s, 20);
    t->seq = sqlite3_column_int64(s, 21);
    if (!t->problem_id || !t->backend_type || !t->mode) {
        task_free(t);
        return NULL;
    }
    return t;
}

/* ---- connections ---- */

static int conn_open(struct conn *c, const char *path)
{
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;

    memset(c, 0, sizeof(*c));
    if (sqlite3_open_v2(path, &c->db, flags, NULL) != SQLITE_OK) {
        int rc = fail_db(c->db, path);
        sqlite3_close(c->db);
        c->db = NULL;
        return rc;
    }
    sqlite3_busy_timeout(c->db, 10000);
    /* synchronous=FULL: a committed task survives a power cut, not just a crash. */
    return exec_sql(c->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
                           "PRAGMA foreign_keys=ON; PRAGMA temp_store=MEMORY;");
}

static void conn_close(struct conn *c)
{
    for (int i = 0; i < Q_N; i++)
        sqlite3_finalize(c->stmts[i]);
    sqlite3_close(c->db);
    memset(c, 0, sizeof(*c));
}

static struct conn *writer_begin(struct sqlite_store *s)
{
    pthread_mutex_lock(&s->wlock);
    if (exec_sql(s->writer.db, "BEGIN IMMEDIATE") < 0) {
        pthread_mutex_unlock(&s->wlock);
        return NULL;
    }
    return &s->writer;
}

/* Commits when rc >= 0, else rolls back; releases the writer; returns rc (or
 * ERR_STORE when the commit itself fails). */
static int writer_end(struct sqlite_store *s, int rc)
{
    if (rc >= 0) {
        if (exec_sql(s->writer.db, "COMMIT") < 0) {
            exec_sql(s->writer.db, "ROLLBACK");
            rc = ERR_STORE;
        }
    } else if (!sqlite3_get_autocommit(s->writer.db)) {
        exec_sql(s->writer.db, "ROLLBACK");
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

static int migrate(sqlite3 *db)
{
    sqlite3_stmt *q = NULL;
    int version = 0, rc;

    rc = exec_sql(db, "BEGIN IMMEDIATE; CREATE TABLE IF NOT EXISTS schema_migrations "
                      "(version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);");
    if (rc < 0)
        return rc;
    if (sqlite3_prepare_v2(db, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations", -1,
                           &q, NULL) != SQLITE_OK ||
        sqlite3_step(q) != SQLITE_ROW) {
        rc = fail_db(db, "reading schema version");
        goto out;
    }
    version = sqlite3_column_int(q, 0);
    if (version > N_MIGRATIONS) {
        log_error("sqlite: the database has schema version %d, newer than this build (%d)",
                  version, N_MIGRATIONS);
        rc = ERR_STORE;
        goto out;
    }
    for (int v = version; v < N_MIGRATIONS; v++) {
        char sql[128];

        rc = exec_sql(db, migrations[v]);
        if (rc < 0)
            goto out;
        snprintf(sql, sizeof(sql), "INSERT INTO schema_migrations VALUES (%d, %lld)", v + 1,
                 (long long)clock_now_us());
        rc = exec_sql(db, sql);
        if (rc < 0)
            goto out;
        log_info("sqlite: applied migration %d", v + 1);
    }
out:
    sqlite3_finalize(q);
    return exec_sql(db, rc < 0 ? "ROLLBACK" : "COMMIT") < 0 ? ERR_STORE : rc;
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
    rc = migrate(s->writer.db);
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

/* Reads go to a reader connection, or to the writer for :memory: databases. */
struct rd {
    struct sqlite_store *s;
    struct conn *c;
    bool is_writer;
};

static struct rd rd_get(struct store *st)
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

static void rd_put(struct rd *r)
{
    if (r->is_writer)
        pthread_mutex_unlock(&r->s->wlock);
    else
        reader_put(r->s, r->c);
}

static int sq_ping(struct store *st)
{
    struct rd r = rd_get(st);
    int rc = exec_sql(r.c->db, "SELECT 1");

    rd_put(&r);
    return rc;
}

/* ---- tasks ---- */

static int load_task(struct conn *c, enum q q, const char *key, struct task **out)
{
    sqlite3_stmt *s = stmt(c, q);
    int rc, step;

    if (!s)
        return ERR_STORE;
    bind_text(s, 1, key);
    step = sqlite3_step(s);
    if (step == SQLITE_ROW) {
        *out = row_task(s);
        rc = *out ? 0 : ERR_NOMEM;
    } else if (step == SQLITE_DONE) {
        rc = ERR_NOTFOUND;
    } else {
        rc = fail_db(c->db, "loading a task");
    }
    done(s);
    return rc;
}

static int sq_task_insert(struct store *st, struct task *t, struct task **existing)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = writer_begin(ss);
    sqlite3_stmt *s;
    int rc = ERR_STORE;

    if (!c)
        return ERR_STORE;
    *existing = NULL;
    if (t->idempotency_key) {
        rc = load_task(c, Q_TASK_BY_KEY, t->idempotency_key, existing);
        if (rc == 0)
            return writer_end(ss, 0);
        if (rc != ERR_NOTFOUND)
            return writer_end(ss, rc);
    }
    s = stmt(c, Q_TASK_INSERT);
    if (!s)
        return writer_end(ss, ERR_STORE);
    bind_text(s, 1, t->id);
    bind_text(s, 2, t->problem_id);
    sqlite3_bind_int(s, 3, t->priority);
    bind_text(s, 4, t->backend_type);
    bind_text(s, 5, t->mode);
    rc = bind_json(s, 6, t->parameters);
    if (rc == 0)
        rc = bind_json(s, 7, t->metadata);
    bind_text(s, 8, t->callback_url);
    bind_text(s, 9, t->idempotency_key);
    sqlite3_bind_int(s, 10, t->max_steps);
    sqlite3_bind_int(s, 11, t->timeout_seconds);
    sqlite3_bind_int64(s, 12, t->created_at);
    if (rc == 0 && sqlite3_step(s) != SQLITE_DONE)
        rc = fail_db(c->db, "inserting a task");
    done(s);
    return writer_end(ss, rc);
}

static int sq_task_get(struct store *st, const char *id, struct task **out)
{
    struct rd r = rd_get(st);
    int rc = load_task(r.c, Q_TASK_BY_ID, id, out);

    rd_put(&r);
    return rc;
}

static int sq_task_list(struct store *st, const struct task_filter *f, struct task_page *out)
{
    char where[512] = "WHERE 1=1", sql[1024];
    struct rd r = rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc = 0, step;
    size_t cap = 0;

    memset(out, 0, sizeof(*out));
    if (f->status >= 0)
        strcat(where, " AND status = ?1");
    if (f->problem_id)
        strcat(where, " AND problem_id = ?2");
    if (f->worker_id)
        strcat(where, " AND worker_id = ?3");
    if (f->since)
        strcat(where, " AND created_at >= ?4");
    if (f->until)
        strcat(where, " AND created_at < ?5");
    if (f->after_seq)
        strcat(where, " AND seq > ?8");
    for (int pass = f->no_total ? 1 : 0; pass < 2 && rc == 0; pass++) {
        /* Filtered by state at most: the kept counts answer without a scan. */
        if (pass == 0 && !f->problem_id && !f->worker_id && !f->since && !f->until &&
            !f->after_seq)
            snprintf(sql, sizeof(sql), "SELECT COALESCE(sum(n), 0) FROM task_counts%s",
                     f->status >= 0 ? " WHERE status = ?1" : "");
        else if (pass == 0)
            snprintf(sql, sizeof(sql), "SELECT count(*) FROM tasks %s", where);
        else
            snprintf(sql, sizeof(sql), "SELECT " TASK_COLS " FROM tasks %s ORDER BY seq %s "
                     "LIMIT ?6 OFFSET ?7", where, f->oldest_first ? "ASC" : "DESC");
        if (sqlite3_prepare_v2(r.c->db, sql, -1, &s, NULL) != SQLITE_OK) {
            rc = fail_db(r.c->db, "listing tasks");
            break;
        }
        if (f->status >= 0)
            bind_text(s, 1, task_status_name((enum task_status)f->status));
        if (f->problem_id)
            bind_text(s, 2, f->problem_id);
        if (f->worker_id)
            bind_text(s, 3, f->worker_id);
        if (f->since)
            sqlite3_bind_int64(s, 4, f->since);
        if (f->until)
            sqlite3_bind_int64(s, 5, f->until);
        if (f->after_seq)
            sqlite3_bind_int64(s, 8, f->after_seq);
        if (pass == 1) {
            sqlite3_bind_int64(s, 6, f->limit);
            sqlite3_bind_int64(s, 7, f->offset);
        }
        while ((step = sqlite3_step(s)) == SQLITE_ROW) {
            if (pass == 0) {
                out->total = sqlite3_column_int64(s, 0);
                continue;
            }
            if (out->n == cap) {
                size_t ncap = cap ? cap * 2 : 16;
                struct task **p = realloc(out->items, ncap * sizeof(*p));
                if (!p) {
                    rc = ERR_NOMEM;
                    break;
                }
                out->items = p;
                cap = ncap;
            }
            out->items[out->n] = row_task(s);
            if (!out->items[out->n]) {
                rc = ERR_NOMEM;
                break;
            }
            out->n++;
        }
        if (rc == 0 && step != SQLITE_DONE)
            rc = fail_db(r.c->db, "listing tasks");
        sqlite3_finalize(s);
        s = NULL;
    }
    rd_put(&r);
    if (rc < 0)
        store_task_page_reset(out);
    return rc;
}

static int sq_task_cancel(struct store *st, const char *id, int64_t now, struct task **out)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = writer_begin(ss);
    sqlite3_stmt *s;
    struct task *t = NULL;
    int rc, step;

    if (!c)
        return ERR_STORE;
    s = stmt(c, Q_TASK_CANCEL);
    if (!s)
        return writer_end(ss, ERR_STORE);
    bind_text(s, 1, id);
    sqlite3_bind_int64(s, 2, now);
    step = sqlite3_step(s);
    if (step == SQLITE_ROW) {
        *out = row_task(s);
        rc = *out ? 0 : ERR_NOMEM;
    } else if (step == SQLITE_DONE) {
        rc = ERR_NOTFOUND;
    } else {
        rc = fail_db(c->db, "cancelling a task");
    }
    done(s);
    if (rc == ERR_NOTFOUND) {
        /* Terminal already (409) or no such task (404)? */
        rc = load_task(c, Q_TASK_BY_ID, id, &t);
        if (rc == 0) {
            *out = t;
            rc = ERR_CONFLICT;
        }
    }
    /* NOTFOUND and CONFLICT wrote nothing: the rollback is harmless and rc stays. */
    return writer_end(ss, rc);
}

/* SQLite's GLOB has the * ? [...] of supported_problems patterns. */
static int claim_matching(struct conn *c, const struct claim_req *req, struct task **out)
{
    char sql[4096];
    size_t n;
    sqlite3_stmt *s = NULL;
    int rc, step;

    if (req->n_patterns > 64)
        return ERR_INVALID;
    n = (size_t)snprintf(sql, sizeof(sql),
                         "UPDATE tasks SET status = 'running', worker_id = ?1, lease_token = ?2, "
                         "started_at = MAX(?3, created_at), updated_at = MAX(?3, created_at), "
                         "deadline_at = MAX(?3, created_at) + timeout_seconds * 1000000 WHERE seq = (SELECT seq FROM tasks WHERE status = 'pending' "
                         "AND backend_type = ?4 AND (0");
    for (size_t i = 0; i < req->n_patterns; i++)
        n += (size_t)snprintf(sql + n, sizeof(sql) - n, " OR problem_id GLOB ?%zu", i + 5);
    snprintf(sql + n, sizeof(sql) - n,
             ") ORDER BY priority DESC, seq LIMIT 1) RETURNING " TASK_COLS);
    if (sqlite3_prepare_v2(c->db, sql, -1, &s, NULL) != SQLITE_OK)
        return fail_db(c->db, "preparing a claim");
    bind_text(s, 1, req->worker_id);
    bind_text(s, 2, req->lease_token);
    sqlite3_bind_int64(s, 3, req->now);
    bind_text(s, 4, req->backend_type);
    for (size_t i = 0; i < req->n_patterns; i++)
        bind_text(s, (int)i + 5, req->patterns[i]);
    step = sqlite3_step(s);
    if (step == SQLITE_ROW) {
        *out = row_task(s);
        rc = *out ? 0 : ERR_NOMEM;
    } else {
        rc = step == SQLITE_DONE ? ERR_NOTFOUND : fail_db(c->db, "claiming");
    }
    sqlite3_finalize(s);
    return rc;
}

/* The claim itself, inside the caller's write transaction. */
static int claim_in(struct conn *c, const struct claim_req *req, struct task **out)
{
    sqlite3_stmt *s;
    struct task *t = NULL;
    int rc, step;

    if (req->n_patterns) {
        rc = claim_matching(c, req, &t);
    } else {
        s = stmt(c, Q_TASK_CLAIM_ANY);
        if (!s)
            return ERR_STORE;
        bind_text(s, 1, req->worker_id);
        bind_text(s, 2, req->lease_token);
        sqlite3_bind_int64(s, 3, req->now);
        bind_text(s, 4, req->backend_type);
        step = sqlite3_step(s);
        if (step == SQLITE_ROW) {
            t = row_task(s);
            rc = t ? 0 : ERR_NOMEM;
        } else {
            rc = step == SQLITE_DONE ? ERR_NOTFOUND : fail_db(c->db, "claiming");
        }
        done(s);
    }
    if (rc == 0) {
        s = stmt(c, Q_WORKER_BUSY);
        if (!s) {
            rc = ERR_STORE;
        } else {
            bind_text(s, 1, req->worker_id);
            bind_text(s, 2, t->id);
            sqlite3_bind_int64(s, 3, req->now);
            if (sqlite3_step(s) != SQLITE_DONE)
                rc = fail_db(c->db, "marking a worker busy");
            done(s);
        }
    }
    if (rc == 0)
        *out = t;
    else
        task_free(t);
    return rc;
}

static int sq_task_claim(struct store *st, const struct claim_req *req, struct task **out)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = writer_begin(ss);
    struct task *t = NULL;
    int rc;

    if (!c)
        return ERR_STORE;
    rc = writer_end(ss, claim_in(c, req, &t));
    if (rc == 0)
        *out = t;
    else
        task_free(t);
    return rc;
}

static int insert_logs(struct conn *c, const char *task_id, const struct log_entry *e,
                       size_t n);

static int sq_task_finish(struct store *st, const char *id, const char *lease_token,
                          const struct task_end *end)
{
    enum task_status status = end->status;
    json_t *result = end->result;
    const char *error = end->error;
    int64_t now = end->now;
    struct sqlite_store *ss = S(st);
    struct conn *c = writer_begin(ss);
    sqlite3_stmt *s;
    char *worker = NULL;
    json_t *success;
    int rc, step;

    if (!c)
        return ERR_STORE;
    rc = insert_logs(c, id, end->logs, end->n_logs);
    if (rc < 0)
        return writer_end(ss, rc);
    s = stmt(c, Q_TASK_FINISH);
    if (!s)
        return writer_end(ss, ERR_STORE);
    bind_text(s, 1, id);
    bind_text(s, 2, lease_token);
    bind_text(s, 3, task_status_name(status));
    rc = bind_json(s, 4, result);
    bind_text(s, 5, error);
    sqlite3_bind_int64(s, 6, now);
    if (rc == 0) {
        step = sqlite3_step(s);
        if (step == SQLITE_ROW)
            worker = col_dup(s, 0);
        else
            rc = step == SQLITE_DONE ? ERR_CONFLICT : fail_db(c->db, "finishing a task");
    }
    done(s);
    if (rc == 0 && (s = stmt(c, Q_WORKER_DONE))) {
        bind_text(s, 1, worker);
        sqlite3_bind_int(s, 2, status == TASK_COMPLETED);
        sqlite3_bind_int(s, 3, status != TASK_COMPLETED);
        if (sqlite3_step(s) != SQLITE_DONE)
            rc = fail_db(c->db, "counting a worker's task");
        done(s);
    }
    if (rc == 0 && (s = stmt(c, Q_CONV_FINISH))) {
        success = result ? json_object_get(result, "success") : NULL;
        bind_text(s, 1, id);
        sqlite3_bind_int64(s, 2, now);
        bind_text(s, 3, json_is_boolean(success) ? (json_is_true(success) ? "true" : "false")
                                                 : "null");
        if (sqlite3_step(s) != SQLITE_DONE)
            rc = fail_db(c->db, "closing conversations");
        done(s);
    }
    free(worker);
    if (rc == 0 && end->claim_next) {
        struct task *t = NULL;
        int crc = claim_in(c, end->claim_next, &t);
        if (crc == 0) {
            rc = writer_end(ss, 0);
            if (rc == 0)
                *end->next = t;
            else
                task_free(t);
            return rc;
        }
        if (crc != ERR_NOTFOUND)
            rc = crc; /* rolled back whole: the end is retried */
    }
    if (rc == ERR_CONFLICT) {
        struct task *t = NULL;
        /* Distinguish a task that does not exist from one whose lease is gone. */
        if (load_task(c, Q_TASK_BY_ID, id, &t) == ERR_NOTFOUND)
            rc = ERR_NOTFOUND;
        task_free(t);
        /* The end is refused, the logs are kept. */
        return writer_end(ss, 0) < 0 ? ERR_STORE : rc;
    }
    return writer_end(ss, rc);
}

static int sq_task_lease_status(struct store *st, const char *id, const char *lease_token,
                                enum task_status *status)
{
    struct rd r = rd_get(st);
    sqlite3_stmt *s = stmt(r.c, Q_TASK_LEASE);
    int rc = ERR_STORE, step;

    if (s) {
        bind_text(s, 1, id);
        step = sqlite3_step(s);
        if (step == SQLITE_ROW) {
            const char *st_name = (const char *)sqlite3_column_text(s, 0);
            const char *lease = (const char *)sqlite3_column_text(s, 1);
            *status = (enum task_status)task_status_parse(st_name ? st_name : "");
            rc = lease && lease_token && !strcmp(lease, lease_token) ? 0 : ERR_FORBIDDEN;
        } else {
            rc = step == SQLITE_DONE ? ERR_NOTFOUND : fail_db(r.c->db, "reading a lease");
        }
        done(s);
    }
    rd_put(&r);
    return rc;
}

static int sq_task_stats(struct store *st, bool with_averages, struct task_stats *out)
{
    struct rd r = rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    memset(out, 0, sizeof(*out));
    out->avg_wait_seconds = out->avg_run_seconds = -1;
    if (sqlite3_prepare_v2(r.c->db, "SELECT status, n FROM task_counts", -1, &s, NULL) !=
        SQLITE_OK) {
        rc = fail_db(r.c->db, "stats");
        goto out;
    }
    while (sqlite3_step(s) == SQLITE_ROW) {
        int i = task_status_parse((const char *)sqlite3_column_text(s, 0));
        if (i >= 0) {
            out->counts[i] = sqlite3_column_int64(s, 1);
            out->total += out->counts[i];
        }
    }
    sqlite3_finalize(s);
    s = NULL;
    if (!with_averages)
        goto out;
    if (sqlite3_prepare_v2(r.c->db,
                           "SELECT avg(started_at - created_at), "
                           "avg(CASE WHEN completed_at IS NOT NULL THEN completed_at - "
                           "started_at END) FROM tasks WHERE started_at IS NOT NULL",
                           -1, &s, NULL) != SQLITE_OK) {
        rc = fail_db(r.c->db, "stats");
        goto out;
    }
    if (sqlite3_step(s) == SQLITE_ROW) {
        if (sqlite3_column_type(s, 0) != SQLITE_NULL)
            out->avg_wait_seconds = sqlite3_column_double(s, 0) / 1e6;
        if (sqlite3_column_type(s, 1) != SQLITE_NULL)
            out->avg_run_seconds = sqlite3_column_double(s, 1) / 1e6;
    }
out:
    sqlite3_finalize(s);
    rd_put(&r);
    return rc;
}

/* ---- logs and conversations ---- */

static int insert_logs(struct conn *c, const char *task_id, const struct log_entry *e,
                       size_t n)
{
    sqlite3_stmt *s = n ? stmt(c, Q_LOG_INSERT) : NULL;
    int rc = 0;

    if (n && !s)
        return ERR_STORE;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        bind_text(s, 1, task_id);
        sqlite3_bind_int64(s, 2, e[i].ts);
        sqlite3_bind_int(s, 3, e[i].level);
        bind_text(s, 4, e[i].message);
        rc = bind_object(s, 5, e[i].context);
        if (rc == 0 && sqlite3_step(s) != SQLITE_DONE)
            rc = fail_db(c->db, "inserting a log line");
        done(s);
    }
    return rc;
}

static int sq_logs_append(struct store *st, const char *task_id, const struct log_entry *e,
                          size_t n)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = writer_begin(ss);

    if (!c)
        return ERR_STORE;
    return writer_end(ss, insert_logs(c, task_id, e, n));
}

static int sq_logs_list(struct store *st, const char *task_id, int min_level, int64_t limit,
                        int64_t offset, json_t **logs, int64_t *total)
{
    struct rd r = rd_get(st);
    sqlite3_stmt *s = NULL;
    json_t *arr = json_array();
    int rc = 0;

    if (!arr) {
        rc = ERR_NOMEM;
        goto out;
    }
    if (!(s = stmt(r.c, Q_LOGS_PAGE))) {
        rc = fail_db(r.c->db, "listing logs");
        goto out;
    }
    bind_text(s, 1, task_id);
    sqlite3_bind_int(s, 2, min_level);
    sqlite3_bind_int64(s, 3, limit);
    sqlite3_bind_int64(s, 4, offset);
    *total = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
        json_t *o = json_pack("{s:o, s:s, s:o, s:o}", "timestamp", col_time(s, 0), "level",
                              proto_level_name(sqlite3_column_int(s, 1)), "message",
                              col_str(s, 2), "context", col_json_or_null(s, 3));
        if (!o || json_array_append_new(arr, o)) {
            rc = ERR_NOMEM;
            goto out;
        }
    }
    /* A short page ends the list, so its total is known; only a full or empty page (offset
     * past the end) needs counting. No window function: it would materialise every row. */
    *total = offset + (int64_t)json_array_size(arr);
    if (json_array_size(arr) == 0 || json_array_size(arr) >= (size_t)limit) {
        sqlite3_stmt *c = NULL;
        if (sqlite3_prepare_v2(r.c->db, "SELECT count(*) FROM task_logs WHERE task_id = ?1 "
                                        "AND level >= ?2", -1, &c, NULL) == SQLITE_OK) {
            bind_text(c, 1, task_id);
            sqlite3_bind_int(c, 2, min_level);
            if (sqlite3_step(c) == SQLITE_ROW)
                *total = sqlite3_column_int64(c, 0);
        }
        sqlite3_finalize(c);
    }
    *logs = arr;
    arr = NULL;
out:
    done(s);
    json_decref(arr);
    rd_put(&r);
    return rc;
}


static int conversation_seq(struct conn *c, const char *task_id, const char *session,
                            int64_t ts, int64_t *seq)
{
    sqlite3_stmt *s = stmt(c, Q_CONV_FIND);
    char id[TASK_ID_LEN + 1];
    int rc = ERR_STORE, step;

    if (!s)
        return ERR_STORE;
    bind_text(s, 1, task_id);
    bind_text(s, 2, session);
    step = sqlite3_step(s);
    if (step == SQLITE_ROW) {
        *seq = sqlite3_column_int64(s, 0);
        rc = 0;
    } else if (step != SQLITE_DONE) {
        rc = fail_db(c->db, "finding a conversation");
    }
    done(s);
    if (step != SQLITE_DONE)
        return rc;
    s = stmt(c, Q_CONV_INSERT);
    if (!s)
        return ERR_STORE;
    uuidgen(id);
    bind_text(s, 1, id);
    bind_text(s, 2, task_id);
    bind_text(s, 3, session);
    sqlite3_bind_int64(s, 4, ts);
    if (sqlite3_step(s) == SQLITE_ROW) {
        *seq = sqlite3_column_int64(s, 0);
        rc = 0;
    } else {
        rc = fail_db(c->db, "creating a conversation");
    }
    done(s);
    return rc;
}

static int insert_message(struct conn *c, const char *task_id, const struct msg_entry *e)
{
    json_t *m = e->msg, *sid = json_object_get(m, "session_id"), *step = json_object_get(m, "step");
    json_t *meta = json_object_get(m, "metadata"), *model = json_object_get(meta, "model");
    sqlite3_stmt *s;
    int64_t seq, tokens = proto_message_tokens(meta);
    int rc;

    rc = conversation_seq(c, task_id, json_is_string(sid) ? json_string_value(sid) : task_id,
                          e->ts, &seq);
    if (rc < 0)
        return rc;
    s = stmt(c, Q_MSG_INSERT);
    if (!s)
        return ERR_STORE;
    sqlite3_bind_int64(s, 1, seq);
    sqlite3_bind_int64(s, 2, e->ts);
    bind_text(s, 3, json_string_value(json_object_get(m, "role")));
    rc = bind_json(s, 4, json_object_get(m, "content"));
    if (json_is_integer(step))
        sqlite3_bind_int64(s, 5, json_integer_value(step));
    if (rc == 0)
        rc = bind_object(s, 6, meta);
    if (rc == 0 && sqlite3_step(s) != SQLITE_DONE)
        rc = fail_db(c->db, "inserting a message");
    done(s);
    if (rc < 0 || !(s = stmt(c, Q_CONV_BUMP)))
        return rc < 0 ? rc : ERR_STORE;
    sqlite3_bind_int64(s, 1, seq);
    if (tokens >= 0)
        sqlite3_bind_int64(s, 2, tokens);
    sqlite3_bind_int64(s, 3, e->ts);
    bind_text(s, 4, json_is_string(model) ? json_string_value(model) : NULL);
    if (sqlite3_step(s) != SQLITE_DONE)
        rc = fail_db(c->db, "updating a conversation");
    done(s);
    return rc;
}

static int sq_messages_append(struct store *st, const char *task_id, const struct msg_entry *e,
                              size_t n)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = writer_begin(ss);
    int rc = 0;

    if (!c)
        return ERR_STORE;
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = insert_message(c, task_id, &e[i]);
    return writer_end(ss, rc);
}

static json_t *row_conversation(sqlite3_stmt *s)
{
    json_t *tokens = sqlite3_column_type(s, 9) == SQLITE_NULL
                         ? json_null()
                         : json_integer(sqlite3_column_int64(s, 9));
    json_t *meta = col_json_or_null(s, 10);
    json_t *success = json_object_get(meta, "success");
    json_t *cfg = col_json_or_null(s, 5);

    return json_pack("{s:o, s:o, s:o, s:o, s:O, s:o, s:o, s:o, s:I, s:o, s:o, s:O}", "id",
                     col_str(s, 1), "task_id", col_str(s, 2), "session_id", col_str(s, 3),
                     "model_name", col_str(s, 4), "model_config", cfg, "llm_config", cfg,
                     "started_at", col_time(s, 6), "ended_at", col_time(s, 7),
                     "total_messages", (json_int_t)sqlite3_column_int64(s, 8), "total_tokens",
                     tokens, "metadata", meta, "success", success ? success : json_null());
}

static int load_messages(struct conn *c, int64_t seq, json_t *conv)
{
    sqlite3_stmt *s = NULL;
    json_t *arr = json_array();
    int rc = 0;

    if (!arr)
        return ERR_NOMEM;
    if (!(s = stmt(c, Q_CONV_MSGS))) {
        json_decref(arr);
        return fail_db(c->db, "reading messages");
    }
    sqlite3_bind_int64(s, 1, seq);
    while (rc == 0 && sqlite3_step(s) == SQLITE_ROW) {
        json_t *step = sqlite3_column_type(s, 3) == SQLITE_NULL
                           ? json_null()
                           : json_integer(sqlite3_column_int64(s, 3));
        json_t *m = json_pack("{s:o, s:o, s:o, s:o, s:o}", "timestamp", col_time(s, 0), "role",
                              col_str(s, 1), "content", col_json_or_null(s, 2), "step", step,
                              "metadata", col_json_or_null(s, 4));
        if (!m || json_array_append_new(arr, m))
            rc = ERR_NOMEM;
    }
    done(s);
    if (rc == 0 && json_object_set_new(conv, "messages", arr))
        return ERR_NOMEM;
    if (rc < 0)
        json_decref(arr);
    return rc;
}

static int sq_conversations_list(struct store *st, const char *task_id, const char *model_name,
                                 int64_t limit, int64_t offset, json_t **items, int64_t *total)
{
    struct rd r = rd_get(st);
    sqlite3_stmt *s = NULL;
    json_t *arr = json_array();
    int rc = 0;
    const char *where = "WHERE (?1 IS NULL OR c.task_id = ?1) AND (?2 IS NULL OR "
                        "c.model_name = ?2)";
    char sql[1024];

    if (!arr) {
        rc = ERR_NOMEM;
        goto out;
    }
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM llm_conversations c %s", where);
    if (sqlite3_prepare_v2(r.c->db, sql, -1, &s, NULL) != SQLITE_OK) {
        rc = fail_db(r.c->db, "counting conversations");
        goto out;
    }
    bind_text(s, 1, task_id);
    bind_text(s, 2, model_name);
    *total = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_finalize(s);
    snprintf(sql, sizeof(sql),
             "SELECT " CONV_COLS " FROM llm_conversations c %s ORDER BY c.started_at DESC, "
             "c.seq DESC LIMIT ?3 OFFSET ?4", where);
    if (sqlite3_prepare_v2(r.c->db, sql, -1, &s, NULL) != SQLITE_OK) {
        s = NULL;
        rc = fail_db(r.c->db, "listing conversations");
        goto out;
    }
    bind_text(s, 1, task_id);
    bind_text(s, 2, model_name);
    sqlite3_bind_int64(s, 3, limit);
    sqlite3_bind_int64(s, 4, offset);
    while (rc == 0 && sqlite3_step(s) == SQLITE_ROW) {
        json_t *o = row_conversation(s);
        if (!o || json_array_append_new(arr, o))
            rc = ERR_NOMEM;
    }
    if (rc == 0) {
        *items = arr;
        arr = NULL;
    }
out:
    sqlite3_finalize(s);
    json_decref(arr);
    rd_put(&r);
    return rc;
}

static int sq_conversation_get(struct store *st, const char *id, bool with_messages,
                               json_t **out)
{
    struct rd r = rd_get(st);
    sqlite3_stmt *s = NULL;
    json_t *o = NULL;
    int rc;

    if (sqlite3_prepare_v2(r.c->db, "SELECT " CONV_COLS " FROM llm_conversations c "
                                    "WHERE c.id = ?1", -1, &s, NULL) != SQLITE_OK) {
        rc = fail_db(r.c->db, "reading a conversation");
        goto out;
    }
    bind_text(s, 1, id);
    if (sqlite3_step(s) != SQLITE_ROW) {
        rc = ERR_NOTFOUND;
        goto out;
    }
    o = row_conversation(s);
    rc = o ? 0 : ERR_NOMEM;
    if (rc == 0 && with_messages)
        rc = load_messages(r.c, sqlite3_column_int64(s, 0), o);
    if (rc == 0) {
        *out = o;
        o = NULL;
    }
out:
    sqlite3_finalize(s);
    json_decref(o);
    rd_put(&r);
    return rc;
}

static int sq_task_conversations(struct store *st, const char *task_id, json_t **out)
{
    struct rd r = rd_get(st);
    sqlite3_stmt *s = NULL;
    json_t *arr = json_array();
    int rc = 0;

    if (!arr) {
        rc = ERR_NOMEM;
        goto out;
    }
    if (!(s = stmt(r.c, Q_TASK_CONVS))) {
        rc = fail_db(r.c->db, "reading conversations");
        goto out;
    }
    bind_text(s, 1, task_id);
    while (rc == 0 && sqlite3_step(s) == SQLITE_ROW) {
        json_t *o = row_conversation(s);
        if (!o || json_array_append_new(arr, o)) {
            rc = ERR_NOMEM;
            break;
        }
        rc = load_messages(r.c, sqlite3_column_int64(s, 0), o);
    }
    if (rc == 0) {
        *out = arr;
        arr = NULL;
    }
out:
    done(s);
    json_decref(arr);
    rd_put(&r);
    return rc;
}

static int sq_conversation_stats(struct store *st, json_t **out)
{
    struct rd r = rd_get(st);
    sqlite3_stmt *s = NULL;
    json_t *by_model = json_object(), *o = NULL;
    int64_t total = 0, tokens = 0, ok = 0;
    double avg = 0;
    int rc = 0;

    if (!by_model) {
        rc = ERR_NOMEM;
        goto out;
    }
    if (sqlite3_prepare_v2(r.c->db,
                           "SELECT count(*), COALESCE(avg(total_messages), 0), "
                           "COALESCE(sum(total_tokens), 0), COALESCE(sum(json_extract(metadata, "
                           "'$.success') = 1), 0) FROM llm_conversations", -1, &s,
                           NULL) != SQLITE_OK ||
        sqlite3_step(s) != SQLITE_ROW) {
        rc = fail_db(r.c->db, "conversation stats");
        goto out;
    }
    total = sqlite3_column_int64(s, 0);
    avg = sqlite3_column_double(s, 1);
    tokens = sqlite3_column_int64(s, 2);
    ok = sqlite3_column_int64(s, 3);
    sqlite3_finalize(s);
    s = NULL;
    if (sqlite3_prepare_v2(r.c->db, "SELECT model_name, count(*) FROM llm_conversations "
                                    "WHERE model_name IS NOT NULL GROUP BY model_name", -1, &s,
                           NULL) != SQLITE_OK) {
        rc = fail_db(r.c->db, "conversation stats");
        goto out;
    }
    while (sqlite3_step(s) == SQLITE_ROW)
        json_object_set_new(by_model, (const char *)sqlite3_column_text(s, 0),
                            json_integer(sqlite3_column_int64(s, 1)));
    o = json_pack("{s:I, s:O, s:f, s:I, s:f, s:I}", "total_conversations", (json_int_t)total,
                  "conversations_by_model", by_model, "avg_messages_per_conversation", avg,
                  "total_tokens_consumed", (json_int_t)tokens, "success_rate",
                  total ? (double)ok / (double)total : 0.0, "successful_conversations",
                  (json_int_t)ok);
    if (!o)
        rc = ERR_NOMEM;
    *out = o;
out:
    sqlite3_finalize(s);
    json_decref(by_model);
    rd_put(&r);
    return rc;
}

/* ---- workers ---- */

static int sq_worker_register(struct store *st, const struct worker_reg *reg)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = writer_begin(ss);
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
        return writer_end(ss, fail_db(c->db, "registering a worker"));
    bind_text(s, 1, reg->id);
    bind_text(s, 2, reg->backend_type);
    sqlite3_bind_int64(s, 3, reg->now);
    rc = bind_object(s, 4, reg->capabilities);
    bind_text(s, 5, reg->token_hash);
    bind_text(s, 6, reg->name_prefix);
    if (rc == 0 && sqlite3_step(s) != SQLITE_DONE)
        rc = fail_db(c->db, "registering a worker");
    else if (rc == 0 && sqlite3_changes(c->db) == 0)
        rc = ERR_CONFLICT;
    sqlite3_finalize(s);
    if (rc == 0 && reg->token_hash)
        rc = run_update(c,
                        "UPDATE tasks SET status = 'failed', completed_at = ?2, updated_at = ?2, "
                        "error = 'worker ' || worker_id || ' registered again while running this "
                        "task; the run was lost' WHERE status = 'running' AND worker_id = ?1",
                        reg->id, reg->now, 0, NULL);
    return writer_end(ss, rc);
}

static int sq_worker_token(struct store *st, const char *id, char **token_hash)
{
    struct rd r = rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (sqlite3_prepare_v2(r.c->db, "SELECT token_hash FROM workers WHERE id = ?1", -1, &s,
                           NULL) != SQLITE_OK) {
        rc = fail_db(r.c->db, "reading a worker");
    } else {
        bind_text(s, 1, id);
        if (sqlite3_step(s) == SQLITE_ROW)
            *token_hash = col_dup(s, 0);
        else
            rc = ERR_NOTFOUND;
    }
    sqlite3_finalize(s);
    rd_put(&r);
    return rc;
}

static int sq_worker_heartbeat(struct store *st, const char *const *ids, size_t n, int64_t now)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = writer_begin(ss);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (!c)
        return ERR_STORE;
    if (sqlite3_prepare_v2(c->db, "UPDATE workers SET last_heartbeat = ?2, status = CASE "
                                  "WHEN status = 'offline' THEN 'idle' ELSE status END "
                                  "WHERE id = ?1", -1, &s, NULL) != SQLITE_OK)
        return writer_end(ss, fail_db(c->db, "heartbeat"));
    for (size_t i = 0; rc == 0 && i < n; i++) {
        bind_text(s, 1, ids[i]);
        sqlite3_bind_int64(s, 2, now);
        if (sqlite3_step(s) != SQLITE_DONE)
            rc = fail_db(c->db, "heartbeat");
        sqlite3_reset(s);
    }
    sqlite3_finalize(s);
    return writer_end(ss, rc);
}

static int sq_worker_set_status(struct store *st, const char *id, const char *status,
                                json_t *metadata)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = writer_begin(ss);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (!c)
        return ERR_STORE;
    if (sqlite3_prepare_v2(c->db, "UPDATE workers SET status = ?2, current_task_id = NULL, "
                                  "metadata = COALESCE(?3, metadata) WHERE id = ?1", -1, &s,
                           NULL) != SQLITE_OK)
        return writer_end(ss, fail_db(c->db, "worker status"));
    bind_text(s, 1, id);
    bind_text(s, 2, status);
    rc = bind_json(s, 3, metadata);
    if (rc == 0 && sqlite3_step(s) != SQLITE_DONE)
        rc = fail_db(c->db, "worker status");
    sqlite3_finalize(s);
    return writer_end(ss, rc);
}

#define WORKER_COLS                                                                        \
    "id, backend_type, status, last_heartbeat, current_task_id, capabilities, metadata, "   \
    "tasks_completed, tasks_failed, registered_at, name_prefix IS NOT NULL"

static json_t *row_worker(sqlite3_stmt *s)
{
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:o, s:b}", "id",
                     col_str(s, 0), "backend_type", col_str(s, 1), "status", col_str(s, 2),
                     "last_heartbeat", col_time(s, 3), "current_task_id", col_str(s, 4),
                     "capabilities", col_json_or_null(s, 5), "metadata", col_json_or_null(s, 6),
                     "tasks_completed", (json_int_t)sqlite3_column_int64(s, 7), "tasks_failed",
                     (json_int_t)sqlite3_column_int64(s, 8), "registered_at", col_time(s, 9),
                     "internal", sqlite3_column_int(s, 10));
}

static int sq_worker_list(struct store *st, const char *status, const char *backend_type,
                          json_t **out)
{
    struct rd r = rd_get(st);
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
        rc = fail_db(r.c->db, "listing workers");
        goto out;
    }
    bind_text(s, 1, status);
    bind_text(s, 2, backend_type);
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
    rd_put(&r);
    return rc;
}

static int sq_worker_get(struct store *st, const char *id, json_t **out)
{
    struct rd r = rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc;

    if (sqlite3_prepare_v2(r.c->db, "SELECT " WORKER_COLS " FROM workers WHERE id = ?1", -1, &s,
                           NULL) != SQLITE_OK) {
        rc = fail_db(r.c->db, "reading a worker");
    } else {
        bind_text(s, 1, id);
        if (sqlite3_step(s) == SQLITE_ROW) {
            *out = row_worker(s);
            rc = *out ? 0 : ERR_NOMEM;
        } else {
            rc = ERR_NOTFOUND;
        }
    }
    sqlite3_finalize(s);
    rd_put(&r);
    return rc;
}

static int sq_worker_counts(struct store *st, int64_t counts[3])
{
    struct rd r = rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    counts[0] = counts[1] = counts[2] = 0;
    if (sqlite3_prepare_v2(r.c->db, "SELECT status, count(*) FROM workers GROUP BY status", -1,
                           &s, NULL) != SQLITE_OK) {
        rc = fail_db(r.c->db, "counting workers");
    } else {
        while (sqlite3_step(s) == SQLITE_ROW) {
            const char *name = (const char *)sqlite3_column_text(s, 0);
            int i = !strcmp(name, WORKER_IDLE) ? 0 : !strcmp(name, WORKER_BUSY) ? 1 : 2;
            counts[i] += sqlite3_column_int64(s, 1);
        }
    }
    sqlite3_finalize(s);
    rd_put(&r);
    return rc;
}

/* ---- the event journal (live streams, charts) ---- */

static int sq_events_head(struct store *st, int64_t *event_id, int64_t *log_id)
{
    struct rd r = rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (sqlite3_prepare_v2(r.c->db, "SELECT (SELECT COALESCE(max(id), 0) FROM task_events), "
                                    "(SELECT COALESCE(max(id), 0) FROM task_logs)", -1, &s,
                           NULL) != SQLITE_OK ||
        sqlite3_step(s) != SQLITE_ROW) {
        rc = fail_db(r.c->db, "reading the event head");
    } else {
        *event_id = sqlite3_column_int64(s, 0);
        *log_id = sqlite3_column_int64(s, 1);
    }
    sqlite3_finalize(s);
    rd_put(&r);
    return rc;
}

/* Runs sql (two integer arguments) on a reader and maps each row to an array element. */
static int sq_rows(struct store *st, const char *what, const char *sql, int64_t a1, int64_t a2,
                   json_t *(*row)(sqlite3_stmt *s), json_t **out)
{
    struct rd r = rd_get(st);
    sqlite3_stmt *s = NULL;
    json_t *arr = json_array();
    int rc = arr ? 0 : ERR_NOMEM;

    if (rc == 0 && sqlite3_prepare_v2(r.c->db, sql, -1, &s, NULL) != SQLITE_OK)
        rc = fail_db(r.c->db, what);
    if (rc == 0) {
        sqlite3_bind_int64(s, 1, a1);
        sqlite3_bind_int64(s, 2, a2);
    }
    while (rc == 0 && sqlite3_step(s) == SQLITE_ROW) {
        json_t *o = row(s);
        if (!o || json_array_append_new(arr, o))
            rc = ERR_NOMEM;
    }
    sqlite3_finalize(s);
    rd_put(&r);
    if (rc == 0)
        *out = arr;
    else
        json_decref(arr);
    return rc;
}

static json_t *row_event(sqlite3_stmt *s)
{
    return json_pack("{s:I, s:I, s:o, s:o, s:o, s:o, s:o}", "id",
                     (json_int_t)sqlite3_column_int64(s, 0), "ts_us",
                     (json_int_t)sqlite3_column_int64(s, 1), "kind", col_str(s, 2), "task_id",
                     col_str(s, 3), "worker_id", col_str(s, 4), "status", col_str(s, 5),
                     "problem_id", col_str(s, 6));
}

static int sq_events_after(struct store *st, int64_t after, int limit, json_t **out)
{
    return sq_rows(st, "reading events", "SELECT id, ts, kind, task_id, worker_id, status, "
                   "problem_id FROM task_events WHERE id > ?1 ORDER BY id LIMIT ?2", after, limit,
                   row_event, out);
}

static json_t *row_new_log(sqlite3_stmt *s)
{
    return json_pack("{s:I, s:o, s:I, s:s, s:o, s:o}", "id",
                     (json_int_t)sqlite3_column_int64(s, 0), "task_id", col_str(s, 1), "ts_us",
                     (json_int_t)sqlite3_column_int64(s, 2), "level",
                     proto_level_name(sqlite3_column_int(s, 3)), "message", col_str(s, 4),
                     "context", col_json_or_null(s, 5));
}

static int sq_logs_after(struct store *st, int64_t after, int limit, json_t **out)
{
    return sq_rows(st, "reading new logs", "SELECT id, task_id, ts, level, message, context "
                   "FROM task_logs WHERE id > ?1 ORDER BY id LIMIT ?2", after, limit,
                   row_new_log, out);
}

static int sq_events_prune(struct store *st, int64_t before)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = writer_begin(ss);
    int rc, changes = 0;

    if (!c)
        return ERR_STORE;
    rc = run_update(c, "DELETE FROM task_events WHERE ts < ?2 AND id < (SELECT max(id) FROM "
                       "task_events)", NULL, before, 0, &changes);
    return writer_end(ss, rc);
}

static json_t *row_bucket(sqlite3_stmt *s)
{
    json_t *wait = sqlite3_column_type(s, 6) == SQLITE_NULL
                       ? json_null()
                       : json_real(sqlite3_column_double(s, 6) / 1000.0);

    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "start_us",
                     (json_int_t)sqlite3_column_int64(s, 0), "submitted",
                     (json_int_t)sqlite3_column_int64(s, 1), "started",
                     (json_int_t)sqlite3_column_int64(s, 2), "completed",
                     (json_int_t)sqlite3_column_int64(s, 3), "failed",
                     (json_int_t)sqlite3_column_int64(s, 4), "cancelled",
                     (json_int_t)sqlite3_column_int64(s, 5), "queue_wait_ms", wait);
}

static int sq_task_timeseries(struct store *st, int64_t since, int64_t bucket_us, json_t **out)
{
    return sq_rows(st, "reading the time series",
                   "SELECT ts / ?2 * ?2, sum(status = 'pending'), sum(status = 'running'), "
                   "sum(status = 'completed'), sum(status IN ('failed', 'timeout')), "
                   "sum(status = 'cancelled'), avg(wait_us) FROM task_events "
                   "WHERE ts >= ?1 AND kind = 'task' GROUP BY 1 ORDER BY 1", since, bucket_us,
                   row_bucket, out);
}

/* ---- interactive sessions ---- */

static int sq_write1(struct store *st, const char *what, const char *sql,
                     void (*bind)(sqlite3_stmt *s, void *ud), void *ud, int *changes)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = writer_begin(ss);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (!c)
        return ERR_STORE;
    if (sqlite3_prepare_v2(c->db, sql, -1, &s, NULL) != SQLITE_OK)
        return writer_end(ss, fail_db(c->db, what));
    bind(s, ud);
    if (sqlite3_step(s) != SQLITE_DONE)
        rc = fail_db(c->db, what);
    if (changes)
        *changes = sqlite3_changes(c->db);
    sqlite3_finalize(s);
    return writer_end(ss, rc);
}

struct sess_args {
    const char *task_id, *text1, *text2, *text3;
    json_t *json1;
    int64_t i1, i2, now;
    double real;
    bool has_real;
};

static void bind_ready(sqlite3_stmt *s, void *ud)
{
    struct sess_args *a = ud;
    char *actions = json_dumps(a->json1, JSON_COMPACT);

    bind_text(s, 1, a->task_id);
    bind_text(s, 2, a->text1);
    bind_text(s, 3, a->text2);
    sqlite3_bind_text(s, 4, actions ? actions : "{}", -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 5, a->i1);
    sqlite3_bind_int64(s, 6, a->now);
    free(actions);
}

static int sq_session_ready(struct store *st, const char *task_id, json_t *ready, int max_steps,
                            int64_t now)
{
    struct sess_args a = {.task_id = task_id,
                          .text1 = json_string_value(json_object_get(ready, "task_description")),
                          .text2 = json_string_value(json_object_get(ready, "instructions")),
                          .json1 = json_object_get(ready, "actions"), .i1 = max_steps, .now = now};

    return sq_write1(st, "marking a session ready",
                     "INSERT INTO sessions (task_id, state, task_description, instructions, "
                     "actions, max_steps, last_activity_at) VALUES (?1, 'ready', ?2, ?3, ?4, ?5, "
                     "?6) ON CONFLICT (task_id) DO UPDATE SET state = 'ready', task_description "
                     "= ?2, instructions = ?3, actions = ?4, max_steps = ?5, step = 0, answered "
                     "= 0, action = NULL, observation = NULL, done = 0, reward = NULL, results = "
                     "NULL, last_activity_at = ?6", bind_ready, &a, NULL);
}

static int sq_session_get(struct store *st, const char *task_id, json_t **out)
{
    struct rd r = rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (sqlite3_prepare_v2(r.c->db, "SELECT state, task_description, instructions, actions, "
                                    "max_steps, step, answered, action, observation, done, "
                                    "reward, results, last_activity_at FROM sessions WHERE "
                                    "task_id = ?1", -1, &s, NULL) != SQLITE_OK) {
        rc = fail_db(r.c->db, "reading a session");
    } else {
        bind_text(s, 1, task_id);
        if (sqlite3_step(s) != SQLITE_ROW) {
            rc = ERR_NOTFOUND;
        } else {
            json_t *reward = sqlite3_column_type(s, 10) == SQLITE_NULL
                                 ? json_null()
                                 : json_real(sqlite3_column_double(s, 10));
            *out = json_pack("{s:o, s:o, s:o, s:o, s:I, s:I, s:I, s:o, s:o, s:b, s:o, s:o, s:I}",
                             "state", col_str(s, 0), "task_description", col_str(s, 1),
                             "instructions", col_str(s, 2), "actions", col_json_or_null(s, 3),
                             "max_steps", (json_int_t)sqlite3_column_int64(s, 4), "step",
                             (json_int_t)sqlite3_column_int64(s, 5), "answered",
                             (json_int_t)sqlite3_column_int64(s, 6), "action", col_str(s, 7),
                             "observation", col_str(s, 8), "done", sqlite3_column_int(s, 9),
                             "reward", reward, "results", col_json_or_null(s, 11),
                             "last_activity_us", (json_int_t)sqlite3_column_int64(s, 12));
            rc = *out ? 0 : ERR_NOMEM;
        }
    }
    sqlite3_finalize(s);
    rd_put(&r);
    return rc;
}

static int sq_session_step(struct store *st, const char *task_id, const char *action, int64_t now,
                           int *step)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = writer_begin(ss);
    sqlite3_stmt *s = NULL;
    int rc = ERR_CONFLICT;

    if (!c)
        return ERR_STORE;
    if (sqlite3_prepare_v2(c->db, "UPDATE sessions SET step = step + 1, action = ?2, "
                                  "last_activity_at = ?3 WHERE task_id = ?1 AND state = 'ready' "
                                  "AND step = answered AND step < max_steps AND EXISTS (SELECT "
                                  "1 FROM tasks WHERE id = ?1 AND status = 'running') "
                                  "RETURNING step",
                           -1, &s, NULL) != SQLITE_OK)
        return writer_end(ss, fail_db(c->db, "taking a step"));
    bind_text(s, 1, task_id);
    bind_text(s, 2, action);
    sqlite3_bind_int64(s, 3, now);
    switch (sqlite3_step(s)) {
    case SQLITE_ROW:
        *step = sqlite3_column_int(s, 0);
        rc = sqlite3_step(s) == SQLITE_DONE ? 0 : fail_db(c->db, "taking a step");
        break;
    case SQLITE_DONE:
        break;
    default:
        rc = fail_db(c->db, "taking a step");
    }
    sqlite3_finalize(s);
    return writer_end(ss, rc);
}

static int sq_session_next(struct store *st, const char *task_id, int after, int *step,
                           char **action)
{
    struct rd r = rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    *step = 0;
    *action = NULL;
    if (sqlite3_prepare_v2(r.c->db, "SELECT step, action FROM sessions WHERE task_id = ?1 AND "
                                    "step > ?2 AND step > answered", -1, &s,
                           NULL) != SQLITE_OK) {
        rc = fail_db(r.c->db, "reading the next action");
    } else {
        bind_text(s, 1, task_id);
        sqlite3_bind_int(s, 2, after);
        if (sqlite3_step(s) == SQLITE_ROW) {
            const char *text = (const char *)sqlite3_column_text(s, 1);
            *action = strdup(text ? text : "");
            *step = *action ? sqlite3_column_int(s, 0) : 0;
            rc = *action ? 0 : ERR_NOMEM;
        }
    }
    sqlite3_finalize(s);
    rd_put(&r);
    return rc;
}

static void bind_answer(sqlite3_stmt *s, void *ud)
{
    struct sess_args *a = ud;
    char *results = a->json1 && !json_is_null(a->json1) ? json_dumps(a->json1, JSON_COMPACT)
                                                         : NULL;

    bind_text(s, 1, a->task_id);
    sqlite3_bind_int64(s, 2, a->i1);
    bind_text(s, 3, a->text1);
    sqlite3_bind_int64(s, 4, a->i2);
    if (a->has_real)
        sqlite3_bind_double(s, 5, a->real);
    else
        sqlite3_bind_null(s, 5);
    if (results)
        sqlite3_bind_text(s, 6, results, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, 6);
    sqlite3_bind_int64(s, 7, a->now);
    free(results);
}

static int sq_session_answer(struct store *st, const char *task_id, int step, json_t *answer,
                             const struct msg_entry *msgs, size_t n_msgs, int64_t now)
{
    struct sqlite_store *ss = S(st);
    json_t *reward = json_object_get(answer, "reward");
    struct sess_args a = {.task_id = task_id, .i1 = step,
                          .text1 = json_string_value(json_object_get(answer, "observation")),
                          .i2 = json_is_true(json_object_get(answer, "done")),
                          .has_real = json_is_number(reward), .real = json_number_value(reward),
                          .json1 = json_object_get(answer, "results"), .now = now};
    struct conn *c = writer_begin(ss);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (!c)
        return ERR_STORE;
    for (size_t i = 0; rc == 0 && i < n_msgs; i++)
        rc = insert_message(c, task_id, &msgs[i]);
    if (rc == 0 &&
        sqlite3_prepare_v2(c->db, "UPDATE sessions SET answered = ?2, observation = ?3, done = "
                                  "?4, reward = ?5, results = ?6, state = CASE WHEN ?4 THEN "
                                  "'done' ELSE state END, last_activity_at = ?7 WHERE task_id = "
                                  "?1 AND step = ?2", -1, &s, NULL) != SQLITE_OK)
        rc = fail_db(c->db, "storing an observation");
    if (rc == 0) {
        bind_answer(s, &a);
        if (sqlite3_step(s) != SQLITE_DONE)
            rc = fail_db(c->db, "storing an observation");
    }
    sqlite3_finalize(s);
    return writer_end(ss, rc);
}

static void bind_id(sqlite3_stmt *s, void *ud)
{
    bind_text(s, 1, ud);
}

static int sq_session_end(struct store *st, const char *task_id)
{
    return sq_write1(st, "ending a session", "UPDATE sessions SET state = 'done' WHERE task_id "
                                             "= ?1", bind_id, (void *)(uintptr_t)task_id, NULL);
}

static int sq_session_idle(struct store *st, int64_t before, char (*ids)[37], size_t max,
                           size_t *n)
{
    struct rd r = rd_get(st);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    *n = 0;
    if (sqlite3_prepare_v2(r.c->db, "SELECT s.task_id FROM sessions s JOIN tasks t ON t.id = "
                                    "s.task_id WHERE t.status = 'running' AND s.state <> 'done' "
                                    "AND s.last_activity_at < ?1 LIMIT ?2", -1, &s,
                           NULL) != SQLITE_OK) {
        rc = fail_db(r.c->db, "finding idle sessions");
    } else {
        sqlite3_bind_int64(s, 1, before);
        sqlite3_bind_int64(s, 2, (int64_t)max);
        while (*n < max && sqlite3_step(s) == SQLITE_ROW)
            snprintf(ids[(*n)++], 37, "%s", (const char *)sqlite3_column_text(s, 0));
    }
    sqlite3_finalize(s);
    rd_put(&r);
    return rc;
}

/* ---- the export's logs and conversations, as JSON text made by SQLite ---- */

static int export_part(struct conn *c, enum q q, const char *task_id, const char *key,
                       struct buf *out)
{
    sqlite3_stmt *s = stmt(c, q);
    int rc = 0;

    if (!s)
        return ERR_STORE;
    bind_text(s, 1, task_id);
    if (sqlite3_step(s) != SQLITE_ROW)
        rc = fail_db(c->db, "exporting a task");
    else if (buf_appendf(out, ",\"%s\":", key) < 0 ||
             buf_append(out, sqlite3_column_text(s, 0), (size_t)sqlite3_column_bytes(s, 0)) < 0)
        rc = ERR_NOMEM;
    done(s);
    return rc;
}

static int sq_export_extras(struct store *st, const char *task_id, bool logs, bool convs,
                            struct buf *out)
{
    struct rd r = rd_get(st);
    int rc = 0;

    if (logs)
        rc = export_part(r.c, Q_EXPORT_LOGS, task_id, "logs", out);
    if (rc == 0 && convs)
        rc = export_part(r.c, Q_EXPORT_CONVS, task_id, "conversations", out);
    rd_put(&r);
    return rc;
}

/* ---- recovery ---- */

static int run_update(struct conn *c, const char *sql, const char *t1, int64_t i2, int64_t i3,
                      int *changes)
{
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (sqlite3_prepare_v2(c->db, sql, -1, &s, NULL) != SQLITE_OK)
        return fail_db(c->db, "preparing an update");
    bind_text(s, 1, t1);
    sqlite3_bind_int64(s, 2, i2);
    sqlite3_bind_int64(s, 3, i3);
    if (sqlite3_step(s) != SQLITE_DONE)
        rc = fail_db(c->db, "updating");
    else if (changes)
        *changes += sqlite3_changes(c->db);
    sqlite3_finalize(s);
    return rc;
}

static int sq_reap(struct store *st, int64_t now, int64_t heartbeat_timeout_us,
                   struct reap_result *out)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = writer_begin(ss);
    int rc;

    memset(out, 0, sizeof(*out));
    if (!c)
        return ERR_STORE;
    /* Tasks of silent workers fail first, while the workers still read as alive. */
    rc = run_update(c,
                    "UPDATE tasks SET status = 'failed', completed_at = ?2, updated_at = ?2, "
                    "error = 'worker ' || worker_id || ' stopped sending heartbeats (silent "
                    "for more than ' || (?3 / 1000000) || ' s); the run was lost' WHERE status "
                    "= 'running' AND worker_id IN (SELECT id FROM workers WHERE status != "
                    "'offline' AND last_heartbeat < ?2 - ?3)",
                    NULL, now, heartbeat_timeout_us, &out->tasks_failed);
    if (rc == 0)
        rc = run_update(c, "UPDATE workers SET tasks_failed = tasks_failed + (SELECT count(*) "
                           "FROM tasks t WHERE t.id = workers.current_task_id AND t.status = "
                           "'failed'), status = 'offline', current_task_id = NULL WHERE status "
                           "!= 'offline' AND last_heartbeat < ?2 - ?3",
                        NULL, now, heartbeat_timeout_us, &out->workers_offline);
    /* A running task past its deadline by more than the heartbeat timeout has no
     * worker enforcing it (the worker's own timer fires first when it is alive). */
    if (rc == 0)
        rc = run_update(c,
                        "UPDATE tasks SET status = 'timeout', completed_at = ?2, updated_at = "
                        "?2, error = 'timed out after ' || timeout_seconds || ' s; its worker did "
                        "not stop it in time' WHERE status = 'running' AND deadline_at < ?2 - ?3",
                        NULL, now, heartbeat_timeout_us, &out->tasks_timed_out);
    return writer_end(ss, rc);
}

static int sq_webhooks_due(struct store *st, int64_t now, int64_t lease_us, size_t max,
                           struct webhook_job *jobs, size_t *n)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = writer_begin(ss);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    *n = 0;
    if (!c)
        return ERR_STORE;
    /* Leasing a delivery pushes its next attempt out, so no other sender takes it. */
    if (sqlite3_prepare_v2(c->db, "UPDATE tasks SET webhook_next_at = ?1 + ?2 WHERE seq IN "
                                  "(SELECT seq FROM tasks WHERE webhook_state = 'pending' AND "
                                  "webhook_next_at <= ?1 ORDER BY webhook_next_at LIMIT ?3) "
                                  "RETURNING id, callback_url, webhook_attempts", -1, &s,
                           NULL) != SQLITE_OK)
        return writer_end(ss, fail_db(c->db, "webhooks"));
    sqlite3_bind_int64(s, 1, now);
    sqlite3_bind_int64(s, 2, lease_us);
    sqlite3_bind_int64(s, 3, (int64_t)max);
    while (*n < max && sqlite3_step(s) == SQLITE_ROW) {
        struct webhook_job *j = &jobs[*n];
        snprintf(j->task_id, sizeof(j->task_id), "%s", sqlite3_column_text(s, 0));
        j->url = col_dup(s, 1);
        j->attempts = sqlite3_column_int(s, 2);
        if (!j->url) {
            rc = ERR_NOMEM;
            break;
        }
        (*n)++;
    }
    sqlite3_finalize(s);
    if (rc < 0)
        for (size_t i = 0; i < *n; i++)
            free(jobs[i].url);
    return writer_end(ss, rc);
}

static int sq_webhook_result(struct store *st, const char *task_id, const char *state,
                             int attempts, int64_t next_at, const char *error)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = writer_begin(ss);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (!c)
        return ERR_STORE;
    if (sqlite3_prepare_v2(c->db, "UPDATE tasks SET webhook_state = ?2, webhook_attempts = ?3, "
                                  "webhook_next_at = ?4, webhook_error = ?5 WHERE id = ?1", -1,
                           &s, NULL) != SQLITE_OK)
        return writer_end(ss, fail_db(c->db, "webhooks"));
    bind_text(s, 1, task_id);
    bind_text(s, 2, state);
    sqlite3_bind_int(s, 3, attempts);
    sqlite3_bind_int64(s, 4, next_at);
    bind_text(s, 5, error);
    if (sqlite3_step(s) != SQLITE_DONE)
        rc = fail_db(c->db, "webhooks");
    sqlite3_finalize(s);
    return writer_end(ss, rc);
}

static int sq_recover(struct store *st, const char *name_prefix, int64_t now, int *n_failed)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = writer_begin(ss);
    int rc;

    *n_failed = 0;
    if (!c)
        return ERR_STORE;
    rc = run_update(c,
                    "UPDATE tasks SET status = 'failed', completed_at = ?2, updated_at = ?2, "
                    "error = 'the server restarted while internal worker ' || worker_id || ' "
                    "was running this task; the run was lost' WHERE status = 'running' AND "
                    "worker_id IN (SELECT id FROM workers WHERE name_prefix = ?1)",
                    name_prefix, now, 0, n_failed);
    if (rc == 0)
        rc = run_update(c, "UPDATE workers SET status = 'offline', current_task_id = NULL "
                           "WHERE name_prefix = ?1", name_prefix, now, 0, NULL);
    return writer_end(ss, rc);
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
