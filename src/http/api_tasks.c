/* api_tasks: the task routes (CONTRACT.md "Tasks"). */
#include "http/api.h"
#include "service/gateway.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/workpool.h"
#include "http/http.h"
#include "model/proto.h"
#include "service/queue.h"

#include <stdlib.h>
#include <string.h>

#define LOGS_INLINE_MAX 10000

/* Looks the {id} capture up; replies 422/404/503 itself when it cannot. */
static int load_task(struct request *req, const char *id, struct task **out)
{
    struct store *st = req->srv->store;
    int rc;

    if (!api_valid_uuid(id)) {
        api_invalid_field(req, "task_id", "must be a UUID");
        return ERR_INVALID;
    }
    rc = store_task_get(st, id, out);
    return api_lookup_error(req, rc, "task", id);
}

static int reply_task(struct request *req, int status, const struct task *t)
{
    json_t *o = task_to_json(t);

    if (!o)
        return api_reply_error(req, ERR_NOMEM, "the task");
    return api_reply(req, status, o);
}

/* A create parked while a thread of srv->submits waits for the store (see below). */
struct create_job {
    struct request *req;
    json_t *body;      /* owned */
    char *key;         /* the Idempotency-Key, copied (the connection is parked); owned */
};

static void create_answer(struct request *req, json_t *body, const char *key)
{
    struct task *t = NULL;
    bool created = false;

    if (api_submit_body(req, body, key, &t, &created) < 0)
        return;
    reply_task(req, created ? 201 : 200, t);
    task_free(t);
}

static void create_run(void *arg)
{
    struct create_job *j = arg;

    create_answer(j->req, j->body, j->key);
    json_decref(j->body);
    free(j->key);
    http_request_resume(j->req);
    free(j);
}

/* With a store that writes concurrent inserts together (PostgreSQL), the request is
 * parked and its insert waits on a thread of srv->submits, so the HTTP threads go on
 * reading other requests, whose inserts then share the statement and commit: at 32
 * connections 8 HTTP threads held at most 8 inserts at once (#17). A lone create is
 * parked too. Written by its HTTP thread whenever none was being written there (tried),
 * creates held that thread and the connections it serves, 10-20 % of the rate at 32
 * connections; and a lone create's answer took as long parked as not (p50 1.03-1.05 ms
 * in alternated runs: the commit's flush is most of it). */
int api_task_create(struct request *req)
{
    struct workpool *pool = req->srv->submits;
    const char *key = api_header(req, "Idempotency-Key");
    struct create_job *j;
    json_t *body = NULL;

    if (api_create_body(req, NULL, &body) < 0)
        return 0;
    if (!pool || !(j = calloc(1, sizeof(*j))) || (key && !(j->key = strdup(key)))) {
        if (pool)
            free(j);
        create_answer(req, body, key);
        json_decref(body);
        return 0;
    }
    j->req = req;
    j->body = body;
    http_request_defer(req);
    if (workpool_run(pool, create_run, j) < 0)
        create_run(j); /* no thread for it: answered here, resumed at once */
    return 0;
}

/* limit/offset, or the original's page/page_size; fills f and says which was used. */
static int paging(struct request *req, long long def_limit, long long max_limit,
                  int64_t *limit, int64_t *offset, bool *paged, long long *page)
{
    long long l, o, ps;

    if (api_query_int(req, "limit", 1, max_limit, def_limit, &l) < 0 ||
        api_query_int(req, "offset", 0, INT64_MAX / 2, 0, &o) < 0 ||
        api_query_int(req, "page", 1, 100000000, 1, page) < 0 ||
        api_query_int(req, "page_size", 1, max_limit, def_limit, &ps) < 0)
        return ERR_INVALID;
    *paged = api_query(req, "page") || api_query(req, "page_size");
    if (*paged) {
        *limit = ps;
        *offset = (*page - 1) * ps;
    } else {
        *limit = l;
        *offset = o;
    }
    return 0;
}

int api_task_list(struct request *req)
{
    return api_task_list_of(req, api_query(req, "experiment_id"));
}

