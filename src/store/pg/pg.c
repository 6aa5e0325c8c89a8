/* store_pg: the PostgreSQL backend of store.h (libpq).
 *
 * DESIGN
 * A bounded pool of connections shared by HTTP handlers and workers; a thread
 * takes one connection for one store call and gives it back. Statements are
 * prepared once per connection. Each queue rule is one statement, so it is one
 * transaction and one round trip: a claim is a MATERIALIZED CTE that picks the
 * next pending task FOR UPDATE SKIP LOCKED (so concurrent claimers on any number
 * of servers never wait on, or take, the same row), leases it and marks the worker
 * busy; finishing updates the task only while the caller's lease is current.
 * Inserting a task NOTIFYs taskexec_task; a listener connection wakes this
 * server's idle workers, with polling as the fallback.
 * A lost connection is reset (with back-off) on its next use; meanwhile calls
 * fail with ERR_UNAVAILABLE, which the API answers with 503.
 * Times cross the interface as integer microseconds; the schema holds timestamptz. */
#include "core/clock.h"
#include "core/err.h"
#include "core/buf.h"
#include "core/log.h"
#include "model/proto.h"
#include "store/store.h"
#include "core/uuidgen.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POOL_SIZE 8
#define MIGRATION_LOCK 727384611 /* pg_advisory_lock key: one migrator at a time */

enum q {
    Q_TASK_INSERT,
    Q_TASK_BY_ID,
    Q_TASK_BY_KEY,
    Q_TASK_CANCEL,
    Q_TASK_EXISTS,
    Q_TASK_CLAIM,
    Q_TASK_FINISH,
    Q_TASK_LEASE,
    Q_LOG_INSERT,
    Q_CONV_UPSERT,
    Q_MSG_INSERT,
    Q_N
};

#define TASK_COLS                                                                          \
    "id, problem_id, status, priority, backend_type, mode, parameters::text, "              \
    "metadata::text, callback_url, idempotency_key, worker_id, lease_token, result::text, "  \
    "error, max_steps, timeout_seconds, te_us(created_at), te_us(updated_at), "            \
    "te_us(started_at), te_us(completed_at), te_us(deadline_at), seq"
#define TASK_COLS_T                                                                        \
    "t.id, t.problem_id, t.status, t.priority, t.backend_type, t.mode, t.parameters::text, " \
    "t.metadata::text, t.callback_url, t.idempotency_key, t.worker_id, t.lease_token, "     \
    "t.result::text, t.error, t.max_steps, t.timeout_seconds, te_us(t.created_at), "        \
    "te_us(t.updated_at), te_us(t.started_at), te_us(t.completed_at), te_us(t.deadline_at), " \
    "t.seq"

static const char *const sql_text[Q_N] = {
    [Q_TASK_INSERT] =
        "WITH ins AS (INSERT INTO tasks (id, problem_id, status, priority, backend_type, mode, "
        "parameters, metadata, callback_url, idempotency_key, max_steps, timeout_seconds, "
        "created_at, updated_at) VALUES ($1, $2, 'pending', $3, $4, $5, $6::jsonb, $7::jsonb, "
        "$8, $9, $10, $11, te_ts($12), te_ts($12)) ON CONFLICT (idempotency_key) DO NOTHING "
        "RETURNING backend_type) SELECT pg_notify('taskexec_task', backend_type) FROM ins",
    [Q_TASK_BY_ID] = "SELECT " TASK_COLS " FROM tasks WHERE id = $1",
    [Q_TASK_BY_KEY] = "SELECT " TASK_COLS " FROM tasks WHERE idempotency_key = $1",
    [Q_TASK_CANCEL] =
        "UPDATE tasks SET status = 'cancelled', completed_at = te_ts($2), updated_at = "
        "te_ts($2), error = COALESCE(error, CASE status WHEN 'running' THEN "
        "'cancelled by request while running' ELSE 'cancelled by request' END) "
        "WHERE id = $1 AND status IN ('pending', 'running') RETURNING " TASK_COLS,
    [Q_TASK_EXISTS] = "SELECT 1 FROM tasks WHERE id = $1",
    [Q_TASK_CLAIM] =
        "WITH next AS MATERIALIZED (SELECT seq FROM tasks WHERE status = 'pending' AND "
        "backend_type = $4 AND (cardinality($5::text[]) = 0 OR problem_id ~ ANY ($5::text[])) "
        "ORDER BY priority DESC, seq LIMIT 1 FOR UPDATE SKIP LOCKED), "
        "claimed AS (UPDATE tasks t SET status = 'running', worker_id = $1, lease_token = $2, "
        "started_at = GREATEST(te_ts($3), t.created_at), updated_at = GREATEST(te_ts($3), "
        "t.created_at), deadline_at = GREATEST(te_ts($3), t.created_at) + t.timeout_seconds * "
        "interval '1 second' FROM next WHERE t.seq = next.seq RETURNING "
        TASK_COLS_T "), "
        "busy AS (UPDATE workers SET status = 'busy', current_task_id = (SELECT id FROM "
        "claimed), last_heartbeat = te_ts($3) WHERE id = $1 AND EXISTS (SELECT 1 FROM claimed)) "
        "SELECT * FROM claimed",
    [Q_TASK_FINISH] =
        "WITH l AS (INSERT INTO task_logs (task_id, ts, level, message, context) SELECT $1, "
        "te_ts(u.ts), u.level, u.message, u.context::jsonb FROM unnest($8::bigint[], "
        "$9::int[], $10::text[], $11::text[]) AS u(ts, level, message, context)), "
        "t AS (UPDATE tasks SET status = $3, result = $4::jsonb, error = $5, completed_at "
        "= te_ts($6), updated_at = te_ts($6) WHERE id = $1 AND status = 'running' AND "
        "lease_token = $2 RETURNING worker_id), "
        "w AS (UPDATE workers SET status = CASE WHEN workers.status = 'offline' THEN 'offline' "
        "ELSE 'idle' END, current_task_id = NULL, tasks_completed = tasks_completed + "
        "($3 = 'completed')::int, tasks_failed = tasks_failed + ($3 <> 'completed')::int "
        "FROM t WHERE workers.id = t.worker_id), "
        "c AS (UPDATE llm_conversations SET ended_at = COALESCE(ended_at, te_ts($6)), metadata "
        "= jsonb_set(metadata, '{success}', $7::jsonb) WHERE task_id = $1 AND EXISTS "
        "(SELECT 1 FROM t)) "
        "SELECT (SELECT count(*) FROM t), EXISTS (SELECT 1 FROM tasks WHERE id = $1)",
    [Q_TASK_LEASE] = "SELECT status, lease_token FROM tasks WHERE id = $1",
    [Q_LOG_INSERT] = "INSERT INTO task_logs (task_id, ts, level, message, context) SELECT $1, "
                     "te_ts(u.ts), u.level, u.message, u.context::jsonb FROM unnest($2::bigint[], "
                     "$3::int[], $4::text[], $5::text[]) AS u(ts, level, message, context)",
    [Q_CONV_UPSERT] =
        "INSERT INTO llm_conversations (id, task_id, session_id, model_config, started_at) "
        "VALUES ($1, $2, $3, COALESCE((SELECT parameters->'agent_config' FROM tasks WHERE id = "
        "$2), '{}'), te_ts($4)) ON CONFLICT (task_id, session_id) DO UPDATE SET task_id = "
        "EXCLUDED.task_id RETURNING seq",
    [Q_MSG_INSERT] =
        "WITH m AS (INSERT INTO llm_messages (conversation_seq, ts, role, content, step, "
        "metadata) VALUES ($1, te_ts($2), $3, $4::jsonb, $5, $6::jsonb)) "
        "UPDATE llm_conversations SET total_messages = total_messages + 1, total_tokens = CASE "
        "WHEN $7::bigint IS NULL THEN total_tokens ELSE COALESCE(total_tokens, 0) + $7 END, "
        "ended_at = te_ts($2), model_name = COALESCE(model_name, $8) WHERE seq = $1",
};

