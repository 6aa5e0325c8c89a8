/* session: see session.h. */
#include "service/session.h"
#include "http/api.h"
#include "core/clock.h"
#include "core/err.h"
#include "http/http.h"
#include "core/log.h"
#include "model/proto.h"
#include "http/server.h"
#include "store/store.h"
#include "model/task.h"
#include "worker/worker.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POLL_MS 200           /* every wait is re-checked this often, notification or not */
#define IDLE_CHECK_MS 5000
#define MAX_ACTION_BYTES 65536
#define IDLE_BATCH 64

/* A parked step request. Owned by the hub's list until answered. */
struct wait {
    struct wait *next;
    struct request *req;          /* parked; resumed exactly once, by whoever unlinks us */
    char task_id[TASK_ID_LEN + 1];
    int step;
    int64_t deadline_ms;
    bool check;                   /* an answer may be there: look now */
};

/* A session hosted by a runner of this process. */
struct host {
    struct host *next;
    char task_id[TASK_ID_LEN + 1];
    int wake_fd;
    int step;                     /* a step taken through this server, handed over directly */
    char *action;                 /* owned; NULL when none */
};

struct session_hub {
    struct server *srv;
    pthread_mutex_t lock;         /* guards everything below */
    pthread_cond_t wake;
    pthread_t thread;
    bool stop, closing, kick;
    struct wait *waits;
    struct host *hosts;
    int64_t last_idle_check;
};

/* ---- the JSON a session is shown as ---- */

static const char *session_status(const struct task *t, json_t *row)
{
    const char *state = json_string_value(json_object_get(row, "state"));

    switch (t->status) {
    case TASK_PENDING:
        return "starting";
    case TASK_RUNNING:
        return !state ? "starting" : !strcmp(state, "ready") ? "ready" : "done";
    case TASK_COMPLETED:
        return "done";
    default:
        return task_status_name(t->status);
    }
}

static json_t *session_json(const struct task *t, json_t *row)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:i, s:O?}", "id", t->id, "task_id", t->id,
                          "problem_id", t->problem_id, "status", session_status(t, row),
                          "max_steps", t->max_steps, "metadata", t->metadata);
    json_t *none = json_null();
    const char *keys[] = {"task_description", "instructions", "actions", "observation",
                          "reward", "results"};

    if (!o)
        return NULL;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        json_t *v = row ? json_object_get(row, keys[i]) : NULL;
        json_object_set(o, keys[i], v ? v : none);
    }
    json_decref(none);
    json_object_set_new(o, "step", json_integer(row ? json_integer_value(json_object_get(row, "answered")) : 0));
    json_object_set_new(o, "step_in_flight",
                        json_boolean(row && json_integer_value(json_object_get(row, "step")) >
                                                json_integer_value(json_object_get(row, "answered"))));
    json_object_set_new(o, "done", json_boolean(task_status_terminal(t->status) ||
                                                (row && json_is_true(json_object_get(row, "done")))));
    json_object_set_new(o, "error", t->error ? json_string(t->error) : json_null());
    json_object_set_new(o, "task", task_to_json(t));
    return o;
}

static json_t *session_json_new(const struct task *t)
{
    return session_json(t, NULL);
}

/* The answer to step `step` from the row, or NULL when it is not there yet. */
static json_t *answer_of(json_t *row, int step)
{
    if (!row || json_integer_value(json_object_get(row, "answered")) < step)
        return NULL;
    return json_pack("{s:i, s:O, s:O, s:O, s:O}", "step", step, "observation",
                     json_object_get(row, "observation"), "done", json_object_get(row, "done"),
                     "reward", json_object_get(row, "reward"), "results",
                     json_object_get(row, "results"));
}

static void finish(struct session_hub *h, struct wait *w, int status, json_t *body);

/* ---- notifications ---- */

static void wake_host(struct session_hub *h, const char *task_id)
{
    uint64_t one = 1;

    for (struct host *x = h->hosts; x; x = x->next)
        if (!strcmp(x->task_id, task_id) && write(x->wake_fd, &one, sizeof(one)) < 0) {
            /* an eventfd only fails when its counter is full: it is awake anyway */
        }
}

