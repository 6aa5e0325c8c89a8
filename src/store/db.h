/* store/db: running a statement on either backend, for the code written once above both.
 *
 * DESIGN
 * A concern whose C logic is the same on SQLite and PostgreSQL lives once, in
 * src/store/<concern>.c: one table of named statements (struct db_stmt: what it does,
 * SQLite's SQL, PostgreSQL's SQL), typed arguments (struct db_arg), and the logic that
 * builds the arguments, runs the statements and hands their cursors to the consumers
 * of store/rows.h. A backend supplies struct db_ops (its handle's st->db) and starts
 * each of its connections with struct db_conn, whose ops run one statement: that is
 * all the shared code knows of it. Each backend prepares a db_stmt once per connection
 * on first use, like its own statements. A step one dialect does without (SQLite
 * selects the running tasks it is about to cancel; PostgreSQL's UPDATE returns them)
 * has NULL for that dialect's text: take and run then return 0 at once.
 * What differs on purpose stays in the backend's folder: PostgreSQL's SKIP LOCKED
 * claim and unnest() batch inserts (the insert_* ops here), its NOTIFY and listener;
 * SQLite's BEGIN IMMEDIATE writer and reader pool; and operations whose statements
 * differ in number and shape (one CTE on PostgreSQL where SQLite runs several
 * statements in its write transaction): the queue, inserting a task, leasing
 * webhooks.
 *
 * Parameters: PostgreSQL's SQL numbers them $1..$n. SQLite's numbers them ?1..?n, or
 * $1..$n where one text serves both dialects (DB_SQL): SQLite takes "$1" as a name,
 * so such statements are bound by name. Times are integer microseconds on both
 * sides (PostgreSQL's SQL converts with te_ts()/te_us()); JSON goes in as text. */
#ifndef TASKEXEC_STORE_DB_H
#define TASKEXEC_STORE_DB_H

#include "store/rows.h"
#include "store/store.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#define DB_MAX_ARGS 20              /* parameters a db_stmt may take */

/* One named statement in both dialects. */
struct db_stmt {
    const char *what;               /* what it does, for the log */
    const char *sqlite;             /* SQLite's SQL; NULL: not run on SQLite */
    const char *pg;                 /* PostgreSQL's SQL; NULL: not run on PostgreSQL */
};
/* A statement both dialects accept as written (parameters $1..$n). */
#define DB_SQL(what_, sql_) {.what = (what_), .sqlite = (sql_), .pg = (sql_)}

/* One parameter, bound at its position: text (NULL binds NULL), integer, real, JSON as
 * compact text (NULL binds NULL), or a JSON object ("{}" for NULL). */
struct db_arg {
    enum { DB_TEXT, DB_INT, DB_REAL, DB_JSON, DB_OBJECT } kind;
    const char *text;               /* borrowed */
    int64_t i;
    double r;
    const json_t *json;             /* borrowed */
};
#define DB_T(v) ((struct db_arg){.kind = DB_TEXT, .text = (v)})
#define DB_I(v) ((struct db_arg){.kind = DB_INT, .i = (v)})
#define DB_R(v) ((struct db_arg){.kind = DB_REAL, .r = (v)})
#define DB_J(v) ((struct db_arg){.kind = DB_JSON, .json = (v)})
#define DB_O(v) ((struct db_arg){.kind = DB_OBJECT, .json = (v)})
#define DB_NULL DB_T(NULL)

struct db_conn;

/* A body run on one connection (db_on_read, db_in_write, db_read_tx). */
typedef int (*db_body_fn)(struct db_conn *c, void *ctx);

