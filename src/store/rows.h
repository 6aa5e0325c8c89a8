/* store/rows: rows of either backend turned into the API's values, once.
 *
 * A backend reads a result through a cursor (struct store_cursor) whose next() says
 * row, done or error, and lets rows.c read the current row by column index through
 * struct store_row_ops (text, integer, real, boolean, null). Every API object a read
 * returns (a task, a log line, a conversation and its messages, a worker, an event, a
 * bucket of the time series, a session) is built here from the columns in the order
 * the backend's SQL selects them (the *_COLS lists of each backend, kept alike).
 * Below the builders, the consumers: what a read does with its rows, also once.
 * Only the backends include this header. */
#ifndef TASKEXEC_STORE_ROWS_H
#define TASKEXEC_STORE_ROWS_H

#include "store/store.h"
#include "model/experiment.h"
#include "model/task.h"
#include "core/buf.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

/* What next() answers; errors are negative codes from core/err.h. */
enum { STORE_DONE = 0, STORE_ROW = 1 };

struct store_row;

/* Column access of a backend. Columns count from 0; text is NULL for SQL NULL and
 * stays valid until the cursor moves; i64, f64 and boolean read NULL as 0. */
struct store_row_ops {
    bool (*is_null)(const struct store_row *r, int col);
    const char *(*text)(const struct store_row *r, int col);
    int64_t (*i64)(const struct store_row *r, int col);
    double (*f64)(const struct store_row *r, int col);
    bool (*boolean)(const struct store_row *r, int col);
};

struct store_row {
    const struct store_row_ops *ops;
    void *impl;                  /* the backend's result (sqlite3_stmt, PGresult) */
    int i;                       /* the row within impl, where the backend needs it */
};

/* A read in progress. A backend's cursor embeds this first; next() moves row to the
 * following row and answers STORE_ROW, STORE_DONE, or a negative error (logged by the
 * backend). A loop over a cursor ends on STORE_DONE only: any other answer is the
 * caller's error to return. */
struct store_cursor {
    struct store_row row;
    int (*next)(struct store_cursor *cur);
};

/* rows_collect: appends build(row) for every remaining row of cur to arr. Returns 0 at
 * the end of the rows, ERR_NOMEM when build or the append fails, or next()'s error;
 * on error arr keeps the rows appended so far (the caller drops it). */
int rows_collect(struct store_cursor *cur, json_t *(*build)(const struct store_row *r),
                 json_t *arr) __attribute__((warn_unused_result));
/* rows_one: moves to the first row. 0 when there is one, ERR_NOTFOUND when there is
 * none, or next()'s error: a failed read is never reported as "not found". */
int rows_one(struct store_cursor *cur) __attribute__((warn_unused_result));

/* rows_build: from a cursor just opened, every row through build() into a new array
 * *v, or, with one, the first row's value as *v (ERR_NOTFOUND when there is none).
 * *v is NULL on error. */
int rows_build(struct store_cursor *cur, json_t *(*build)(const struct store_row *r), bool one,
               json_t **v) __attribute__((warn_unused_result));
/* rows_give: hands v to *out when rc is 0, else drops it; returns rc. */
int rows_give(int rc, json_t *v, json_t **out);

/* ---- consumers ----
 * What a read does with its rows is the same on both backends, so it is written here
 * once: a backend opens the cursor (its sq_take / pg_take, or *_read_with on a pooled
 * connection) and hands it to a consumer with the consumer's context. A consumer moves
 * through the rows with next() and returns 0, next()'s error, ERR_NOTFOUND (it wanted a
 * row and there is none), ERR_NOMEM, or what its comment says. On error it leaves no
 * allocation behind in ctx unless its comment says so. */
typedef int (*rows_take_fn)(struct store_cursor *cur, void *ctx);

/* ctx: struct rows_array. Every row through build() into a new array v, or with one
 * the first row's value (ERR_NOTFOUND when none). v is NULL on error; else the caller
 * owns it. */
struct rows_array {
    json_t *(*build)(const struct store_row *r);
    bool one;
    json_t *v;
};
int rows_take_array(struct store_cursor *cur, void *ctx);
/* ctx: struct task **. The first row as a task (TASK_COLS; caller frees). */
int rows_take_task(struct store_cursor *cur, void *ctx);
/* ctx: struct task_page (from store.h). Every row appended as a task to items (the
 * page owns them; on error the caller resets the page). */
int rows_take_tasks(struct store_cursor *cur, void *ctx);
/* ctx: struct rows_ints. The first row's first n columns as integers. */
struct rows_ints {
    int n;                       /* at most 4 */
    int64_t v[4];
};
int rows_take_ints(struct store_cursor *cur, void *ctx);
/* ctx: char **. The first row's first column as a heap string (caller frees; NULL for
 * SQL NULL). */