static void mark_waits(struct session_hub *h, const char *task_id)
{
    for (struct wait *w = h->waits; w; w = w->next)
        if (!task_id || !strcmp(w->task_id, task_id))
            w->check = true;
    h->kick = true;
    pthread_cond_signal(&h->wake);
}

void session_hub_on_notify(void *hub, const char *payload)
{
    struct session_hub *h = hub;

    pthread_mutex_lock(&h->lock);
    if (!payload) {
        for (struct host *x = h->hosts; x; x = x->next)
            wake_host(h, x->task_id);
        mark_waits(h, NULL);
    } else if (strlen(payload) > 2 && payload[1] == ':') {
        if (payload[0] == 'a')
            wake_host(h, payload + 2);
        else
            mark_waits(h, payload + 2);
    }
    pthread_mutex_unlock(&h->lock);
}

void session_hub_attach(struct session_hub *h, const char *task_id, int wake_fd)
{
    struct host *x = calloc(1, sizeof(*x));

    if (!x)
        return; /* the runner still polls */
    snprintf(x->task_id, sizeof(x->task_id), "%s", task_id);
    x->wake_fd = wake_fd;
    pthread_mutex_lock(&h->lock);
    x->next = h->hosts;
    h->hosts = x;
    pthread_mutex_unlock(&h->lock);
}

void session_hub_detach(struct session_hub *h, const char *task_id)
{
    pthread_mutex_lock(&h->lock);
    for (struct host **p = &h->hosts; *p; p = &(*p)->next) {
        if (!strcmp((*p)->task_id, task_id)) {
            struct host *x = *p;
            *p = x->next;
            free(x->action);
            free(x);
            break;
        }
    }
    pthread_mutex_unlock(&h->lock);
}

void session_hub_answered(struct session_hub *h, const char *task_id, int step, json_t *answer)
{
    pthread_mutex_lock(&h->lock);
    if (answer) {
        /* The answer is at hand: reply to this server's waits for it without reading it back. */
        for (struct wait *w = h->waits, *next; w; w = next) {
            next = w->next;
            if (w->step == step && !strcmp(w->task_id, task_id))
                finish(h, w, 200, json_pack("{s:i, s:O?, s:O?, s:O?, s:O?}", "step", step,
                                            "observation", json_object_get(answer, "observation"),
                                            "done", json_object_get(answer, "done"), "reward",
                                            json_object_get(answer, "reward"), "results",
                                            json_object_get(answer, "results")));
        }
    }
    mark_waits(h, task_id);
    pthread_mutex_unlock(&h->lock);
}

/* A step was taken: hand it to its host if it is here, so the host need not read it back
 * (another server's host hears of it from the store's notification, sent with the step's
 * commit). */
static void wake_local_host(struct session_hub *h, const char *task_id, int step,
                            const char *action)
{
    pthread_mutex_lock(&h->lock);
    for (struct host *x = h->hosts; x; x = x->next) {
        if (!strcmp(x->task_id, task_id) && step > x->step) {
            char *copy = strdup(action);
            if (copy) {
                free(x->action);
                x->action = copy;
                x->step = step;
            }
        }
    }
    wake_host(h, task_id);
    pthread_mutex_unlock(&h->lock);
}

bool session_hub_take_action(struct session_hub *h, const char *task_id, int after, int *step,
                             char **action)
{
    bool found = false;

    pthread_mutex_lock(&h->lock);
    for (struct host *x = h->hosts; x && !found; x = x->next) {
        if (!strcmp(x->task_id, task_id) && x->action && x->step > after) {
            *step = x->step;
            *action = x->action;  /* ownership moves to the caller */
            x->action = NULL;
            found = true;
        }
    }
    pthread_mutex_unlock(&h->lock);
    return found;
}

/* ---- the hub's thread: answers parked steps ---- */

/* Unlinks w (hub lock held) and answers it. */
static void finish(struct session_hub *h, struct wait *w, int status, json_t *body)
{
    for (struct wait **p = &h->waits; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            break;
        }
    }
    api_reply(w->req, status, body);
    http_request_resume(w->req);
    free(w);
}