static const char *const migrations[] = {
    "CREATE FUNCTION te_ts(bigint) RETURNS timestamptz LANGUAGE sql IMMUTABLE AS "
    "$$ SELECT timestamptz 'epoch' + $1 * interval '1 microsecond' $$;"
    "CREATE FUNCTION te_us(timestamptz) RETURNS bigint LANGUAGE sql IMMUTABLE AS "
    "$$ SELECT (extract(epoch FROM $1) * 1000000)::bigint $$;"
    "CREATE TABLE tasks ("
    " seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " id uuid NOT NULL UNIQUE,"
    " problem_id text NOT NULL,"
    " status text NOT NULL CHECK (status IN ('pending','running','completed','failed',"
    "  'timeout','cancelled')),"
    " priority integer NOT NULL DEFAULT 0,"
    " backend_type text NOT NULL,"
    " mode text NOT NULL DEFAULT 'batch',"
    " parameters jsonb NOT NULL,"
    " metadata jsonb NOT NULL,"
    " callback_url text,"
    " idempotency_key text UNIQUE,"
    " worker_id text,"
    " lease_token text,"
    " result jsonb,"
    " error text,"
    " max_steps integer NOT NULL,"
    " timeout_seconds integer NOT NULL,"
    " created_at timestamptz NOT NULL,"
    " updated_at timestamptz NOT NULL,"
    " started_at timestamptz,"
    " completed_at timestamptz,"
    " deadline_at timestamptz,"
    " CHECK (status <> 'running' OR worker_id IS NOT NULL));"
    /* Narrow on purpose: only pending rows, in claim order. */
    "CREATE INDEX tasks_claim ON tasks (backend_type, priority DESC, seq) "
    " WHERE status = 'pending';"
    "CREATE INDEX tasks_running ON tasks (worker_id) WHERE status = 'running';"
    "CREATE INDEX tasks_deadline ON tasks (deadline_at) WHERE status = 'running';"
    "CREATE INDEX tasks_status_seq ON tasks (status, seq);"
    "CREATE INDEX tasks_problem_seq ON tasks (problem_id, seq);"
    "CREATE INDEX tasks_worker_seq ON tasks (worker_id, seq);"
    "CREATE INDEX tasks_created ON tasks (created_at);"
    "CREATE TABLE task_logs ("
    " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " task_id uuid NOT NULL,"
    " ts timestamptz NOT NULL,"
    " level smallint NOT NULL,"
    " message text NOT NULL,"
    " context jsonb NOT NULL);"
    "CREATE INDEX task_logs_task ON task_logs (task_id, id);"
    "CREATE TABLE llm_conversations ("
    " seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " id uuid NOT NULL UNIQUE,"
    " task_id uuid NOT NULL,"
    " session_id text NOT NULL,"
    " model_name text,"
    " model_config jsonb NOT NULL DEFAULT '{}',"
    " started_at timestamptz NOT NULL,"
    " ended_at timestamptz,"
    " total_messages integer NOT NULL DEFAULT 0,"
    " total_tokens bigint,"
    " metadata jsonb NOT NULL DEFAULT '{}',"
    " UNIQUE (task_id, session_id));"
    "CREATE INDEX llm_conversations_started ON llm_conversations (started_at);"
    "CREATE TABLE llm_messages ("
    " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " conversation_seq bigint NOT NULL,"
    " ts timestamptz NOT NULL,"
    " role text NOT NULL,"
    " content jsonb NOT NULL,"
    " step integer,"
    " metadata jsonb NOT NULL);"
    "CREATE INDEX llm_messages_conv ON llm_messages (conversation_seq, id);"
    "CREATE TABLE workers ("
    " id text PRIMARY KEY,"
    " backend_type text NOT NULL,"
    " status text NOT NULL CHECK (status IN ('idle','busy','offline')),"
    " last_heartbeat timestamptz NOT NULL,"
    " current_task_id uuid,"
    " capabilities jsonb NOT NULL DEFAULT '{}',"
    " metadata jsonb NOT NULL DEFAULT '{}',"
    " tasks_completed integer NOT NULL DEFAULT 0,"
    " tasks_failed integer NOT NULL DEFAULT 0,"
    " registered_at timestamptz NOT NULL,"
    " token_hash text,"
    " name_prefix text);",
    /* 2: webhook deliveries, made due by a trigger on every terminal transition */
    "ALTER TABLE tasks ADD COLUMN webhook_state text,"
    " ADD COLUMN webhook_attempts integer NOT NULL DEFAULT 0,"
    " ADD COLUMN webhook_next_at timestamptz, ADD COLUMN webhook_error text;"
    "CREATE INDEX tasks_webhooks_due ON tasks (webhook_next_at) WHERE webhook_state = 'pending';"
    "CREATE FUNCTION te_webhook_due() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF NEW.callback_url IS NOT NULL"
    "  AND NEW.status IN ('completed','failed','timeout','cancelled')"
    "  AND OLD.status IN ('pending','running') THEN"
    "  NEW.webhook_state := 'pending'; NEW.webhook_next_at := NEW.updated_at;"
    " END IF; RETURN NEW; END $$;"
    "CREATE TRIGGER tasks_webhook BEFORE UPDATE OF status ON tasks FOR EACH ROW"
    " EXECUTE FUNCTION te_webhook_due();",
    /* 3: tasks per state, kept by a trigger in 16 shards per state (so concurrent
     * transitions rarely wait on one row), so totals and stats never count the table */
    "LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE;"
    "CREATE TABLE task_counts (status text NOT NULL, shard integer NOT NULL,"
    " n bigint NOT NULL DEFAULT 0, PRIMARY KEY (status, shard));"
    "INSERT INTO task_counts SELECT s, g, 0 FROM unnest(ARRAY['pending', 'running', "
    "'completed', 'failed', 'timeout', 'cancelled']) s, generate_series(0, 15) g;"
    "UPDATE task_counts c SET n = x.cnt FROM (SELECT status, count(*) AS cnt FROM tasks "
    "GROUP BY status) x WHERE c.status = x.status AND c.shard = 0;"
    "CREATE FUNCTION te_count() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF TG_OP = 'INSERT' THEN"
    "  UPDATE task_counts SET n = n + 1 WHERE status = NEW.status AND shard = NEW.seq % 16;"
    " ELSIF OLD.status <> NEW.status THEN"
    "  UPDATE task_counts SET n = n - 1 WHERE status = OLD.status AND shard = NEW.seq % 16;"
    "  UPDATE task_counts SET n = n + 1 WHERE status = NEW.status AND shard = NEW.seq % 16;"
    " END IF; RETURN NULL; END $$;"
    "CREATE TRIGGER tasks_count AFTER INSERT OR UPDATE OF status ON tasks FOR EACH ROW"
    " EXECUTE FUNCTION te_count();",
    /* 4: an event journal for live streams (SSE) and the dashboard's charts, written by
     * triggers so every server sees every change (ts in microseconds); pruned by age.
     * The per-state counts move to statement-level triggers: a row trigger updated the
     * same counter rows once per row, which made one statement touching many tasks
     * quadratic (1,000,000 inserted tasks did not finish in 12 minutes). Counters are
     * updated in status order, so two statements never lock them in opposite orders. */
    "CREATE TABLE task_events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " ts bigint NOT NULL, kind text NOT NULL, task_id uuid, worker_id text, status text,"
    " problem_id text, wait_us bigint);"
    "CREATE INDEX task_events_ts ON task_events (ts);"
    "DROP TRIGGER tasks_count ON tasks; DROP FUNCTION te_count();"
    "CREATE FUNCTION te_count_add(deltas jsonb) RETURNS void LANGUAGE plpgsql AS $$"
    " DECLARE r record; BEGIN"
    " FOR r IN SELECT key, value::bigint AS k FROM jsonb_each_text(deltas) ORDER BY key LOOP"
    "  IF r.k <> 0 THEN UPDATE task_counts SET n = n + r.k"
    "   WHERE status = r.key AND shard = pg_backend_pid() % 16; END IF;"
    " END LOOP; END $$;"
    "CREATE FUNCTION te_tasks_inserted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " PERFORM te_count_add((SELECT jsonb_object_agg(status, k) FROM"
    "  (SELECT status, count(*) AS k FROM new_rows GROUP BY status) x));"
    " INSERT INTO task_events (ts, kind, task_id, worker_id, status, problem_id)"
    "  SELECT te_us(updated_at), 'task', id, worker_id, status, problem_id FROM new_rows"
    "  ORDER BY seq;"
    " RETURN NULL; END $$;"
    "CREATE FUNCTION te_tasks_updated() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF NOT EXISTS (SELECT 1 FROM old_rows o JOIN new_rows n USING (seq)"
    "  WHERE o.status <> n.status) THEN RETURN NULL; END IF;"
    " PERFORM te_count_add((SELECT jsonb_object_agg(s, k) FROM (SELECT s, sum(k) AS k FROM ("
    "  SELECT o.status AS s, -1 AS k FROM old_rows o JOIN new_rows n USING (seq)"
    "   WHERE o.status <> n.status"
    "  UNION ALL SELECT n.status, 1 FROM old_rows o JOIN new_rows n USING (seq)"
    "   WHERE o.status <> n.status) y GROUP BY s) x));"
    " INSERT INTO task_events (ts, kind, task_id, worker_id, status, problem_id, wait_us)"
    "  SELECT te_us(n.updated_at), 'task', n.id, n.worker_id, n.status, n.problem_id,"
    "  CASE WHEN n.status = 'running' THEN te_us(n.started_at) - te_us(n.created_at) END"
    "  FROM old_rows o JOIN new_rows n USING (seq) WHERE o.status <> n.status ORDER BY n.seq;"
    " RETURN NULL; END $$;"
    "CREATE TRIGGER tasks_inserted AFTER INSERT ON tasks REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION te_tasks_inserted();"
    "CREATE TRIGGER tasks_updated AFTER UPDATE ON tasks"
    " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION te_tasks_updated();"
    "CREATE FUNCTION te_worker_event() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status"
    "  OR OLD.current_task_id IS DISTINCT FROM NEW.current_task_id THEN"
    "  INSERT INTO task_events (ts, kind, task_id, worker_id, status)"
    "  VALUES (te_us(clock_timestamp()), 'worker', NEW.current_task_id, NEW.id, NEW.status);"
    " END IF; RETURN NULL; END $$;"
    "CREATE TRIGGER workers_event AFTER INSERT OR UPDATE ON workers FOR EACH ROW"
    " EXECUTE FUNCTION te_worker_event();",
    /* 5: interactive sessions: the step in flight and the last answer of each */
    "CREATE TABLE sessions (task_id uuid PRIMARY KEY, state text NOT NULL,"
    " task_description text, instructions text, actions jsonb, max_steps integer NOT NULL,"
    " step integer NOT NULL DEFAULT 0, answered integer NOT NULL DEFAULT 0, action text,"
    " observation text, done boolean NOT NULL DEFAULT false, reward double precision,"
    " results jsonb, last_activity_at bigint NOT NULL);",
};
#define N_MIGRATIONS (int)(sizeof(migrations) / sizeof(migrations[0]))

struct pg_store;

struct pgconn {
    struct pg_store *owner;
    PGconn *c;
    bool in_tx;                /* inside BEGIN ... COMMIT: a lost statement is not retried */
    bool prepared[Q_N];
    bool busy;                 /* lent out; guarded by the pool lock */
};

struct pg_store {
    struct store base;
    char *conninfo;
    pthread_mutex_t lock;      /* guards conns[].busy */
    pthread_cond_t cond;
    struct pgconn conns[POOL_SIZE];
    int64_t retry_at_ms;       /* no new connection attempt before this; guarded by lock */
    int backoff_ms;            /* guarded by lock */
    /* listener */
    pthread_t listener;
    bool has_listener;
    atomic_bool stopping;
    void (*on_task)(void *ctx);
    void *on_task_ctx;
    void (*on_session)(void *ctx, const char *payload); /* NULL: sessions not listened to */
    void *on_session_ctx;
};

static struct pg_store *P(struct store *st)
{
    return (struct pg_store *)st;
}

static struct pg_store *owner_of(struct pgconn *pc)
{
    return pc->owner;
}

/* ---- connections ---- */

static PGconn *connect_db(const char *conninfo, bool quiet)
{
    /* A bounded connect, so an unreachable host does not hold a thread for minutes;
     * a connect_timeout in the URL wins. */
    const char *keys[] = {"connect_timeout", "dbname", NULL};
    const char *vals[] = {"5", conninfo, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);

    if (PQstatus(c) != CONNECTION_OK) {
        if (!quiet)
            log_error("postgresql: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    PQclear(PQexec(c, "SET application_name = 'taskexec'"));
    return c;
}

static struct pgconn *conn_get(struct pg_store *s)
{
    struct pgconn *pc = NULL;

    pthread_mutex_lock(&s->lock);
    while (!pc) {
        for (int i = 0; i < POOL_SIZE && !pc; i++)
            if (!s->conns[i].busy)
                pc = &s->conns[i];
        if (!pc)
            pthread_cond_wait(&s->cond, &s->lock);
    }
    pc->busy = true;
    pthread_mutex_unlock(&s->lock);
    /* A server that restarted told its clients so; reading that (without blocking)
     * marks the connection bad now, before a statement fails on it. */
    if (pc->c && PQstatus(pc->c) == CONNECTION_OK && !PQconsumeInput(pc->c)) {
        PQfinish(pc->c);
        pc->c = NULL;
    }
    if (!pc->c || PQstatus(pc->c) != CONNECTION_OK) {
        /* (Re)connect lazily, with back-off: while the database is down, calls fail
         * fast with ERR_UNAVAILABLE instead of each waiting on a connect. */
        int64_t now = clock_mono_ms();
        bool try_now;

        if (pc->c)
            PQfinish(pc->c);
        pc->c = NULL;
        memset(pc->prepared, 0, sizeof(pc->prepared));
        pthread_mutex_lock(&s->lock);
        try_now = now >= s->retry_at_ms;
        pthread_mutex_unlock(&s->lock);
        if (try_now)
            pc->c = connect_db(s->conninfo, true);
        pthread_mutex_lock(&s->lock);
        if (try_now && !pc->c) {
            s->backoff_ms = s->backoff_ms ? (s->backoff_ms < 2000 ? s->backoff_ms * 2 : 2000)
                                          : 50;
            s->retry_at_ms = now + s->backoff_ms;
        } else if (pc->c) {
            s->backoff_ms = 0;
            s->retry_at_ms = 0;
        }
        pthread_mutex_unlock(&s->lock);
    }
    return pc;
}

static void conn_put(struct pg_store *s, struct pgconn *pc)
{
    pthread_mutex_lock(&s->lock);
    pc->busy = false;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

/* The error of a failed call: ERR_UNAVAILABLE when the connection is gone. */
static int fail(struct pgconn *pc, PGresult *r, const char *what)
{
    bool lost = !pc->c || PQstatus(pc->c) != CONNECTION_OK;

    if (lost) {
        log_warn("postgresql: %s: the database is unreachable", what);
        return ERR_UNAVAILABLE;
    }
    log_error("postgresql: %s: %s", what, r ? PQresultErrorMessage(r) : PQerrorMessage(pc->c));
    return ERR_STORE;
}

/* After a statement failed on a connection that is now gone (the server restarted
 * and this pooled connection had not noticed), reconnects once so the caller can run
 * it again. True when there is a fresh connection. */
static bool reconnect_after_loss(struct pg_store *s, struct pgconn *pc)
{
    if (!pc->c || PQstatus(pc->c) == CONNECTION_OK)
        return false;
    PQfinish(pc->c);
    memset(pc->prepared, 0, sizeof(pc->prepared));
    pc->c = connect_db(s->conninfo, true);
    return pc->c != NULL;
}

/* Runs prepared statement q. Returns the result (caller PQclear's) or NULL with *rc set. */
static PGresult *run_once(struct pgconn *pc, enum q q, int n, const char *const *vals, int *rc,
                          bool *lost)
{
    char name[16];
    PGresult *r;
    ExecStatusType st;

    *lost = false;
    if (!pc->c) {
        *rc = ERR_UNAVAILABLE;
        return NULL;
    }
    snprintf(name, sizeof(name), "te_%d", (int)q);
    if (!pc->prepared[q]) {
        r = PQprepare(pc->c, name, sql_text[q], 0, NULL);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            *lost = PQstatus(pc->c) != CONNECTION_OK;
            *rc = *lost ? ERR_UNAVAILABLE : fail(pc, r, "prepare");
            PQclear(r);
            return NULL;
        }
        PQclear(r);
        pc->prepared[q] = true;
    }
    r = PQexecPrepared(pc->c, name, n, vals, NULL, NULL, 0);
    st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        *lost = PQstatus(pc->c) != CONNECTION_OK;
        *rc = *lost ? ERR_UNAVAILABLE : fail(pc, r, sql_text[q]);
        PQclear(r);
        return NULL;
    }
    *rc = 0;
    return r;
}

static PGresult *run_sql_once(struct pgconn *pc, const char *sql, int n,
                              const char *const *vals, int *rc, bool *lost)
{
    PGresult *r;
    ExecStatusType st;

    *lost = false;
    if (!pc->c) {
        *rc = ERR_UNAVAILABLE;
        return NULL;
    }
    r = PQexecParams(pc->c, sql, n, NULL, vals, NULL, NULL, 0);
    st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        *lost = PQstatus(pc->c) != CONNECTION_OK;
        *rc = *lost ? ERR_UNAVAILABLE : fail(pc, r, sql);
        PQclear(r);
        return NULL;
    }
    *rc = 0;
    return r;
}

/* The pool a connection belongs to, for the retry after a lost connection. */
static struct pg_store *owner_of(struct pgconn *pc);

/* run / run_sql: one statement; when the connection turns out to have been lost
 * before it (a server restart), once more on a fresh connection. A statement is
 * one transaction, so a lost connection means it did not commit (except in the
 * instant between commit and reply, which a retried insert without an idempotency
 * key would repeat). */
static PGresult *run(struct pgconn *pc, enum q q, int n, const char *const *vals, int *rc)
{
    bool lost;
    PGresult *r = run_once(pc, q, n, vals, rc, &lost);

    if (!r && lost && !pc->in_tx && reconnect_after_loss(owner_of(pc), pc))
        r = run_once(pc, q, n, vals, rc, &lost);
    if (!r && lost)
        log_warn("postgresql: the database is unreachable");
    return r;
}

static PGresult *run_sql(struct pgconn *pc, const char *sql, int n, const char *const *vals,
                         int *rc)
{
    bool lost, begin = !strcmp(sql, "BEGIN");
    PGresult *r = run_sql_once(pc, sql, n, vals, rc, &lost);

    if (!r && lost && !pc->in_tx && reconnect_after_loss(owner_of(pc), pc))
        r = run_sql_once(pc, sql, n, vals, rc, &lost);
    if (begin || !strcmp(sql, "COMMIT") || !strcmp(sql, "ROLLBACK"))
        pc->in_tx = begin && r;
    if (lost && !r)
        pc->in_tx = false; /* the transaction died with the connection */
    if (!r && lost)
        log_warn("postgresql: the database is unreachable");
    return r;
}

/* ---- values ---- */

struct num {
    char s[24];
};

static const char *num(struct num *n, int64_t v)
{
    snprintf(n->s, sizeof(n->s), "%" PRId64, v);
    return n->s;
}

/* JSON text of v (caller frees) or NULL for NULL. *ok false when out of memory. */
static char *json_text(const json_t *v, bool *ok)
{
    char *t;

    if (!v)
        return NULL;
    t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!t)
        *ok = false;
    return t;
}

static char *get_dup(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : strdup(PQgetvalue(r, row, col));
}

static json_t *get_json(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : json_loads(PQgetvalue(r, row, col), JSON_DECODE_ANY,
                                                        NULL);
}

static json_t *get_json_or_null(PGresult *r, int row, int col)
{
    json_t *v = get_json(r, row, col);
    return v ? v : json_null();
}

static int64_t get_i64(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static json_t *get_time(PGresult *r, int row, int col)
{
    char text[40];

    if (PQgetisnull(r, row, col))
        return json_null();
    clock_format(get_i64(r, row, col), text, sizeof(text));
    return json_string(text);
}

static json_t *get_str(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? json_null() : json_string(PQgetvalue(r, row, col));
}

/* Appends one array element in PostgreSQL's literal syntax, quoted and escaped. */
static int array_add(struct buf *b, const char *s, bool is_null)
{
    int rc = buf_append(b, b->len > 1 ? "," : "", b->len > 1 ? 1 : 0);

    if (rc < 0)
        return rc;
    if (is_null)
        return buf_append(b, "NULL", 4);
    rc = buf_append(b, "\"", 1);
    for (const char *p = s; rc == 0 && *p; p++) {
        if (*p == '"' || *p == '\\')
            rc = buf_append(b, "\\", 1);
        if (rc == 0)
            rc = buf_append(b, p, 1);
    }
    return rc == 0 ? buf_append(b, "\"", 1) : rc;
}

/* The four array literals of a log batch, for unnest(). Caller buf_reset's them. */
struct log_arrays {
    struct buf ts, lv, msg, ctx;
};

static int log_arrays_build(struct log_arrays *a, const struct log_entry *e, size_t n)
{
    struct buf *all[4] = {&a->ts, &a->lv, &a->msg, &a->ctx};
    struct num x;
    int rc = 0;

    for (int k = 0; k < 4; k++) {
        buf_init(all[k], SIZE_MAX / 2);
        if (buf_append(all[k], "{", 1) < 0)
            rc = ERR_NOMEM;
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char *c = e[i].context ? json_dumps(e[i].context, JSON_COMPACT) : strdup("{}");
        if (!c || array_add(&a->ts, num(&x, e[i].ts), false) < 0 ||
            array_add(&a->lv, num(&x, e[i].level), false) < 0 ||
            array_add(&a->msg, e[i].message ? e[i].message : "", false) < 0 ||
            array_add(&a->ctx, c, false) < 0)
            rc = ERR_NOMEM;
        free(c);
    }
    for (int k = 0; rc == 0 && k < 4; k++)
        if (buf_append(all[k], "}", 1) < 0)
            rc = ERR_NOMEM;
    return rc;
}

static void log_arrays_reset(struct log_arrays *a)
{
    buf_reset(&a->ts);
    buf_reset(&a->lv);
    buf_reset(&a->msg);
    buf_reset(&a->ctx);
}

static struct task *row_task(PGresult *r, int row)
{
    struct task *t = task_new();

    if (!t)
        return NULL;
    snprintf(t->id, sizeof(t->id), "%s", PQgetvalue(r, row, 0));
    t->problem_id = get_dup(r, row, 1);
    t->status = (enum task_status)task_status_parse(PQgetvalue(r, row, 2));
    t->priority = (int)get_i64(r, row, 3);
    t->backend_type = get_dup(r, row, 4);
    t->mode = get_dup(r, row, 5);
    t->parameters = get_json(r, row, 6);
    t->metadata = get_json(r, row, 7);
    t->callback_url = get_dup(r, row, 8);
    t->idempotency_key = get_dup(r, row, 9);
    t->worker_id = get_dup(r, row, 10);
    t->lease_token = get_dup(r, row, 11);
    t->result = get_json(r, row, 12);
    t->error = get_dup(r, row, 13);
    t->max_steps = (int)get_i64(r, row, 14);
    t->timeout_seconds = (int)get_i64(r, row, 15);
    t->created_at = get_i64(r, row, 16);
    t->updated_at = get_i64(r, row, 17);
    t->started_at = get_i64(r, row, 18);
    t->completed_at = get_i64(r, row, 19);
    t->deadline_at = get_i64(r, row, 20);
    t->seq = get_i64(r, row, 21);
    if (!t->problem_id || !t->backend_type || !t->mode) {
        task_free(t);
        return NULL;
    }
    return t;
}

/* ---- open, migrate, close ---- */

static int exec_simple(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    int rc = 0;

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        log_error("postgresql: %s", PQresultErrorMessage(r));
        rc = ERR_STORE;
    }
    PQclear(r);
    return rc;
}

/* Applies pending migrations under an advisory lock, so servers starting together
 * migrate once. */
static int migrate(PGconn *c)
{
    PGresult *r;
    int version, rc;
    char sql[160];

    snprintf(sql, sizeof(sql), "SELECT pg_advisory_lock(%d)", MIGRATION_LOCK);
    rc = exec_simple(c, sql);
    if (rc < 0)
        return rc;
    rc = exec_simple(c, "SET client_min_messages = warning; CREATE TABLE IF NOT EXISTS "
                        "schema_migrations (version integer PRIMARY KEY, applied_at "
                        "timestamptz NOT NULL DEFAULT now())");
    if (rc < 0)
        goto out;
    r = PQexec(c, "SELECT COALESCE(max(version), 0) FROM schema_migrations");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        log_error("postgresql: %s", PQresultErrorMessage(r));
        PQclear(r);
        rc = ERR_STORE;
        goto out;
    }
    version = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (version > N_MIGRATIONS) {
        log_error("postgresql: the database has schema version %d, newer than this build (%d)",
                  version, N_MIGRATIONS);
        rc = ERR_STORE;
        goto out;
    }
    for (int v = version; v < N_MIGRATIONS && rc == 0; v++) {
        rc = exec_simple(c, "BEGIN");
        if (rc == 0)
            rc = exec_simple(c, migrations[v]);
        if (rc == 0) {
            snprintf(sql, sizeof(sql), "INSERT INTO schema_migrations (version) VALUES (%d)",
                     v + 1);
            rc = exec_simple(c, sql);
        }
        if (rc == 0)
            rc = exec_simple(c, "COMMIT");
        else
            exec_simple(c, "ROLLBACK");
        if (rc == 0)
            log_info("postgresql: applied migration %d", v + 1);
    }
out:
    snprintf(sql, sizeof(sql), "SELECT pg_advisory_unlock(%d)", MIGRATION_LOCK);
    exec_simple(c, sql);
    return rc;
}

