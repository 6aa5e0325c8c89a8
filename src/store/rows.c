/* store/rows: rows of either backend turned into the API's values (see rows.h). */
#include "store/rows.h"
#include "store/store.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
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

/* The attempts list as the API shows it: the times the store keeps as microseconds
 * become RFC 3339. Takes arr; NULL stays NULL. */
static json_t *attempts_of(json_t *arr)
{
    static const char *const times[] = {"started_at", "ended_at"};
    size_t i;
    json_t *a;

    json_array_foreach(arr, i, a)
        for (int k = 0; k < 2; k++) {
            json_t *v = json_object_get(a, times[k]);
            char text[40];

            if (json_is_integer(v) && json_integer_value(v) > 0) {
                clock_format(json_integer_value(v), text, sizeof(text));
                json_object_set_new(a, times[k], json_string(text));
            } else if (v) {
                json_object_set_new(a, times[k], json_null());
            }
        }
    return arr;
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
    t->max_retries = (int)i64(r, 22);
    t->attempt = (int)i64(r, 23);
    t->error_class = task_error_class_parse(r->ops->text(r, 24));
    t->attempts = attempts_of(rows_json(r, 25));
    t->retry_at = i64(r, 26);
    t->experiment_id = rows_dup(r, 27);
    t->slot = rows_json(r, 28);
    if (!t->problem_id || !t->backend_type || !t->mode) {
        task_free(t);
        return NULL;
    }
    return t;
}

json_t *rows_log(const struct store_row *r)
{
    return json_pack("{s:o, s:s, s:o, s:o, s:I}", "timestamp", rows_time(r, 0), "level",
                     proto_level_name((int)i64(r, 1)), "message", rows_str(r, 2), "context",
                     rows_json_or_null(r, 3), "attempt", (json_int_t)(i64(r, 4) ? i64(r, 4) : 1));
}