/* Looks at one wait: answered, ended, expired, or still waiting. Hub lock held. */
static void check_wait(struct session_hub *h, struct wait *w, int64_t now)
{
    struct store *st = h->srv->store;
    json_t *row = NULL, *ans;
    struct task *t = NULL;

    if (store_session_get(st, w->task_id, &row) == 0 && (ans = answer_of(row, w->step))) {
        json_decref(row);
        finish(h, w, 200, ans);
        return;
    }
    json_decref(row);
    if (store_task_get(st, w->task_id, &t) == 0 && task_status_terminal(t->status)) {
        char msg[700];
        snprintf(msg, sizeof(msg), "the session ended (%s%s%s) before answering step %d",
                 task_status_name(t->status), t->error ? ": " : "", t->error ? t->error : "",
                 w->step);
        finish(h, w, 409, json_pack("{s:s, s:s, s:i}", "detail", msg, "type", "conflict", "step",
                                    w->step));
        task_free(t);
        return;
    }
    task_free(t);
    if (now >= w->deadline_ms)
        finish(h, w, 202, json_pack("{s:i, s:s, s:s}", "step", w->step, "status", "working",
                                    "detail", "the environment is still working on this step; "
                                              "GET the session for its answer"));
}

static void close_idle(struct session_hub *h)
{
    struct server *srv = h->srv;
    struct store *st = srv->store;
    char ids[IDLE_BATCH][37];
    size_t n = 0;
    int64_t idle_us = (int64_t)srv->cfg.session_idle_minutes * 60 * 1000000;

    if (store_session_idle(st, clock_now_us() - idle_us, ids, IDLE_BATCH, &n) < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        struct task *t = NULL;
        struct log_entry e = {.ts = clock_now_us(), .level = LEVEL_WARNING};
        char msg[200];

        snprintf(msg, sizeof(msg), "session closed: no step for %d minutes (SESSION_IDLE_MINUTES)",
                 srv->cfg.session_idle_minutes);
        e.message = msg;
        if (store_task_cancel(st, ids[i], clock_now_us(), &t) == 0) {
            if (store_logs_append(st, ids[i], &e, 1) < 0)
                log_warn("sessions: could not log the idle close of %s", ids[i]);
            worker_manager_cancel(srv->workers, ids[i]);
            log_info("session %s closed: idle", ids[i]);
        }
        task_free(t);
    }
}

