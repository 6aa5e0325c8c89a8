/* api_worker_ops: the routes external workers speak (CONTRACT.md "Workers"):
 * register, heartbeat, claim, and logs/conversations/complete/fail of a task they
 * hold. Every call but register carries the worker's token as a Bearer token;
 * task calls need the task to be running on this worker (403 otherwise, 409 once
 * it has ended). */
#include "http/api.h"
#include "model/llm_call.h"
#include "service/session.h"
#include "core/clock.h"
#include "core/crypto.h"
#include "core/err.h"
#include "core/log.h"
#include "service/queue.h"
#include "model/proto.h"
#include "core/uuidgen.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_PATTERNS 64
#define MAX_BATCH 10000

static bool valid_pattern(const char *p)
{
    size_t n = strlen(p);

    if (n < 1 || n > 256)
        return false;
    for (; *p; p++)
        if (!strchr("*?[]!", *p) && !task_valid_name((char[]){*p, 0}, 1))
            return false;
    return true;
}

/* Checks the capabilities object; replies 422 itself when it is bad. */
static int check_capabilities(struct request *req, json_t *caps)
{
    json_t *pats, *p;
    size_t i;

    if (!caps || json_is_null(caps))
        return 0;
    if (!json_is_object(caps)) {
        api_invalid_field(req, "capabilities", "must be an object");
        return ERR_INVALID;
    }
    pats = json_object_get(caps, "supported_problems");
    if (!pats || json_is_null(pats))
        return 0;
    if (!json_is_array(pats) || json_array_size(pats) > MAX_PATTERNS) {
        api_invalid_field(req, "capabilities.supported_problems",
                          "must be a list of at most 64 problem id patterns");
        return ERR_INVALID;
    }
    json_array_foreach(pats, i, p) {
        if (!json_is_string(p) || !valid_pattern(json_string_value(p))) {
            api_invalid_field(req, "capabilities.supported_problems",
                              "patterns are problem ids with * ? [ ] wildcards");
            return ERR_INVALID;
        }
    }
    return 0;
}

int api_worker_register(struct request *req)
{
    struct store *st = req->srv->store;
    json_t *body = NULL, *id, *bt, *caps, *w = NULL;
    char token[65], hash[CRYPTO_HEX_SHA256];
    struct worker_reg reg = {0};
    int rc;

    if (api_body_json(req, &body) < 0)
        return 0;
    if (!json_is_object(body)) {
        json_decref(body);
        return api_invalid_field(req, "body", "must be a JSON object with worker_id");
    }
    id = json_object_get(body, "worker_id");
    bt = json_object_get(body, "backend_type");
    caps = json_object_get(body, "capabilities");
    if (!json_is_string(id) || !task_valid_name(json_string_value(id), 128) ||
        !strcmp(json_string_value(id), "register") || !strcmp(json_string_value(id), "internal")) {
        api_invalid_field(req, "worker_id",
                          "must be 1 to 128 characters from [A-Za-z0-9_.:-] (e.g. worker-001-kind)");
        goto out;
    }
    if (bt && !json_is_null(bt) && (!json_is_string(bt) || !task_valid_name(json_string_value(bt), 64))) {
        api_invalid_field(req, "backend_type", "must be 1 to 64 characters from [A-Za-z0-9_.:-]");
        goto out;
    }
    if (check_capabilities(req, caps) < 0)
        goto out;
    if (crypto_random_hex(token, 32) < 0) {
        api_fail(req, 500, "no randomness for a token");
        goto out;
    }
    crypto_sha256_hex(token, hash);
    reg.id = json_string_value(id);
    reg.backend_type = json_is_string(bt) ? json_string_value(bt) : "default";
    reg.capabilities = json_is_object(caps) ? caps : NULL;
    reg.token_hash = hash;
    reg.now = clock_now_us();
    rc = store_worker_register(st, &reg);
    if (rc == ERR_CONFLICT) {
        api_fail(req, 409, "worker id %s belongs to an internal worker", reg.id);
        goto out;
    }
    if (rc == 0)
        rc = store_worker_get(st, reg.id, &w);
    if (rc < 0) {
        api_reply_error(req, rc, "the worker");
        goto out;
    }
    json_object_set_new(w, "token", json_string(token));
    api_reply(req, 201, w);
    log_info("external worker %s registered (backend %s)", reg.id, reg.backend_type);
out:
    json_decref(body);
    return 0;
}