int api_task_list_of(struct request *req, const char *experiment_id)
{
    struct store *st = req->srv->store;
    struct task_filter f = {.status = -1, .experiment_id = experiment_id};
    struct task_page page = {0};
    const char *status = api_query(req, "status"), *sort = api_query(req, "sort");
    const char *since = api_query(req, "since"), *until = api_query(req, "until");
    json_t *arr, *o;
    long long pg;
    bool paged;
    int rc;

    if (status) {
        f.status = task_status_parse(status);
        if (f.status < 0)
            return api_invalid_field(req, "status", "must be one of pending, running, "
                                                    "completed, failed, timeout, cancelled");
    }
    if (sort && strcmp(sort, "created_at") && strcmp(sort, "-created_at"))
        return api_invalid_field(req, "sort", "must be created_at or -created_at");
    f.oldest_first = sort && !strcmp(sort, "created_at");
    if (experiment_id && !api_valid_uuid(experiment_id))
        return api_invalid_field(req, "experiment_id", "must be a UUID");
    if ((since && clock_parse(since, &f.since) < 0) || (until && clock_parse(until, &f.until) < 0))
        return api_invalid_field(req, since ? "since" : "until", "must be an RFC 3339 time");
    f.problem_id = api_query(req, "problem_id");
    f.worker_id = api_query(req, "worker_id");
    if (paging(req, 100, 1000, &f.limit, &f.offset, &paged, &pg) < 0)
        return 0;
    rc = store_task_list(st, &f, &page);
    if (rc < 0)
        return api_reply_error(req, rc, "the task list");
    arr = json_array();
    for (size_t i = 0; arr && i < page.n; i++)
        json_array_append_new(arr, task_to_json(page.items[i]));
    o = json_pack("{s:o, s:I, s:I, s:I}", "tasks", arr ? arr : json_array(), "total",
                  (json_int_t)page.total, "limit", (json_int_t)f.limit, "offset",
                  (json_int_t)f.offset);
    if (o && paged) {
        json_object_set_new(o, "page", json_integer(pg));
        json_object_set_new(o, "page_size", json_integer(f.limit));
    }
    store_task_page_reset(&page);
    return api_reply(req, 200, o);
}

int api_task_stats(struct request *req)
{
    struct store *st = req->srv->store;
    struct task_stats s;
    json_t *o;
    bool averages;
    int rc;

    /* The averages read every started task; the counts are kept by triggers. */
    if (api_query_bool(req, "include_averages", true, &averages) < 0)
        return 0;
    rc = store_task_stats(st, averages, &s);
    if (rc < 0)
        return api_reply_error(req, rc, "the statistics");
    o = json_object();
    for (int i = 0; o && i < TASK_N_STATUS; i++)
        json_object_set_new(o, task_status_name((enum task_status)i), json_integer(s.counts[i]));
    json_object_set_new(o, "total", json_integer(s.total));
    json_object_set_new(o, "avg_queue_wait_seconds",
                        s.avg_wait_seconds < 0 ? json_null() : json_real(s.avg_wait_seconds));
    json_object_set_new(o, "avg_run_seconds",
                        s.avg_run_seconds < 0 ? json_null() : json_real(s.avg_run_seconds));
    return api_reply(req, 200, o);
}

int api_task_timeseries(struct request *req)
{
    struct store *st = req->srv->store;
    long long minutes, bucket;
    int64_t since;
    json_t *buckets = NULL;
    int rc;

    if (api_query_int(req, "minutes", 1, 7 * 24 * 60, 60, &minutes) < 0 ||
        api_query_int(req, "bucket_seconds", 1, 86400, 60, &bucket) < 0)
        return 0;
    since = clock_now_us() - (int64_t)minutes * 60 * 1000000;
    rc = store_task_timeseries(st, since, (int64_t)bucket * 1000000, &buckets);
    if (rc < 0)
        return api_reply_error(req, rc, "the time series");
    return api_reply(req, 200, json_pack("{s:I, s:I, s:o}", "minutes", (json_int_t)minutes,
                                         "bucket_seconds", (json_int_t)bucket, "buckets",
                                         buckets));
}