json_t *rows_conversation(const struct store_row *r)
{
    json_t *meta = rows_json_or_null(r, 10);
    json_t *success = json_object_get(meta, "success");
    json_t *cfg = rows_json_or_null(r, 5);

    return json_pack("{s:o, s:o, s:o, s:o, s:O, s:o, s:o, s:o, s:I, s:o, s:o, s:O, s:I}",
                     "id", rows_str(r, 1), "task_id", rows_str(r, 2), "session_id",
                     rows_str(r, 3), "model_name", rows_str(r, 4), "model_config", cfg,
                     "llm_config", cfg, "started_at", rows_time(r, 6), "ended_at",
                     rows_time(r, 7), "total_messages", (json_int_t)i64(r, 8), "total_tokens",
                     int_or_null(r, 9), "metadata", meta, "success",
                     success ? success : json_null(), "attempt",
                     (json_int_t)(i64(r, 11) ? i64(r, 11) : 1));
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
    return json_pack("{s:I, s:I, s:o, s:o, s:o, s:o, s:o, s:o}", "id", (json_int_t)i64(r, 0),
                     "ts_us", (json_int_t)i64(r, 1), "kind", rows_str(r, 2), "task_id",
                     rows_str(r, 3), "worker_id", rows_str(r, 4), "status", rows_str(r, 5),
                     "problem_id", rows_str(r, 6), "experiment_id", rows_str(r, 7));
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

/* ---- consumers (see rows.h) ---- */

int rows_take_array(struct store_cursor *cur, void *ctx)
{
    struct rows_array *a = ctx;

    return rows_build(cur, a->build, a->one, &a->v);
}

int rows_take_task(struct store_cursor *cur, void *ctx)
{
    struct task **out = ctx;
    int rc = rows_one(cur);

    if (rc == 0) {
        *out = rows_task(&cur->row);
        rc = *out ? 0 : ERR_NOMEM;
    }
    return rc;
}

/* Appends t to the page, growing it by doubling; t is freed when that fails. */
static int page_add(struct task_page *page, size_t *cap, struct task *t)
{
    if (!t)
        return ERR_NOMEM;
    if (page->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        struct task **p = realloc(page->items, ncap * sizeof(*p));
        if (!p) {
            task_free(t);
            return ERR_NOMEM;
        }
        page->items = p;
        *cap = ncap;
    }
    page->items[page->n++] = t;
    return 0;
}

int rows_take_tasks(struct store_cursor *cur, void *ctx)
{
    struct task_page *page = ctx;
    size_t cap = page->n;
    int rc;

    while ((rc = cur->next(cur)) == STORE_ROW) {
        rc = page_add(page, &cap, rows_task(&cur->row));
        if (rc < 0)
            return rc;
    }
    return rc;
}

int rows_take_ints(struct store_cursor *cur, void *ctx)
{
    struct rows_ints *x = ctx;
    int rc = rows_one(cur);

    for (int i = 0; rc == 0 && i < x->n; i++)
        x->v[i] = i64(&cur->row, i);
    return rc;
}

int rows_take_text(struct store_cursor *cur, void *ctx)
{
    char **out = ctx;
    int rc = rows_one(cur);
    char *t = rc == 0 ? rows_dup(&cur->row, 0) : NULL;

    if (rc == 0 && !t && !is_null(&cur->row, 0))
        rc = ERR_NOMEM;
    if (rc == 0)
        *out = t;
    return rc;
}

int rows_take_int_drain(struct store_cursor *cur, void *ctx)
{
    int *out = ctx, rc = rows_one(cur);
    int64_t v = rc == 0 ? i64(&cur->row, 0) : 0;

    while (rc == 0 && (rc = cur->next(cur)) == STORE_ROW)
        rc = 0;
    if (rc == 0)
        *out = (int)v;
    return rc;
}

int rows_take_lease(struct store_cursor *cur, void *ctx)
{
    struct rows_lease *l = ctx;
    int rc = rows_one(cur);

    if (rc == 0) {
        const char *status = cur->row.ops->text(&cur->row, 0);
        const char *lease = cur->row.ops->text(&cur->row, 1);
        l->status = (enum task_status)task_status_parse(status ? status : "");
        rc = lease && l->token && !strcmp(lease, l->token) ? 0 : ERR_FORBIDDEN;
    }
    return rc;
}

int rows_take_task_counts(struct store_cursor *cur, void *ctx)
{
    struct task_stats *out = ctx;
    int rc;

    while ((rc = cur->next(cur)) == STORE_ROW) {
        const char *status = cur->row.ops->text(&cur->row, 0);
        int i = task_status_parse(status ? status : "");
        if (i >= 0) {
            out->counts[i] = i64(&cur->row, 1);
            out->total += out->counts[i];
        }
    }
    return rc;
}

int rows_take_averages(struct store_cursor *cur, void *ctx)
{
    struct task_stats *out = ctx;
    int rc = rows_one(cur);

    if (rc == 0 && !is_null(&cur->row, 0))
        out->avg_wait_seconds = cur->row.ops->f64(&cur->row, 0);
    if (rc == 0 && !is_null(&cur->row, 1))
        out->avg_run_seconds = cur->row.ops->f64(&cur->row, 1);
    return rc;
}

int rows_take_worker_counts(struct store_cursor *cur, void *ctx)
{
    int64_t *counts = ctx, n[3] = {0, 0, 0};
    int rc;

    while ((rc = cur->next(cur)) == STORE_ROW)
        n[rows_worker_slot(cur->row.ops->text(&cur->row, 0))] += i64(&cur->row, 1);
    if (rc == 0)
        memcpy(counts, n, sizeof(n));
    return rc;
}

int rows_take_ids(struct store_cursor *cur, void *ctx)
{
    struct rows_ids *x = ctx;
    size_t k = 0;
    int rc = 0;

    while (k < x->max && (rc = cur->next(cur)) == STORE_ROW) {
        const char *id = cur->row.ops->text(&cur->row, 0);
        snprintf(x->ids[k++], sizeof(x->ids[0]), "%s", id ? id : "");
        rc = 0;
    }
    x->n = rc == 0 ? k : 0;
    return rc;
}

int rows_take_action(struct store_cursor *cur, void *ctx)
{
    struct rows_action *a = ctx;
    int rc = rows_one(cur);

    if (rc == ERR_NOTFOUND)
        return 0; /* no step in flight */
    if (rc == 0) {
        const char *text = cur->row.ops->text(&cur->row, 1);
        a->action = strdup(text ? text : "");
        a->step = a->action ? (int)i64(&cur->row, 0) : 0;
        rc = a->action ? 0 : ERR_NOMEM;
    }
    return rc;
}

int rows_take_jobs(struct store_cursor *cur, void *ctx)
{
    struct rows_jobs *x = ctx;
    size_t k = 0;
    int rc = 0;

    while (k < x->max && (rc = cur->next(cur)) == STORE_ROW) {
        struct webhook_job *j = &x->jobs[k];
        const char *id = cur->row.ops->text(&cur->row, 0);
        snprintf(j->task_id, sizeof(j->task_id), "%s", id ? id : "");
        j->url = rows_dup(&cur->row, 1);
        j->attempts = (int)i64(&cur->row, 2);
        j->experiment = x->experiment;
        if (!j->url) {
            rc = ERR_NOMEM;
            break;
        }
        k++;
    }
    if (k == x->max)
        rc = 0; /* the LIMIT keeps the rows to max: the rest were not leased */
    if (rc < 0) {
        for (size_t i = 0; i < k; i++)
            free(x->jobs[i].url);
        k = 0;
    }
    x->n = k;
    return rc;
}

int rows_take_by_model(struct store_cursor *cur, void *ctx)
{
    json_t *by_model = ctx;
    int rc;

    while ((rc = cur->next(cur)) == STORE_ROW)
        if (json_object_set_new(by_model, cur->row.ops->text(&cur->row, 0),
                                json_integer(i64(&cur->row, 1))))
            return ERR_NOMEM;
    return rc;
}

int rows_take_conv_totals(struct store_cursor *cur, void *ctx)
{
    struct rows_conv_totals *t = ctx;
    int rc = rows_one(cur);

    if (rc == 0) {
        t->total = i64(&cur->row, 0);
        t->avg_messages = cur->row.ops->f64(&cur->row, 1);
        t->tokens = i64(&cur->row, 2);
        t->successful = i64(&cur->row, 3);
    }
    return rc;
}

int rows_take_export(struct store_cursor *cur, void *ctx)
{
    struct rows_export *x = ctx;
    int rc = rows_one(cur);
    const char *text = rc == 0 ? cur->row.ops->text(&cur->row, 0) : NULL;

    if (rc == ERR_NOTFOUND || (rc == 0 && !text)) {
        log_error("store: exporting a task: the %s aggregate gave no value", x->key);
        return ERR_STORE;
    }
    if (rc == 0 && (buf_appendf(x->out, ",\"%s\":", x->key) < 0 ||
                    buf_append(x->out, text, strlen(text)) < 0))
        rc = ERR_NOMEM;
    return rc;
}

int rows_take_convs(struct store_cursor *cur, void *ctx)
{
    struct rows_convs *x = ctx;
    int rc;

    x->v = x->one ? NULL : json_array();
    if (!x->one && !x->v)
        return ERR_NOMEM;
    while ((rc = cur->next(cur)) == STORE_ROW) {
        json_t *o = rows_conversation(&cur->row);
        if (!o || (!x->one && json_array_append_new(x->v, o)))
            return ERR_NOMEM;
        if (x->one)
            x->v = o;
        if (x->with_messages && (rc = x->messages(x->conn, i64(&cur->row, 0), o)) < 0)
            return rc;
        if (x->one)
            return 0;
    }
    return rc == STORE_DONE && x->one ? ERR_NOTFOUND : rc;
}

/* ---- experiments ---- */

static const char *text(const struct store_row *r, int col)
{
    return r->ops->text(r, col);
}

static double f64(const struct store_row *r, int col)
{
    return r->ops->f64(r, col);
}


/* EXP_COLS: id, name, spec, metadata, callback_url, created_at, cancelled_at, the last
 * end of its current tasks. */
static struct experiment *experiment_of_row(const struct store_row *r)
{
    struct experiment *e = experiment_new();
    const char *id = text(r, 0);

    if (!e)
        return NULL;
    snprintf(e->id, sizeof(e->id), "%s", id ? id : "");
    e->name = rows_dup(r, 1);
    e->spec = rows_json(r, 2);
    e->metadata = rows_json(r, 3);
    e->callback_url = rows_dup(r, 4);
    e->created_at = i64(r, 5);
    e->cancelled_at = i64(r, 6);
    e->ended_at = i64(r, 7);
    if (!e->name || !e->spec || !e->metadata) {
        experiment_free(e);
        return NULL;
    }
    return e;
}

int rows_take_experiment(struct store_cursor *cur, void *ctx)
{
    struct experiment **out = ctx;
    int rc = rows_one(cur);

    if (rc < 0)
        return rc;
    *out = experiment_of_row(&cur->row);
    return *out ? 0 : ERR_NOMEM;
}

int rows_take_experiment_counts(struct store_cursor *cur, void *ctx)
{
    struct experiment *e = ctx;
    int rc;

    while ((rc = cur->next(cur)) == STORE_ROW) {
        const char *status = text(&cur->row, 0);
        int s = status ? task_status_parse(status) : -1;
        if (s >= 0) {
            e->counts[s] += i64(&cur->row, 1);
            e->task_count += i64(&cur->row, 1);
        }
    }
    return rc;
}

json_t *rows_experiment_json(const struct store_row *r)
{
    struct experiment *e = experiment_of_row(r);
    json_t *o;

    if (!e)
        return NULL;
    for (int s = 0; s < TASK_N_STATUS; s++) {
        e->counts[s] = i64(r, 8 + s);
        e->task_count += e->counts[s];
    }
    o = experiment_to_json(e);
    experiment_free(e);
    return o;
}

json_t *rows_board_sums(const struct store_row *r)
{
    return json_pack("{s:s?, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f}", "problem_id", text(r, 0),
                     "agent_config_index", (json_int_t)i64(r, 1), "attempts",
                     (json_int_t)i64(r, 2), "ended", (json_int_t)i64(r, 3), "solved",
                     (json_int_t)i64(r, 4), "reward_sum", f64(r, 5), "steps_sum", f64(r, 6),
                     "tokens_sum", f64(r, 7), "duration_sum", f64(r, 8));
}

int rows_take_running_ids(struct store_cursor *cur, void *ctx)
{
    json_t *ids = ctx;
    int rc;

    while ((rc = cur->next(cur)) == STORE_ROW) {
        const char *id = text(&cur->row, 0), *was = text(&cur->row, 1);
        if (id && was && !strcmp(was, "running") && json_array_append_new(ids, json_string(id)))
            return ERR_NOMEM;
    }
    return rc;
}

json_t *rows_json_column(const struct store_row *r)
{
    return rows_json(r, 0);
}

json_t *rows_llm_call(const struct store_row *r)
{
    json_t *first = is_null(r, 5) ? json_null() : json_real(r->ops->f64(r, 5));

    return json_pack("{s:o, s:o, s:I, s:o, s:f, s:o, s:I, s:b, s:b, s:o, s:o, s:o, s:o, s:o, "
                     "s:o, s:o, s:o}",
                     "id", rows_str(r, 0), "task_id", rows_str(r, 1), "attempt",
                     (json_int_t)i64(r, 2), "started_at", rows_time(r, 3), "latency_ms",
                     r->ops->f64(r, 4), "first_byte_ms", first, "status", (json_int_t)i64(r, 6),
                     "stream", (int)r->ops->boolean(r, 7), "cut", (int)r->ops->boolean(r, 8),
                     "upstream", rows_str(r, 9), "model", rows_str(r, 10), "finish_reason",
                     rows_str(r, 11), "prompt_tokens", int_or_null(r, 12), "completion_tokens",
                     int_or_null(r, 13), "error", rows_str(r, 14), "request",
                     rows_json_or_null(r, 15), "response", rows_json_or_null(r, 16));
}