int rows_take_text(struct store_cursor *cur, void *ctx);
/* ctx: int *. The first row's first column, then the statement stepped to its end
 * (SQLite finishes an UPDATE ... RETURNING only then). */
int rows_take_int_drain(struct store_cursor *cur, void *ctx);
/* ctx: struct rows_lease. Columns status, lease_token: status is set from the row,
 * and the consumer returns ERR_FORBIDDEN when token is not the row's lease. */
struct rows_lease {
    const char *token;           /* borrowed */
    enum task_status status;
};
int rows_take_lease(struct store_cursor *cur, void *ctx);
/* ctx: struct task_stats. Rows (status, count) added to counts and total. */
int rows_take_task_counts(struct store_cursor *cur, void *ctx);
/* ctx: struct task_stats. One row (mean wait, mean run) in seconds; NULL leaves the
 * field as it is. */
int rows_take_averages(struct store_cursor *cur, void *ctx);
/* ctx: int64_t[3]. Rows (status, count) summed per rows_worker_slot; counts written
 * only on success. */
int rows_take_worker_counts(struct store_cursor *cur, void *ctx);
/* ctx: struct rows_ids. Up to max rows' first column (a task id); n is 0 on error. */
struct rows_ids {
    char (*ids)[37];             /* borrowed, max elements */
    size_t max, n;
};
int rows_take_ids(struct store_cursor *cur, void *ctx);
/* ctx: struct rows_action. Columns step, action of the first row; no row is 0 with
 * action NULL (no step in flight). action is the caller's to free. */
struct rows_action {
    int step;
    char *action;
};
int rows_take_action(struct store_cursor *cur, void *ctx);
/* ctx: struct rows_jobs. Up to max rows (id, callback_url, webhook_attempts) into
 * jobs; the rows past max were not leased, so stopping there is no error. On error the
 * urls read are freed and n is 0. */
struct rows_jobs {
    struct webhook_job *jobs;    /* borrowed, max elements */
    size_t max, n;
    bool experiment;             /* the rows are experiments' deliveries */
};
int rows_take_jobs(struct store_cursor *cur, void *ctx);
/* ctx: struct rows_convs. Every row (CONV_COLS) as a conversation into a new array v,
 * or with one the first row's (ERR_NOTFOUND when none); with_messages, each gets its
 * "messages" from messages(conn, its seq, it), which the backend reads on conn while
 * this cursor is open. v is the caller's to free, on error too. */
struct rows_convs {
    int (*messages)(void *conn, int64_t seq, json_t *conv);
    void *conn;                  /* borrowed: the backend's connection */
    bool one, with_messages;
    json_t *v;
};
int rows_take_convs(struct store_cursor *cur, void *ctx);
/* ctx: json_t * (an object). Rows (model_name, count) set as its members. */
int rows_take_by_model(struct store_cursor *cur, void *ctx);
/* ctx: struct rows_conv_totals. One row (count, mean messages, tokens, successes). */
struct rows_conv_totals {
    int64_t total, tokens, successful;
    double avg_messages;
};
int rows_take_conv_totals(struct store_cursor *cur, void *ctx);
/* ctx: struct rows_export. Appends ,"key": and the JSON text of the first row's first
 * column (an aggregate: no row is ERR_STORE, logged). */
struct rows_export {
    const char *key;
    struct buf *out;             /* borrowed */
};
int rows_take_export(struct store_cursor *cur, void *ctx);

/* Column helpers (new references or heap strings; NULL only when out of memory,
 * except rows_dup and rows_json, which also give NULL for SQL NULL). */
char *rows_dup(const struct store_row *r, int col);          /* caller frees */
json_t *rows_json(const struct store_row *r, int col);       /* parsed JSON text */
json_t *rows_json_or_null(const struct store_row *r, int col);
json_t *rows_str(const struct store_row *r, int col);        /* string or null */
json_t *rows_time(const struct store_row *r, int col);       /* RFC 3339 from microseconds */

/* The builders: one row in the column order named, to a new value (caller frees;
 * NULL when out of memory). */
/* TASK_COLS: id, problem_id, status, priority, backend_type, mode, parameters,
 * metadata, callback_url, idempotency_key, worker_id, lease_token, result, error,
 * max_steps, timeout_seconds, created_at, updated_at, started_at, completed_at,
 * deadline_at, seq, then the retry and experiment columns, as each dialect selects
 * them (below). Caller frees with task_free. */