/* A backend, as the shared code sees it. Errors as in store.h (logged by the backend). */
struct db_ops {
    /* take: q on c with args[0..n), its cursor handed to take(cur, ctx); take's result,
     * or the statement's error, ERR_NOMEM (an argument could not be made) with take not
     * called. */
    int (*take)(struct db_conn *c, const struct db_stmt *q, const struct db_arg *args, int n,
                rows_take_fn take, void *ctx);
    /* take_once: take on SQL made at run time (q on the caller's stack), prepared for
     * this use only. */
    int (*take_once)(struct db_conn *c, const struct db_stmt *q, const struct db_arg *args,
                     int n, rows_take_fn take, void *ctx);
    /* run: q on c stepped to its end, adding the rows it changed to *changes (may be
     * NULL). */
    int (*run)(struct db_conn *c, const struct db_stmt *q, const struct db_arg *args, int n,
               int *changes);
    /* insert_messages: n messages of a task (each with its conversation, made on first
     * use), inside the caller's write transaction on c, stopping at the first error. */
    int (*insert_messages)(struct db_conn *c, const char *task_id, const struct msg_entry *e,
                           size_t n);
    /* insert_logs: n log lines of a task, on c (inside the caller's write transaction,
     * where there is one). */
    int (*insert_logs)(struct db_conn *c, const char *task_id, const struct log_entry *e,
                       size_t n);
    /* insert_tasks: the n tasks of experiment id, inside the caller's write transaction
     * on c; with retire (a rerun), each only where its slot's current task has ended,
     * which it then replaces. *added: how many went in (0 on error). */
    int (*insert_tasks)(struct db_conn *c, const char *id, struct task *const *tasks,
                        size_t n, bool retire, size_t *added);
    /* on_read: body(c, ctx) on a connection to read on, taken and given back around it
     * (no transaction); body's result. */
    int (*on_read)(struct store *st, db_body_fn body, void *ctx);
    /* read_tx: body on one connection whose reads should agree: PostgreSQL runs them in
     * one transaction (one snapshot); SQLite as on_read. */
    int (*read_tx)(struct store *st, db_body_fn body, void *ctx);
    /* in_write: body in a write transaction of its own, committed when body returned
     * >= 0, else rolled back; body's result, or the error of BEGIN (body not called)
     * or COMMIT. */
    int (*in_write)(struct store *st, db_body_fn body, void *ctx);
    /* on_write: body on a connection to write on, for bodies whose PostgreSQL
     * statements are each atomic alone: SQLite runs body in its write transaction (as
     * in_write; its writer knows no other way); PostgreSQL on a pooled connection, each
     * statement committing alone (and retried once on a lost connection). */
    int (*on_write)(struct store *st, db_body_fn body, void *ctx);
    /* write: q alone as a write (SQLite: in its own write transaction; PostgreSQL: one
     * statement, retried once on a lost connection); *changes (may be NULL) set to the
     * rows it changed. */
    int (*write)(struct store *st, const struct db_stmt *q, const struct db_arg *args, int n,
                 int *changes);
};

/* Every backend connection starts with this. */
struct db_conn {
    const struct db_ops *ops;
};

/* Thin wrappers of the ops (contracts above), for the shared code. */
int db_take(struct db_conn *c, const struct db_stmt *q, const struct db_arg *args, int n,
            rows_take_fn take, void *ctx) __attribute__((warn_unused_result));
int db_take_once(struct db_conn *c, const struct db_stmt *q, const struct db_arg *args, int n,
                 rows_take_fn take, void *ctx) __attribute__((warn_unused_result));
int db_run(struct db_conn *c, const struct db_stmt *q, const struct db_arg *args, int n,
           int *changes) __attribute__((warn_unused_result));
int db_on_read(struct store *st, db_body_fn body, void *ctx) __attribute__((warn_unused_result));
int db_read_tx(struct store *st, db_body_fn body, void *ctx) __attribute__((warn_unused_result));
int db_in_write(struct store *st, db_body_fn body, void *ctx) __attribute__((warn_unused_result));
int db_on_write(struct store *st, db_body_fn body, void *ctx) __attribute__((warn_unused_result));
int db_write(struct store *st, const struct db_stmt *q, const struct db_arg *args, int n,
             int *changes) __attribute__((warn_unused_result));
int db_insert_messages(struct db_conn *c, const char *task_id, const struct msg_entry *e,
                       size_t n) __attribute__((warn_unused_result));
int db_insert_logs(struct db_conn *c, const char *task_id, const struct log_entry *e,
                   size_t n) __attribute__((warn_unused_result));
int db_insert_tasks(struct db_conn *c, const char *id, struct task *const *tasks, size_t n,
                    bool retire, size_t *added) __attribute__((warn_unused_result));

/* db_one_i64: the integer in the first column of q's first row on c; ERR_NOTFOUND when
 * there is no row; *out unchanged on error. */
