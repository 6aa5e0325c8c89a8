/* store/sqlite/sqlite_int.h: what the files of the SQLite backend share.
 *
 * DESIGN
 * One writer connection behind a mutex and a small pool of reader connections,
 * all on one WAL database. Every write runs in BEGIN IMMEDIATE on the writer, so
 * writes from our threads never meet SQLITE_BUSY among themselves and a claim
 * (pick + lease) is one atomic transaction; readers see the last committed state
 * without waiting for the writer. A busy timeout covers other processes sharing
 * the file. The code of most concerns is written once above both backends
 * (store/<concern>.c over store/db.h); this backend gives it struct db_ops (db.c:
 * binding typed arguments, a read on a reader, BEGIN IMMEDIATE on the writer) and
 * keeps only what differs on purpose: the queue (queue.c: claim, finish, reap,
 * recover, each several statements in one write transaction), and the inserts and
 * multi-statement writes of tasks.c, logs.c, conversations.c, experiments.c and
 * webhooks.c, each saying why. Statements live in tables (struct db_stmt
 * above the backends, struct sq_query here); a connection prepares each once, on first
 * use, and keeps it.
 * Every read goes through a cursor (struct sq_cursor) whose next() says row, done
 * or error; rows become API values in store/rows.c.
 * Times are integer microseconds since the epoch; JSON columns hold JSON text.
 * Lock order: a thread holds at most one connection at a time. */
#ifndef TASKEXEC_STORE_SQLITE_INT_H
#define TASKEXEC_STORE_SQLITE_INT_H

#include "store/db.h"
#include "store/rows.h"
#include "store/store.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>

#define N_READERS 4
#define SQ_CACHE 64                 /* named statements a connection keeps prepared */

/* One named statement of a concern's table: what it does (for the log) and its SQL. */
struct sq_query {
    const char *what;
    const char *sql;
};

struct conn {
    struct db_conn base;            /* for the code above both backends (store/db.h) */
    sqlite3 *db;
    struct {
        const void *key;            /* the statement's entry in its table (sq_query or
                                     * db_stmt) */
        sqlite3_stmt *s;            /* prepared once (persistent), reset after each use */
    } cache[SQ_CACHE];
    int n_cached;
    bool busy;                      /* readers: lent out (guarded by pool lock) */
};

struct sqlite_store {
    struct store base;
    char *path;
    pthread_mutex_t wlock;          /* guards writer */
    struct conn writer;
    pthread_mutex_t rlock;          /* guards readers[].busy */
    pthread_cond_t rcond;
    struct conn readers[N_READERS];
};

static inline struct sqlite_store *S(struct store *st)
{
    return (struct sqlite_store *)st;
}

/* The connection whose db_conn c is (every struct conn starts with one). */
static inline struct conn *sq_conn(struct db_conn *c)
{
    return (struct conn *)c;
}

#define TASK_COLS TASK_COLS_SQ           /* store/rows.h */

/* Reads go to a reader connection, or to the writer for :memory: databases. */
struct rd {
    struct sqlite_store *s;
    struct conn *c;
    bool is_writer;
};

/* A statement being stepped. base.row reads the current row (for rows.c). */
struct sq_cursor {
    struct store_cursor base;
    struct conn *c;
    sqlite3_stmt *s;                /* NULL when opening failed */
    const char *what;               /* for the log */
    bool cached;                    /* s is c's: reset at the end, not finalized */
    int rc;                         /* the first error met; returned by sq_end */
};

/* Parameters are struct db_arg (store/db.h), made with DB_T, DB_I, DB_R, DB_J, DB_O. The
 * names they had before it stay for the files that still use them (schema.c, and
 * llm_calls.c of the LLM gateway, which comes from main): until those move to db.h. */
#define sq_arg db_arg
#define SQ_T(v) DB_T(v)
#define SQ_I(v) DB_I(v)
#define SQ_R(v) DB_R(v)
#define SQ_J(v) DB_J(v)
#define SQ_O(v) DB_O(v)

/* db.c */
/* sq_fail_db: logs what failed with SQLite's message; returns ERR_STORE. */
int sq_fail_db(sqlite3 *db, const char *what);
/* sq_exec_sql: runs SQL text (no parameters, any number of statements); 0 or
 * ERR_STORE (logged). */
int sq_exec_sql(sqlite3 *db, const char *sql) __attribute__((warn_unused_result));
/* sq_open_q: a cursor on named statement q, prepared once per connection.
 * sq_open_sql: on SQL made at run time, prepared for this use only. Both return 0 or
 * ERR_STORE (logged); either way the cursor is to be ended with sq_end. */
int sq_open_q(struct sq_cursor *cur, struct conn *c,
              const struct sq_query *q) __attribute__((warn_unused_result));
int sq_open_sql(struct sq_cursor *cur, struct conn *c, const char *what,
                const char *sql) __attribute__((warn_unused_result));