/* "postgresql+asyncpg://" is SQLAlchemy's spelling; libpq wants "postgresql://". */
static char *conninfo_of(const char *url)
{
    const char *rest = strstr(url, "://");
    char *out;

    if (!rest)
        return NULL;
    size_t n = strlen(rest) + 16;

    out = malloc(n);
    if (out)
        snprintf(out, n, "postgresql%s", rest);
    return out;
}

static void pg_close(struct store *st);

static int pg_open(const char *url, struct store **out)
{
    struct pg_store *s = calloc(1, sizeof(*s));
    int rc = ERR_STORE;

    if (!s)
        return ERR_NOMEM;
    s->base.ops = &store_pg_ops;
    for (int i = 0; i < POOL_SIZE; i++)
        s->conns[i].owner = s;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->conninfo = conninfo_of(url);
    if (!s->conninfo) {
        rc = ERR_INVALID;
        goto fail;
    }
    s->conns[0].c = connect_db(s->conninfo, false);
    if (!s->conns[0].c)
        goto fail;
    rc = migrate(s->conns[0].c);
    if (rc < 0)
        goto fail;
    *out = &s->base;
    return 0;
fail:
    pg_close(&s->base);
    return rc;
}

static void pg_close(struct store *st)
{
    struct pg_store *s = P(st);

    atomic_store(&s->stopping, true);
    if (s->has_listener)
        pthread_join(s->listener, NULL);
    for (int i = 0; i < POOL_SIZE; i++)
        if (s->conns[i].c)
            PQfinish(s->conns[i].c);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s->conninfo);
    free(s);
}

