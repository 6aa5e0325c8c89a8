/* store/sqlite/schema: the migrations (append only) and applying them. */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"
#include "core/clock.h"

#include <stdio.h>

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
    /* 6: retries (attempts, their classes, a back-off before the next) and experiments
     * (problems x agent configs x attempts; each slot's current task) */
    "ALTER TABLE tasks ADD COLUMN max_retries INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE tasks ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;"
    "ALTER TABLE tasks ADD COLUMN error_class TEXT;"
    "ALTER TABLE tasks ADD COLUMN attempts TEXT NOT NULL DEFAULT '[]';"
    "ALTER TABLE tasks ADD COLUMN retry_at INTEGER;"
    "ALTER TABLE tasks ADD COLUMN avoid_worker TEXT;"
    "ALTER TABLE tasks ADD COLUMN avoid_until INTEGER;"
    "ALTER TABLE tasks ADD COLUMN experiment_id TEXT;"
    "ALTER TABLE tasks ADD COLUMN slot TEXT;"
    "ALTER TABLE tasks ADD COLUMN slot_current INTEGER NOT NULL DEFAULT 1;"
    "CREATE INDEX tasks_experiment ON tasks (experiment_id, seq) WHERE experiment_id IS NOT NULL"
    " AND slot_current;"
    "ALTER TABLE task_logs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;"
    /* a conversation is one per (task, session, attempt): SQLite rebuilds the table to
     * change its key */
    "CREATE TABLE llm_conversations_6 ("
    " seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, task_id TEXT NOT NULL,"
    " session_id TEXT NOT NULL, model_name TEXT, model_config TEXT NOT NULL DEFAULT '{}',"
    " started_at INTEGER NOT NULL, ended_at INTEGER, total_messages INTEGER NOT NULL DEFAULT 0,"
    " total_tokens INTEGER, metadata TEXT NOT NULL DEFAULT '{}',"
    " attempt INTEGER NOT NULL DEFAULT 1, UNIQUE (task_id, session_id, attempt));"
    "INSERT INTO llm_conversations_6 (seq, id, task_id, session_id, model_name, model_config,"
    " started_at, ended_at, total_messages, total_tokens, metadata) SELECT seq, id, task_id,"
    " session_id, model_name, model_config, started_at, ended_at, total_messages, total_tokens,"
    " metadata FROM llm_conversations;"
    "DROP TABLE llm_conversations;"
    "ALTER TABLE llm_conversations_6 RENAME TO llm_conversations;"
    "CREATE INDEX llm_conversations_started ON llm_conversations (started_at);"
    "CREATE TABLE experiments (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,"
    " name TEXT NOT NULL, spec TEXT NOT NULL, metadata TEXT NOT NULL, callback_url TEXT,"
    " created_at INTEGER NOT NULL, cancelled_at INTEGER, ended_at INTEGER, webhook_state TEXT,"
    " webhook_attempts INTEGER NOT NULL DEFAULT 0, webhook_next_at INTEGER,"
    " webhook_error TEXT);"
    "CREATE INDEX experiments_open ON experiments (seq) WHERE ended_at IS NULL;"
    "ALTER TABLE task_events ADD COLUMN experiment_id TEXT;",
};

#define N_MIGRATIONS (int)(sizeof(migrations) / sizeof(migrations[0]))

static const struct sq_query schema_q[2] = {
    {"reading schema version", "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"},
    {"recording a migration", "INSERT INTO schema_migrations VALUES (?1, ?2)"},
};

/* Applies migrations from version on, inside the caller's transaction. */
static int apply_from(struct conn *c, int64_t version)
{
    int rc = 0;

    if (version > N_MIGRATIONS) {
        log_error("sqlite: the database has schema version %lld, newer than this build (%d)",
                  (long long)version, N_MIGRATIONS);
        return ERR_STORE;
    }
    for (int v = (int)version; rc == 0 && v < N_MIGRATIONS; v++) {
        rc = sq_exec_sql(c->db, migrations[v]);
        if (rc == 0)
            rc = sq_run(c, &schema_q[1], (struct sq_arg[]){SQ_I(v + 1), SQ_I(clock_now_us())},
                        2, NULL);
        if (rc == 0)
            log_info("sqlite: applied migration %d", v + 1);
    }
    return rc;
}

int sq_migrate(struct conn *c)
{
    int64_t version = 0;
    int rc;

    rc = sq_exec_sql(c->db, "BEGIN IMMEDIATE; CREATE TABLE IF NOT EXISTS schema_migrations "
                            "(version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);");
    if (rc < 0)
        return rc;
    rc = sq_one_i64(c, &schema_q[0], NULL, 0, &version);
    if (rc == 0)
        rc = apply_from(c, version);
    return sq_exec_sql(c->db, rc < 0 ? "ROLLBACK" : "COMMIT") < 0 ? ERR_STORE : rc;
}
