/* api_health: /health and /ready in the seed shapes. */
#include "http/api.h"
#include "core/clock.h"
#include <stdlib.h>
#include <string.h>
#include "service/metrics.h"
#include "core/version.h"
#include "worker/worker.h"

int api_health(struct request *req)
{
    struct store *st = req->srv->store;
    int64_t t0 = clock_now_us(), w[3];
    bool db = store_ping(st) == 0;
    double latency = (double)(clock_now_us() - t0) / 1000.0;
    struct task_stats ts;
    json_t *o, *queue = json_object();
    char now[40];
    int wrc = db ? store_worker_counts(st, w) : -1;
    int trc = db ? store_task_stats(st, false, &ts) : -1;
    const char *status = !db ? "unhealthy" : (wrc == 0 && w[0] + w[1] == 0) ? "degraded"
                                                                            : "healthy";

    clock_format(clock_now_us(), now, sizeof(now));
    for (int i = 0; queue && trc == 0 && i < TASK_N_STATUS; i++)
        json_object_set_new(queue, task_status_name((enum task_status)i),
                            json_integer(ts.counts[i]));
    o = json_pack("{s:s, s:s, s:s, s:{s:b, s:f}, s:o, s:o}", "status", status, "version",
                  TASKEXEC_VERSION, "timestamp", now, "database", "connected", db,
                  "latency_ms", latency, "workers",
                  wrc == 0 ? json_pack("{s:I, s:I, s:I, s:I}", "total",
                                       (json_int_t)(w[0] + w[1] + w[2]), "idle",
                                       (json_int_t)w[0], "busy", (json_int_t)w[1], "offline",
                                       (json_int_t)w[2])
                           : json_pack("{s:s}", "error", "unavailable"),
                  "queue", queue ? queue : json_object());
    return api_reply(req, db ? 200 : 503, o);
}

int api_ready(struct request *req)
{
    struct store *st = req->srv->store;
    bool db = store_ping(st) == 0;
    json_t *status = worker_manager_status(req->srv->workers);
    bool workers = json_is_true(json_object_get(status, "running"));

    json_decref(status);
    return api_reply(req, db ? 200 : 503,
                     json_pack("{s:b, s:b, s:b}", "ready", db, "database", db, "workers",
                               workers));
}

int api_metrics(struct request *req)
{
    struct buf b;

    buf_init(&b, 64u << 20);
    if (metrics_render(req->srv->metrics, &b) < 0) {
        buf_reset(&b);
        return api_fail(req, 500, "the metrics could not be rendered");
    }
    return api_reply_text(req, 200, "text/plain; version=0.0.4; charset=utf-8", buf_steal(&b));
}

extern const char openapi_json[];
extern const char docs_html[];
extern const char dashboard_html[];

int api_openapi(struct request *req)
{
    char *copy = strdup(openapi_json);

    return copy ? api_reply_text(req, 200, "application/json", copy)
                : api_fail(req, 500, "out of memory");
}

int api_dashboard(struct request *req)
{
    char *copy = strdup(dashboard_html);

    return copy ? api_reply_text(req, 200, "text/html; charset=utf-8", copy)
                : api_fail(req, 500, "out of memory");
}

int api_docs(struct request *req)
{
    char *copy = strdup(docs_html);

    return copy ? api_reply_text(req, 200, "text/html; charset=utf-8", copy)
                : api_fail(req, 500, "out of memory");
}