static void *hub_main(void *arg)
{
    struct session_hub *h = arg;

    pthread_mutex_lock(&h->lock);
    while (!h->stop) {
        struct timespec until;
        int64_t now = clock_mono_ms();
        bool poll_all = !h->kick;

        h->kick = false;
        for (struct wait *w = h->waits, *next; w; w = next) {
            next = w->next;
            if (w->check || poll_all || now >= w->deadline_ms) {
                w->check = false;
                check_wait(h, w, now);
            }
        }
        if (now - h->last_idle_check >= IDLE_CHECK_MS) {
            h->last_idle_check = now;
            pthread_mutex_unlock(&h->lock);
            close_idle(h);
            pthread_mutex_lock(&h->lock);
        }
        if (h->kick)
            continue;
        clock_deadline(&until, POLL_MS);
        pthread_cond_timedwait(&h->wake, &h->lock, &until);
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

int session_hub_start(struct server *srv, struct session_hub **out)
{
    struct session_hub *h = calloc(1, sizeof(*h));

    if (!h)
        return ERR_NOMEM;
    h->srv = srv;
    h->last_idle_check = clock_mono_ms();
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->wake, NULL);
    if (pthread_create(&h->thread, NULL, hub_main, h) != 0) {
        pthread_mutex_destroy(&h->lock);
        pthread_cond_destroy(&h->wake);
        free(h);
        return ERR_IO;
    }
    *out = h;
    return 0;
}

void session_hub_close_waits(struct session_hub *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    h->closing = true;
    while (h->waits)
        finish(h, h->waits, 503, json_pack("{s:s, s:s}", "detail", "the server is shutting down; "
                                           "GET the session for the step's answer", "type",
                                           "unavailable"));
    pthread_mutex_unlock(&h->lock);
}

void session_hub_stop(struct session_hub *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    h->stop = true;
    pthread_cond_signal(&h->wake);
    pthread_mutex_unlock(&h->lock);
    pthread_join(h->thread, NULL);
    while (h->hosts) {
        struct host *x = h->hosts;
        h->hosts = x->next;
        free(x->action);
        free(x);
    }
    pthread_mutex_destroy(&h->lock);
    pthread_cond_destroy(&h->wake);
    free(h);
}

/* ---- the API ---- */

/* Loads the session's task; replies 404 (and returns < 0) for an unknown id or a task
 * that is not a session. */
static int load_session(struct request *req, struct task **out)
{
    const char *id = req->params[0];
    struct store *st = req->srv->store;
    int rc;

    if (!api_valid_uuid(id)) {
        api_fail(req, 404, "Session %s not found", id);
        return ERR_NOTFOUND;
    }
    rc = store_task_get(st, id, out);
    if (rc == 0 && strcmp((*out)->mode, "interactive")) {
        task_free(*out);
        *out = NULL;
        rc = ERR_NOTFOUND;
    }
    if (rc == ERR_NOTFOUND)
        api_fail(req, 404, "Session %s not found", id);
    else if (rc < 0)
        api_reply_error(req, rc, "the session");
    return rc;
}

int api_session_create(struct request *req)
{
    json_t *body = NULL;

    if (api_body_json(req, &body) < 0)
        return 0;
    if (!body) {
        api_invalid_field(req, "body", "is required: a JSON object with problem_id");
        return 0;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        return api_invalid_field(req, "body", "must be a JSON object");
    }
    json_object_set_new(body, "mode", json_string("interactive"));
    return api_task_create_from(req, body, session_json_new);
}

int api_session_get(struct request *req)
{
    struct store *st = req->srv->store;
    struct task *t = NULL;
    json_t *row = NULL;
    int rc;

    if (load_session(req, &t) < 0)
        return 0;
    rc = store_session_get(st, t->id, &row);
    if (rc < 0 && rc != ERR_NOTFOUND)
        api_reply_error(req, rc, "the session");
    else
        api_reply(req, 200, session_json(t, row));
    json_decref(row);
    task_free(t);
    return 0;
}

/* Why a step is refused, in words, from the session as it is now. */
static void refuse_step(struct request *req, const struct task *t, json_t *row)
{
    const char *status = session_status(t, row);

    if (!strcmp(status, "starting"))
        api_fail(req, 409, "Session %s is not ready yet (status starting): wait until GET shows "
                           "status ready", t->id);
    else if (row && !strcmp(status, "ready") &&
             json_integer_value(json_object_get(row, "step")) >
                 json_integer_value(json_object_get(row, "answered")))
        api_fail(req, 409, "Session %s already has step %lld in flight: steps are strictly "
                           "ordered", t->id,
                 (long long)json_integer_value(json_object_get(row, "step")));
    else if (row && !strcmp(status, "ready") &&
             json_integer_value(json_object_get(row, "step")) >= t->max_steps)
        api_fail(req, 409, "Session %s has used its %d steps", t->id, t->max_steps);
    else if (row && !strcmp(status, "ready"))
        api_fail(req, 409, "Session %s had a step in flight when this one came (answered "
                           "since): steps are strictly ordered; send it again", t->id);
    else
        api_fail(req, 409, "Session %s is %s: no more steps", t->id, status);
}

int api_session_step(struct request *req)
{
    struct server *srv = req->srv;
    struct session_hub *h = srv->sessions;
    struct store *st = srv->store;
    struct task *t = NULL;
    json_t *body = NULL, *row = NULL;
    const char *action;
    char id[TASK_ID_LEN + 1];
    long long wait_s = 60;
    int step = 0, rc;
    struct wait *w;

    if (api_body_json(req, &body) < 0)
        return 0;
    if (!json_is_object(body)) {
        json_decref(body);
        return api_invalid_field(req, "body", "is required: {\"action\": \"...\"}");
    }
    action = json_string_value(json_object_get(body, "action"));
    if (!action || !*action || strlen(action) > MAX_ACTION_BYTES) {
        json_decref(body);
        return api_invalid_field(req, "action", "must be a non-empty string of at most 65536 "
                                                "bytes, e.g. exec_shell(\"kubectl get pods\")");
    }
    if (json_object_get(body, "wait_seconds")) {
        json_t *v = json_object_get(body, "wait_seconds");
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 300) {
            json_decref(body);
            return api_invalid_field(req, "wait_seconds", "must be an integer from 0 to 300");
        }
        wait_s = json_integer_value(v);
    }
    if (!api_valid_uuid(req->params[0])) {
        json_decref(body);
        return api_fail(req, 404, "Session %s not found", req->params[0]);
    }
    /* The happy path is one statement: it takes the step only for a running session that
     * is ready with nothing in flight; anything else is looked at only when refused. */
    rc = store_session_step(st, req->params[0], action, clock_now_us(), &step);
    if (rc == ERR_CONFLICT || rc == ERR_NOTFOUND) {
        if (load_session(req, &t) == 0) {
            if (store_session_get(st, t->id, &row) < 0)
                row = NULL;
            refuse_step(req, t, row);
            json_decref(row);
            task_free(t);
        }
        goto out;
    }
    if (rc < 0) {
        api_reply_error(req, rc, "the step");
        goto out;
    }
    snprintf(id, sizeof(id), "%s", req->params[0]);
    w = wait_s > 0 ? calloc(1, sizeof(*w)) : NULL;
    if (!w) {
        /* wait_seconds 0 (or no memory to wait): the step is taken, answered later */
        wake_local_host(h, id, step, action);
        api_reply(req, 202, json_pack("{s:i, s:s}", "step", step, "status", "working"));
        goto out;
    }
    snprintf(w->task_id, sizeof(w->task_id), "%s", id);
    w->req = req;
    w->step = step;
    w->deadline_ms = clock_mono_ms() + wait_s * 1000;
    /* Parked before its host is woken, so no answer can come before anyone waits for it. */
    pthread_mutex_lock(&h->lock);
    if (h->closing) {
        pthread_mutex_unlock(&h->lock);
        free(w);
        wake_local_host(h, id, step, action);
        api_reply(req, 202, json_pack("{s:i, s:s}", "step", step, "status", "working"));
        goto out;
    }
    w->next = h->waits;
    h->waits = w;
    http_request_defer(req); /* under the lock: finish() cannot resume it before this */
    pthread_mutex_unlock(&h->lock);
    /* From here req and w belong to the hub: only locals (id, step, body) are used. */
    wake_local_host(h, id, step, action);
out:
    json_decref(body); /* action pointed into it */
    return 0;
}

