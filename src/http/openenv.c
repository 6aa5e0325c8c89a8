/* openenv: the OpenEnv endpoint (CONTRACT.md "OpenEnv endpoint"): trainers drive
 * taskexec sessions with OpenEnv's GenericEnvClient(base_url=".../openenv").
 *
 * DESIGN
 * The wire protocol is OpenEnv's (meta-pytorch/OpenEnv at 685de41:
 * src/openenv/core/env_server/http_server.py's /ws loop, types.py's message models and
 * error codes, serialization.py's observation shape): one WebSocket is one environment;
 * each request gets exactly one reply, in order ({"type":"observation"|"state"|"error",
 * "data":…}); "close" gets none. An environment is an ordinary session (a task with mode
 * interactive, queued like any other), so a reset waits for a worker instead of failing,
 * and shows up in the session and task lists, exports and the dashboard.
 *
 * Each connection's state lives on its WebSocket thread (http/ws.c): a request that
 * comes while a reset or step is still waiting is held and answered after it, as the
 * real server reads the next message only once it has answered. A step is parked in the
 * session hub with a waiter whose callback (on the hub's thread) only records the answer
 * and wakes the connection; the waiter holds a reference, so a connection that closes
 * meanwhile is freed by whichever lets go last. A reset is watched by reading the
 * session's row every tick (WS_TICK_MS) until it is ready or its task ended. */
#include "http/openenv.h"
#include "http/openenv_proto.h"
#include "http/api.h"
#include "http/ws.h"
#include "core/err.h"
#include "core/log.h"
#include "core/version.h"
#include "service/queue.h"
#include "service/session.h"
#include "store/store.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define HELD_MAX 16            /* requests held while one is in progress */
#define STEP_WAIT_SECONDS 60   /* a parked step; then the row is read each tick */
#define START_READ_FAILURES 50 /* ticks (10 s) of failed reads before a reset gives up */
#define MAX_ACTION_BYTES 65536

enum phase { ENV_IDLE, ENV_STARTING, ENV_READY, ENV_STEPPING };

struct env {
    struct server *srv;
    atomic_int refs;               /* the connection, and a parked step's waiter */
    pthread_mutex_t lock;          /* guards ws and the hub's answer below */
    struct ws_conn *ws;            /* NULL once the connection is gone */
    /* the hub's answer to the step in flight (under lock) */
    bool answered;
    enum session_outcome how;
    json_t *answer;
    char ended[600];
    /* the connection thread's own state */
    enum phase phase;
    char task_id[TASK_ID_LEN + 1]; /* "" before the first reset */
    char problem_id[TASK_PROBLEM_ID_MAX + 1];
    char episode_id[256];
    int step, step_count;
    int read_failures;             /* consecutive failed reads while starting */
    bool parked, done;
    struct {
        int type;
        json_t *msg;               /* owned */
    } held[HELD_MAX];
    int n_held;
};

