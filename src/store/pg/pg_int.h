/* store/pg/pg_int.h: what the files of the PostgreSQL backend share.
 *
 * DESIGN
 * The code of most concerns is written once above both backends (store/<concern>.c
 * over store/db.h); this backend gives it struct db_ops (db.c: running a statement's
 * PostgreSQL text with its arguments as text, a read on a pooled connection, a
 * transaction) and keeps only what differs on purpose: the queue (queue.c: claim,
 * finish, reap, recover), and the batch inserts and one-statement writes of tasks.c,
 * logs.c, conversations.c, experiments.c and webhooks.c (unnest() of array
 * literals, CTEs that NOTIFY, SKIP LOCKED leases); each such file says why.
 * A bounded pool of connections (all opened at start) shared by HTTP handlers and
 * workers; a thread takes one connection for one store call and gives it back.
 * Statements live in tables (struct db_stmt above the backends, struct pg_query here),
 * each prepared once per connection on first use; only SQL made at run time (a filtered
 * task list) and transaction control go unprepared. Task inserts made at the same time
 * by several threads are written together, one statement and one commit (tasks.c).
 * Every result is read through a cursor
 * (struct pg_cursor) whose next() says row, done or error; rows become API values
 * in store/rows.c. Each queue rule is one statement, so it is one
 * transaction and one round trip: a claim is a MATERIALIZED CTE that picks the
 * next pending task FOR UPDATE SKIP LOCKED (so concurrent claimers on any number
 * of servers never wait on, or take, the same row), leases it and marks the worker
 * busy; finishing updates the task only while the caller's lease is current, and an
 * internal worker's finish claims its next task in the same statement, and the
 * finishes of several internal workers made at the same time are one statement
 * (queue.c).
 * Committed new tasks are announced by the listener connection (one NOTIFY
 * taskexec_task for all since its last); every server's listener wakes its idle
 * workers, with polling as the fallback.
 * A lost connection is reset (with back-off) on its next use, or, when the server
 * dropped it meanwhile, when a statement fails on it (run again once on a fresh one
 * outside a transaction); a caller takes a live
 * connection before a missing one and, when a connect fails while others work, waits
 * for one of those; only with none live do calls fail fast with ERR_UNAVAILABLE, which
 * the API answers with 503.
 * Times cross the interface as integer microseconds; the schema holds timestamptz. */
#ifndef TASKEXEC_STORE_PG_INT_H
#define TASKEXEC_STORE_PG_INT_H

#include "store/db.h"
#include "store/rows.h"
#include "store/store.h"
#include "core/batcher.h"
#include "core/buf.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>

#define POOL_SIZE 8
#define PG_CACHE 64                  /* named statements a connection can hold prepared */

/* One named statement of a concern's table: what it does (for the log) and its SQL. */
struct pg_query {
    const char *what;
    const char *sql;
};

#define TASK_COLS TASK_COLS_PG           /* store/rows.h */
#define TASK_COLS_T TASK_COLS_T_PG

struct pg_store;

struct pgconn {
    struct db_conn base;       /* for the code above both backends (store/db.h) */
    struct pg_store *owner;
    PGconn *c;
    int pid;                   /* c's server process (0: none); atomic, see sent_by_us */
    bool in_tx;                /* inside BEGIN ... COMMIT: a lost statement is not retried */
    bool queued;               /* this transaction queued tasks: announce them at COMMIT */
    const void *prepared[PG_CACHE]; /* prepared[i] (a pg_query or db_stmt) is statement
                                     * "te_<i>" */
    int n_prepared;
    bool busy;                 /* lent out; guarded by the pool lock */
    bool live;                 /* had a working connection when last given back; guarded
                                * by the pool lock (c itself belongs to the borrower) */
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
    /* New tasks are announced by the listener's connection, not by the inserting
     * transaction: PostgreSQL serialises the commits of notifying transactions on one
     * lock, which cost the insert path half its rate at 16 clients (#17). */
    atomic_bool notify_due;    /* tasks were queued since the last NOTIFY */
    int wake_fd;               /* eventfd: wakes the listener to send it; -1: none */
    struct batcher inserts;    /* task inserts written together (tasks.c) */
    struct batcher finishes;   /* internal workers' ends and next claims (queue.c) */
};

static inline struct pg_store *P(struct store *st)
{
    return (struct pg_store *)st;
}