int db_one_i64(struct db_conn *c, const struct db_stmt *q, const struct db_arg *args, int n,
               int64_t *out) __attribute__((warn_unused_result));
/* db_read_with: db_take on a read connection (db_on_read). */
int db_read_with(struct store *st, const struct db_stmt *q, const struct db_arg *args, int n,
                 rows_take_fn take, void *ctx) __attribute__((warn_unused_result));
/* db_read: on a read connection, q's rows through build() into a new array *out (caller
 * frees). db_read_one: the first row's build() (caller frees), ERR_NOTFOUND when none.
 * *out unchanged on error. */
int db_read(struct store *st, const struct db_stmt *q, const struct db_arg *args, int n,
            json_t *(*build)(const struct store_row *r),
            json_t **out) __attribute__((warn_unused_result));
int db_read_one(struct store *st, const struct db_stmt *q, const struct db_arg *args, int n,
                json_t *(*build)(const struct store_row *r),
                json_t **out) __attribute__((warn_unused_result));
/* db_read_page: a page of a list and the list's total, on one read connection: the
 * integer count of q_count with args[0..n_count), then the rows of page with
 * args[0..n) through build() into a new array *items (caller frees). The outputs are
 * unchanged on error. */
int db_read_page(struct store *st, const struct db_stmt *count, int n_count,
                 const struct db_stmt *page, const struct db_arg *args, int n,
                 json_t *(*build)(const struct store_row *r), json_t **items,
                 int64_t *total) __attribute__((warn_unused_result));

/* ---- the operations written once (contracts in store.h), one file per concern,
 * named in both backends' ops tables ---- */

/* events.c */
int db_events_head(struct store *st, int64_t *event_id, int64_t *log_id);
int db_events_after(struct store *st, int64_t after, int limit, json_t **out);
int db_logs_after(struct store *st, int64_t after, int limit, json_t **out);
int db_events_prune(struct store *st, int64_t before);
int db_task_timeseries(struct store *st, int64_t since, int64_t bucket_us, json_t **out);

/* workers.c */
int db_worker_register(struct store *st, const struct worker_reg *reg);
int db_worker_token(struct store *st, const char *id, char **token_hash);
int db_worker_heartbeat(struct store *st, const char *const *ids, size_t n, int64_t now);
int db_worker_set_status(struct store *st, const char *id, const char *status,
                         json_t *metadata);
int db_worker_list(struct store *st, const char *status, const char *backend_type,
                   json_t **out);
int db_worker_get(struct store *st, const char *id, json_t **out);
int db_worker_counts(struct store *st, int64_t counts[3]);

/* conversations.c */
int db_messages_append(struct store *st, const char *task_id, const struct msg_entry *e,
                       size_t n);
int db_conversations_list(struct store *st, const char *task_id, const char *model_name,
                          int64_t limit, int64_t offset, json_t **items, int64_t *total);
int db_conversation_get(struct store *st, const char *id, bool with_messages, json_t **out);
int db_task_conversations(struct store *st, const char *task_id, json_t **out);
int db_conversation_stats(struct store *st, json_t **out);

/* experiments.c */
int db_experiment_create(struct store *st, const struct experiment *e, struct task *const *tasks,
                         size_t n);
int db_experiment_add_tasks(struct store *st, const char *id, struct task *const *tasks,
                            size_t n, size_t *added);
int db_experiment_get(struct store *st, const char *id, struct experiment **out);
int db_experiment_list(struct store *st, int64_t limit, int64_t offset, json_t **items,
                       int64_t *total);
int db_experiment_scoreboard(struct store *st, const char *id, json_t **rows);
int db_experiment_cancel(struct store *st, const char *id, int64_t now, json_t **running);
int db_experiment_slots(struct store *st, const char *id, bool unsolved, json_t **slots);
int db_experiments_end(struct store *st, int64_t now, int *n);

/* tasks.c */
/* db_load_task: the task of id (or, by_key, of idempotency key) read on c (caller
 * frees); ERR_NOTFOUND when there is none. */
int db_load_task(struct db_conn *c, bool by_key, const char *key,
                 struct task **out) __attribute__((warn_unused_result));
