/* store/rows: rows of either backend turned into the API's values (see rows.h). */
#include "store/rows.h"
#include "store/store.h"
#include "core/clock.h"
#include "core/err.h"
#include "model/proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int rows_collect(struct store_cursor *cur, json_t *(*build)(const struct store_row *r),
                 json_t *arr)
{
    int rc;

    while ((rc = cur->next(cur)) == STORE_ROW) {
        json_t *o = build(&cur->row);
        if (!o || json_array_append_new(arr, o))
            return ERR_NOMEM;
    }
    return rc;
}

int rows_one(struct store_cursor *cur)
{
    int rc = cur->next(cur);

    if (rc == STORE_ROW)
        return 0;
    return rc == STORE_DONE ? ERR_NOTFOUND : rc;
}

int rows_build(struct store_cursor *cur, json_t *(*build)(const struct store_row *r), bool one,
               json_t **v)
{
    json_t *arr;
    int rc;

    *v = NULL;
    if (one) {
        rc = rows_one(cur);
        if (rc == 0 && !(*v = build(&cur->row)))
            rc = ERR_NOMEM;
        return rc;
    }
    arr = json_array();
    rc = arr ? rows_collect(cur, build, arr) : ERR_NOMEM;
    return rows_give(rc, arr, v);
}

int rows_give(int rc, json_t *v, json_t **out)
{
    if (rc == 0)
        *out = v;
    else
        json_decref(v);
    return rc;
}

static bool is_null(const struct store_row *r, int col)
{
    return r->ops->is_null(r, col);
}

static int64_t i64(const struct store_row *r, int col)
{
    return r->ops->i64(r, col);
}

char *rows_dup(const struct store_row *r, int col)
{
    const char *t = r->ops->text(r, col);
    return t ? strdup(t) : NULL;
}

json_t *rows_json(const struct store_row *r, int col)
{
    const char *t = r->ops->text(r, col);
    return t ? json_loads(t, JSON_DECODE_ANY, NULL) : NULL;
}

json_t *rows_json_or_null(const struct store_row *r, int col)
{
    json_t *v = rows_json(r, col);
    return v ? v : json_null();
}

json_t *rows_str(const struct store_row *r, int col)
{
    const char *t = r->ops->text(r, col);
    return t ? json_string(t) : json_null();
}

json_t *rows_time(const struct store_row *r, int col)
{
    char text[40];

    if (is_null(r, col))
        return json_null();
    clock_format(i64(r, col), text, sizeof(text));
    return json_string(text);
}

/* An integer, or null for SQL NULL. */
static json_t *int_or_null(const struct store_row *r, int col)
{
    return is_null(r, col) ? json_null() : json_integer(i64(r, col));
}

struct task *rows_task(const struct store_row *r)
{
    struct task *t = task_new();
    const char *id = r->ops->text(r, 0), *status = r->ops->text(r, 2);

    if (!t)
        return NULL;
    snprintf(t->id, sizeof(t->id), "%s", id ? id : "");
    t->problem_id = rows_dup(r, 1);
    t->status = status ? (enum task_status)task_status_parse(status) : TASK_PENDING;
    t->priority = (int)i64(r, 3);
    t->backend_type = rows_dup(r, 4);
    t->mode = rows_dup(r, 5);
    t->parameters = rows_json(r, 6);
    t->metadata = rows_json(r, 7);
    t->callback_url = rows_dup(r, 8);
    t->idempotency_key = rows_dup(r, 9);
    t->worker_id = rows_dup(r, 10);
    t->lease_token = rows_dup(r, 11);
    t->result = rows_json(r, 12);
    t->error = rows_dup(r, 13);
    t->max_steps = (int)i64(r, 14);
    t->timeout_seconds = (int)i64(r, 15);
    t->created_at = i64(r, 16);
    t->updated_at = i64(r, 17);
    t->started_at = i64(r, 18);
    t->completed_at = i64(r, 19);
    t->deadline_at = i64(r, 20);
    t->seq = i64(r, 21);
    if (!t->problem_id || !t->backend_type || !t->mode) {
        task_free(t);
        return NULL;
    }
    return t;
}

json_t *rows_log(const struct store_row *r)
{
    return json_pack("{s:o, s:s, s:o, s:o}", "timestamp", rows_time(r, 0), "level",
                     proto_level_name((int)i64(r, 1)), "message", rows_str(r, 2), "context",
                     rows_json_or_null(r, 3));
}