/* The listener: its own connection, LISTEN, and a poll loop that also notices
 * shutdown. Reconnects with back-off when the database goes away. */
static void *listen_main(void *arg)
{
    struct pg_store *s = arg;
    PGconn *c = NULL;
    int backoff_ms = 100;

    while (!atomic_load(&s->stopping)) {
        struct pollfd pfd;
        PGnotify *n;

        if (!c) {
            c = connect_db(s->conninfo, true);
            if (!c || exec_simple(c, "LISTEN taskexec_task; LISTEN taskexec_session") < 0) {
                PQfinish(c);
                c = NULL;
                usleep((useconds_t)backoff_ms * 1000);
                backoff_ms = backoff_ms < 5000 ? backoff_ms * 2 : 5000;
                continue;
            }
            backoff_ms = 100;
            s->on_task(s->on_task_ctx); /* tasks may have arrived while we were away */
            if (s->on_session)
                s->on_session(s->on_session_ctx, NULL);
        }
        pfd.fd = PQsocket(c);
        pfd.events = POLLIN;
        if (poll(&pfd, 1, 200) < 0 && errno != EINTR)
            break;
        if (!PQconsumeInput(c)) {
            PQfinish(c);
            c = NULL;
            continue;
        }
        while ((n = PQnotifies(c))) {
            if (!strcmp(n->relname, "taskexec_session")) {
                if (s->on_session)
                    s->on_session(s->on_session_ctx, n->extra);
            } else {
                s->on_task(s->on_task_ctx);
            }
            PQfreemem(n);
        }
    }
    PQfinish(c);
    return NULL;
}

static int pg_listen(struct store *st, void (*on_task)(void *ctx), void *ctx)
{
    struct pg_store *s = P(st);

    if (!on_task) {
        /* Stop: after this returns the callback is never called again. */
        atomic_store(&s->stopping, true);
        if (s->has_listener)
            pthread_join(s->listener, NULL);
        s->has_listener = false;
        return 0;
    }
    s->on_task = on_task;
    s->on_task_ctx = ctx;
    if (pthread_create(&s->listener, NULL, listen_main, s) != 0)
        return ERR_IO;
    s->has_listener = true;
    return 0;
}

static int pg_ping(struct store *st)
{
    struct pgconn *pc = conn_get(P(st));
    int rc;
    PGresult *r = run_sql(pc, "SELECT 1", 0, NULL, &rc);

    PQclear(r);
    conn_put(P(st), pc);
    return rc;
}

/* ---- tasks ---- */

static int load_task(struct pgconn *pc, enum q q, const char *key, struct task **out)
{
    const char *v[1] = {key};
    int rc;
    PGresult *r = run(pc, q, 1, v, &rc);

    if (!r)
        return rc;
    if (PQntuples(r) == 0) {
        rc = ERR_NOTFOUND;
    } else {
        *out = row_task(r, 0);
        rc = *out ? 0 : ERR_NOMEM;
    }
    PQclear(r);
    return rc;
}

static int pg_task_insert(struct store *st, struct task *t, struct task **existing)
{
    struct pgconn *pc = conn_get(P(st));
    struct num n1, n2, n3, n4;
    bool ok = true;
    char *params = json_text(t->parameters, &ok), *meta = json_text(t->metadata, &ok);
    const char *v[12] = {t->id, t->problem_id, num(&n1, t->priority), t->backend_type, t->mode,
                         params, meta, t->callback_url, t->idempotency_key,
                         num(&n2, t->max_steps), num(&n3, t->timeout_seconds),
                         num(&n4, t->created_at)};
    PGresult *r = NULL;
    int rc = ERR_NOMEM;

    *existing = NULL;
    if (!ok)
        goto out;
    r = run(pc, Q_TASK_INSERT, 12, v, &rc);
    if (r && PQntuples(r) == 0 && t->idempotency_key)
        rc = load_task(pc, Q_TASK_BY_KEY, t->idempotency_key, existing); /* a known key */
out:
    PQclear(r);
    free(params);
    free(meta);
    conn_put(P(st), pc);
    return rc;
}

static int pg_task_get(struct store *st, const char *id, struct task **out)
{
    struct pgconn *pc = conn_get(P(st));
    int rc = load_task(pc, Q_TASK_BY_ID, id, out);

    conn_put(P(st), pc);
    return rc;
}

static int pg_task_list(struct store *st, const struct task_filter *f, struct task_page *out)
{
    struct pgconn *pc = conn_get(P(st));
    char where[512] = "WHERE true", sql[1024];
    const char *v[8];
    struct num a, b, c, d, e;
    int n = 0, rc;
    PGresult *r = NULL;

    memset(out, 0, sizeof(*out));
    if (f->status >= 0) {
        v[n++] = task_status_name((enum task_status)f->status);
        snprintf(where + strlen(where), sizeof(where) - strlen(where), " AND status = $%d", n);
    }
    if (f->problem_id) {
        v[n++] = f->problem_id;
        snprintf(where + strlen(where), sizeof(where) - strlen(where), " AND problem_id = $%d",
                 n);
    }
    if (f->worker_id) {
        v[n++] = f->worker_id;
        snprintf(where + strlen(where), sizeof(where) - strlen(where), " AND worker_id = $%d", n);
    }
    if (f->since) {
        v[n++] = num(&a, f->since);
        snprintf(where + strlen(where), sizeof(where) - strlen(where),
                 " AND created_at >= te_ts($%d)", n);
    }
    if (f->until) {
        v[n++] = num(&b, f->until);
        snprintf(where + strlen(where), sizeof(where) - strlen(where),
                 " AND created_at < te_ts($%d)", n);
    }
    if (f->after_seq) {
        v[n++] = num(&e, f->after_seq);
        snprintf(where + strlen(where), sizeof(where) - strlen(where), " AND seq > $%d", n);
    }
    if (!f->no_total) {
        /* Filtered by state at most: the kept counts answer without a scan. */
        if (!f->problem_id && !f->worker_id && !f->since && !f->until && !f->after_seq)
            snprintf(sql, sizeof(sql), "SELECT COALESCE(sum(n), 0) FROM task_counts%s",
                     f->status >= 0 ? " WHERE status = $1" : "");
        else
            snprintf(sql, sizeof(sql), "SELECT count(*) FROM tasks %s", where);
        r = run_sql(pc, sql, n, v, &rc);
        if (!r)
            goto out;
        out->total = get_i64(r, 0, 0);
        PQclear(r);
    }
    v[n] = num(&c, f->limit);
    v[n + 1] = num(&d, f->offset);
    snprintf(sql, sizeof(sql), "SELECT " TASK_COLS " FROM tasks %s ORDER BY seq %s LIMIT $%d "
             "OFFSET $%d", where, f->oldest_first ? "ASC" : "DESC", n + 1, n + 2);
    r = run_sql(pc, sql, n + 2, v, &rc);
    if (!r)
        goto out;
    out->items = calloc((size_t)PQntuples(r) + 1, sizeof(*out->items));
    if (!out->items) {
        rc = ERR_NOMEM;
        goto out;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        out->items[i] = row_task(r, i);
        if (!out->items[i]) {
            rc = ERR_NOMEM;
            goto out;
        }
        out->n++;
    }
out:
    PQclear(r);
    conn_put(P(st), pc);
    if (rc < 0)
        store_task_page_reset(out);
    return rc;
}

static int pg_task_cancel(struct store *st, const char *id, int64_t now, struct task **out)
{
    struct pgconn *pc = conn_get(P(st));
    struct num n;
    const char *v[2] = {id, num(&n, now)};
    int rc;
    PGresult *r = run(pc, Q_TASK_CANCEL, 2, v, &rc);

    if (r && PQntuples(r) == 1) {
        *out = row_task(r, 0);
        rc = *out ? 0 : ERR_NOMEM;
    } else if (r) {
        rc = load_task(pc, Q_TASK_BY_ID, id, out);
        if (rc == 0)
            rc = ERR_CONFLICT; /* ended already */
    }
    PQclear(r);
    conn_put(P(st), pc);
    return rc;
}

/* supported_problems globs as anchored POSIX regexes for "~ ANY". Caller frees. */
static char *glob_array(const char *const *patterns, size_t n)
{
    size_t cap = 16;
    char *out;

    for (size_t i = 0; i < n; i++)
        cap += strlen(patterns[i]) * 2 + 8;
    out = malloc(cap);
    if (!out)
        return NULL;
    strcpy(out, "{");
    for (size_t i = 0; i < n; i++) {
        char *w = out + strlen(out);
        const char *p = patterns[i];

        if (i)
            *w++ = ',';
        *w++ = '"';
        *w++ = '^';
        for (; *p; p++) {
            if (*p == '*') {
                *w++ = '.';
                *w++ = '*';
            } else if (*p == '?') {
                *w++ = '.';
            } else if (*p == '[' || *p == ']') {
                *w++ = *p;
            } else if (*p == '!' && p > patterns[i] && p[-1] == '[') {
                *w++ = '^';
            } else if (*p == '.') {
                /* "\\." inside an array literal is one backslash in the element */
                *w++ = '\\';
                *w++ = '\\';
                *w++ = '.';
            } else {
                *w++ = *p;
            }
        }
        *w++ = '$';
        *w++ = '"';
        *w = '\0';
    }
    strcat(out, "}");
    return out;
}

static int pg_task_claim(struct store *st, const struct claim_req *req, struct task **out)
{
    struct pgconn *pc = conn_get(P(st));
    struct num n;
    char *globs = glob_array(req->patterns, req->n_patterns);
    const char *v[5] = {req->worker_id, req->lease_token, num(&n, req->now), req->backend_type,
                        globs};
    int rc = ERR_NOMEM;
    PGresult *r = NULL;

    if (globs)
        r = run(pc, Q_TASK_CLAIM, 5, v, &rc);
    if (r) {
        if (PQntuples(r) == 0) {
            rc = ERR_NOTFOUND;
        } else {
            *out = row_task(r, 0);
            rc = *out ? 0 : ERR_NOMEM;
        }
    }
    PQclear(r);
    free(globs);
    conn_put(P(st), pc);
    return rc;
}