int db_task_get(struct store *st, const char *id, struct task **out);
int db_task_list(struct store *st, const struct task_filter *f, struct task_page *out);
int db_task_cancel(struct store *st, const char *id, int64_t now, struct task **out);
int db_task_lease_status(struct store *st, const char *id, const char *lease_token,
                         enum task_status *status);
int db_task_stats(struct store *st, bool with_averages, struct task_stats *out);

/* sessions.c */
int db_session_ready(struct store *st, const char *task_id, json_t *ready, int max_steps,
                     int64_t now);
int db_session_get(struct store *st, const char *task_id, json_t **out);
int db_session_step(struct store *st, const char *task_id, const char *action, int64_t now,
                    int *step);
int db_session_next(struct store *st, const char *task_id, int after, int *step,
                    char **action);
int db_session_answer(struct store *st, const char *task_id, int step, json_t *answer,
                      const struct msg_entry *msgs, size_t n_msgs, int64_t now);
int db_session_end(struct store *st, const char *task_id);
int db_session_idle(struct store *st, int64_t before, char (*ids)[37], size_t max, size_t *n);

/* logs.c */
int db_logs_append(struct store *st, const char *task_id, const struct log_entry *e, size_t n);
int db_logs_list(struct store *st, const char *task_id, int min_level, int64_t limit,
                 int64_t offset, json_t **logs, int64_t *total);
int db_export_extras(struct store *st, const char *task_id, bool logs, bool convs,
                     struct buf *out);

/* webhooks.c */
int db_webhook_result(struct store *st, const struct webhook_job *job, const char *state,
                      int attempts, int64_t next_at, const char *error);

/* llm_calls.c */
int db_llm_call_insert(struct store *st, const struct llm_call_rec *rec);
int db_llm_calls(struct store *st, const char *task_id, json_t **out);

/* The entries of each backend's struct store_ops written once, above the backends
 * (messages_append and session_answer are each backend's: PostgreSQL's are one statement
 * more often). */
#define DB_STORE_OPS                                                                       \
    .task_get = db_task_get,                                                               \
    .task_list = db_task_list,                                                             \
    .task_cancel = db_task_cancel,                                                         \
    .task_lease_status = db_task_lease_status,                                             \
    .task_stats = db_task_stats,                                                           \
    .logs_append = db_logs_append,                                                         \
    .logs_list = db_logs_list,                                                             \
    .conversations_list = db_conversations_list,                                           \
    .conversation_get = db_conversation_get,                                               \
    .task_conversations = db_task_conversations,                                           \
    .conversation_stats = db_conversation_stats,                                           \
    .worker_register = db_worker_register,                                                 \
    .worker_token = db_worker_token,                                                       \
    .worker_heartbeat = db_worker_heartbeat,                                               \
    .worker_set_status = db_worker_set_status,                                             \
    .worker_list = db_worker_list,                                                         \
    .worker_get = db_worker_get,                                                           \
    .worker_counts = db_worker_counts,                                                     \
    .experiment_create = db_experiment_create,                                             \
    .experiment_add_tasks = db_experiment_add_tasks,                                       \
    .experiment_get = db_experiment_get,                                                   \
    .experiment_list = db_experiment_list,                                                 \
    .experiment_scoreboard = db_experiment_scoreboard,                                     \
    .experiment_cancel = db_experiment_cancel,                                             \
    .experiment_slots = db_experiment_slots,                                               \
    .experiments_end = db_experiments_end,                                                 \
    .webhook_result = db_webhook_result,                                                   \
    .events_head = db_events_head,                                                         \
    .events_after = db_events_after,                                                       \
    .logs_after = db_logs_after,                                                           \
    .events_prune = db_events_prune,                                                       \
    .task_timeseries = db_task_timeseries,                                                 \
    .export_extras = db_export_extras,                                                     \
    .session_ready = db_session_ready,                                                     \
    .session_get = db_session_get,                                                         \
    .session_step = db_session_step,                                                       \
    .session_next = db_session_next,                                                       \
    .session_end = db_session_end,                                                         \
    .session_idle = db_session_idle,                                                       \
    .llm_call_insert = db_llm_call_insert,                                                 \
    .llm_calls = db_llm_calls

#endif