json_t *rows_conversation(const struct store_row *r)
{
    json_t *meta = rows_json_or_null(r, 10);
    json_t *success = json_object_get(meta, "success");
    json_t *cfg = rows_json_or_null(r, 5);

    return json_pack("{s:o, s:o, s:o, s:o, s:O, s:o, s:o, s:o, s:I, s:o, s:o, s:O}", "id",
                     rows_str(r, 1), "task_id", rows_str(r, 2), "session_id", rows_str(r, 3),
                     "model_name", rows_str(r, 4), "model_config", cfg, "llm_config", cfg,
                     "started_at", rows_time(r, 6), "ended_at", rows_time(r, 7),
                     "total_messages", (json_int_t)i64(r, 8), "total_tokens",
                     int_or_null(r, 9), "metadata", meta, "success",
                     success ? success : json_null());
}

json_t *rows_message(const struct store_row *r)
{
    return json_pack("{s:o, s:o, s:o, s:o, s:o}", "timestamp", rows_time(r, 0), "role",
                     rows_str(r, 1), "content", rows_json_or_null(r, 2), "step",
                     int_or_null(r, 3), "metadata", rows_json_or_null(r, 4));
}

json_t *rows_worker(const struct store_row *r)
{
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:o, s:b}", "id",
                     rows_str(r, 0), "backend_type", rows_str(r, 1), "status", rows_str(r, 2),
                     "last_heartbeat", rows_time(r, 3), "current_task_id", rows_str(r, 4),
                     "capabilities", rows_json_or_null(r, 5), "metadata",
                     rows_json_or_null(r, 6), "tasks_completed", (json_int_t)i64(r, 7),
                     "tasks_failed", (json_int_t)i64(r, 8), "registered_at", rows_time(r, 9),
                     "internal", (int)r->ops->boolean(r, 10));
}

json_t *rows_event(const struct store_row *r)
{
    return json_pack("{s:I, s:I, s:o, s:o, s:o, s:o, s:o}", "id", (json_int_t)i64(r, 0),
                     "ts_us", (json_int_t)i64(r, 1), "kind", rows_str(r, 2), "task_id",
                     rows_str(r, 3), "worker_id", rows_str(r, 4), "status", rows_str(r, 5),
                     "problem_id", rows_str(r, 6));
}

json_t *rows_new_log(const struct store_row *r)
{
    return json_pack("{s:I, s:o, s:I, s:s, s:o, s:o}", "id", (json_int_t)i64(r, 0), "task_id",
                     rows_str(r, 1), "ts_us", (json_int_t)i64(r, 2), "level",
                     proto_level_name((int)i64(r, 3)), "message", rows_str(r, 4), "context",
                     rows_json_or_null(r, 5));
}

json_t *rows_bucket(const struct store_row *r)
{
    json_t *wait = is_null(r, 6) ? json_null() : json_real(r->ops->f64(r, 6) / 1000.0);

    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "start_us", (json_int_t)i64(r, 0),
                     "submitted", (json_int_t)i64(r, 1), "started", (json_int_t)i64(r, 2),
                     "completed", (json_int_t)i64(r, 3), "failed", (json_int_t)i64(r, 4),
                     "cancelled", (json_int_t)i64(r, 5), "queue_wait_ms", wait);
}

json_t *rows_session(const struct store_row *r)
{
    json_t *reward = is_null(r, 10) ? json_null() : json_real(r->ops->f64(r, 10));

    return json_pack("{s:o, s:o, s:o, s:o, s:I, s:I, s:I, s:o, s:o, s:b, s:o, s:o, s:I}",
                     "state", rows_str(r, 0), "task_description", rows_str(r, 1),
                     "instructions", rows_str(r, 2), "actions", rows_json_or_null(r, 3),
                     "max_steps", (json_int_t)i64(r, 4), "step", (json_int_t)i64(r, 5),
                     "answered", (json_int_t)i64(r, 6), "action", rows_str(r, 7),
                     "observation", rows_str(r, 8), "done", (int)r->ops->boolean(r, 9),
                     "reward", reward, "results", rows_json_or_null(r, 11),
                     "last_activity_us", (json_int_t)i64(r, 12));
}

json_t *rows_conversation_stats(int64_t total, double avg_messages, int64_t tokens,
                                int64_t successful, json_t *by_model)
{
    return json_pack("{s:I, s:O, s:f, s:I, s:f, s:I}", "total_conversations",
                     (json_int_t)total, "conversations_by_model", by_model,
                     "avg_messages_per_conversation", avg_messages, "total_tokens_consumed",
                     (json_int_t)tokens, "success_rate",
                     total ? (double)successful / (double)total : 0.0,
                     "successful_conversations", (json_int_t)successful);
}

int rows_worker_slot(const char *status)
{
    if (status && !strcmp(status, WORKER_IDLE))
        return 0;
    return status && !strcmp(status, WORKER_BUSY) ? 1 : 2;
}