/* Checks "Authorization: Bearer <token>" against the worker's stored hash; replies
 * 401/404/503 itself when it does not match. */
static int authorize(struct request *req, const char *worker_id)
{
    struct store *st = req->srv->store;
    const char *auth = api_header(req, "Authorization");
    char *stored = NULL, hash[CRYPTO_HEX_SHA256];
    int rc;
    bool ok;

    /* The header first: without one, nothing is looked up (nor is a worker's existence
     * told). */
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0) {
        api_fail(req, 401, "this route needs the worker's token as 'Authorization: Bearer …'");
        return ERR_FORBIDDEN;
    }
    rc = store_worker_token(st, worker_id, &stored);
    if (rc == ERR_NOTFOUND) {
        api_fail(req, 404, "worker %s is not registered", worker_id);
        return rc;
    }
    if (rc < 0) {
        api_reply_error(req, rc, "the worker");
        return rc;
    }
    crypto_sha256_hex(auth + 7, hash);
    ok = stored && crypto_equal(stored, hash);
    free(stored);
    if (!ok) {
        api_fail(req, 401, "the token is not %s's current token (register again for a new one)",
                 worker_id);
        return ERR_FORBIDDEN;
    }
    return 0;
}

int api_worker_heartbeat(struct request *req)
{
    struct store *st = req->srv->store;
    const char *id = req->params[0];
    json_t *body = NULL, *cur, *cancel = json_array();
    const char *ids[1] = {id};
    char now[40];
    int rc;

    if (authorize(req, id) < 0 || api_body_json(req, &body) < 0)
        goto out;
    if (body && !json_is_object(body)) {
        api_invalid_field(req, "body", "must be a JSON object");
        goto out;
    }
    rc = store_worker_heartbeat(st, ids, 1, clock_now_us());
    if (rc < 0) {
        api_reply_error(req, rc, "the heartbeat");
        goto out;
    }
    /* The worker learns here that a task it runs was cancelled or ended elsewhere. */
    cur = json_object_get(body, "current_task_id");
    if (json_is_string(cur) && api_valid_uuid(json_string_value(cur))) {
        struct task *t = NULL;
        rc = store_task_get(st, json_string_value(cur), &t);
        if (rc == ERR_NOTFOUND ||
            (rc == 0 && (t->status != TASK_RUNNING || !t->worker_id || strcmp(t->worker_id, id))))
            json_array_append_new(cancel, json_string(json_string_value(cur)));
        task_free(t);
    }
    /* A worker that holds no running task is idle, whatever its row said (a task
     * cancelled under it leaves the row busy until now), unless it says it is offline
     * (repairing its cluster), with why in its metadata. */
    {
        struct task_filter f = {.status = TASK_RUNNING, .worker_id = id, .limit = 1};
        struct task_page page;
        json_t *want = json_object_get(body, "status"), *meta = json_object_get(body, "metadata");
        bool offline = json_is_string(want) && !strcmp(json_string_value(want), "offline");

        if (store_task_list(st, &f, &page) == 0) {
            if (page.total == 0 &&
                store_worker_set_status(st, id, offline ? WORKER_OFFLINE : WORKER_IDLE,
                                           json_is_object(meta) ? meta : NULL) < 0)
                log_warn("%s: could not record its status", id);
            store_task_page_reset(&page);
        }
    }
    clock_format(clock_now_us(), now, sizeof(now));
    api_reply(req, 200, json_pack("{s:s, s:s, s:s, s:O}", "message", "Heartbeat received",
                                  "worker_id", id, "timestamp", now, "cancel", cancel));
out:
    json_decref(cancel);
    json_decref(body);
    return 0;
}

