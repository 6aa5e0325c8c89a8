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
#include <sys/eventfd.h>
#include <unistd.h>

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

/* pc's connection is now c (NULL: none). Its server process's id is kept where the
 * listener reads it, without the pool lock. */
static void set_conn(struct pgconn *pc, PGconn *c)
{
    pc->c = c;
    __atomic_store_n(&pc->pid, c ? PQbackendPID(c) : 0, __ATOMIC_RELAXED);
}

/* Whether a notification came from one of this store's pooled connections: what this
 * server wrote itself and has already told its own waiters and hosts of directly. (A
 * connection that died unnoticed leaves its id here until its slot reconnects; should
 * another server's new connection get that id meanwhile, its notifications are missed
 * and the session's waiters and hosts find its steps by their 200 ms polls.) */
static bool sent_by_us(const struct pg_store *s, int be_pid)
{
    for (int i = 0; i < POOL_SIZE; i++)
        if (__atomic_load_n(&s->conns[i].pid, __ATOMIC_RELAXED) == be_pid)
            return true;
    return false;
}

/* Whether any pooled connection is live; called with the pool lock held. */
static bool any_live(const struct pg_store *s)
{
    for (int i = 0; i < POOL_SIZE; i++)
        if (s->conns[i].live)
            return true;
    return false;
}

/* Picks an idle slot, with the pool lock held: a live connection first; an unconnected
 * slot only when a connect attempt is due or no connection is live (then statements
 * fail fast). Otherwise NULL: wait for a live one to come back. Preferring the live
 * connections means a refused connect (max_connections reached, a slow server) turns
 * into a short wait for the working ones, not into 503s. */
static struct pgconn *pick_slot(struct pg_store *s, int64_t now)
{
    struct pgconn *dead = NULL;

    for (int i = 0; i < POOL_SIZE; i++) {
        struct pgconn *pc = &s->conns[i];

        if (pc->busy)
            continue;
        if (pc->live)
            return pc;
        if (!dead)
            dead = pc;
    }
    if (dead && (now >= s->retry_at_ms || !any_live(s)))
        return dead;
    return NULL;
}

/* (Re)connects pc, whose connection is missing or bad, when an attempt is due; on a
 * failure, backs off (50 ms doubling to 2 s) so the calls meanwhile fail fast. The
 * first failure of a streak is logged with its reason. */
static void reconnect(struct pg_store *s, struct pgconn *pc)
{
    int64_t now = clock_mono_ms();
    bool try_now, first;

    if (pc->c)
        PQfinish(pc->c);
    set_conn(pc, NULL);
    pc->n_prepared = 0;
    pthread_mutex_lock(&s->lock);
    try_now = now >= s->retry_at_ms;
    first = s->backoff_ms == 0;
    pthread_mutex_unlock(&s->lock);
    if (try_now)
        set_conn(pc, connect_db(s->conninfo, !first));
    pthread_mutex_lock(&s->lock);
    if (try_now && !pc->c) {
        s->backoff_ms = s->backoff_ms ? (s->backoff_ms < 2000 ? s->backoff_ms * 2 : 2000) : 50;
        s->retry_at_ms = now + s->backoff_ms;
    } else if (pc->c) {
        s->backoff_ms = 0;
        s->retry_at_ms = 0;
    }
    pc->live = pc->c != NULL;
    pthread_mutex_unlock(&s->lock);
}

struct pgconn *pg_conn_get(struct pg_store *s)
{
    struct pgconn *pc = NULL;

