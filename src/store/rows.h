/* store/rows: rows of either backend turned into the API's values, once.
 *
 * A backend reads a result through a cursor (struct store_cursor) whose next() says
 * row, done or error, and lets rows.c read the current row by column index through
 * struct store_row_ops (text, integer, real, boolean, null). Every API object a read
 * returns (a task, a log line, a conversation and its messages, a worker, an event, a
 * bucket of the time series, a session) is built here from the columns in the order
 * the backend's SQL selects them (the *_COLS lists of each backend, kept alike).
 * Only the backends include this header. */
#ifndef TASKEXEC_STORE_ROWS_H
#define TASKEXEC_STORE_ROWS_H

#include "model/task.h"

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
 * deadline_at, seq. Caller frees with task_free. */
struct task *rows_task(const struct store_row *r);
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
/* id, ts, kind, task_id, worker_id, status, problem_id */
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

/* rows_worker_slot: the index in store_worker_counts' counts[3] of a worker status
 * (idle 0, busy 1, anything else offline 2). */
int rows_worker_slot(const char *status);

#endif
