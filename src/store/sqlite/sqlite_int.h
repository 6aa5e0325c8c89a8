/* store/sqlite/sqlite_int.h: what the files of the SQLite backend share.
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
#ifndef TASKEXEC_STORE_SQLITE_INT_H
#define TASKEXEC_STORE_SQLITE_INT_H

#include "store/store.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>

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

static inline struct sqlite_store *S(struct store *st)
{
    return (struct sqlite_store *)st;
}

/* Reads go to a reader connection, or to the writer for :memory: databases. */
struct rd {
    struct sqlite_store *s;
    struct conn *c;
    bool is_writer;
};

/* conversations.c */
int sq_conversation_seq(struct conn *c, const char *task_id, const char *session,
                     int64_t ts, int64_t *seq);
int sq_insert_message(struct conn *c, const char *task_id, const struct msg_entry *e);
int sq_messages_append(struct store *st, const char *task_id, const struct msg_entry *e,
                       size_t n);
int sq_conversations_list(struct store *st, const char *task_id, const char *model_name,
                          int64_t limit, int64_t offset, json_t **items, int64_t *total);
int sq_conversation_get(struct store *st, const char *id, bool with_messages,
                        json_t **out);
int sq_task_conversations(struct store *st, const char *task_id, json_t **out);
int sq_conversation_stats(struct store *st, json_t **out);

/* db.c */
int sq_fail_db(sqlite3 *db, const char *what);
int sq_exec_sql(sqlite3 *db, const char *sql);
sqlite3_stmt *sq_stmt(struct conn *c, enum q q);
void sq_done(sqlite3_stmt *s);
void sq_bind_text(sqlite3_stmt *s, int i, const char *v);
int sq_bind_json(sqlite3_stmt *s, int i, const json_t *v);
int sq_bind_object(sqlite3_stmt *s, int i, const json_t *v);
char *sq_col_dup(sqlite3_stmt *s, int i);
json_t *sq_col_json(sqlite3_stmt *s, int i);
json_t *sq_col_json_or_null(sqlite3_stmt *s, int i);
json_t *sq_col_time(sqlite3_stmt *s, int i);
json_t *sq_col_str(sqlite3_stmt *s, int i);
struct conn *sq_writer_begin(struct sqlite_store *s);
int sq_writer_end(struct sqlite_store *s, int rc);
struct rd sq_rd_get(struct store *st);
void sq_rd_put(struct rd *r);
int sq_run_update(struct conn *c, const char *sql, const char *t1, int64_t i2, int64_t i3,
               int *changes);

/* events.c */
int sq_events_head(struct store *st, int64_t *event_id, int64_t *log_id);
int sq_events_after(struct store *st, int64_t after, int limit, json_t **out);
int sq_logs_after(struct store *st, int64_t after, int limit, json_t **out);
int sq_events_prune(struct store *st, int64_t before);
int sq_task_timeseries(struct store *st, int64_t since, int64_t bucket_us, json_t **out);

/* logs.c */
int sq_insert_logs(struct conn *c, const char *task_id, const struct log_entry *e,
                size_t n);
int sq_logs_append(struct store *st, const char *task_id, const struct log_entry *e,
                   size_t n);
int sq_logs_list(struct store *st, const char *task_id, int min_level, int64_t limit,
                 int64_t offset, json_t **logs, int64_t *total);
int sq_export_extras(struct store *st, const char *task_id, bool logs, bool convs,
                     struct buf *out);

/* queue.c */
int sq_task_claim(struct store *st, const struct claim_req *req, struct task **out);
int sq_task_finish(struct store *st, const char *id, const char *lease_token,
                   const struct task_end *end);
int sq_reap(struct store *st, int64_t now, int64_t heartbeat_timeout_us,
            struct reap_result *out);
int sq_recover(struct store *st, const char *name_prefix, int64_t now, int *n_failed);

/* schema.c */
int sq_migrate(sqlite3 *db);

/* sessions.c */
int sq_session_ready(struct store *st, const char *task_id, json_t *ready, int max_steps,
                     int64_t now);
int sq_session_get(struct store *st, const char *task_id, json_t **out);
int sq_session_step(struct store *st, const char *task_id, const char *action, int64_t now,
                    int *step);
int sq_session_next(struct store *st, const char *task_id, int after, int *step,
                    char **action);
int sq_session_answer(struct store *st, const char *task_id, int step, json_t *answer,
                      const struct msg_entry *msgs, size_t n_msgs, int64_t now);
int sq_session_end(struct store *st, const char *task_id);
int sq_session_idle(struct store *st, int64_t before, char (*ids)[37], size_t max,
                    size_t *n);

/* tasks.c */
struct task *sq_row_task(sqlite3_stmt *s);
int sq_load_task(struct conn *c, enum q q, const char *key, struct task **out);
int sq_task_insert(struct store *st, struct task *t, struct task **existing);
int sq_task_get(struct store *st, const char *id, struct task **out);
int sq_task_list(struct store *st, const struct task_filter *f, struct task_page *out);
int sq_task_cancel(struct store *st, const char *id, int64_t now, struct task **out);
int sq_task_lease_status(struct store *st, const char *id, const char *lease_token,
                         enum task_status *status);
int sq_task_stats(struct store *st, bool with_averages, struct task_stats *out);

/* webhooks.c */
int sq_webhooks_due(struct store *st, int64_t now, int64_t lease_us, size_t max,
                    struct webhook_job *jobs, size_t *n);
int sq_webhook_result(struct store *st, const char *task_id, const char *state,
                      int attempts, int64_t next_at, const char *error);

/* workers.c */
int sq_worker_register(struct store *st, const struct worker_reg *reg);
int sq_worker_token(struct store *st, const char *id, char **token_hash);
int sq_worker_heartbeat(struct store *st, const char *const *ids, size_t n, int64_t now);
int sq_worker_set_status(struct store *st, const char *id, const char *status,
                         json_t *metadata);
int sq_worker_list(struct store *st, const char *status, const char *backend_type,
                   json_t **out);
int sq_worker_get(struct store *st, const char *id, json_t **out);
int sq_worker_counts(struct store *st, int64_t counts[3]);

#endif