int api_worker_claim(struct request *req)
{
    struct server *srv = req->srv;
    struct store *st = srv->store;
    const char *id = req->params[0];
    json_t *w = NULL, *pats, *p, *o;
    const char *patterns[MAX_PATTERNS];
    char lease[TASK_ID_LEN + 1], deadline[40];
    struct claim_req cr = {.worker_id = id, .lease_token = lease};
    struct task *t = NULL;
    size_t i;
    int rc;

    if (authorize(req, id) < 0)
        return 0;
    rc = store_worker_get(st, id, &w);
    if (rc < 0)
        return api_reply_error(req, rc, "the worker");
    cr.backend_type = json_string_value(json_object_get(w, "backend_type"));
    pats = json_object_get(json_object_get(w, "capabilities"), "supported_problems");
    json_array_foreach(pats, i, p) {
        if (cr.n_patterns < MAX_PATTERNS && json_is_string(p))
            patterns[cr.n_patterns++] = json_string_value(p);
    }
    cr.patterns = patterns;
    uuidgen(lease);
    rc = queue_claim(&srv->queue, &cr, &t);
    json_decref(w);
    if (rc == ERR_NOTFOUND)
        return api_reply(req, 204, NULL);
    if (rc < 0)
        return api_reply_error(req, rc, "claiming");
    o = task_to_json(t);
    clock_format(t->deadline_at, deadline, sizeof(deadline));
    json_object_set_new(o, "lease", json_pack("{s:s, s:s}", "token", lease, "deadline", deadline));
    if (llm_gateway_applies(srv->cfg.llm_upstream_url, t->parameters)) {
        /* The executor reaches this API's gateway with a key of this attempt alone. */
        char key[LLM_KEY_SIZE];

        llm_task_key(t->id, lease, key);
        json_object_set_new(o, "llm", json_pack("{s:s, s:s}", "path", "/llm/v1", "key", key));
    }
    task_free(t);
    return api_reply(req, 200, o);
}

/* Loads the task of a worker task route and checks that this worker holds it. */
static int held_task(struct request *req, struct task **out)
{
    struct store *st = req->srv->store;
    const char *id = req->params[0], *task_id = req->params[1];
    struct task *t = NULL;
    int rc;

    if (authorize(req, id) < 0)
        return ERR_FORBIDDEN;
    if (!api_valid_uuid(task_id)) {
        api_invalid_field(req, "task_id", "must be a UUID");
        return ERR_INVALID;
    }
    rc = store_task_get(st, task_id, &t);
    if (rc < 0)
        return api_lookup_error(req, rc, "task", task_id);
    if (!t->worker_id || strcmp(t->worker_id, id) != 0) {
        api_fail(req, 403, "task %s is not held by worker %s", task_id, id);
        rc = ERR_FORBIDDEN;
    } else if (task_status_terminal(t->status)) {
        api_fail(req, 409, "task %s has already ended (%s)", task_id,
                 task_status_name(t->status));
        rc = ERR_CONFLICT;
    } else if (t->status != TASK_RUNNING) {
        api_fail(req, 403, "task %s is not running", task_id);
        rc = ERR_FORBIDDEN;
    }
    if (rc < 0)
        task_free(t);
    else
        *out = t;
    return rc;
}

/* A worker task route's work once the task is known to be held by the calling worker:
 * it replies. body is the parsed request body (NULL for routes that take none). Both
 * stay owned by with_held_task. */
typedef void held_fn(struct request *req, struct task *t, json_t *body);

static int with_held_task(struct request *req, bool with_body, held_fn *fn)
{
    struct task *t = NULL;
    json_t *body = NULL;

    if (held_task(req, &t) == 0 && (!with_body || api_body_json(req, &body) == 0))
        fn(req, t, body);
    json_decref(body);
    task_free(t);
    return 0;
}

/* The short answer of a worker route: the task and what it now is. */
static void reply_state(struct request *req, const struct task *t, const char *state)
{
    api_reply(req, 200, json_pack("{s:s, s:s}", "task_id", t->id, "status", state));
}

/* The items of a posted batch: one object, an array, or {"<key>": [...]}. Borrowed. */
static json_t *items_of(json_t *body, const char *key, json_t **owned)
{
    *owned = NULL;
    if (json_is_array(body))
        return body;
    if (json_is_array(json_object_get(body, key)))
        return json_object_get(body, key);
    *owned = json_array();
    json_array_append(*owned, body);
    return *owned;
}

/* Checks each of items as an executor protocol line of type (log, message) and appends
 * it, normalised, to evs. 0, or -1 after a 422 naming the item. */
static int parse_items(struct request *req, json_t *items, const char *type, const char *key,
                       json_t *evs)
{
    size_t i;
    json_t *it;

    json_array_foreach(items, i, it) {
        struct proto_event ev;
        char msg[160];

        if (proto_event_from_json(it, type, &ev) == 0) {
            json_array_append_new(evs, ev.obj);
            continue;
        }
        snprintf(msg, sizeof(msg), "item %zu is not a valid %s line (see the executor protocol)",
                 i, type);
        api_invalid_field(req, key, msg);
        return -1;
    }
    return 0;
}