static int pg_task_finish(struct store *st, const char *id, const char *lease_token,
                          const struct task_end *end)
{
    struct pgconn *pc = NULL;
    struct log_arrays a;
    struct num n;
    bool ok = true;
    char *res = json_text(end->result, &ok);
    json_t *success = end->result ? json_object_get(end->result, "success") : NULL;
    int rc = log_arrays_build(&a, end->logs, end->n_logs);
    PGresult *r = NULL;

    if (rc == 0 && ok) {
        const char *v[11] = {id, lease_token, task_status_name(end->status), res, end->error,
                             num(&n, end->now),
                             json_is_boolean(success) ? (json_is_true(success) ? "true" : "false")
                                                      : "null",
                             a.ts.data, a.lv.data, a.msg.data, a.ctx.data};
        pc = conn_get(P(st));
        /* With claim_next: the end and the next claim commit together. */
        if (end->claim_next)
            PQclear(run_sql(pc, "BEGIN", 0, NULL, &rc));
        if (rc == 0)
            r = run(pc, Q_TASK_FINISH, 11, v, &rc);
    } else {
        rc = ERR_NOMEM;
    }
    if (r) {
        if (get_i64(r, 0, 0) == 1)
            rc = 0;
        else
            rc = !strcmp(PQgetvalue(r, 0, 1), "t") ? ERR_CONFLICT : ERR_NOTFOUND;
    }
    PQclear(r);
    if (pc && end->claim_next) {
        struct task *t = NULL;
        int rc2;
        if (rc == 0) {
            struct num cn;
            char *globs = glob_array(end->claim_next->patterns, end->claim_next->n_patterns);
            const char *cv[5] = {end->claim_next->worker_id, end->claim_next->lease_token,
                                 num(&cn, end->claim_next->now), end->claim_next->backend_type,
                                 globs};
            PGresult *cr = globs ? run(pc, Q_TASK_CLAIM, 5, cv, &rc) : NULL;
            if (cr && rc == 0 && PQntuples(cr) > 0 && !(t = row_task(cr, 0)))
                rc = ERR_NOMEM;
            PQclear(cr);
            free(globs);
        }
        /* ERR_CONFLICT/NOTFOUND: the end was refused; still commit (logs are kept). */
        PQclear(run_sql(pc, rc == 0 || rc == ERR_CONFLICT || rc == ERR_NOTFOUND ? "COMMIT"
                                                                                 : "ROLLBACK",
                        0, NULL, &rc2));
        if (rc2 < 0 && rc == 0)
            rc = rc2;
        if (rc == 0 && t)
            *end->next = t;
        else
            task_free(t);
    }
    if (pc)
        conn_put(P(st), pc);
    log_arrays_reset(&a);
    free(res);
    return rc;
}

static int pg_task_lease_status(struct store *st, const char *id, const char *lease_token,
                                enum task_status *status)
{
    struct pgconn *pc = conn_get(P(st));
    const char *v[1] = {id};
    int rc;
    PGresult *r = run(pc, Q_TASK_LEASE, 1, v, &rc);

    if (r) {
        if (PQntuples(r) == 0) {
            rc = ERR_NOTFOUND;
        } else {
            *status = (enum task_status)task_status_parse(PQgetvalue(r, 0, 0));
            rc = !PQgetisnull(r, 0, 1) && lease_token &&
                         !strcmp(PQgetvalue(r, 0, 1), lease_token)
                     ? 0
                     : ERR_FORBIDDEN;
        }
    }
    PQclear(r);
    conn_put(P(st), pc);
    return rc;
}

static int pg_task_stats(struct store *st, bool with_averages, struct task_stats *out)
{
    struct pgconn *pc = conn_get(P(st));
    int rc;
    PGresult *r;

    memset(out, 0, sizeof(*out));
    out->avg_wait_seconds = out->avg_run_seconds = -1;
    r = run_sql(pc, "SELECT status, sum(n) FROM task_counts GROUP BY status", 0, NULL, &rc);
    for (int i = 0; r && i < PQntuples(r); i++) {
        int s = task_status_parse(PQgetvalue(r, i, 0));
        if (s >= 0) {
            out->counts[s] = get_i64(r, i, 1);
            out->total += out->counts[s];
        }
    }
    PQclear(r);
    if (rc == 0 && with_averages) {
        r = run_sql(pc, "SELECT extract(epoch FROM avg(started_at - created_at)), "
                        "extract(epoch FROM avg(completed_at - started_at)) FROM tasks "
                        "WHERE started_at IS NOT NULL", 0, NULL, &rc);
        if (r && !PQgetisnull(r, 0, 0))
            out->avg_wait_seconds = strtod(PQgetvalue(r, 0, 0), NULL);
        if (r && !PQgetisnull(r, 0, 1))
            out->avg_run_seconds = strtod(PQgetvalue(r, 0, 1), NULL);
        PQclear(r);
    }
    conn_put(P(st), pc);
    return rc;
}

/* ---- logs and conversations ---- */

static int pg_logs_append(struct store *st, const char *task_id, const struct log_entry *e,
                          size_t n)
{
    struct log_arrays a;
    int rc;

    if (n == 0)
        return 0;
    rc = log_arrays_build(&a, e, n);
    if (rc == 0) {
        struct pgconn *pc = conn_get(P(st));
        const char *v[5] = {task_id, a.ts.data, a.lv.data, a.msg.data, a.ctx.data};
        PQclear(run(pc, Q_LOG_INSERT, 5, v, &rc));
        conn_put(P(st), pc);
    }
    log_arrays_reset(&a);
    return rc;
}

static int pg_logs_list(struct store *st, const char *task_id, int min_level, int64_t limit,
                        int64_t offset, json_t **logs, int64_t *total)
{
    struct pgconn *pc = conn_get(P(st));
    struct num a, b, c;
    const char *v[4] = {task_id, num(&a, min_level), num(&b, limit), num(&c, offset)};
    json_t *arr = json_array();
    int rc = arr ? 0 : ERR_NOMEM;
    PGresult *r = NULL;

    if (rc == 0)
        r = run_sql(pc, "SELECT te_us(ts), level, message, context::text FROM task_logs WHERE "
                        "task_id = $1 AND level >= $2 ORDER BY id LIMIT $3 OFFSET $4", 4, v, &rc);
    for (int i = 0; r && rc == 0 && i < PQntuples(r); i++) {
        json_t *o = json_pack("{s:o, s:s, s:o, s:o}", "timestamp", get_time(r, i, 0), "level",
                              proto_level_name((int)get_i64(r, i, 1)), "message",
                              get_str(r, i, 2), "context", get_json_or_null(r, i, 3));
        if (!o || json_array_append_new(arr, o))
            rc = ERR_NOMEM;
    }
    PQclear(r);
    r = NULL;
    if (rc == 0)
        r = run_sql(pc, "SELECT count(*) FROM task_logs WHERE task_id = $1 AND level >= $2", 2,
                    v, &rc);
    if (r)
        *total = get_i64(r, 0, 0);
    PQclear(r);
    conn_put(P(st), pc);
    if (rc == 0)
        *logs = arr;
    else
        json_decref(arr);
    return rc;
}


/* Inserts messages on pc, inside the caller's transaction; *rc set on failure. */
static void insert_messages(struct pgconn *pc, const char *task_id, const struct msg_entry *e,
                            size_t n, int *rcp)
{
    int rc = *rcp;
    PGresult *r;
    char seq[24] = "", seq_of[256] = ""; /* the conversation of the previous message */

    for (size_t i = 0; rc == 0 && i < n; i++) {
        json_t *m = e[i].msg, *sid = json_object_get(m, "session_id");
        json_t *step = json_object_get(m, "step"), *meta = json_object_get(m, "metadata");
        json_t *model = json_object_get(meta, "model");
        int64_t tokens = proto_message_tokens(meta);
        const char *session = json_is_string(sid) ? json_string_value(sid) : task_id;
        char id[TASK_ID_LEN + 1], *content, *metatext;
        struct num a, b, c;
        const char *cv[4] = {id, task_id, session, num(&a, e[i].ts)};

        /* A run's messages mostly share one conversation: find or make it once a batch. */
        if (!seq[0] || strcmp(seq_of, session)) {
            uuidgen(id);
            r = run(pc, Q_CONV_UPSERT, 4, cv, &rc);
            if (!r)
                break;
            snprintf(seq, sizeof(seq), "%s", PQgetvalue(r, 0, 0));
            snprintf(seq_of, sizeof(seq_of), "%s", strlen(session) < sizeof(seq_of) ? session : "");
            PQclear(r);
        }
        content = json_dumps(json_object_get(m, "content"), JSON_COMPACT | JSON_ENCODE_ANY);
        metatext = meta ? json_dumps(meta, JSON_COMPACT) : strdup("{}");
        const char *mv[8] = {seq, a.s, json_string_value(json_object_get(m, "role")),
                             content ? content : "null",
                             json_is_integer(step) ? num(&b, json_integer_value(step)) : NULL,
                             metatext ? metatext : "{}", tokens >= 0 ? num(&c, tokens) : NULL,
                             json_is_string(model) ? json_string_value(model) : NULL};
        PQclear(run(pc, Q_MSG_INSERT, 8, mv, &rc));
        free(content);
        free(metatext);
    }
    *rcp = rc;
}

static int pg_messages_append(struct store *st, const char *task_id, const struct msg_entry *e,
                              size_t n)
{
    struct pgconn *pc = conn_get(P(st));
    int rc = 0;

    if (n)
        PQclear(run_sql(pc, "BEGIN", 0, NULL, &rc));
    insert_messages(pc, task_id, e, n, &rc);
    if (n) {
        int rc2;
        PQclear(run_sql(pc, rc == 0 ? "COMMIT" : "ROLLBACK", 0, NULL, &rc2));
        if (rc == 0)
            rc = rc2;
    }
    conn_put(P(st), pc);
    return rc;
}

#define CONV_COLS                                                                          \
    "c.seq, c.id, c.task_id, c.session_id, c.model_name, c.model_config::text, "            \
    "te_us(c.started_at), te_us(c.ended_at), c.total_messages, c.total_tokens, "            \
    "c.metadata::text"

static json_t *row_conversation(PGresult *r, int i)
{
    json_t *tokens = PQgetisnull(r, i, 9) ? json_null() : json_integer(get_i64(r, i, 9));
    json_t *meta = get_json_or_null(r, i, 10);
    json_t *success = json_object_get(meta, "success");
    json_t *cfg = get_json_or_null(r, i, 5);

    return json_pack("{s:o, s:o, s:o, s:o, s:O, s:o, s:o, s:o, s:I, s:o, s:o, s:O}", "id",
                     get_str(r, i, 1), "task_id", get_str(r, i, 2), "session_id",
                     get_str(r, i, 3), "model_name", get_str(r, i, 4), "model_config", cfg,
                     "llm_config", cfg, "started_at", get_time(r, i, 6), "ended_at",
                     get_time(r, i, 7), "total_messages", (json_int_t)get_i64(r, i, 8),
                     "total_tokens", tokens, "metadata", meta, "success",
                     success ? success : json_null());
}

static int load_messages(struct pgconn *pc, const char *seq, json_t *conv)
{
    const char *v[1] = {seq};
    json_t *arr = json_array();
    int rc = arr ? 0 : ERR_NOMEM;
    PGresult *r = NULL;

    if (rc == 0)
        r = run_sql(pc, "SELECT te_us(ts), role, content::text, step, metadata::text FROM "
                        "llm_messages WHERE conversation_seq = $1 ORDER BY id", 1, v, &rc);
    for (int i = 0; r && rc == 0 && i < PQntuples(r); i++) {
        json_t *step = PQgetisnull(r, i, 3) ? json_null() : json_integer(get_i64(r, i, 3));
        json_t *m = json_pack("{s:o, s:o, s:o, s:o, s:o}", "timestamp", get_time(r, i, 0),
                              "role", get_str(r, i, 1), "content", get_json_or_null(r, i, 2),
                              "step", step, "metadata", get_json_or_null(r, i, 4));
        if (!m || json_array_append_new(arr, m))
            rc = ERR_NOMEM;
    }
    PQclear(r);
    if (rc == 0 && json_object_set_new(conv, "messages", arr))
        return ERR_NOMEM;
    if (rc < 0)
        json_decref(arr);
    return rc;
}