struct task *rows_task(const struct store_row *r);
/* SQLite's (TASK_INSERT_COLS: what a new task's INSERT names) ... */
#define TASK_INSERT_COLS                                                                   \
    "id, problem_id, status, priority, backend_type, mode, parameters, metadata, "         \
    "callback_url, idempotency_key, worker_id, lease_token, result, error, max_steps, "    \
    "timeout_seconds, created_at, updated_at, started_at, completed_at, deadline_at"

#define TASK_COLS_SQ                                                                       \
    TASK_INSERT_COLS ", seq, max_retries, attempt, error_class, attempts, retry_at, "      \
    "experiment_id, slot"
/* ... and PostgreSQL's (TASK_COLS_T_PG: of the row aliased t). */
#define TASK_COLS_PG                                                                       \
    "id, problem_id, status, priority, backend_type, mode, parameters::text, "             \
    "metadata::text, callback_url, idempotency_key, worker_id, lease_token, result::text, "  \
    "error, max_steps, timeout_seconds, te_us(created_at), te_us(updated_at), "            \
    "te_us(started_at), te_us(completed_at), te_us(deadline_at), seq, max_retries, attempt, " \
    "error_class, attempts::text, te_us(retry_at), experiment_id, slot::text"

#define TASK_COLS_T_PG                                                                     \
    "t.id, t.problem_id, t.status, t.priority, t.backend_type, t.mode, t.parameters::text, " \
    "t.metadata::text, t.callback_url, t.idempotency_key, t.worker_id, t.lease_token, "    \
    "t.result::text, t.error, t.max_steps, t.timeout_seconds, te_us(t.created_at), "       \
    "te_us(t.updated_at), te_us(t.started_at), te_us(t.completed_at), te_us(t.deadline_at), " \
    "t.seq, t.max_retries, t.attempt, t.error_class, t.attempts::text, te_us(t.retry_at), "   \
    "t.experiment_id, t.slot::text"

/* ts, level, message, context -> {"timestamp","level","message","context"} */
json_t *rows_log(const struct store_row *r);
/* CONV_COLS: seq, id, task_id, session_id, model_name, model_config, started_at,
 * ended_at, total_messages, total_tokens, metadata */
json_t *rows_conversation(const struct store_row *r);
/* ts, role, content, step, metadata */
json_t *rows_message(const struct store_row *r);
/* WORKER_COLS: id, backend_type, status, last_heartbeat, current_task_id,
 * capabilities, metadata, tasks_completed, tasks_failed, registered_at, internal */
json_t *rows_worker(const struct store_row *r);
/* id, ts, kind, task_id, worker_id, status, problem_id, experiment_id */
json_t *rows_event(const struct store_row *r);
/* id, task_id, ts, level, message, context */
json_t *rows_new_log(const struct store_row *r);
/* start, submitted, started, completed, failed, cancelled, mean wait in us */
json_t *rows_bucket(const struct store_row *r);
/* state, task_description, instructions, actions, max_steps, step, answered, action,
 * observation, done, reward, results, last_activity_at */
json_t *rows_session(const struct store_row *r);
/* The conversation statistics object from its figures; by_model is borrowed. */
json_t *rows_conversation_stats(int64_t total, double avg_messages, int64_t tokens,
                                int64_t successful, json_t *by_model);

/* ---- experiments ----
 * EXP_COLS (each backend): id, name, spec, metadata, callback_url, created_at,
 * cancelled_at, the last end of its current tasks. */
/* ctx: struct experiment **. The first row as an experiment (caller frees). */
int rows_take_experiment(struct store_cursor *cur, void *ctx);
/* ctx: struct experiment *. Rows (status, count) added to its counts and task_count. */
int rows_take_experiment_counts(struct store_cursor *cur, void *ctx);
/* EXP_COLS then the counts of its current tasks per state, in task_status order: the
 * experiment as the API shows it. */
json_t *rows_experiment_json(const struct store_row *r);
/* problem_id, agent_config_index, attempts, ended, solved, and the sums of reward,
 * steps, tokens and duration over the ended: one line of store_experiment_scoreboard. */
json_t *rows_board_sums(const struct store_row *r);
/* ctx: json_t * (an array). Rows (id, status before the change): the ids of those that
 * were running, appended. */
int rows_take_running_ids(struct store_cursor *cur, void *ctx);
/* The first column's JSON text, parsed. */
json_t *rows_json_column(const struct store_row *r);

/* rows_worker_slot: the index in store_worker_counts' counts[3] of a worker status
 * (idle 0, busy 1, anything else offline 2). */
int rows_worker_slot(const char *status);

/* LLM_CALL_COLS: id, task_id, attempt, started_at (us), latency_ms, first_byte_ms, status,
 * stream, cut, upstream, model, finish_reason, prompt_tokens, completion_tokens, error,
 * request, response -> the object store.h's llm_calls describes. */
json_t *rows_llm_call(const struct store_row *r);

#endif
