/* store/pg/db: the PostgreSQL backend's connection pool (lazy reconnects with
 * back-off), running statements (prepared and ad hoc, retried once on a lost
 * connection), reading values, open and close, the listener, and the ops table
 * (store_pg_ops). See pg_int.h for the DESIGN. */
#include "store/pg/pg_int.h"
#include "core/err.h"
#include "core/log.h"
#include "core/clock.h"
#include "core/buf.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

struct pgconn *pg_conn_get(struct pg_store *s)
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

void pg_conn_put(struct pg_store *s, struct pgconn *pc)
{
    pthread_mutex_lock(&s->lock);
    pc->busy = false;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

/* The error of a failed call: ERR_UNAVAILABLE when the connection is gone. */
int pg_fail(struct pgconn *pc, PGresult *r, const char *what)
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
            *rc = *lost ? ERR_UNAVAILABLE : pg_fail(pc, r, "prepare");
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
        *rc = *lost ? ERR_UNAVAILABLE : pg_fail(pc, r, sql_text[q]);
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
        *rc = *lost ? ERR_UNAVAILABLE : pg_fail(pc, r, sql);
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
PGresult *pg_run(struct pgconn *pc, enum q q, int n, const char *const *vals, int *rc)
{
    bool lost;
    PGresult *r = run_once(pc, q, n, vals, rc, &lost);

    if (!r && lost && !pc->in_tx && reconnect_after_loss(owner_of(pc), pc))
        r = run_once(pc, q, n, vals, rc, &lost);
    if (!r && lost)
        log_warn("postgresql: the database is unreachable");
    return r;
}

PGresult *pg_run_sql(struct pgconn *pc, const char *sql, int n, const char *const *vals,
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

/* JSON text of v (caller frees) or NULL for NULL. *ok false when out of memory. */
char *pg_json_text(const json_t *v, bool *ok)
{
    char *t;

    if (!v)
        return NULL;
    t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!t)
        *ok = false;
    return t;
}

char *pg_get_dup(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : strdup(PQgetvalue(r, row, col));
}

json_t *pg_get_json(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : json_loads(PQgetvalue(r, row, col), JSON_DECODE_ANY,
                                                        NULL);
}

json_t *pg_get_json_or_null(PGresult *r, int row, int col)
{
    json_t *v = pg_get_json(r, row, col);
    return v ? v : json_null();
}

int64_t pg_get_i64(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

json_t *pg_get_time(PGresult *r, int row, int col)
{
    char text[40];

    if (PQgetisnull(r, row, col))
        return json_null();
    clock_format(pg_get_i64(r, row, col), text, sizeof(text));
    return json_string(text);
}

json_t *pg_get_str(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? json_null() : json_string(PQgetvalue(r, row, col));
}

/* Appends one array element in PostgreSQL's literal syntax, quoted and escaped. */
int pg_array_add(struct buf *b, const char *s, bool is_null)
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

/* ---- open, pg_migrate, close ---- */

int pg_exec_simple(PGconn *c, const char *sql)
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
    rc = pg_migrate(s->conns[0].c);
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
            if (!c || pg_exec_simple(c, "LISTEN taskexec_task; LISTEN taskexec_session") < 0) {
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
    struct pgconn *pc = pg_conn_get(P(st));
    int rc;
    PGresult *r = pg_run_sql(pc, "SELECT 1", 0, NULL, &rc);

    PQclear(r);
    pg_conn_put(P(st), pc);
    return rc;
}

/* ---- workers ---- */

int pg_simple(struct store *st, const char *sql, int n, const char *const *v, int *changes)
{
    struct pgconn *pc = pg_conn_get(P(st));
    int rc;
    PGresult *r = pg_run_sql(pc, sql, n, v, &rc);

    if (r && changes)
        *changes = atoi(PQcmdTuples(r));
    PQclear(r);
    pg_conn_put(P(st), pc);
    return rc;
}

/* Runs sql (two integer arguments) and maps each row to an array element. */
int pg_rows(struct store *st, const char *sql, int64_t a1, int64_t a2,
            json_t *(*row)(PGresult *r, int i), json_t **out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    struct num n1, n2;
    const char *v[2] = {num(&n1, a1), num(&n2, a2)};
    json_t *arr = json_array();
    int rc = arr ? 0 : ERR_NOMEM;
    PGresult *r = NULL;

    if (rc == 0)
        r = pg_run_sql(pc, sql, 2, v, &rc);
    for (int i = 0; r && rc == 0 && i < PQntuples(r); i++) {
        json_t *o = row(r, i);
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

/* ---- interactive sessions ---- */

int pg_exec_params(struct store *st, const char *sql, int n, const char *const *v,
                   int *changes)
{
    struct pgconn *pc = pg_conn_get(P(st));
    int rc;
    PGresult *r = pg_run_sql(pc, sql, n, v, &rc);

    if (r && rc == 0 && changes)
        *changes = atoi(PQcmdTuples(r));
    PQclear(r);
    pg_conn_put(P(st), pc);
    return rc;
}

static void pg_listen_sessions(struct store *st, void (*on_session)(void *ctx, const char *payload),
                               void *ctx)
{
    P(st)->on_session = on_session;
    P(st)->on_session_ctx = ctx;
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