int api_task_get(struct request *req)
{
    struct store *st = req->srv->store;
    struct task *t = NULL;
    json_t *o, *logs = NULL;
    int64_t total;
    bool with_logs;

    if (api_query_bool(req, "include_logs", false, &with_logs) < 0)
        return 0;
    if (load_task(req, req->params[0], &t) < 0)
        return 0;
    o = task_to_json(t);
    task_free(t);
    if (o && with_logs) {
        int rc = store_logs_list(st, req->params[0], LEVEL_DEBUG, LOGS_INLINE_MAX, 0, &logs,
                                    &total);
        if (rc < 0) {
            json_decref(o);
            return api_reply_error(req, rc, "the task's logs");
        }
        json_object_set_new(o, "logs", logs);
    }
    return o ? api_reply(req, 200, o) : api_reply_error(req, ERR_NOMEM, "the task");
}

int api_task_cancel(struct request *req)
{
    struct task *t = NULL;
    const char *id = req->params[0];
    int rc;

    if (!api_valid_uuid(id))
        return api_invalid_field(req, "task_id", "must be a UUID");
    rc = queue_cancel(&req->srv->queue, id, 0, NULL, &t);
    if (rc == ERR_CONFLICT) {
        api_fail(req, 409, "task %s is already %s and cannot be cancelled", id,
                 task_status_name(t->status));
    } else if (rc == ERR_NOTFOUND) {
        api_fail(req, 404, "task %s not found", id);
    } else if (rc < 0) {
        api_reply_error(req, rc, "the task");
    } else {
        api_reply(req, 200, json_pack("{s:s, s:s, s:s}", "message", "Task cancelled successfully",
                                      "task_id", id, "status", "cancelled"));
    }
    task_free(t);
    return 0;
}

int api_task_logs(struct request *req)
{
    struct store *st = req->srv->store;
    const char *level = api_query(req, "level");
    struct task *t = NULL;
    json_t *logs = NULL;
    long long limit, offset;
    int64_t total = 0;
    int min = LEVEL_DEBUG, rc;

    if (level && (min = proto_level_parse(level)) < 0)
        return api_invalid_field(req, "level",
                                 "must be one of debug, info, warning, error, critical");
    if (api_query_int(req, "limit", 1, 100000, 1000, &limit) < 0 ||
        api_query_int(req, "offset", 0, INT64_MAX / 2, 0, &offset) < 0)
        return 0;
    if (load_task(req, req->params[0], &t) < 0)
        return 0;
    task_free(t);
    rc = store_logs_list(st, req->params[0], min, limit, offset, &logs, &total);
    if (rc < 0)
        return api_reply_error(req, rc, "the task's logs");
    return api_reply(req, 200, json_pack("{s:s, s:o, s:I}", "task_id", req->params[0], "logs",
                                         logs, "total", (json_int_t)total));
}

int api_task_conversations(struct request *req)
{
    struct store *st = req->srv->store;
    struct task *t = NULL;
    json_t *convs = NULL;
    int rc;

    if (load_task(req, req->params[0], &t) < 0)
        return 0;
    task_free(t);
    rc = store_task_conversations(st, req->params[0], &convs);
    if (rc < 0)
        return api_reply_error(req, rc, "the conversations");
    return api_reply(req, 200, json_pack("{s:s, s:o}", "task_id", req->params[0],
                                         "conversations", convs));
}

int api_task_llm_calls(struct request *req)
{
    struct task *t = NULL;
    json_t *calls = NULL;
    bool tokens;
    int rc;

    if (load_task(req, req->params[0], &t) < 0)
        return 0;
    task_free(t);
    if (api_query_bool(req, "tokens", false, &tokens) < 0)
        return 0;
    rc = gateway_task_calls(req->srv->store, req->params[0], tokens, &calls);
    if (rc < 0)
        return api_reply_error(req, rc, "the LLM calls");
    return api_reply(req, 200, json_pack("{s:s, s:I, s:o}", "task_id", req->params[0], "total",
                                         (json_int_t)json_array_size(calls), "calls", calls));
}

int api_problems(struct request *req)
{
    json_t *list = req->srv->problems;

    return api_reply(req, 200, json_pack("{s:s, s:O, s:I}", "executor", req->srv->cfg.executor,
                                         "problems", list, "total",
                                         (json_int_t)json_array_size(list)));
}
