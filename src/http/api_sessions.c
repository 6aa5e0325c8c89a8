/* api_sessions: the session routes (CONTRACT.md "Sessions"): how a session is shown, why
 * a step is refused, and a parked step request behind the hub's waiter callbacks. The
 * rules live in the hub (service/session.c) and the queue (service/queue.c). */
#include "http/api.h"
#include "core/err.h"
#include "http/http.h"
#include "service/session.h"
#include "store/store.h"

#include <stdlib.h>
#include <string.h>

#define MAX_ACTION_BYTES 65536

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
    if (rc == 0 && task_mode_of(*out) != TASK_INTERACTIVE) {
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
    struct task *t = NULL;
    bool created = false;

    if (api_submit(req, task_mode_name(TASK_INTERACTIVE), &t, &created) < 0)
        return 0;
    api_reply(req, created ? 201 : 200, session_json(t, NULL));
    task_free(t);
    return 0;
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

/* The hub's waiter callbacks for a parked step request. */
static void step_park(void *ctx)
{
    http_request_defer(ctx);
}

static void step_answer(void *ctx, enum session_outcome how, int step, json_t *answer,
                        const struct task *ended)
{
    struct request *req = ctx;
    char msg[700];

    switch (how) {
    case SESSION_ANSWERED:
        api_reply(req, 200, json_incref(answer));
        break;
    case SESSION_ENDED:
        snprintf(msg, sizeof(msg), "the session ended (%s%s%s) before answering step %d",
                 task_status_name(ended->status), ended->error ? ": " : "",
                 ended->error ? ended->error : "", step);
        api_reply(req, 409, json_pack("{s:s, s:s, s:i}", "detail", msg, "type", "conflict",
                                      "step", step));
        break;
    case SESSION_WORKING:
        api_reply(req, 202, json_pack("{s:i, s:s, s:s}", "step", step, "status", "working",
                                      "detail", "the environment is still working on this "
                                                "step; GET the session for its answer"));
        break;
    case SESSION_CLOSING:
        api_reply(req, 503, json_pack("{s:s, s:s}", "detail", "the server is shutting down; "
                                      "GET the session for the step's answer", "type",
                                      "unavailable"));
        break;
    }
    http_request_resume(req);
}

/* The step request's body: *action points into *body (caller json_decref's it). Replies
 * 422 itself and returns ERR_INVALID when it is not valid. */
static int step_body(struct request *req, json_t **body, const char **action, int *wait_s)
{
    json_t *b = NULL, *v;
    const char *a;

    if (api_body_json(req, &b) < 0)
        return ERR_INVALID;
    if (!json_is_object(b)) {
        json_decref(b);
        api_invalid_field(req, "body", "is required: {\"action\": \"...\"}");
        return ERR_INVALID;
    }
    a = json_string_value(json_object_get(b, "action"));
    if (!a || !*a || strlen(a) > MAX_ACTION_BYTES) {
        json_decref(b);
        api_invalid_field(req, "action", "must be a non-empty string of at most 65536 "
                                         "bytes, e.g. exec_shell(\"kubectl get pods\")");
        return ERR_INVALID;
    }
    *wait_s = 60;
    v = json_object_get(b, "wait_seconds");
    if (v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 300) {
            json_decref(b);
            api_invalid_field(req, "wait_seconds", "must be an integer from 0 to 300");
            return ERR_INVALID;
        }
        *wait_s = (int)json_integer_value(v);
    }
    *body = b;
    *action = a;
    return 0;
}

int api_session_step(struct request *req)
{
    struct session_waiter waiter = {.ctx = req, .park = step_park, .answer = step_answer};
    struct store *st = req->srv->store;
    struct task *t = NULL;
    json_t *body = NULL, *row = NULL;
    const char *action;
    int wait_s, step = 0, rc;
    bool parked = false;

    if (step_body(req, &body, &action, &wait_s) < 0)
        return 0;
    if (!api_valid_uuid(req->params[0])) {
        json_decref(body);
        return api_fail(req, 404, "Session %s not found", req->params[0]);
    }
    rc = session_hub_step(req->srv->sessions, req->params[0], action, wait_s, &waiter, &step,
                          &parked);
    if (rc == ERR_CONFLICT || rc == ERR_NOTFOUND) {
        if (load_session(req, &t) == 0) {
            if (store_session_get(st, t->id, &row) < 0)
                row = NULL;
            refuse_step(req, t, row);
            json_decref(row);
            task_free(t);
        }
    } else if (rc < 0) {
        api_reply_error(req, rc, "the step");
    } else if (!parked) {
        /* wait_seconds 0 (or closing, or no memory to wait): the step is taken, answered
         * later. Once parked, req belongs to the hub and is not touched here. */
        api_reply(req, 202, json_pack("{s:i, s:s}", "step", step, "status", "working"));
    }
    json_decref(body); /* action pointed into it */
    return 0;
}

int api_session_close(struct request *req)
{
    struct store *st = req->srv->store;
    struct task *t = NULL;
    int rc;

    if (load_session(req, &t) < 0)
        return 0;
    if (!task_status_terminal(t->status)) {
        rc = session_hub_close(req->srv->sessions, t->id);
        if (rc < 0 && rc != ERR_CONFLICT) {
            task_free(t);
            return api_reply_error(req, rc, "the session");
        }
        task_free(t);
        t = NULL;
        if (store_task_get(st, req->params[0], &t) < 0)
            return api_reply_error(req, ERR_STORE, "the session");
    }
    api_reply(req, 200, json_pack("{s:s, s:s, s:s}", "message", "Session closed", "id", t->id,
                                  "status", session_status(t, NULL)));
    task_free(t);
    return 0;
}
