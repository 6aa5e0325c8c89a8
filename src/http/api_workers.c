/* api_workers: worker views and the internal worker controls. */
#include "http/api.h"
#include "core/err.h"
#include "worker/worker.h"

#include <string.h>

int api_worker_list(struct request *req)
{
    struct store *st = req->srv->store;
    const char *status = api_query(req, "status");
    json_t *list = NULL;
    int rc;

    if (status && strcmp(status, WORKER_IDLE) && strcmp(status, WORKER_BUSY) &&
        strcmp(status, WORKER_OFFLINE))
        return api_invalid_field(req, "status", "must be idle, busy or offline");
    rc = store_worker_list(st, status, api_query(req, "backend_type"), &list);
    if (rc < 0)
        return api_reply_error(req, rc, "the worker list");
    return api_reply(req, 200, json_pack("{s:o, s:I}", "workers", list, "total",
                                         (json_int_t)json_array_size(list)));
}

static int load(struct request *req, json_t **out)
{
    struct store *st = req->srv->store;
    int rc = store_worker_get(st, req->params[0], out);

    return api_lookup_error(req, rc, "worker", req->params[0]);
}

int api_worker_get(struct request *req)
{
    json_t *w = NULL;

    return load(req, &w) < 0 ? 0 : api_reply(req, 200, w);
}

int api_worker_stats(struct request *req)
{
    json_t *w = NULL, *o;
    json_int_t done, failed;

    if (load(req, &w) < 0)
        return 0;
    done = json_integer_value(json_object_get(w, "tasks_completed"));
    failed = json_integer_value(json_object_get(w, "tasks_failed"));
    o = json_pack("{s:O, s:O, s:O, s:I, s:I, s:I, s:o, s:O, s:O}", "worker_id",
                  json_object_get(w, "id"), "status", json_object_get(w, "status"),
                  "backend_type", json_object_get(w, "backend_type"), "tasks_completed", done,
                  "tasks_failed", failed, "tasks_total", done + failed, "success_rate",
                  done + failed ? json_real((double)done / (double)(done + failed)) : json_null(),
                  "current_task_id", json_object_get(w, "current_task_id"), "last_heartbeat",
                  json_object_get(w, "last_heartbeat"));
    json_decref(w);
    return api_reply(req, 200, o);
}

int api_internal_status(struct request *req)
{
    return api_reply(req, 200, worker_manager_status(req->srv->workers));
}

int api_internal_scale(struct request *req)
{
    int max = req->srv->cfg.max_internal_workers, prev, rc;
    long long n = -1;
    json_t *body = NULL, *v;
    char msg[96];

    snprintf(msg, sizeof(msg), "must be an integer from 0 to %d (MAX_INTERNAL_WORKERS)", max);
    if (api_query(req, "num_workers")) {
        if (api_query_int(req, "num_workers", 0, max, 0, &n) < 0)
            return 0;
    } else {
        if (api_body_json(req, &body) < 0)
            return 0;
        v = json_object_get(body, "num_workers");
        if (!v) {
            json_decref(body);
            return api_invalid_field(req, "num_workers", "is required (query or JSON body)");
        }
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > max) {
            json_decref(body);
            return api_invalid_field(req, "num_workers", msg);
        }
        n = json_integer_value(v);
        json_decref(body);
    }
    rc = worker_manager_scale(req->srv->workers, (int)n, &prev);
    if (rc < 0)
        return api_reply_error(req, rc, "scaling");
    return api_reply(req, 200, json_pack("{s:s, s:i, s:i}", "message",
                                         "Workers scaled successfully", "previous_count", prev,
                                         "new_count", (int)n));
}

int api_internal_stop(struct request *req)
{
    int stopped;

    worker_manager_stop(req->srv->workers, &stopped);
    return api_reply(req, 200, json_pack("{s:s, s:i}", "message", "Workers stopped",
                                         "stopped_count", stopped));
}

int api_internal_start(struct request *req)
{
    int count, rc = worker_manager_start(req->srv->workers, &count);

    if (rc < 0)
        return api_reply_error(req, rc, "starting workers");
    return api_reply(req, 200, json_pack("{s:s, s:i}", "message", "Workers started",
                                         "worker_count", count));
}
