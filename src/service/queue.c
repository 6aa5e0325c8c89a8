/* queue: see queue.h. */
#include "service/queue.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "core/uuidgen.h"
#include "model/catalog.h"
#include "service/metrics.h"
#include "service/webhook.h"

#include <stdio.h>

/* The rules a parsed request must also meet: hosts WEBHOOK_ALLOWED_HOSTS allows, and,
 * with PROBLEM_VALIDATION=strict, a problem the catalog knows. A new errors array or
 * NULL when it meets them. */
static json_t *check_rules(const struct queue *q, const struct task *t)
{
    char msg[600];

    if (t->callback_url && !webhook_host_allowed(t->callback_url, q->webhook_allowed_hosts))
        return json_pack("[{s:s, s:s}]", "field", "callback_url", "message",
                         "names a host that WEBHOOK_ALLOWED_HOSTS does not allow");
    if (q->strict_problems && !catalog_contains(q->problems, t->problem_id)) {
        catalog_suggest(q->problems, t->problem_id, msg, sizeof(msg));
        return json_pack("[{s:s, s:s}]", "field", "problem_id", "message", msg);
    }
    return NULL;
}

int queue_submit(struct queue *q, json_t *body, const char *idempotency_key,
                 struct task **out, bool *created, json_t **errors)
{
    struct task *t = NULL, *existing = NULL;
    json_t *errs = NULL;
    int rc;

    rc = task_request_parse(body, idempotency_key, &q->defaults, &t, &errs);
    if (rc == ERR_INVALID) {
        *errors = errs;
        return rc;
    }
    if (rc < 0)
        return rc;
    errs = check_rules(q, t);
    if (errs) {
        task_free(t);
        *errors = errs;
        return ERR_INVALID;
    }
    uuidgen(t->id);
    t->created_at = t->updated_at = clock_now_us();
    rc = store_task_insert(q->store, t, &existing);
    if (rc < 0) {
        task_free(t);
        return rc;
    }
    if (existing) {
        task_free(t);
        *out = existing;
        *created = false;
        return 0;
    }
    metrics_task_created(q->metrics);
    if (q->wake_workers)
        q->wake_workers(q->workers);
    *out = t;
    *created = true;
    return 0;
}

int queue_cancel(struct queue *q, const char *task_id, int level, const char *reason,
                 struct task **out)
{
    struct task *t = NULL;
    int rc = store_task_cancel(q->store, task_id, clock_now_us(), &t);

    if (rc == 0) {
        if (reason) {
            struct log_entry e = {.ts = clock_now_us(), .level = level, .message = reason};
            if (store_logs_append(q->store, task_id, &e, 1) < 0)
                log_warn("task %s: could not log why it was cancelled", task_id);
        }
        /* If one of our workers runs it, stop the child now; other servers' workers
         * notice the cancelled state at their next lease check. */
        if (q->stop_run)
            q->stop_run(q->workers, task_id);
        metrics_task_finished(q->metrics, TASK_CANCELLED, -1, -1);
    }
    if (out)
        *out = t;
    else
        task_free(t);
    return rc;
}

int64_t queue_retry_at(const struct queue *q, const struct task *t,
                       enum task_error_class error_class, int64_t now)
{
    int attempt = t->attempt > 0 ? t->attempt : 1;

    if (error_class != TASK_CLASS_INFRASTRUCTURE || attempt > t->max_retries)
        return 0;
    /* RETRY_BASE_SECONDS x 2^(attempt-1); at least 1 us so 0 still means "final". */
    return now + (q->retry_base_us << (attempt - 1 < 20 ? attempt - 1 : 20)) + 1;
}

int queue_finish(struct queue *q, const struct task *t, struct task_end *end)
{
    struct task_end e;
    int rc;

    if (end->status == TASK_FAILED && end->error_class == TASK_CLASS_NONE)
        end->error_class = TASK_CLASS_AGENT;
    end->retry_at = end->status == TASK_FAILED
                        ? queue_retry_at(q, t, end->error_class, end->now) : 0;
    e = *end;
    rc = store_task_finish(q->store, t->id, t->lease_token, &e);
    if (rc < 0)
        return rc;
    if (e.retry_at) {
        log_warn("task %s: attempt %d failed (%s): %s; retrying in %.0f s", t->id,
                 t->attempt, task_error_class_name(e.error_class), e.error ? e.error : "",
                 (double)(e.retry_at - e.now) / 1e6);
        metrics_task_retried(q->metrics, e.error_class);
        if (q->wake_workers)
            q->wake_workers(q->workers);
        return 0;
    }
    metrics_task_finished(q->metrics, e.status,
                          t->started_at ? (double)(t->started_at - t->created_at) / 1e6 : -1,
                          t->started_at ? (double)(e.now - t->started_at) / 1e6 : -1);
    return 0;
}

int queue_claim(struct queue *q, struct claim_req *req, struct task **out)
{
    int rc;

    req->now = clock_now_us();
    rc = store_task_claim(q->store, req, out);
    metrics_claim(q->metrics, (double)(clock_now_us() - req->now) / 1e6);
    return rc;
}

int queue_reap(struct queue *q, int64_t heartbeat_timeout_us, struct reap_result *out)
{
    struct reap_result rr;
    int rc = store_reap(q->store, clock_now_us(), heartbeat_timeout_us, q->retry_base_us, &rr);

    if (rc < 0)
        return rc;
    for (int i = 0; i < rr.tasks_retried; i++)
        metrics_task_retried(q->metrics, TASK_CLASS_INFRASTRUCTURE);
    if (rr.workers_offline || rr.tasks_failed || rr.tasks_timed_out || rr.tasks_retried)
        log_warn("reaper: %d workers offline, %d tasks failed, %d retried, %d timed out",
                 rr.workers_offline, rr.tasks_failed, rr.tasks_retried, rr.tasks_timed_out);
    if (rr.tasks_retried && q->wake_workers)
        q->wake_workers(q->workers);
    if (out)
        *out = rr;
    return 0;
}