/* The connection whose db_conn c is (every struct pgconn starts with one). */
static inline struct pgconn *pg_conn(struct db_conn *c)
{
    return (struct pgconn *)c;
}

/* An integer as a text parameter. */
struct num {
    char s[24];
};

static inline const char *num(struct num *n, int64_t v)
{
    snprintf(n->s, sizeof(n->s), "%" PRId64, v);
    return n->s;
}

/* A result being read. base.row reads the current row (for rows.c). */
struct pg_cursor {
    struct store_cursor base;
    PGresult *r;               /* NULL when the statement failed */
    int rc;                    /* the statement's error; returned by pg_end */
};

/* The array literals of a log batch, for unnest(). Caller pg_log_arrays_reset's them. */
struct log_arrays {
    struct buf ts, lv, msg, ctx;
    struct buf own;            /* each line's owner, when lines of several are built */
};

/* libpq_lazy.c */
/* pg_libpq_load: opens libpq (once). 0, or ERR_NOTFOUND (logged: what is missing); the
 * store checks this before its first libpq call. */
int pg_libpq_load(void);

/* db.c */
/* pg_tasks_queued: tasks were committed to the queue: the listener sends one NOTIFY
 * taskexec_task for all that came since its last (every server's listener then wakes its
 * idle workers). Cheap; any thread. */
void pg_tasks_queued(struct pg_store *s);
/* pg_conn_get: a pooled connection, (re)connected lazily with back-off (its c may be
 * NULL: statements on it then fail with ERR_UNAVAILABLE). Give it back with
 * pg_conn_put. */
struct pgconn *pg_conn_get(struct pg_store *s);
void pg_conn_put(struct pg_store *s, struct pgconn *pc);
/* pg_fail: logs a failed call; ERR_UNAVAILABLE when the connection is gone, else
 * ERR_STORE. */
int pg_fail(struct pgconn *pc, PGresult *r, const char *what);
/* pg_run: named statement q (prepared once per connection); pg_run_sql: SQL text.
 * Both retry once on a fresh connection when the old one was lost outside a
 * transaction. The result (caller PQclear's) or NULL with *rc set. */
PGresult *pg_run(struct pgconn *pc, const struct pg_query *q, int n, const char *const *vals,
                 int *rc);
PGresult *pg_run_sql(struct pgconn *pc, const char *sql, int n, const char *const *vals,
                     int *rc);
/* pg_tx: "BEGIN", "COMMIT" or "ROLLBACK" on pc, keeping pc->in_tx; 0 or the error. */
int pg_tx(struct pgconn *pc, const char *verb) __attribute__((warn_unused_result));
/* pg_open_q: runs the statement and opens a cursor on its result; 0 or the error
 * (logged). Either way the cursor is to be ended with pg_end. */
int pg_open_q(struct pg_cursor *cur, struct pgconn *pc, const struct pg_query *q, int n,
              const char *const *vals) __attribute__((warn_unused_result));
/* pg_next: STORE_ROW, STORE_DONE, or the statement's error. */
int pg_next(struct pg_cursor *cur) __attribute__((warn_unused_result));
/* pg_changes: the rows the statement changed. */
int pg_changes(const struct pg_cursor *cur);
/* pg_end: clears the result; returns rc when it is an error, else the cursor's. */
int pg_end(struct pg_cursor *cur, int rc) __attribute__((warn_unused_result));
/* pg_take: q on pc, its cursor handed to take(cur, ctx) (a consumer of store/rows.h);
 * take's result, or the statement's error (take is then not called). */
int pg_take(struct pgconn *pc, const struct pg_query *q, int n, const char *const *vals,
            rows_take_fn take, void *ctx) __attribute__((warn_unused_result));
/* pg_read_with: pg_take on a pooled connection, taken and given back around it. */
int pg_read_with(struct store *st, const struct pg_query *q, int n, const char *const *vals,
                 rows_take_fn take, void *ctx) __attribute__((warn_unused_result));
/* pg_in_tx: body(pc, ctx) in a transaction of its own on a pooled connection: BEGIN,
 * body, then COMMIT when body returned >= 0, else ROLLBACK. Returns body's result, or
 * BEGIN's error (body is then not called) or COMMIT's. What body allocated into ctx is
 * the caller's to keep or free by that result. Most operations need none: each is one
 * statement, so one transaction; this is for those made of several. */