/* Stores evs (normalised log or message lines) as the task's, stamped now. */
static int store_items(struct store *st, const char *task_id, const char *type, json_t *evs)
{
    size_t i, n = json_array_size(evs);
    struct log_entry *le = calloc(n + 1, sizeof(*le));
    struct msg_entry *me = calloc(n + 1, sizeof(*me));
    int64_t now = clock_now_us();
    json_t *it;
    int rc = ERR_NOMEM;

    if (le && me) {
        json_array_foreach(evs, i, it) {
            le[i].ts = me[i].ts = now;
            le[i].message = json_string_value(json_object_get(it, "message"));
            le[i].context = json_object_get(it, "context");
            le[i].level = proto_level_parse(json_string_value(json_object_get(it, "level")));
            me[i].msg = it;
        }
        rc = !strcmp(type, "log") ? store_logs_append(st, task_id, le, n)
                                  : store_messages_append(st, task_id, me, n);
    }
    free(le);
    free(me);
    return rc;
}

static void post_items(struct request *req, struct task *t, json_t *body, const char *type,
                       const char *key)
{
    json_t *owned = NULL, *items, *evs = json_array();
    int rc;

    if (!json_is_object(body) && !json_is_array(body)) {
        api_invalid_field(req, "body", "must be a JSON object or a list of them");
        goto out;
    }
    items = items_of(body, key, &owned);
    if (json_array_size(items) > MAX_BATCH) {
        api_invalid_field(req, key, "at most 10000 items a request");
        goto out;
    }
    if (parse_items(req, items, type, key, evs) < 0)
        goto out;
    rc = store_items(req->srv->store, t->id, type, evs);
    if (rc < 0)
        api_reply_error(req, rc, "the batch");
    else
        api_reply(req, 200, json_pack("{s:s, s:I}", "task_id", t->id, "accepted",
                                      (json_int_t)json_array_size(evs)));
out:
    json_decref(owned);
    json_decref(evs);
}

static void post_logs(struct request *req, struct task *t, json_t *body)
{
    post_items(req, t, body, "log", "logs");
}

static void post_messages(struct request *req, struct task *t, json_t *body)
{
    post_items(req, t, body, "message", "messages");
}

int api_worker_task_logs(struct request *req)
{
    return with_held_task(req, true, post_logs);
}

int api_worker_task_conversations(struct request *req)
{
    return with_held_task(req, true, post_messages);
}

static void finish(struct request *req, struct task *t, enum task_status status, json_t *result,
                   const char *error, enum task_error_class error_class)
{
    struct task_end end = {.status = status, .result = result, .error = error,
                           .now = clock_now_us(), .error_class = error_class};
    int rc = queue_finish(&req->srv->queue, t, &end);

    if (rc == ERR_CONFLICT) {
        api_fail(req, 409, "task %s has already ended", t->id);
    } else if (rc < 0) {
        api_reply_error(req, rc, "the task");
    } else {
        /* A retried attempt is pending again, not failed: say so, and when. */
        const char *now_status = end.retry_at ? "pending" : task_status_name(status);
        json_t *o = json_pack("{s:s, s:s, s:s}", "message", end.retry_at ? "Attempt failed; "
                              "the task will be retried" : "Task updated", "task_id", t->id,
                              "status", now_status);

        log_info("%s: task %s %s", t->worker_id, t->id, now_status);
        if (o && end.retry_at) {
            char when[40];
            clock_format(end.retry_at, when, sizeof(when));
            json_object_set_new(o, "retry_at", json_string(when));
        }
        api_reply(req, 200, o);
    }
}

static void task_complete(struct request *req, struct task *t, json_t *body)
{
    json_t *result;

    if (body && !json_is_object(body)) {
        api_invalid_field(req, "result", "must be an object");
        return;
    }
    /* {"result": {...}}, or the result itself as the original worker sends it. */
    result = json_object_get(body, "result");
    finish(req, t, TASK_COMPLETED, json_is_object(result) ? result : body, NULL,
           TASK_CLASS_NONE);
}

int api_worker_task_complete(struct request *req)
{
    return with_held_task(req, true, task_complete);
}