int api_session_close(struct request *req)
{
    struct server *srv = req->srv;
    struct store *st = srv->store;
    struct task *t = NULL, *after = NULL;
    int rc;

    if (load_session(req, &t) < 0)
        return 0;
    if (!task_status_terminal(t->status)) {
        rc = store_task_cancel(st, t->id, clock_now_us(), &after);
        if (rc == 0) {
            struct log_entry e = {.ts = clock_now_us(), .level = LEVEL_INFO,
                                  .message = "session closed by the client"};
            if (store_logs_append(st, t->id, &e, 1) < 0)
                log_warn("sessions: could not log the close of %s", t->id);
            /* The host stops the child and cleans up; another server's host sees the
             * cancelled state at its next lease check. */
            worker_manager_cancel(srv->workers, t->id);
        } else if (rc != ERR_CONFLICT) {
            task_free(t);
            return api_reply_error(req, rc, "the session");
        }
        task_free(after);
        after = NULL;
        task_free(t);
        t = NULL;
        if (store_task_get(st, req->params[0], &t) < 0) {
            return api_reply_error(req, ERR_STORE, "the session");
        }
    }
    api_reply(req, 200, json_pack("{s:s, s:s, s:s}", "message", "Session closed", "id", t->id,
                                  "status", session_status(t, NULL)));
    task_free(t);
    return 0;
}