int pg_in_tx(struct store *st, db_body_fn body, void *ctx) __attribute__((warn_unused_result));
/* pg_write: q on a pooled connection, *changes (may be NULL) the rows it changed. */
int pg_write(struct store *st, const struct pg_query *q, int n, const char *const *vals,
             int *changes) __attribute__((warn_unused_result));
/* pg_json_text: JSON text of v (caller frees) or NULL for NULL; *ok false when out of
 * memory. */
char *pg_json_text(const json_t *v, bool *ok);
/* pg_arrays_open / pg_arrays_close: k array literals begun ("{", each buffer made
 * empty first) and ended ("}"); the caller buf_reset's them either way. 0 or ERR_NOMEM. */
int pg_arrays_open(struct buf *const *bufs, int k) __attribute__((warn_unused_result));
int pg_arrays_close(struct buf *const *bufs, int k) __attribute__((warn_unused_result));
/* pg_array_add: appends one element to an array literal, quoted and escaped. */
int pg_array_add(struct buf *b, const char *s, bool is_null) __attribute__((warn_unused_result));
/* pg_exec_simple: SQL text without parameters on a bare connection (migrations, LISTEN);
 * 0 or ERR_STORE (logged). */
int pg_exec_simple(PGconn *c, const char *sql);

/* schema.c */
int pg_migrate(PGconn *c) __attribute__((warn_unused_result));

/* logs.c */
/* pg_log_arrays_build: the array literals of n log lines (reset a even on error). For
 * the lines of several owners: open, add each owner's lines (owner: its name in own),
 * close. */
int pg_log_arrays_build(struct log_arrays *a, const struct log_entry *e, size_t n);
int pg_log_arrays_open(struct log_arrays *a) __attribute__((warn_unused_result));
int pg_log_arrays_add(struct log_arrays *a, const struct log_entry *e, size_t n,
                      const char *owner) __attribute__((warn_unused_result));
int pg_log_arrays_close(struct log_arrays *a) __attribute__((warn_unused_result));
void pg_log_arrays_reset(struct log_arrays *a);
/* pg_insert_tasks (experiments.c): the db_ops insert_tasks of PostgreSQL (store/db.h). */
int pg_insert_tasks(struct db_conn *c, const char *id, struct task *const *tasks, size_t n,
                    bool retire, size_t *added) __attribute__((warn_unused_result));
/* pg_insert_logs: the db_ops insert_logs of PostgreSQL (store/db.h). */
int pg_insert_logs(struct db_conn *c, const char *task_id, const struct log_entry *e,
                   size_t n) __attribute__((warn_unused_result));

/* conversations.c */
/* pg_insert_messages: the db_ops insert_messages of PostgreSQL (store/db.h). */
int pg_insert_messages(struct db_conn *c, const char *task_id, const struct msg_entry *e,
                       size_t n) __attribute__((warn_unused_result));
/* pg_messages_append: store_messages_append; one statement, no transaction, when the
 * messages share one session (the others: store/conversations.c's transaction). */
int pg_messages_append(struct store *st, const char *task_id, const struct msg_entry *e,
                       size_t n);
/* pg_session_answer: store_session_answer; one statement when the messages share one
 * session (the others: store/sessions.c's transaction). */
int pg_session_answer(struct store *st, const char *task_id, int step, json_t *answer,
                      const struct msg_entry *msgs, size_t n_msgs, int64_t now);


/* tasks.c, queue.c: the batchers of s (batcher_destroy each) */
void pg_inserts_init(struct pg_store *s);
void pg_finishes_init(struct pg_store *s);

/* The operations of store_pg_ops (contracts in store.h), one file per concern. */
int pg_task_insert(struct store *st, struct task *t, struct task **existing);
int pg_task_claim(struct store *st, const struct claim_req *req, struct task **out);
int pg_task_finish(struct store *st, const char *id, const char *lease_token,
                   const struct task_end *end);
int pg_reap(struct store *st, int64_t now, int64_t heartbeat_timeout_us, int64_t retry_base_us,
            struct reap_result *out);
int pg_recover(struct store *st, const char *name_prefix, int64_t now, int64_t retry_base_us,
               int *n_failed);
int pg_webhooks_due(struct store *st, int64_t now, int64_t lease_us, size_t max,
                    struct webhook_job *jobs, size_t *n);

#endif