static void task_fail(struct request *req, struct task *t, json_t *body)
{
    json_t *err = json_object_get(body, "error"), *status = json_object_get(body, "status"),
           *result = json_object_get(body, "result"), *cls = json_object_get(body, "error_class");
    const char *s = json_is_string(status) ? json_string_value(status) : "";
    enum task_status st = TASK_FAILED;

    if (!json_is_string(err) || json_string_length(err) == 0) {
        api_invalid_field(req, "error", "is required: a string saying why");
        return;
    }
    if (status && !json_is_null(status)) {
        if (strcmp(s, "timeout") && strcmp(s, "failed")) {
            api_invalid_field(req, "status", "must be failed or timeout");
            return;
        }
        st = !strcmp(s, "timeout") ? TASK_TIMEOUT : TASK_FAILED;
    }
    if (result && !json_is_object(result) && !json_is_null(result)) {
        api_invalid_field(req, "result", "must be an object");
        return;
    }
    if (cls && !json_is_null(cls) &&
        task_error_class_parse(json_string_value(cls)) == TASK_CLASS_NONE) {
        api_invalid_field(req, "error_class", "must be infrastructure or agent");
        return;
    }
    /* Unsaid: the agent's, as for an internal worker's run that reached the agent. */
    finish(req, t, st, json_is_object(result) ? result : NULL, json_string_value(err),
           st == TASK_FAILED ? task_error_class_parse(json_string_value(cls)) : TASK_CLASS_NONE);
}

int api_worker_task_fail(struct request *req)
{
    return with_held_task(req, true, task_fail);
}

/* ---- sessions hosted by an external worker ---- */

static void session_ready(struct request *req, struct task *t, json_t *body)
{
    int rc;

    if (!json_is_object(body) || !json_is_string(json_object_get(body, "task_description"))) {
        api_invalid_field(req, "task_description", "is required: the ready line of the session "
                                                    "protocol");
        return;
    }
    rc = store_session_ready(req->srv->store, t->id, body, t->max_steps, clock_now_us());
    if (rc < 0)
        api_reply_error(req, rc, "the session");
    else
        reply_state(req, t, "ready");
}

int api_worker_session_ready(struct request *req)
{
    return with_held_task(req, true, session_ready);
}

static void session_next(struct request *req, struct task *t, json_t *body)
{
    long long after;
    char *action = NULL;
    int step = 0, rc;

    (void)body;
    if (api_query_int(req, "after", 0, 1000000, 0, &after) < 0)
        return;
    rc = store_session_next(req->srv->store, t->id, (int)after, &step, &action);
    if (rc < 0)
        api_reply_error(req, rc, "the session");
    else if (!step)
        api_reply(req, 204, NULL);
    else
        api_reply(req, 200, json_pack("{s:i, s:s}", "step", step, "action", action));
    free(action);
}

int api_worker_session_next(struct request *req)
{
    return with_held_task(req, false, session_next);
}

static void session_answer(struct request *req, struct task *t, json_t *body)
{
    json_t *msgs = json_object_get(body, "messages"), *answer = json_object_get(body, "answer"),
           *evs = json_array(), *it;
    int step = (int)json_integer_value(json_object_get(body, "step"));
    size_t i, n = json_array_size(msgs);
    struct msg_entry *me = calloc(n + 1, sizeof(*me));
    int rc;

    if (!json_is_integer(json_object_get(body, "step")) || !json_is_object(answer) ||
        (msgs && !json_is_array(msgs))) {
        api_invalid_field(req, "body", "must be {\"step\": n, \"answer\": {\"observation\", "
                                       "\"done\", \"reward\", \"results\"}, \"messages\": [...]}");
    } else if (!me) {
        api_reply_error(req, ERR_NOMEM, "the answer");
    } else if (!msgs || parse_items(req, msgs, "message", "messages", evs) == 0) {
        json_array_foreach(evs, i, it) {
            me[i].ts = clock_now_us();
            me[i].msg = it;
        }
        rc = store_session_answer(req->srv->store, t->id, step, answer, me, n, clock_now_us());
        if (rc < 0) {
            api_reply_error(req, rc, "the answer");
        } else {
            session_hub_answered(req->srv->sessions, t->id, step, answer);
            reply_state(req, t, "answered");
        }
    }
    free(me);
    json_decref(evs);
}

int api_worker_session_answer(struct request *req)
{
    return with_held_task(req, true, session_answer);
}

static void session_end(struct request *req, struct task *t, json_t *body)
{
    int rc = store_session_end(req->srv->store, t->id);

    (void)body;
    if (rc < 0) {
        api_reply_error(req, rc, "the session");
    } else {
        session_hub_answered(req->srv->sessions, t->id, 0, NULL);
        reply_state(req, t, "ended");
    }
}

int api_worker_session_end(struct request *req)
{
    return with_held_task(req, false, session_end);
}