static void env_unref(struct env *e)
{
    if (atomic_fetch_sub(&e->refs, 1) != 1)
        return;
    json_decref(e->answer);
    for (int i = 0; i < e->n_held; i++)
        json_decref(e->held[i].msg);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

/* ---- replies ---- */

static void send_json(struct env *e, json_t *msg)
{
    char *text = msg ? json_dumps(msg, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;

    if (text && e->ws)
        ws_send_text(e->ws, text, strlen(text));
    else
        log_error("openenv: out of memory answering a request");
    free(text);
    json_decref(msg);
}

/* An error reply with OpenEnv's code; errors (may be NULL) is taken. */
static void send_error(struct env *e, const char *code, json_t *errors, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void send_error(struct env *e, const char *code, json_t *errors, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    openenv_utf8_trim(msg); /* a message cut inside a character would not be JSON text */
    send_json(e, openenv_error(code, errors, msg));
}

/* ---- reset ---- */

/* A seed for a reset that gives none: random. */
static unsigned long long random_seed(void)
{
    unsigned long long r;

    if (getrandom(&r, sizeof(r), 0) != sizeof(r))
        r = (unsigned long long)time(NULL);
    return r;
}

/* Ends the connection's current session, if it still runs (a new reset, a close, a
 * dropped connection): its environment is torn down like any closed session's. */
static void end_session(struct env *e)
{
    if (e->task_id[0] && !e->done) {
        int rc = session_hub_close(e->srv->sessions, e->task_id);
        if (rc < 0 && rc != ERR_CONFLICT && rc != ERR_NOTFOUND)
            log_warn("openenv: closing session %s: %s", e->task_id, err_str(rc));
    }
    e->done = true;
}

/* The session request of a reset's data: the fields a session takes, the problem drawn
 * when none is named, and the episode in metadata. NULL after replying with an error. */
static json_t *session_request(struct env *e, json_t *data)
{
    static const char *const passed[] = {"max_steps", "backend_type", "timeout_minutes",
                                         "agent_config"};
    const char *problem = json_string_value(json_object_get(data, "problem_id"));
    const char *pattern = json_string_value(json_object_get(data, "problem_pattern"));
    json_t *meta = json_object_get(data, "metadata"), *body;

    if (!problem) {
        json_t *seed = json_object_get(data, "seed");
        problem = openenv_draw(e->srv->problems, pattern,
                               json_is_integer(seed) ? (unsigned long long)json_integer_value(seed)
                                                     : random_seed());
        if (!problem) {
            send_error(e, "VALIDATION_ERROR", openenv_field_error("problem_pattern",
                       "value_error", "matches no problem of the catalog"),
                       "problem_pattern %s matches no problem (GET /api/v1/problems)",
                       pattern ? pattern : "*");
            return NULL;
        }
    }
    body = json_pack("{s:s, s:s, s:o}", "problem_id", problem, "mode", "interactive",
                     "metadata", json_is_object(meta) ? json_deep_copy(meta) : json_object());
    for (size_t i = 0; body && i < sizeof(passed) / sizeof(passed[0]); i++)
        if (json_object_get(data, passed[i]))
            json_object_set(body, passed[i], json_object_get(data, passed[i]));
    if (body)
        json_object_set_new(json_object_get(body, "metadata"), "openenv",
                            json_pack("{s:O?, s:O?}", "episode_id",
                                      json_object_get(data, "episode_id"), "seed",
                                      json_object_get(data, "seed")));
    return body;
}

static void do_reset(struct env *e, json_t *data)
{
    json_t *body, *errors = NULL;
    struct task *t = NULL;
    bool created;
    const char *episode = json_string_value(json_object_get(data, "episode_id"));
    int rc;

    end_session(e);
    e->task_id[0] = '\0';
    if (!(body = session_request(e, data)))
        return;
    rc = queue_submit(&e->srv->queue, body, NULL, &t, &created, &errors);
    json_decref(body);
    if (rc == ERR_INVALID) {
        send_error(e, "VALIDATION_ERROR", errors, "the reset's data is not a valid session");
        return;
    }
    if (rc < 0) {
        send_error(e, "EXECUTION_ERROR", NULL, "the session could not be queued: %s",
                   err_str(rc));
        return;
    }
    snprintf(e->task_id, sizeof(e->task_id), "%s", t->id);
    snprintf(e->problem_id, sizeof(e->problem_id), "%s", t->problem_id);
    snprintf(e->episode_id, sizeof(e->episode_id), "%s", episode ? episode : t->id);
    e->step = e->step_count = 0;
    e->done = false;
    e->phase = ENV_STARTING;
    log_info("openenv: episode %s: session %s (%s) queued", e->episode_id, t->id,
             t->problem_id);
    task_free(t);
}

/* A starting session: answers the reset once it is ready, or says why it never will. */
static void watch_start(struct env *e)
{
    struct task *t = NULL;
    json_t *row = NULL;
    const char *state;
    int rc = store_task_get(e->srv->store, e->task_id, &t);

    /* A session that cannot be read (gone, or the database failing for longer than
     * START_READ_FAILURES ticks) is not waited for forever. */
    e->read_failures = rc < 0 ? e->read_failures + 1 : 0;
    if (rc == ERR_NOTFOUND || e->read_failures > START_READ_FAILURES) {
        send_error(e, "EXECUTION_ERROR", NULL, "the session could not be read: %s",
                   err_str(rc));
        e->phase = ENV_IDLE;
        e->done = true;
    } else if (rc == 0 && task_status_terminal(t->status)) {
        send_error(e, "EXECUTION_ERROR", NULL, "the environment did not start: the session "
                   "ended %s%s%s", task_status_name(t->status), t->error ? ": " : "",
                   t->error ? t->error : "");
        e->phase = ENV_IDLE;
        e->done = true;
    } else if (rc == 0 && store_session_get(e->srv->store, e->task_id, &row) == 0 &&
               (state = json_string_value(json_object_get(row, "state"))) &&
               !strcmp(state, "ready")) {
        send_json(e, openenv_reset_observation(row, e->problem_id, e->task_id));
        e->phase = ENV_READY;
    }
    json_decref(row);
    task_free(t);
}

/* ---- step ---- */

static void step_park(void *ctx)
{
    (void)ctx;
}

/* The hub's answer (on its thread, with its lock held): recorded for the connection. */
static void step_answer(void *ctx, enum session_outcome how, int step, json_t *answer,
                        const struct task *ended)
{
    struct env *e = ctx;

    (void)step;
    pthread_mutex_lock(&e->lock);
    e->answered = true;
    e->how = how;
    e->answer = answer ? json_incref(answer) : NULL;
    if (ended)
        snprintf(e->ended, sizeof(e->ended), "%s%s%s", task_status_name(ended->status),
                 ended->error ? ": " : "", ended->error ? ended->error : "");
    if (e->ws)
        ws_wake(e->ws);
    pthread_mutex_unlock(&e->lock);
    env_unref(e); /* the waiter's reference */
}

static void do_step(struct env *e, json_t *data)
{
    struct session_waiter w = {.ctx = e, .park = step_park, .answer = step_answer};
    json_t *error = NULL;
    const char *action = openenv_action(data, MAX_ACTION_BYTES, &error);
    int step = 0, rc;
    bool parked = false;

    if (!action) {
        send_json(e, error);
        return;
    }
    if (e->phase != ENV_READY || e->done) {
        send_error(e, "EXECUTION_ERROR", NULL, e->task_id[0] ? "the episode has ended: send "
                   "reset for a new one" : "no episode yet: send reset first");
        return;
    }
    pthread_mutex_lock(&e->lock);
    e->answered = false;
    json_decref(e->answer);
    e->answer = NULL;
    pthread_mutex_unlock(&e->lock);
    atomic_fetch_add(&e->refs, 1); /* for the waiter, if the hub parks it */
    rc = session_hub_step(e->srv->sessions, e->task_id, action, STEP_WAIT_SECONDS, &w, &step,
                          &parked);
    if (!parked)
        env_unref(e);
    if (rc < 0) {
        send_error(e, "EXECUTION_ERROR", NULL, "the step was refused: %s (the session may "
                   "have ended or used its steps)", err_str(rc));
        return;
    }
    e->step = step;
    e->parked = parked;
    e->phase = ENV_STEPPING;
}

/* Answers the step in flight from an answer {"observation","done","reward","results"}. */
static void answer_step(struct env *e, json_t *answer)
{
    e->step_count = e->step;
    e->done = json_is_true(json_object_get(answer, "done"));
    e->phase = ENV_READY;
    send_json(e, openenv_step_observation(answer, e->step));
}

/* A step in flight: the hub's answer when it came, else (not parked, or the wait ran
 * out) the session's row, read each tick. */
static void watch_step(struct env *e)
{
    json_t *answer = NULL, *row = NULL;
    enum session_outcome how = SESSION_WORKING;
    char ended[600];
    bool got;

    pthread_mutex_lock(&e->lock);
    got = e->answered;
    if (got) {
        how = e->how;
        answer = e->answer;
        e->answer = NULL;
        snprintf(ended, sizeof(ended), "%s", e->ended);
        e->answered = false;
        e->parked = false;
    }
    pthread_mutex_unlock(&e->lock);
    if (got && how == SESSION_ANSWERED) {
        answer_step(e, answer);
    } else if (got && how == SESSION_ENDED) {
        send_error(e, "EXECUTION_ERROR", NULL, "the session ended (%s) before answering "
                   "step %d", ended, e->step);
        e->phase = ENV_IDLE;
        e->done = true;
    } else if (got && how == SESSION_CLOSING) {
        send_error(e, "SESSION_ERROR", NULL, "the server is shutting down");
        e->phase = ENV_IDLE;
    } else if (!e->parked && store_session_get(e->srv->store, e->task_id, &row) == 0 &&
               json_integer_value(json_object_get(row, "answered")) >= e->step) {
        answer_step(e, row);
    } else if (!e->parked) {
        struct task *t = NULL;
        if (store_task_get(e->srv->store, e->task_id, &t) == 0 &&
            task_status_terminal(t->status)) {
            send_error(e, "EXECUTION_ERROR", NULL, "the session ended (%s) before answering "
                       "step %d", task_status_name(t->status), e->step);
            e->phase = ENV_IDLE;
            e->done = true;
        }
        task_free(t);
    }
    json_decref(answer);
    json_decref(row);
}

/* ---- the connection ---- */

static void do_state(struct env *e)
{
    send_json(e, json_pack("{s:s, s:{s:s?, s:i, s:s?, s:s?, s:b}}", "type", "state", "data",
                           "episode_id", e->task_id[0] ? e->episode_id : NULL, "step_count",
                           e->step_count, "session_id", e->task_id[0] ? e->task_id : NULL,
                           "problem_id", e->task_id[0] ? e->problem_id : NULL, "done",
                           e->done));
}

/* One request, when nothing else is in progress. */
static void handle(struct env *e, int type, json_t *data)
{
    switch ((enum openenv_type)type) {
    case OPENENV_RESET:
        do_reset(e, data);
        break;
    case OPENENV_STEP:
        do_step(e, data);
        break;
    case OPENENV_STATE:
        do_state(e);
        break;
    case OPENENV_CLOSE:
        end_session(e); /* no reply, as OpenEnv's server */
        ws_close(e->ws, 1000, "closed by the client");
        break;
    }
}

static void on_text(void *ctx, const char *text, size_t len)
{
    struct env *e = ctx;
    json_t *msg = NULL, *data = NULL, *error = NULL;
    int type = openenv_parse(text, len, &msg, &data, &error);

    if (type < 0) {
        send_json(e, error);
        return;
    }
    if (e->phase == ENV_STARTING || e->phase == ENV_STEPPING) {
        /* Answered in order once the one in progress is: OpenEnv's server reads the
         * next message only after answering. */
        if (e->n_held == HELD_MAX) {
            json_decref(msg);
            send_error(e, "SESSION_ERROR", NULL, "too many requests sent before their "
                       "answers (at most %d held)", HELD_MAX);
            return;
        }
        e->held[e->n_held].type = type;
        e->held[e->n_held++].msg = msg;
        return;
    }
    handle(e, type, data);
    json_decref(msg);
}

static void on_tick(void *ctx)
{
    struct env *e = ctx;

    if (e->phase == ENV_STARTING)
        watch_start(e);
    else if (e->phase == ENV_STEPPING)
        watch_step(e);
    /* Held requests, in order, while nothing is in progress. */
    while (e->n_held && e->phase != ENV_STARTING && e->phase != ENV_STEPPING) {
        json_t *msg = e->held[0].msg;
        int type = e->held[0].type;

        memmove(e->held, e->held + 1, (size_t)--e->n_held * sizeof(e->held[0]));
        handle(e, type, json_object_get(msg, "data"));
        json_decref(msg);
    }
}

static void *on_open(struct ws_conn *c, void *arg)
{
    struct env *e = calloc(1, sizeof(*e));

    if (!e)
        return NULL;
    e->srv = arg;
    e->ws = c;
    atomic_init(&e->refs, 1);
    pthread_mutex_init(&e->lock, NULL);
    return e;
}

static void on_close(void *ctx)
{
    struct env *e = ctx;

    end_session(e); /* a dropped connection closes its environment */
    pthread_mutex_lock(&e->lock);
    e->ws = NULL;
    pthread_mutex_unlock(&e->lock);
    env_unref(e);
}

/* ---- the routes ---- */

int api_openenv_ws(struct request *req)
{
    struct ws_app app = {.open = on_open, .on_text = on_text, .on_tick = on_tick,
                         .on_close = on_close, .arg = req->srv};

    return ws_accept(req, req->srv->ws, &app);
}

int api_openenv_health(struct request *req)
{
    return api_reply(req, 200, json_pack("{s:s}", "status", "healthy"));
}

int api_openenv_metadata(struct request *req)
{
    return api_reply(req, 200, json_pack(
        "{s:s, s:s, s:n, s:s, s:n, s:s}", "name", "taskexec-aiopslab", "description",
        "AIOpsLab incidents as OpenEnv environments: each reset opens a taskexec session "
        "on a worker's cluster (a problem_id, or one drawn from the catalog by seed); each "
        "step is one agent action, in one fenced code block, answered with the "
        "environment's observation",
        "readme_content", "version", TASKEXEC_VERSION, "author", "documentation_url",
        "/docs"));
}

int api_openenv_schema(struct request *req)
{
    /* The JSON Schemas of OpenEnv's own models (pydantic 2's output for an Action with a
     * text action, our observation's fields, and the base State), so typed clients and
     * UIs see what we take and give. */
    json_t *action = json_pack(
        "{s:s, s:s, s:b, s:[s], s:{s:{s:s, s:s, s:s}, s:{s:s, s:s, s:b, s:s}}}", "title",
        "AIOpsLabAction", "type", "object", "additionalProperties", 0, "required", "action",
        "properties", "action", "title", "Action", "type", "string", "description",
        "one API call in one fenced code block, e.g. ```\\nexec_shell(\"kubectl get pods\")"
        "\\n```", "metadata", "title", "Metadata", "type", "object", "additionalProperties",
        1, "description", "Additional metadata for the action");
    json_t *observation = json_pack(
        "{s:s, s:s, s:b, s:{s:{s:s}, s:{s:s}, s:{s:s}, s:{s:s}, s:{s:s}, s:{s:s}, s:{s:s}, "
        "s:{s:s}, s:{s:s, s:b}, s:{s:[{s:s}, {s:s}, {s:s}, {s:s}]}, s:{s:s}}}",
        "title", "AIOpsLabObservation", "type", "object", "additionalProperties", 0,
        "properties", "text", "type", "string", "task_description", "type", "string",
        "instructions", "type", "string", "actions", "type", "object", "problem_id", "type",
        "string", "session_id", "type", "string", "step", "type", "integer", "results",
        "type", "object", "done", "type", "boolean", "default", 0, "reward", "anyOf", "type",
        "boolean", "type", "integer", "type", "number", "type", "null", "metadata", "type",
        "object");
    json_t *state = json_pack(
        "{s:s, s:s, s:b, s:{s:{s:[{s:s}, {s:s}], s:n, s:s, s:s}, s:{s:i, s:s, s:i, s:s, "
        "s:s}}}", "title", "State", "type", "object", "additionalProperties", 1,
        "properties", "episode_id", "anyOf", "type", "string", "type", "null", "default",
        "title", "Episode Id", "description", "Unique identifier for the current episode",
        "step_count", "default", 0, "description",
        "Number of steps taken in the current episode", "minimum", 0, "title", "Step Count",
        "type", "integer");

    return api_reply(req, 200, json_pack("{s:o, s:o, s:o}", "action", action, "observation",
                                         observation, "state", state));
}