static int pg_conversations_list(struct store *st, const char *task_id, const char *model_name,
                                 int64_t limit, int64_t offset, json_t **items, int64_t *total)
{
    struct pgconn *pc = conn_get(P(st));
    struct num a, b;
    const char *v[4] = {task_id, model_name, num(&a, limit), num(&b, offset)};
    const char *where = "WHERE ($1::uuid IS NULL OR c.task_id = $1::uuid) AND ($2::text IS "
                        "NULL OR c.model_name = $2)";
    char sql[1024];
    json_t *arr = json_array();
    int rc = arr ? 0 : ERR_NOMEM;
    PGresult *r = NULL;

    snprintf(sql, sizeof(sql), "SELECT count(*) FROM llm_conversations c %s", where);
    if (rc == 0)
        r = run_sql(pc, sql, 2, v, &rc);
    if (r)
        *total = get_i64(r, 0, 0);
    PQclear(r);
    r = NULL;
    snprintf(sql, sizeof(sql), "SELECT " CONV_COLS " FROM llm_conversations c %s ORDER BY "
             "c.started_at DESC, c.seq DESC LIMIT $3 OFFSET $4", where);
    if (rc == 0)
        r = run_sql(pc, sql, 4, v, &rc);
    for (int i = 0; r && rc == 0 && i < PQntuples(r); i++) {
        json_t *o = row_conversation(r, i);
        if (!o || json_array_append_new(arr, o))
            rc = ERR_NOMEM;
    }
    PQclear(r);
    conn_put(P(st), pc);
    if (rc == 0)
        *items = arr;
    else
        json_decref(arr);
    return rc;
}

static int pg_conversation_get(struct store *st, const char *id, bool with_messages,
                               json_t **out)
{
    struct pgconn *pc = conn_get(P(st));
    const char *v[1] = {id};
    json_t *o = NULL;
    int rc;
    PGresult *r = run_sql(pc, "SELECT " CONV_COLS " FROM llm_conversations c WHERE c.id = $1", 1,
                          v, &rc);

    if (r && PQntuples(r) == 0)
        rc = ERR_NOTFOUND;
    if (r && rc == 0) {
        o = row_conversation(r, 0);
        rc = o ? 0 : ERR_NOMEM;
        if (rc == 0 && with_messages)
            rc = load_messages(pc, PQgetvalue(r, 0, 0), o);
    }
    PQclear(r);
    conn_put(P(st), pc);
    if (rc == 0)
        *out = o;
    else
        json_decref(o);
    return rc;
}

static int pg_task_conversations(struct store *st, const char *task_id, json_t **out)
{
    struct pgconn *pc = conn_get(P(st));
    const char *v[1] = {task_id};
    json_t *arr = json_array();
    int rc = arr ? 0 : ERR_NOMEM;
    PGresult *r = NULL;

    if (rc == 0)
        r = run_sql(pc, "SELECT " CONV_COLS " FROM llm_conversations c WHERE c.task_id = $1 "
                        "ORDER BY c.seq", 1, v, &rc);
    for (int i = 0; r && rc == 0 && i < PQntuples(r); i++) {
        json_t *o = row_conversation(r, i);
        if (!o || json_array_append_new(arr, o)) {
            rc = ERR_NOMEM;
            break;
        }
        rc = load_messages(pc, PQgetvalue(r, i, 0), o);
    }
    PQclear(r);
    conn_put(P(st), pc);
    if (rc == 0)
        *out = arr;
    else
        json_decref(arr);
    return rc;
}

static int pg_conversation_stats(struct store *st, json_t **out)
{
    struct pgconn *pc = conn_get(P(st));
    json_t *by_model = json_object();
    int rc = by_model ? 0 : ERR_NOMEM;
    int64_t total = 0, tokens = 0, ok = 0;
    double avg = 0;
    PGresult *r = NULL;

    if (rc == 0)
        r = run_sql(pc, "SELECT count(*), COALESCE(avg(total_messages), 0), "
                        "COALESCE(sum(total_tokens), 0), count(*) FILTER (WHERE "
                        "metadata->'success' = 'true') FROM llm_conversations", 0, NULL, &rc);
    if (r) {
        total = get_i64(r, 0, 0);
        avg = strtod(PQgetvalue(r, 0, 1), NULL);
        tokens = get_i64(r, 0, 2);
        ok = get_i64(r, 0, 3);
    }
    PQclear(r);
    r = NULL;
    if (rc == 0)
        r = run_sql(pc, "SELECT model_name, count(*) FROM llm_conversations WHERE model_name IS "
                        "NOT NULL GROUP BY model_name", 0, NULL, &rc);
    for (int i = 0; r && i < PQntuples(r); i++)
        json_object_set_new(by_model, PQgetvalue(r, i, 0), json_integer(get_i64(r, i, 1)));
    PQclear(r);
    conn_put(P(st), pc);
    if (rc == 0) {
        *out = json_pack("{s:I, s:O, s:f, s:I, s:f, s:I}", "total_conversations",
                         (json_int_t)total, "conversations_by_model", by_model,
                         "avg_messages_per_conversation", avg, "total_tokens_consumed",
                         (json_int_t)tokens, "success_rate",
                         total ? (double)ok / (double)total : 0.0, "successful_conversations",
                         (json_int_t)ok);
        if (!*out)
            rc = ERR_NOMEM;
    }
    json_decref(by_model);
    return rc;
}

/* ---- workers ---- */

static int simple(struct store *st, const char *sql, int n, const char *const *v, int *changes)
{
    struct pgconn *pc = conn_get(P(st));
    int rc;
    PGresult *r = run_sql(pc, sql, n, v, &rc);

    if (r && changes)
        *changes = atoi(PQcmdTuples(r));
    PQclear(r);
    conn_put(P(st), pc);
    return rc;
}