    for (;;) {
        pthread_mutex_lock(&s->lock);
        while (!(pc = pick_slot(s, clock_mono_ms()))) {
            /* Until a connection comes back, or a connect attempt is due again. */
            struct timespec until;
            int64_t wait_ms = s->retry_at_ms - clock_mono_ms();

            clock_deadline(&until, wait_ms > 0 && wait_ms < 1000 ? wait_ms : 1000);
            pthread_cond_timedwait(&s->cond, &s->lock, &until);
        }
        pc->busy = true;
        pthread_mutex_unlock(&s->lock);
        /* A connection the server dropped meanwhile (a restart) is noticed by the
         * statement that fails on it, which run_any then runs again on a fresh one: no
         * read to look for it here (one system call less a statement, #17). */
        if (pc->c && PQstatus(pc->c) == CONNECTION_OK)
            return pc;
        reconnect(s, pc);
        if (pc->c)
            return pc;
        pthread_mutex_lock(&s->lock);
        if (!any_live(s)) {
            pthread_mutex_unlock(&s->lock);
            return pc;       /* the database is down: fail fast with ERR_UNAVAILABLE */
        }
        pc->busy = false;    /* wait for one of the live connections instead */
        pthread_mutex_unlock(&s->lock);
    }
}

void pg_conn_put(struct pg_store *s, struct pgconn *pc)
{
    bool live = pc->c && PQstatus(pc->c) == CONNECTION_OK;

    pthread_mutex_lock(&s->lock);
    pc->busy = false;
    pc->live = live;
    /* A live connection suits any waiter: wake one (waking all, each put made every
     * waiter contend for the lock, a convoy on a busy machine: #17). A dead one suits
     * only a waiter whose connect is due, so all re-check. */
    if (live)
        pthread_cond_signal(&s->cond);
    else
        pthread_cond_broadcast(&s->cond);
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
    pc->n_prepared = 0;
    set_conn(pc, connect_db(s->conninfo, true));
    return pc->c != NULL;
}

/* A statement to run: its table entry (a struct pg_query or db_stmt; NULL for SQL made
 * at run time, never prepared), what it does and its text. */
struct stmt {
    const void *key;
    const char *what;
    const char *sql;
};

/* The name a connection prepared q under, preparing it on first use: 1 with name set,
 * 0 when the connection holds PG_CACHE statements already (q then runs unprepared),
 * or the error with *lost set. */
static int prepared_name(struct pgconn *pc, const struct stmt *q, char *name, size_t cap,
                         bool *lost)
{
    int i = 0, rc = 1;
    PGresult *r;

    while (i < pc->n_prepared && pc->prepared[i] != q->key)
        i++;
    snprintf(name, cap, "te_%d", i);
    if (i < pc->n_prepared)
        return 1;
    if (i == PG_CACHE)
        return 0;
    r = PQprepare(pc->c, name, q->sql, 0, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        *lost = PQstatus(pc->c) != CONNECTION_OK;
        rc = *lost ? ERR_UNAVAILABLE : pg_fail(pc, r, q->what);
    } else {
        pc->prepared[pc->n_prepared++] = q->key;
    }
    PQclear(r);
    return rc;
}

/* Runs q (prepared once per connection when it has a key). Returns the result (caller
 * PQclear's) or NULL with *rc set. */
static PGresult *run_once(struct pgconn *pc, const struct stmt *q, int n,
                          const char *const *vals, int *rc, bool *lost)
{
    char name[16];
    PGresult *r;
    ExecStatusType st;
    int prep = 0;

    *lost = false;
    if (!pc->c) {
        *rc = ERR_UNAVAILABLE;
        return NULL;
    }
    if (q->key && (prep = prepared_name(pc, q, name, sizeof(name), lost)) < 0) {
        *rc = prep;
        return NULL;
    }
    r = prep ? PQexecPrepared(pc->c, name, n, vals, NULL, NULL, 0)
             : PQexecParams(pc->c, q->sql, n, NULL, vals, NULL, NULL, 0);
    st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        *lost = PQstatus(pc->c) != CONNECTION_OK;
        *rc = *lost ? ERR_UNAVAILABLE : pg_fail(pc, r, q->what);
        PQclear(r);
        return NULL;
    }
    *rc = 0;
    return r;
}

/* One statement; when the connection turns out to have been lost before it (a server
 * restart), once more on a fresh connection. A statement is one transaction, so a
 * lost connection means it did not commit (except in the instant between commit and
 * reply, which a retried insert without an idempotency key would repeat). */