/* sq_next: STORE_ROW, STORE_DONE, or ERR_STORE (logged, and kept for sq_end). */
int sq_next(struct sq_cursor *cur) __attribute__((warn_unused_result));
/* sq_exec: steps the statement to its end (a write); 0 or ERR_STORE. */
int sq_exec(struct sq_cursor *cur) __attribute__((warn_unused_result));
/* sq_end: releases the statement; returns rc when it is an error, else the cursor's
 * first error, else 0. */
int sq_end(struct sq_cursor *cur, int rc) __attribute__((warn_unused_result));
/* sq_bind: binds args[0..n) to ?1..?n (or to $1..$n by name, in SQL written for both
 * dialects); 0, or ERR_NOMEM when a JSON value cannot be
 * dumped. */
int sq_bind(sqlite3_stmt *s, const struct db_arg *args, int n) __attribute__((warn_unused_result));
/* sq_take: named statement q on c with args, its cursor handed to take(cur, ctx) (a
 * consumer of store/rows.h). Returns take's result, or ERR_STORE / ERR_NOMEM when the
 * statement cannot be prepared or bound (take is then not called). */
int sq_take(struct conn *c, const struct sq_query *q, const struct db_arg *args, int n,
            rows_take_fn take, void *ctx) __attribute__((warn_unused_result));
/* sq_run: named statement q on c with args, stepped to its end, adding the rows it
 * changed to *changes (may be NULL). 0, ERR_NOMEM or ERR_STORE. */
int sq_run(struct conn *c, const struct sq_query *q, const struct db_arg *args, int n,
           int *changes) __attribute__((warn_unused_result));
/* sq_one_i64: the integer in the first column of q's first row on c; ERR_NOTFOUND
 * when there is no row. */
int sq_one_i64(struct conn *c, const struct sq_query *q, const struct db_arg *args, int n,
               int64_t *out) __attribute__((warn_unused_result));
/* sq_in_write: body(c, ctx) in a write transaction of its own: takes the writer,
 * BEGINs IMMEDIATE, runs body, COMMITs when body returned >= 0 and else rolls back,
 * and gives the writer back. Returns body's result, or ERR_STORE (logged) when BEGIN
 * fails (body is then not called) or COMMIT fails. What body allocated into ctx is
 * the caller's to keep or free by that result. This is the one place the backend's
 * write transactions begin and end. */
int sq_in_write(struct store *st, db_body_fn body, void *ctx) __attribute__((warn_unused_result));
/* sq_rd_get: a connection to read on (a reader, or the writer for :memory:); give it
 * back with sq_rd_put. */
struct rd sq_rd_get(struct store *st);
void sq_rd_put(struct rd *r);

/* schema.c */
/* sq_migrate: applies the migrations this database lacks, in one transaction each
 * run; 0 or ERR_STORE (logged). */
int sq_migrate(struct conn *c) __attribute__((warn_unused_result));

/* tasks.c */
/* sq_insert_task: the row of a new task (with its retry and experiment fields), inside
 * the caller's write transaction. */
int sq_insert_task(struct conn *c, const struct task *t) __attribute__((warn_unused_result));

/* queue.c */
/* sq_claim_in: the claim, inside the caller's write transaction on c (caller frees
 * *out); ERR_NOTFOUND when no task is waiting. */
int sq_claim_in(struct conn *c, const struct claim_req *req,
                struct task **out) __attribute__((warn_unused_result));


/* logs.c */
/* experiments.c */
/* sq_insert_tasks: the db_ops insert_tasks of SQLite (store/db.h). */
int sq_insert_tasks(struct db_conn *c, const char *id, struct task *const *tasks, size_t n,
                    bool retire, size_t *added) __attribute__((warn_unused_result));

/* sq_insert_logs: the db_ops insert_logs of SQLite (store/db.h). */
int sq_insert_logs(struct db_conn *c, const char *task_id, const struct log_entry *e,
                   size_t n) __attribute__((warn_unused_result));

/* conversations.c */
/* sq_insert_messages: the db_ops insert_messages of SQLite (store/db.h). */
int sq_insert_messages(struct db_conn *c, const char *task_id, const struct msg_entry *e,
                       size_t n) __attribute__((warn_unused_result));

/* The operations of store_sqlite_ops (contracts in store.h), one file per concern. */
int sq_task_insert(struct store *st, struct task *t, struct task **existing);
int sq_task_claim(struct store *st, const struct claim_req *req, struct task **out);
int sq_task_finish(struct store *st, const char *id, const char *lease_token,
                   const struct task_end *end);
int sq_reap(struct store *st, int64_t now, int64_t heartbeat_timeout_us, int64_t retry_base_us,
            struct reap_result *out);
int sq_recover(struct store *st, const char *name_prefix, int64_t now, int64_t retry_base_us,
               int *n_failed);
int sq_webhooks_due(struct store *st, int64_t now, int64_t lease_us, size_t max,
                    struct webhook_job *jobs, size_t *n);

#endif