static int pg_worker_register(struct store *st, const struct worker_reg *reg)
{
    struct num n;
    bool ok = true;
    char *caps = reg->capabilities ? json_text(reg->capabilities, &ok) : strdup("{}");
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
    rc = simple(st,
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

static int pg_worker_token(struct store *st, const char *id, char **token_hash)
{
    struct pgconn *pc = conn_get(P(st));
    const char *v[1] = {id};
    int rc;
    PGresult *r = run_sql(pc, "SELECT token_hash FROM workers WHERE id = $1", 1, v, &rc);

    if (r && PQntuples(r) == 0)
        rc = ERR_NOTFOUND;
    else if (r)
        *token_hash = get_dup(r, 0, 0);
    PQclear(r);
    conn_put(P(st), pc);
    return rc;
}

static int pg_worker_heartbeat(struct store *st, const char *const *ids, size_t n, int64_t now)
{
    struct buf arr;
    struct num x;
    int rc = 0;

    if (n == 0)
        return 0;
    buf_init(&arr, SIZE_MAX / 2);
    rc = buf_append(&arr, "{", 1);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = array_add(&arr, ids[i], false);
    if (rc == 0)
        rc = buf_append(&arr, "}", 1);
    if (rc == 0) {
        const char *v[2] = {arr.data, num(&x, now)};
        rc = simple(st, "UPDATE workers SET last_heartbeat = te_ts($2), status = CASE WHEN "
                        "status = 'offline' THEN 'idle' ELSE status END WHERE id = ANY "
                        "($1::text[])", 2, v, NULL);
    }
    buf_reset(&arr);
    return rc;
}

static int pg_worker_set_status(struct store *st, const char *id, const char *status,
                                json_t *metadata)
{
    bool ok = true;
    char *meta = json_text(metadata, &ok);
    const char *v[3] = {id, status, meta};
    int rc = ok ? simple(st, "UPDATE workers SET status = $2, current_task_id = NULL, metadata = "
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
                     get_str(r, i, 0), "backend_type", get_str(r, i, 1), "status",
                     get_str(r, i, 2), "last_heartbeat", get_time(r, i, 3), "current_task_id",
                     get_str(r, i, 4), "capabilities", get_json_or_null(r, i, 5), "metadata",
                     get_json_or_null(r, i, 6), "tasks_completed",
                     (json_int_t)get_i64(r, i, 7), "tasks_failed", (json_int_t)get_i64(r, i, 8),
                     "registered_at", get_time(r, i, 9), "internal",
                     !strcmp(PQgetvalue(r, i, 10), "t"));
}

static int pg_worker_list(struct store *st, const char *status, const char *backend_type,
                          json_t **out)
{
    struct pgconn *pc = conn_get(P(st));
    const char *v[2] = {status, backend_type};
    json_t *arr = json_array();
    int rc = arr ? 0 : ERR_NOMEM;
    PGresult *r = NULL;

    if (rc == 0)
        r = run_sql(pc, "SELECT " WORKER_COLS " FROM workers WHERE ($1::text IS NULL OR status "
                        "= $1) AND ($2::text IS NULL OR backend_type = $2) ORDER BY id", 2, v,
                    &rc);
    for (int i = 0; r && rc == 0 && i < PQntuples(r); i++) {
        json_t *o = row_worker(r, i);
        if (!o || json_array_append_new(arr, o))
            rc = ERR_NOMEM;
    }
    PQclear(r);
    conn_put(P(st), pc);
    if (rc == 0)
        *out = arr;
    else
        json_decref(arr);
    return rc;
}

static int pg_worker_get(struct store *st, const char *id, json_t **out)
{
    struct pgconn *pc = conn_get(P(st));
    const char *v[1] = {id};
    int rc;
    PGresult *r = run_sql(pc, "SELECT " WORKER_COLS " FROM workers WHERE id = $1", 1, v, &rc);

    if (r && PQntuples(r) == 0)
        rc = ERR_NOTFOUND;
    if (r && rc == 0) {
        *out = row_worker(r, 0);
        rc = *out ? 0 : ERR_NOMEM;
    }
    PQclear(r);
    conn_put(P(st), pc);
    return rc;
}

static int pg_worker_counts(struct store *st, int64_t counts[3])
{
    struct pgconn *pc = conn_get(P(st));
    int rc;
    PGresult *r = run_sql(pc, "SELECT status, count(*) FROM workers GROUP BY status", 0, NULL,
                          &rc);

    counts[0] = counts[1] = counts[2] = 0;
    for (int i = 0; r && i < PQntuples(r); i++) {
        const char *name = PQgetvalue(r, i, 0);
        int k = !strcmp(name, WORKER_IDLE) ? 0 : !strcmp(name, WORKER_BUSY) ? 1 : 2;
        counts[k] += get_i64(r, i, 1);
    }
    PQclear(r);
    conn_put(P(st), pc);
    return rc;
}

/* ---- recovery ---- */

static int pg_reap(struct store *st, int64_t now, int64_t heartbeat_timeout_us,
                   struct reap_result *out)
{
    struct pgconn *pc = conn_get(P(st));
    struct num a, b;
    const char *v[2] = {num(&a, now), num(&b, heartbeat_timeout_us)};
    int rc;
    PGresult *r;

    memset(out, 0, sizeof(*out));
    /* One statement: silent workers go offline and their tasks fail together; SKIP
     * LOCKED lets servers reaping at the same moment split the work, never double it. */
    r = run_sql(pc,
                "WITH silent AS (SELECT id FROM workers WHERE status <> 'offline' AND "
                "last_heartbeat < te_ts($1::bigint - $2::bigint) FOR UPDATE SKIP LOCKED), "
                "failed AS (UPDATE tasks SET status = 'failed', completed_at = te_ts($1), "
                "updated_at = te_ts($1), error = 'worker ' || worker_id || ' stopped sending "
                "heartbeats (silent for more than ' || ($2::bigint / 1000000) || ' s); the run was lost' "
                "WHERE status = 'running' AND worker_id IN (SELECT id FROM silent) RETURNING "
                "worker_id), "
                "off AS (UPDATE workers w SET status = 'offline', current_task_id = NULL, "
                "tasks_failed = w.tasks_failed + (SELECT count(*) FROM failed f WHERE f.worker_id "
                "= w.id) WHERE w.id IN (SELECT id FROM silent) RETURNING w.id) "
                "SELECT (SELECT count(*) FROM off), (SELECT count(*) FROM failed)",
                2, v, &rc);
    if (r) {
        out->workers_offline = (int)get_i64(r, 0, 0);
        out->tasks_failed = (int)get_i64(r, 0, 1);
    }
    PQclear(r);
    conn_put(P(st), pc);
    if (rc == 0)
        rc = simple(st,
                    "UPDATE tasks SET status = 'timeout', completed_at = te_ts($1), updated_at = "
                    "te_ts($1), error = 'timed out after ' || timeout_seconds || ' s; its worker "
                    "did not stop it in time' WHERE status = 'running' AND deadline_at < "
                    "te_ts($1::bigint - $2::bigint)",
                    2, v, &out->tasks_timed_out);
    return rc;
}

static int pg_recover(struct store *st, const char *name_prefix, int64_t now, int *n_failed)
{
    struct num a;
    const char *v[2] = {name_prefix, num(&a, now)};
    int rc;

    *n_failed = 0;
    rc = simple(st,
                "UPDATE tasks SET status = 'failed', completed_at = te_ts($2), updated_at = "
                "te_ts($2), error = 'the server restarted while internal worker ' || worker_id "
                "|| ' was running this task; the run was lost' WHERE status = 'running' AND "
                "worker_id IN (SELECT id FROM workers WHERE name_prefix = $1)",
                2, v, n_failed);
    if (rc == 0)
        rc = simple(st, "UPDATE workers SET status = 'offline', current_task_id = NULL WHERE "
                        "name_prefix = $1", 1, v, NULL);
    return rc;
}

static int pg_webhooks_due(struct store *st, int64_t now, int64_t lease_us, size_t max,
                           struct webhook_job *jobs, size_t *n)
{
    struct pgconn *pc = conn_get(P(st));
    struct num a, b, c;
    const char *v[3] = {num(&a, now), num(&b, lease_us), num(&c, (int64_t)max)};
    int rc;
    PGresult *r;

    *n = 0;
    /* Leasing a delivery pushes its next attempt out, so no other server takes it. */
    r = run_sql(pc, "UPDATE tasks SET webhook_next_at = te_ts($1::bigint + $2::bigint) WHERE seq "
                    "IN (SELECT seq FROM tasks WHERE webhook_state = 'pending' AND "
                    "webhook_next_at <= te_ts($1) ORDER BY webhook_next_at LIMIT $3 FOR UPDATE "
                    "SKIP LOCKED) RETURNING id, callback_url, webhook_attempts", 3, v, &rc);
    for (int i = 0; r && i < PQntuples(r) && *n < max; i++) {
        struct webhook_job *j = &jobs[*n];
        snprintf(j->task_id, sizeof(j->task_id), "%s", PQgetvalue(r, i, 0));
        j->url = strdup(PQgetvalue(r, i, 1));
        j->attempts = (int)get_i64(r, i, 2);
        if (j->url)
            (*n)++;
    }
    PQclear(r);
    conn_put(P(st), pc);
    return rc;
}

/* ---- the event journal (live streams, charts) ---- */

static int pg_events_head(struct store *st, int64_t *event_id, int64_t *log_id)
{
    struct pgconn *pc = conn_get(P(st));
    int rc;
    PGresult *r = run_sql(pc, "SELECT (SELECT COALESCE(max(id), 0) FROM task_events), "
                              "(SELECT COALESCE(max(id), 0) FROM task_logs)", 0, NULL, &rc);

    if (r && rc == 0) {
        *event_id = get_i64(r, 0, 0);
        *log_id = get_i64(r, 0, 1);
    }
    PQclear(r);
    conn_put(P(st), pc);
    return rc;
}

/* Runs sql (two integer arguments) and maps each row to an array element. */
static int pg_rows(struct store *st, const char *sql, int64_t a1, int64_t a2,
                   json_t *(*row)(PGresult *r, int i), json_t **out)
{
    struct pgconn *pc = conn_get(P(st));
    struct num n1, n2;
    const char *v[2] = {num(&n1, a1), num(&n2, a2)};
    json_t *arr = json_array();
    int rc = arr ? 0 : ERR_NOMEM;
    PGresult *r = NULL;

    if (rc == 0)
        r = run_sql(pc, sql, 2, v, &rc);
    for (int i = 0; r && rc == 0 && i < PQntuples(r); i++) {
        json_t *o = row(r, i);
        if (!o || json_array_append_new(arr, o))
            rc = ERR_NOMEM;
    }
    PQclear(r);
    conn_put(P(st), pc);
    if (rc == 0)
        *out = arr;
    else
        json_decref(arr);
    return rc;
}

static json_t *row_event(PGresult *r, int i)
{
    return json_pack("{s:I, s:I, s:o, s:o, s:o, s:o, s:o}", "id", (json_int_t)get_i64(r, i, 0),
                     "ts_us", (json_int_t)get_i64(r, i, 1), "kind", get_str(r, i, 2), "task_id",
                     get_str(r, i, 3), "worker_id", get_str(r, i, 4), "status", get_str(r, i, 5),
                     "problem_id", get_str(r, i, 6));
}

static int pg_events_after(struct store *st, int64_t after, int limit, json_t **out)
{
    return pg_rows(st, "SELECT id, ts, kind, task_id, worker_id, status, problem_id FROM "
                       "task_events WHERE id > $1 ORDER BY id LIMIT $2", after, limit, row_event,
                   out);
}

static json_t *row_new_log(PGresult *r, int i)
{
    return json_pack("{s:I, s:o, s:I, s:s, s:o, s:o}", "id", (json_int_t)get_i64(r, i, 0),
                     "task_id", get_str(r, i, 1), "ts_us", (json_int_t)get_i64(r, i, 2), "level",
                     proto_level_name((int)get_i64(r, i, 3)), "message", get_str(r, i, 4),
                     "context", get_json_or_null(r, i, 5));
}

static int pg_logs_after(struct store *st, int64_t after, int limit, json_t **out)
{
    return pg_rows(st, "SELECT id, task_id, te_us(ts), level, message, context::text FROM "
                       "task_logs WHERE id > $1 ORDER BY id LIMIT $2", after, limit, row_new_log,
                   out);
}

static int pg_events_prune(struct store *st, int64_t before)
{
    struct pgconn *pc = conn_get(P(st));
    char b[24];
    const char *v[1] = {b};
    int rc;
    PGresult *r;

    snprintf(b, sizeof(b), "%lld", (long long)before);
    r = run_sql(pc, "DELETE FROM task_events WHERE ts < $1 AND id < (SELECT max(id) FROM "
                    "task_events)", 1, v, &rc);
    PQclear(r);
    conn_put(P(st), pc);
    return rc;
}

static json_t *row_bucket(PGresult *r, int i)
{
    json_t *wait = PQgetisnull(r, i, 6) ? json_null()
                                        : json_real(strtod(PQgetvalue(r, i, 6), NULL) / 1000.0);

    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "start_us",
                     (json_int_t)get_i64(r, i, 0), "submitted", (json_int_t)get_i64(r, i, 1),
                     "started", (json_int_t)get_i64(r, i, 2), "completed",
                     (json_int_t)get_i64(r, i, 3), "failed", (json_int_t)get_i64(r, i, 4),
                     "cancelled", (json_int_t)get_i64(r, i, 5), "queue_wait_ms", wait);
}

static int pg_task_timeseries(struct store *st, int64_t since, int64_t bucket_us, json_t **out)
{
    return pg_rows(st, "SELECT ts / $2 * $2, count(*) FILTER (WHERE status = 'pending'), "
                       "count(*) FILTER (WHERE status = 'running'), count(*) FILTER (WHERE "
                       "status = 'completed'), count(*) FILTER (WHERE status IN ('failed', "
                       "'timeout')), count(*) FILTER (WHERE status = 'cancelled'), "
                       "avg(wait_us) FROM task_events WHERE ts >= $1 AND kind = 'task' "
                       "GROUP BY 1 ORDER BY 1", since, bucket_us, row_bucket, out);
}

/* ---- interactive sessions ---- */

static int pg_exec_params(struct store *st, const char *sql, int n, const char *const *v,
                          int *changes)
{
    struct pgconn *pc = conn_get(P(st));
    int rc;
    PGresult *r = run_sql(pc, sql, n, v, &rc);

    if (r && rc == 0 && changes)
        *changes = atoi(PQcmdTuples(r));
    PQclear(r);
    conn_put(P(st), pc);
    return rc;
}

static int pg_session_ready(struct store *st, const char *task_id, json_t *ready, int max_steps,
                            int64_t now)
{
    char *actions = json_dumps(json_object_get(ready, "actions") ? json_object_get(ready, "actions")
                                                                 : json_object(),
                               JSON_COMPACT | JSON_ENCODE_ANY);
    char ms[16], ts[24];
    const char *v[6] = {task_id, json_string_value(json_object_get(ready, "task_description")),
                        json_string_value(json_object_get(ready, "instructions")),
                        actions ? actions : "{}", ms, ts};
    int rc;

    snprintf(ms, sizeof(ms), "%d", max_steps);
    snprintf(ts, sizeof(ts), "%lld", (long long)now);
    rc = pg_exec_params(st, "INSERT INTO sessions (task_id, state, task_description, "
                            "instructions, actions, max_steps, last_activity_at) VALUES ($1, "
                            "'ready', $2, $3, $4::jsonb, $5, $6) ON CONFLICT (task_id) DO UPDATE "
                            "SET state = 'ready', task_description = $2, instructions = $3, "
                            "actions = $4::jsonb, max_steps = $5, step = 0, answered = 0, action "
                            "= NULL, observation = NULL, done = false, reward = NULL, results = "
                            "NULL, last_activity_at = $6", 6, v, NULL);
    free(actions);
    return rc;
}

static int pg_session_get(struct store *st, const char *task_id, json_t **out)
{
    struct pgconn *pc = conn_get(P(st));
    const char *v[1] = {task_id};
    int rc;
    PGresult *r = run_sql(pc, "SELECT state, task_description, instructions, actions::text, "
                              "max_steps, step, answered, action, observation, done, reward, "
                              "results::text, last_activity_at FROM sessions WHERE task_id = $1",
                          1, v, &rc);

    if (r && rc == 0 && PQntuples(r) == 0)
        rc = ERR_NOTFOUND;
    if (r && rc == 0) {
        json_t *reward = PQgetisnull(r, 0, 10) ? json_null()
                                               : json_real(strtod(PQgetvalue(r, 0, 10), NULL));
        *out = json_pack("{s:o, s:o, s:o, s:o, s:I, s:I, s:I, s:o, s:o, s:b, s:o, s:o, s:I}",
                         "state", get_str(r, 0, 0), "task_description", get_str(r, 0, 1),
                         "instructions", get_str(r, 0, 2), "actions", get_json_or_null(r, 0, 3),
                         "max_steps", (json_int_t)get_i64(r, 0, 4), "step",
                         (json_int_t)get_i64(r, 0, 5), "answered", (json_int_t)get_i64(r, 0, 6),
                         "action", get_str(r, 0, 7), "observation", get_str(r, 0, 8), "done",
                         PQgetvalue(r, 0, 9)[0] == 't', "reward", reward, "results",
                         get_json_or_null(r, 0, 11), "last_activity_us",
                         (json_int_t)get_i64(r, 0, 12));
        rc = *out ? 0 : ERR_NOMEM;
    }
    PQclear(r);
    conn_put(P(st), pc);
    return rc;
}

static int pg_session_step(struct store *st, const char *task_id, const char *action, int64_t now,
                           int *step)
{
    struct pgconn *pc = conn_get(P(st));
    char ts[24];
    const char *v[3] = {task_id, action, ts};
    int rc;
    PGresult *r;

    snprintf(ts, sizeof(ts), "%lld", (long long)now);
    /* Committed without waiting for the disk: the step becomes durable with its answer's
     * commit (WAL is flushed in order), and a step lost to a database crash before that
     * is one the environment never saw — the trainer's request fails and it sends it
     * again. This saves a flush on every step. The notification goes out with the
     * commit. */
    PQclear(run_sql(pc, "BEGIN", 0, NULL, &rc));
    if (rc == 0)
        PQclear(run_sql(pc, "SET LOCAL synchronous_commit = off", 0, NULL, &rc));
    r = rc < 0 ? NULL : run_sql(pc, "WITH s AS (UPDATE sessions SET step = step + 1, action = $2, "
                    "last_activity_at = $3 WHERE task_id = $1 AND state = 'ready' AND step = "
                    "answered AND step < max_steps AND EXISTS (SELECT 1 FROM tasks WHERE id = "
                    "$1 AND status = 'running') RETURNING step) SELECT step, "
                    "pg_notify('taskexec_session', 'a:' || $1::text) FROM s", 3, v, &rc);
    if (r && rc == 0) {
        if (PQntuples(r) == 0)
            rc = ERR_CONFLICT;
        else
            *step = (int)get_i64(r, 0, 0);
    }
    PQclear(r);
    {
        int rc2;
        PQclear(run_sql(pc, rc == 0 || rc == ERR_CONFLICT ? "COMMIT" : "ROLLBACK", 0, NULL,
                        &rc2));
        if (rc == 0 && rc2 < 0)
            rc = rc2;
    }
    conn_put(P(st), pc);
    return rc;
}

static int pg_session_next(struct store *st, const char *task_id, int after, int *step,
                           char **action)
{
    struct pgconn *pc = conn_get(P(st));
    char a[16];
    const char *v[2] = {task_id, a};
    int rc;
    PGresult *r;

    *step = 0;
    *action = NULL;
    snprintf(a, sizeof(a), "%d", after);
    r = run_sql(pc, "SELECT step, action FROM sessions WHERE task_id = $1 AND step > $2 AND "
                    "step > answered", 2, v, &rc);
    if (r && rc == 0 && PQntuples(r) > 0) {
        *action = strdup(PQgetvalue(r, 0, 1));
        *step = *action ? (int)get_i64(r, 0, 0) : 0;
        rc = *action ? 0 : ERR_NOMEM;
    }
    PQclear(r);
    conn_put(P(st), pc);
    return rc;
}

static int pg_session_answer(struct store *st, const char *task_id, int step, json_t *answer,
                             const struct msg_entry *msgs, size_t n_msgs, int64_t now)
{
    json_t *reward = json_object_get(answer, "reward"), *res = json_object_get(answer, "results");
    char sp[16], rw[40], ts[24];
    char *results = res && !json_is_null(res) ? json_dumps(res, JSON_COMPACT | JSON_ENCODE_ANY)
                                              : NULL;
    const char *v[7] = {task_id, sp, json_string_value(json_object_get(answer, "observation")),
                        json_is_true(json_object_get(answer, "done")) ? "true" : "false",
                        json_is_number(reward) ? rw : NULL, results, ts};
    struct pgconn *pc = conn_get(P(st));
    int rc = 0, rc2;

    snprintf(sp, sizeof(sp), "%d", step);
    snprintf(rw, sizeof(rw), "%.17g", json_number_value(reward));
    snprintf(ts, sizeof(ts), "%lld", (long long)now);
    PQclear(run_sql(pc, "BEGIN", 0, NULL, &rc));
    insert_messages(pc, task_id, msgs, n_msgs, &rc);
    if (rc == 0)
        PQclear(run_sql(pc, "WITH u AS (UPDATE sessions SET answered = $2, observation = $3, "
                            "done = $4, reward = $5, results = $6::jsonb, state = CASE WHEN $4 "
                            "THEN 'done' ELSE state END, last_activity_at = $7 WHERE task_id = "
                            "$1 AND step = $2 RETURNING 1) SELECT pg_notify('taskexec_session', "
                            "'o:' || $1::text) FROM u", 7, v, &rc));
    PQclear(run_sql(pc, rc == 0 ? "COMMIT" : "ROLLBACK", 0, NULL, &rc2));
    if (rc == 0)
        rc = rc2;
    conn_put(P(st), pc);
    free(results);
    return rc;
}

static int pg_session_end(struct store *st, const char *task_id)
{
    const char *v[1] = {task_id};

    return pg_exec_params(st, "WITH u AS (UPDATE sessions SET state = 'done' WHERE task_id = "
                              "$1 RETURNING 1) SELECT pg_notify('taskexec_session', 'o:' || "
                              "$1::text) FROM u", 1, v, NULL);
}

static int pg_session_idle(struct store *st, int64_t before, char (*ids)[37], size_t max,
                           size_t *n)
{
    struct pgconn *pc = conn_get(P(st));
    char b[24], m[24];
    const char *v[2] = {b, m};
    int rc;
    PGresult *r;

    *n = 0;
    snprintf(b, sizeof(b), "%lld", (long long)before);
    snprintf(m, sizeof(m), "%zu", max);
    r = run_sql(pc, "SELECT s.task_id FROM sessions s JOIN tasks t ON t.id = s.task_id WHERE "
                    "t.status = 'running' AND s.state <> 'done' AND s.last_activity_at < $1 "
                    "LIMIT $2", 2, v, &rc);
    for (int i = 0; r && rc == 0 && i < PQntuples(r) && *n < max; i++)
        snprintf(ids[(*n)++], 37, "%s", PQgetvalue(r, i, 0));
    PQclear(r);
    conn_put(P(st), pc);
    return rc;
}

static void pg_listen_sessions(struct store *st, void (*on_session)(void *ctx, const char *payload),
                               void *ctx)
{
    P(st)->on_session = on_session;
    P(st)->on_session_ctx = ctx;
}

/* ---- the export's logs and conversations, as JSON text made by PostgreSQL ---- */

/* RFC 3339 with microseconds, as clock_format writes it. */
#define PG_TIME(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
/* An array of rows as JSON text on one line (json_agg would add newlines). */
#define PG_ARRAY(expr, order) "'[' || COALESCE(string_agg((" expr ")::text, ',' ORDER BY " order "), '') || ']'"

static int pg_export_extras(struct store *st, const char *task_id, bool logs, bool convs,
                            struct buf *out)
{
    struct pgconn *pc = conn_get(P(st));
    const char *v[1] = {task_id};
    int rc = 0;
    PGresult *r;

    if (logs) {
        r = run_sql(pc, "SELECT " PG_ARRAY("json_build_object('timestamp', " PG_TIME("ts")
                        ", 'level', CASE level WHEN 0 THEN 'debug' WHEN 1 THEN 'info' WHEN 2 "
                        "THEN 'warning' WHEN 3 THEN 'error' WHEN 4 THEN 'critical' ELSE 'info' "
                        "END, 'message', message, 'context', context)", "id")
                        " FROM task_logs WHERE task_id = $1", 1, v, &rc);
        if (r && rc == 0 && (buf_append(out, ",\"logs\":", 8) < 0 ||
                             buf_append(out, PQgetvalue(r, 0, 0),
                                        (size_t)PQgetlength(r, 0, 0)) < 0))
            rc = ERR_NOMEM;
        PQclear(r);
    }
    if (rc == 0 && convs) {
        r = run_sql(pc, "SELECT " PG_ARRAY("json_build_object('id', c.id, 'task_id', c.task_id, "
                        "'session_id', c.session_id, 'model_name', c.model_name, 'model_config', "
                        "c.model_config, 'llm_config', c.model_config, 'started_at', "
                        PG_TIME("c.started_at") ", 'ended_at', " PG_TIME("c.ended_at") ", "
                        "'total_messages', c.total_messages, 'total_tokens', c.total_tokens, "
                        "'metadata', c.metadata, 'success', c.metadata -> 'success', 'messages', "
                        "(SELECT (" PG_ARRAY("json_build_object('timestamp', " PG_TIME("m.ts")
                        ", 'role', m.role, 'content', m.content, 'step', m.step, 'metadata', "
                        "m.metadata)", "m.id") ")::json FROM llm_messages m WHERE "
                        "m.conversation_seq = c.seq), 'chat', (SELECT (" PG_ARRAY(
                        "json_build_object('role', m.role, 'content', CASE WHEN "
                        "jsonb_typeof(m.content) = 'string' THEN m.content #>> '{}' ELSE "
                        "m.content::text END)", "m.id") ")::json FROM llm_messages m WHERE "
                        "m.conversation_seq = c.seq))", "c.seq")
                        " FROM llm_conversations c WHERE c.task_id = $1", 1, v, &rc);
        if (r && rc == 0 && (buf_append(out, ",\"conversations\":", 17) < 0 ||
                             buf_append(out, PQgetvalue(r, 0, 0),
                                        (size_t)PQgetlength(r, 0, 0)) < 0))
            rc = ERR_NOMEM;
        PQclear(r);
    }
    conn_put(P(st), pc);
    return rc;
}

static int pg_webhook_result(struct store *st, const char *task_id, const char *state,
                             int attempts, int64_t next_at, const char *error)
{
    struct num a, b;
    const char *v[5] = {task_id, state, num(&a, attempts), num(&b, next_at), error};

    return simple(st, "UPDATE tasks SET webhook_state = $2, webhook_attempts = $3, "
                      "webhook_next_at = te_ts($4), webhook_error = $5 WHERE id = $1", 5, v,
                  NULL);
}

const struct store_ops store_pg_ops = {
    .name = "postgresql",
    .open = pg_open,
    .close = pg_close,
    .ping = pg_ping,
    .listen = pg_listen,
    .task_insert = pg_task_insert,
    .task_get = pg_task_get,
    .task_list = pg_task_list,
    .task_cancel = pg_task_cancel,
    .task_claim = pg_task_claim,
    .task_finish = pg_task_finish,
    .task_lease_status = pg_task_lease_status,
    .task_stats = pg_task_stats,
    .logs_append = pg_logs_append,
    .logs_list = pg_logs_list,
    .messages_append = pg_messages_append,
    .conversations_list = pg_conversations_list,
    .conversation_get = pg_conversation_get,
    .task_conversations = pg_task_conversations,
    .conversation_stats = pg_conversation_stats,
    .worker_register = pg_worker_register,
    .worker_token = pg_worker_token,
    .worker_heartbeat = pg_worker_heartbeat,
    .worker_set_status = pg_worker_set_status,
    .worker_list = pg_worker_list,
    .worker_get = pg_worker_get,
    .worker_counts = pg_worker_counts,
    .reap = pg_reap,
    .recover = pg_recover,
    .webhooks_due = pg_webhooks_due,
    .webhook_result = pg_webhook_result,
    .events_head = pg_events_head,
    .events_after = pg_events_after,
    .logs_after = pg_logs_after,
    .events_prune = pg_events_prune,
    .task_timeseries = pg_task_timeseries,
    .export_extras = pg_export_extras,
    .session_ready = pg_session_ready,
    .session_get = pg_session_get,
    .session_step = pg_session_step,
    .session_next = pg_session_next,
    .session_answer = pg_session_answer,
    .session_end = pg_session_end,
    .session_idle = pg_session_idle,
    .listen_sessions = pg_listen_sessions,
};