static PGresult *run_any(struct pgconn *pc, const struct stmt *q, int n,
                         const char *const *vals, int *rc)
{
    bool lost;
    PGresult *r = run_once(pc, q, n, vals, rc, &lost);

    if (!r && lost && !pc->in_tx && reconnect_after_loss(owner_of(pc), pc))
        r = run_once(pc, q, n, vals, rc, &lost);
    if (lost && !r)
        pc->in_tx = false; /* the transaction died with the connection */
    if (!r && lost)
        log_warn("postgresql: the database is unreachable");
    return r;
}

PGresult *pg_run(struct pgconn *pc, const struct pg_query *q, int n, const char *const *vals,
                 int *rc)
{
    const struct stmt t = {q, q->what, q->sql};

    return run_any(pc, &t, n, vals, rc);
}

PGresult *pg_run_sql(struct pgconn *pc, const char *sql, int n, const char *const *vals, int *rc)
{
    const struct stmt t = {NULL, sql, sql};

    return run_any(pc, &t, n, vals, rc);
}

int pg_tx(struct pgconn *pc, const char *verb)
{
    int rc;

    PQclear(pg_run_sql(pc, verb, 0, NULL, &rc));
    pc->in_tx = !strcmp(verb, "BEGIN") && rc == 0;
    return rc;
}

/* ---- the cursor and its rows ---- */

static PGresult *result_of(const struct store_row *r)
{
    return r->impl;
}

static bool col_is_null(const struct store_row *r, int col)
{
    return PQgetisnull(result_of(r), r->i, col);
}

static const char *col_text(const struct store_row *r, int col)
{
    return col_is_null(r, col) ? NULL : PQgetvalue(result_of(r), r->i, col);
}

static int64_t col_i64(const struct store_row *r, int col)
{
    return col_is_null(r, col) ? 0 : strtoll(PQgetvalue(result_of(r), r->i, col), NULL, 10);
}

static double col_f64(const struct store_row *r, int col)
{
    return col_is_null(r, col) ? 0 : strtod(PQgetvalue(result_of(r), r->i, col), NULL);
}

static bool col_bool(const struct store_row *r, int col)
{
    return !col_is_null(r, col) && PQgetvalue(result_of(r), r->i, col)[0] == 't';
}

static const struct store_row_ops row_ops = {
    .is_null = col_is_null,
    .text = col_text,
    .i64 = col_i64,
    .f64 = col_f64,
    .boolean = col_bool,
};

static int cursor_next(struct store_cursor *base)
{
    return pg_next((struct pg_cursor *)base);
}

static void cursor_start(struct pg_cursor *cur, PGresult *r, int rc)
{
    memset(cur, 0, sizeof(*cur));
    cur->base.row.ops = &row_ops;
    cur->base.row.impl = r;
    cur->base.row.i = -1;
    cur->base.next = cursor_next;
    cur->r = r;
    cur->rc = rc;
}

int pg_open_q(struct pg_cursor *cur, struct pgconn *pc, const struct pg_query *q, int n,
              const char *const *vals)
{
    int rc;
    PGresult *r = pg_run(pc, q, n, vals, &rc);

    cursor_start(cur, r, rc);
    return rc;
}

int pg_next(struct pg_cursor *cur)
{
    if (cur->rc < 0)
        return cur->rc;
    if (cur->base.row.i + 1 >= PQntuples(cur->r))
        return STORE_DONE;
    cur->base.row.i++;
    return STORE_ROW;
}

int pg_changes(const struct pg_cursor *cur)
{
    const char *n = cur->r ? PQcmdTuples(cur->r) : "";

    return (int)strtol(n, NULL, 10);
}

int pg_end(struct pg_cursor *cur, int rc)
{
    PQclear(cur->r);
    cur->r = NULL;
    return rc < 0 ? rc : cur->rc;
}

int pg_write(struct store *st, const struct pg_query *q, int n, const char *const *vals,
             int *changes)
{
    struct pgconn *pc = pg_conn_get(P(st));
    struct pg_cursor cur;
    int rc = pg_open_q(&cur, pc, q, n, vals);

    if (rc == 0 && changes)
        *changes = pg_changes(&cur);
    rc = pg_end(&cur, rc);
    pg_conn_put(P(st), pc);
    return rc;
}

/* Hands the cursor just opened (unless opening failed, rc) to take and ends it. */
static int take_opened(struct pg_cursor *cur, int rc, rows_take_fn take, void *ctx)
{
    if (rc == 0)
        rc = take(&cur->base, ctx);
    return pg_end(cur, rc);
}

int pg_take(struct pgconn *pc, const struct pg_query *q, int n, const char *const *vals,
            rows_take_fn take, void *ctx)
{
    struct pg_cursor cur;

    return take_opened(&cur, pg_open_q(&cur, pc, q, n, vals), take, ctx);
}

int pg_read_with(struct store *st, const struct pg_query *q, int n, const char *const *vals,
                 rows_take_fn take, void *ctx)
{
    struct pgconn *pc = pg_conn_get(P(st));
    int rc = pg_take(pc, q, n, vals, take, ctx);

    pg_conn_put(P(st), pc);
    return rc;
}

int pg_in_tx(struct store *st, db_body_fn body, void *ctx)
{
    struct pgconn *pc = pg_conn_get(P(st));
    int rc = pg_tx(pc, "BEGIN"), end;

    pc->queued = false;
    if (rc == 0)
        rc = body(&pc->base, ctx);
    if (pc->in_tx) {
        end = pg_tx(pc, rc >= 0 ? "COMMIT" : "ROLLBACK");
        if (rc >= 0 && end < 0)
            rc = end;
    }
    if (rc >= 0 && pc->queued) /* announced once committed, so a wakened server sees them */
        pg_tasks_queued(P(st));
    pg_conn_put(P(st), pc);
    return rc;
}

/* ---- struct db_ops: what the code above both backends calls (store/db.h) ---- */

/* The text values libpq takes for n db_args: integers and reals printed into text[],
 * JSON dumped into owned[] (freed by vals_free). */
struct vals {
    const char *v[DB_MAX_ARGS];
    char text[DB_MAX_ARGS][32];
    char *owned[DB_MAX_ARGS];
};

/* The value of a; ERR_NOMEM when JSON cannot be dumped. */
static int val_of(struct vals *x, int i, const struct db_arg *a)
{
    bool ok = true;

    switch (a->kind) {
    case DB_TEXT:
        x->v[i] = a->text;
        return 0;
    case DB_INT:
        snprintf(x->text[i], sizeof(x->text[i]), "%" PRId64, a->i);
        x->v[i] = x->text[i];
        return 0;
    case DB_REAL:
        snprintf(x->text[i], sizeof(x->text[i]), "%.17g", a->r);
        x->v[i] = x->text[i];
        return 0;
    case DB_JSON:
    case DB_OBJECT:
        if (!a->json && a->kind == DB_OBJECT) {
            x->v[i] = "{}";
            return 0;
        }
        x->v[i] = x->owned[i] = pg_json_text(a->json, &ok);
        return ok ? 0 : ERR_NOMEM;
    }
    return 0;
}

static void vals_free(struct vals *x, int n)
{
    for (int i = 0; i < n; i++)
        free(x->owned[i]);
}

/* x made from args[0..n); vals_free(x, n) after, on error too. */
static int vals_make(struct vals *x, const struct db_arg *args, int n)
{
    int rc = 0;

    memset(x->owned, 0, sizeof(x->owned));
    if (n > DB_MAX_ARGS) {
        log_error("postgresql: a statement of %d parameters (at most %d)", n, DB_MAX_ARGS);
        return ERR_STORE;
    }
    for (int i = 0; rc == 0 && i < n; i++)
        rc = val_of(x, i, &args[i]);
    return rc;
}

/* Runs q's PostgreSQL text with args on the connection dc, prepared there once when
 * prepare (else for this use only), and opens a cursor on its result; the cursor is
 * ended with pg_end either way. */
static int open_stmt(struct pg_cursor *cur, struct db_conn *dc, const struct db_stmt *q,
                     bool prepare, const struct db_arg *args, int n)
{
    const struct stmt t = {prepare ? q : NULL, q->what, q->pg};
    struct vals x;
    int rc = vals_make(&x, args, n);
    PGresult *r = rc == 0 ? run_any(pg_conn(dc), &t, n, x.v, &rc) : NULL;

    vals_free(&x, n < DB_MAX_ARGS ? n : DB_MAX_ARGS);
    cursor_start(cur, r, rc);
    return rc;
}

static int db_take_pg(struct db_conn *dc, const struct db_stmt *q, const struct db_arg *args,
                      int n, rows_take_fn take, void *ctx)
{
    struct pg_cursor cur;

    if (!q->pg)
        return 0; /* not a statement of this dialect */
    return take_opened(&cur, open_stmt(&cur, dc, q, true, args, n), take, ctx);
}

static int db_take_once_pg(struct db_conn *dc, const struct db_stmt *q,
                           const struct db_arg *args, int n, rows_take_fn take, void *ctx)
{
    struct pg_cursor cur;

    return take_opened(&cur, open_stmt(&cur, dc, q, false, args, n), take, ctx);
}

static int db_run_pg(struct db_conn *dc, const struct db_stmt *q, const struct db_arg *args,
                     int n, int *changes)
{
    struct pg_cursor cur;
    int rc;

    if (!q->pg)
        return 0; /* not a statement of this dialect */
    rc = open_stmt(&cur, dc, q, true, args, n);
    if (rc == 0 && changes)
        *changes += pg_changes(&cur);
    return pg_end(&cur, rc);
}

static int db_on_read_pg(struct store *st, db_body_fn body, void *ctx)
{
    struct pgconn *pc = pg_conn_get(P(st));
    int rc = body(&pc->base, ctx);

    pg_conn_put(P(st), pc);
    return rc;
}

static int db_write_pg(struct store *st, const struct db_stmt *q, const struct db_arg *args,
                       int n, int *changes)
{
    struct pgconn *pc = pg_conn_get(P(st));
    int rc;

    if (changes)
        *changes = 0;
    rc = db_run_pg(&pc->base, q, args, n, changes);
    pg_conn_put(P(st), pc);
    return rc;
}

static const struct db_ops pg_db_ops = {
    .take = db_take_pg,
    .take_once = db_take_once_pg,
    .run = db_run_pg,
    .insert_messages = pg_insert_messages,
    .insert_logs = pg_insert_logs,
    .insert_tasks = pg_insert_tasks,
    .on_read = db_on_read_pg,
    .read_tx = pg_in_tx,
    .in_write = pg_in_tx,
    .on_write = db_on_read_pg,
    .write = db_write_pg,
};

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







/* Appends one array element in PostgreSQL's literal syntax, quoted and escaped. */
int pg_arrays_open(struct buf *const *bufs, int k)
{
    int rc = 0;

    for (int i = 0; i < k; i++) {
        buf_init(bufs[i], SIZE_MAX / 2);
        if (rc == 0)
            rc = buf_append(bufs[i], "{", 1);
    }
    return rc;
}

int pg_arrays_close(struct buf *const *bufs, int k)
{
    int rc = 0;

    for (int i = 0; rc == 0 && i < k; i++)
        rc = buf_append(bufs[i], "}", 1);
    return rc;
}

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

/* ---- open, migrate, close ---- */

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
    struct pg_store *s;
    int rc = ERR_STORE;

    if (pg_libpq_load() < 0)
        return ERR_NOTFOUND; /* dynlib logged which library, from which package */
    if (!(s = calloc(1, sizeof(*s))))
        return ERR_NOMEM;
    s->base.ops = &store_pg_ops;
    s->base.db = &pg_db_ops;
    for (int i = 0; i < POOL_SIZE; i++) {
        s->conns[i].base.ops = &pg_db_ops;
        s->conns[i].owner = s;
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    pg_inserts_init(s);
    pg_finishes_init(s);
    s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    s->conninfo = conninfo_of(url);
    if (!s->conninfo) {
        rc = ERR_INVALID;
        goto fail;
    }
    set_conn(&s->conns[0], connect_db(s->conninfo, false));
    if (!s->conns[0].c)
        goto fail;
    s->conns[0].live = true;
    rc = pg_migrate(s->conns[0].c);
    if (rc < 0)
        goto fail;
    /* The rest of the pool now, not at the first burst of requests: opened under load,
     * each connect (a new server process) held its request and those queued behind it
     * on its HTTP thread, up to 0.3 s in the first second of 32 concurrent reads (#17).
     * One that fails now is opened on first use, as after any loss. */
    for (int i = 1; i < POOL_SIZE; i++) {
        set_conn(&s->conns[i], connect_db(s->conninfo, true));
        s->conns[i].live = s->conns[i].c != NULL;
    }
    *out = &s->base;
    return 0;
fail:
    pg_close(&s->base);
    return rc;
}

void pg_tasks_queued(struct pg_store *s)
{
    uint64_t one = 1;

    atomic_store(&s->notify_due, true);
    if (s->wake_fd >= 0 && write(s->wake_fd, &one, sizeof(one)) < 0)
        (void)0; /* the counter is full: the listener is awake already */
}

static void pg_close(struct store *st)
{
    struct pg_store *s = P(st);

    atomic_store(&s->stopping, true);
    if (s->has_listener)
        pthread_join(s->listener, NULL);
    if (s->wake_fd >= 0)
        close(s->wake_fd);
    for (int i = 0; i < POOL_SIZE; i++)
        if (s->conns[i].c)
            PQfinish(s->conns[i].c);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    batcher_destroy(&s->inserts);
    batcher_destroy(&s->finishes);
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
        struct pollfd pfd[2];
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
        pfd[0] = (struct pollfd){.fd = PQsocket(c), .events = POLLIN};
        pfd[1] = (struct pollfd){.fd = s->wake_fd, .events = POLLIN};
        if (poll(pfd, s->wake_fd >= 0 ? 2 : 1, 200) < 0 && errno != EINTR)
            break;
        if (pfd[1].revents & POLLIN) {
            uint64_t n_woken;

            if (read(s->wake_fd, &n_woken, sizeof(n_woken)) < 0)
                (void)0; /* drained by an earlier read */
        }
        /* One NOTIFY for every task queued since the last, sent here, committed alone. */
        if (atomic_exchange(&s->notify_due, false) &&
            pg_exec_simple(c, "NOTIFY taskexec_task") < 0) {
            atomic_store(&s->notify_due, true); /* again once reconnected */
            PQfinish(c);
            c = NULL;
            continue;
        }
        if (!PQconsumeInput(c)) {
            PQfinish(c);
            c = NULL;
            continue;
        }
        while ((n = PQnotifies(c))) {
            if (!strcmp(n->relname, "taskexec_session")) {
                /* Our own steps and answers reached our hub directly; woken again by
                 * their echo, it would read the session back while the answer's
                 * writer waits for its lock. */
                if (s->on_session && !sent_by_us(s, n->be_pid))
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



/* ---- interactive sessions ---- */


static void pg_listen_sessions(struct store *st, void (*on_session)(void *ctx, const char *payload),
                               void *ctx)
{
    P(st)->on_session = on_session;
    P(st)->on_session_ctx = ctx;
}

const struct store_ops store_pg_ops = {
    .name = "postgresql",
    .groups_inserts = true, /* tasks.c */
    .open = pg_open,
    .close = pg_close,
    .ping = pg_ping,
    .listen = pg_listen,
    .task_insert = pg_task_insert,
    .task_claim = pg_task_claim,
    .task_finish = pg_task_finish,
    .reap = pg_reap,
    .recover = pg_recover,
    .webhooks_due = pg_webhooks_due,
    .listen_sessions = pg_listen_sessions,
    .messages_append = pg_messages_append,
    .session_answer = pg_session_answer,
    DB_STORE_OPS,
};
