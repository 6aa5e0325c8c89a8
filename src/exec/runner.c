/* runner: one task through its executor (see runner.h for the DESIGN). */
#include "exec/runner.h"
#include "core/names.h"
#include "exec/executor.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "core/config.h"
#include "model/proto.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

#define FLUSH_EVERY 128       /* events */
#define FLUSH_MS 50
/* While a session's step is in flight its messages go with the answer, in the answer's
 * transaction; a timed flush then would put a commit (a disk flush) between the action
 * and the answer of every step a trainer takes after thinking for 50 ms. Only a step that
 * runs long has its logs flushed meanwhile. */
#define STEP_FLUSH_MS 1000
#define PENDING_MAX 100000    /* kept events while the sink is down; older ones are dropped */
#define FINAL_FLUSH_MS 60000  /* how long the last batch is retried */

struct run_ctx {
    const struct runner *rn;
    const struct runner_sink *sink;
    const struct task *task;
    json_t *logs;              /* pending log objects */
    json_t *msgs;              /* pending message objects */
    int64_t *log_ts, *msg_ts;  /* arrival times, parallel to the arrays */
    size_t log_cap, msg_cap;
    int64_t last_flush;
    size_t dropped;            /* events dropped because the sink stayed down */
    json_t *result;            /* the executor's result line, if any */
    /* interactive sessions */
    bool interactive, ready;
    int sent, answered;        /* last step sent to the child, last one answered */
    int64_t last_poll;
    json_t *held;              /* a final observation waiting for the result's reward */
    bool agent_acted;          /* an assistant message or a step was seen: the agent ran */
};

static bool push(json_t *arr, int64_t **ts, size_t *cap, json_t *obj)
{
    size_t n = json_array_size(arr);

    if (n + 1 > *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        int64_t *p = realloc(*ts, ncap * sizeof(*p));
        if (!p) {
            json_decref(obj);
            return false;
        }
        *ts = p;
        *cap = ncap;
    }
    if (json_array_append_new(arr, obj))
        return false;
    (*ts)[n] = clock_now_us();
    return true;
}

/* Drops the oldest half of a pending array that the sink has refused for too long. */
static void shed(struct run_ctx *r, json_t *arr, int64_t *ts)
{
    size_t n = json_array_size(arr), k = n / 2;

    if (n < PENDING_MAX)
        return;
    for (size_t i = 0; i < k; i++)
        json_array_remove(arr, 0);
    memmove(ts, ts + k, (n - k) * sizeof(*ts));
    r->dropped += k;
}

/* Fills entries for the pending log objects (borrowed pointers). Caller frees. */
static struct log_entry *log_entries(struct run_ctx *r, size_t *n)
{
    struct log_entry *le;

    *n = json_array_size(r->logs);
    le = calloc(*n + 1, sizeof(*le));
    for (size_t i = 0; le && i < *n; i++) {
        json_t *o = json_array_get(r->logs, i);
        le[i].ts = r->log_ts[i];
        le[i].level = proto_level_parse(json_string_value(json_object_get(o, "level")));
        le[i].message = json_string_value(json_object_get(o, "message"));
        le[i].context = json_object_get(o, "context");
    }
    return le;
}

/* Offers the pending batches to the sink; what it takes is cleared. Returns true
 * when nothing is left pending. */
static bool flush_some(struct run_ctx *r, bool with_logs)
{
    size_t nl = 0, nm = json_array_size(r->msgs);
    struct log_entry *le = with_logs ? log_entries(r, &nl) : NULL;
    struct msg_entry *me = nm ? calloc(nm, sizeof(*me)) : NULL;

    r->last_flush = clock_mono_ms();
    if ((with_logs && !le) || (nm && !me))
        goto out;
    for (size_t i = 0; i < nm; i++) {
        me[i].ts = r->msg_ts[i];
        me[i].msg = json_array_get(r->msgs, i);
    }
    if (nl && r->sink->logs(r->sink->ctx, r->task->id, le, nl) == 0)
        json_array_clear(r->logs);
    if (nm && r->sink->messages(r->sink->ctx, r->task->id, me, nm) == 0)
        json_array_clear(r->msgs);
out:
    free(le);
    free(me);
    shed(r, r->logs, r->log_ts);
    shed(r, r->msgs, r->msg_ts);
    return (with_logs ? json_array_size(r->logs) : 0) + json_array_size(r->msgs) == 0;
}

static bool flush(struct run_ctx *r)
{
    return flush_some(r, true);
}

static void note(struct run_ctx *r, int level, const char *text)
{
    json_t *o = json_pack("{s:s, s:s, s:{s:s, s:s}}", "level", proto_level_name(level),
                          "message", text, "context", "source", "worker", "worker_id",
                          r->rn->worker_id);
    if (o)
        push(r->logs, &r->log_ts, &r->log_cap, o);
}

/* ---- interactive sessions ---- */

/* A conversation message of the session (role, content, step), stored like an agent's. */
static void session_message(struct run_ctx *r, const char *role, const char *content, int step)
{
    json_t *m = json_pack("{s:s, s:s, s:s, s:i, s:{s:s}}", "session_id", r->task->id, "role",
                          role, "content", content ? content : "", "step", step, "metadata",
                          "source", "session");
    if (m)
        push(r->msgs, &r->msg_ts, &r->msg_cap, m);
}

/* Stores the answer to the step in flight, with the step's messages (one transaction),
 * and wakes whoever waits for it. */
static void session_reply(struct run_ctx *r, json_t *answer)
{
    size_t nm = json_array_size(r->msgs);
    struct msg_entry *me = nm ? calloc(nm, sizeof(*me)) : NULL;
    int tries = 0, rc;

    for (size_t i = 0; me && i < nm; i++) {
        me[i].ts = r->msg_ts[i];
        me[i].msg = json_array_get(r->msgs, i);
    }
    if (nm && !me)
        nm = 0; /* out of memory: the messages stay pending for the next flush */
    while ((rc = r->sink->session_answer(r->sink->ctx, r->task->id, r->sent, answer, me, nm)) < 0 &&
           ++tries < 20)
        usleep(100 * 1000);
    if (rc == 0 && nm)
        json_array_clear(r->msgs);
    free(me);
    r->answered = r->sent;
    json_decref(answer);
}

static void release_held(struct run_ctx *r)
{
    json_t *a = r->held;

    r->held = NULL;
    if (r->result) {
        if (json_is_null(json_object_get(a, "reward")) && json_object_get(r->result, "reward"))
            json_object_set(a, "reward", json_object_get(r->result, "reward"));
        if (json_is_null(json_object_get(a, "results")) && json_object_get(r->result, "results"))
            json_object_set(a, "results", json_object_get(r->result, "results"));
    }
    session_reply(r, a);
}

static void session_line(struct run_ctx *r, struct proto_event *ev)
{
    json_t *o = ev->obj;

    if (ev->kind == PROTO_READY) {
        const char *instr = json_string_value(json_object_get(o, "instructions"));
        const char *desc = json_string_value(json_object_get(o, "task_description"));
        if (r->ready) {
            note(r, LEVEL_WARNING, "the environment said ready twice; the second is ignored");
        } else {
            /* The trajectory starts like an agent's: the instructions, then the task. */
            session_message(r, "system", instr, 0);
            session_message(r, "user", desc, 0);
            flush(r);
            if (r->sink->session_ready(r->sink->ctx, r->task->id, o, r->task->max_steps) < 0)
                note(r, LEVEL_ERROR, "could not record that the environment is ready");
            else
                r->ready = true;
            note(r, LEVEL_INFO, "session ready: waiting for the trainer's actions");
        }
    } else {
        json_t *step = json_object_get(o, "step"), *content = json_object_get(o, "content");
        char *text = json_is_string(content) ? NULL : json_dumps(content, JSON_COMPACT | JSON_ENCODE_ANY);
        const char *obs = text ? text : json_string_value(content);
        bool done = json_is_true(json_object_get(o, "done"));

        if (r->sent <= r->answered || (json_is_integer(step) && json_integer_value(step) != r->sent)) {
            note(r, LEVEL_WARNING, "the environment sent an observation for no step in flight; "
                                   "it is ignored");
        } else {
            json_t *a = json_pack("{s:s, s:b, s:O?, s:O?}", "observation", obs ? obs : "",
                                  "done", done, "reward", json_object_get(o, "reward"),
                                  "results", json_object_get(o, "results"));
            if (!json_object_get(a, "reward"))
                json_object_set_new(a, "reward", json_null());
            if (!json_object_get(a, "results"))
                json_object_set_new(a, "results", json_null());
            session_message(r, "user", obs, r->sent);
            if (done && json_is_null(json_object_get(a, "reward")) && !r->result)
                r->held = a; /* answered when the result (with the reward) arrives */
            else
                session_reply(r, a);
        }
        free(text);
    }
    json_decref(o);
}

/* exec's take_input: the next action, when one is in flight and the child is free. */
static char *take_input(void *ctx, bool woken)
{
    struct run_ctx *r = ctx;
    int64_t now = clock_mono_ms();
    char *action = NULL, *line;
    int step = 0;
    json_t *o;

    if (!r->ready || r->sent > r->answered || r->held)
        return NULL;
    if (!woken && now - r->last_poll < 200)
        return NULL; /* a notification may have been lost: look every 200 ms anyway */
    r->last_poll = now;
    if (r->sink->session_next(r->sink->ctx, r->task->id, r->answered, &step, &action) < 0 || !step) {
        free(action);
        return NULL;
    }
    r->sent = step;
    session_message(r, "assistant", action, step);
    o = json_pack("{s:s, s:i, s:s}", "type", "action", "step", step, "action", action);
    line = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    free(action);
    if (line) {
        size_t n = strlen(line);
        char *with_nl = realloc(line, n + 2);
        if (!with_nl) {
            free(line);
            return NULL;
        }
        with_nl[n] = '\n';
        with_nl[n + 1] = '\0';
        return with_nl;
    }
    return NULL;
}

/* Session lines outside a session: kept, as text, rather than lost. Takes obj. */
static void keep_as_text(struct run_ctx *r, json_t *obj)
{
    char *text = json_dumps(obj, JSON_COMPACT);
    json_t *o = json_pack("{s:s, s:s, s:{s:s}}", "level", "warning", "message", text ? text : "",
                          "context", "note", "session line in a batch task");

    free(text);
    json_decref(obj);
    if (o)
        push(r->logs, &r->log_ts, &r->log_cap, o);
}

static void on_event(void *ctx, struct proto_event *ev)
{
    struct run_ctx *r = ctx;

    switch (ev->kind) {
    case PROTO_LOG:
        push(r->logs, &r->log_ts, &r->log_cap, ev->obj);
        break;
    case PROTO_MESSAGE:
        if (json_integer_value(json_object_get(ev->obj, "step")) >= 1 ||
            !strcmp(json_string_value(json_object_get(ev->obj, "role")) ?: "", "assistant"))
            r->agent_acted = true;
        push(r->msgs, &r->msg_ts, &r->msg_cap, ev->obj);
        break;
    case PROTO_RESULT:
        if (r->result)
            note(r, LEVEL_WARNING, "the executor sent a second result; the last one counts");
        json_decref(r->result);
        r->result = ev->obj;
        if (r->held) /* the final observation's reward comes with the result */
            release_held(r);
        break;
    case PROTO_READY:
    case PROTO_OBSERVATION:
        if (r->interactive)
            session_line(r, ev);
        else
            keep_as_text(r, ev->obj);
        break;
    }
    ev->obj = NULL;
    if (json_array_size(r->logs) + json_array_size(r->msgs) >= FLUSH_EVERY &&
        clock_mono_ms() - r->last_flush >= 5)
        flush(r);
}

static enum exec_stop should_stop(void *ctx)
{
    struct run_ctx *r = ctx;

    bool in_step = r->interactive && r->sent > r->answered;

    if (clock_mono_ms() - r->last_flush >= (in_step ? STEP_FLUSH_MS : FLUSH_MS))
        flush(r);
    return r->sink->check(r->sink->ctx);
}

#define ENV_ITEM 1100

/* The server's and the worker's own secrets, which no executor gets: with them a task's
 * agent (driven by whoever submitted it) could act as an admin, read the database or
 * forge webhook signatures. */
#define SECRETS                                                                            \
    "API_TOKEN,API_TOKENS_FILE,WORKER_JOIN_TOKEN,WEBHOOK_SECRET,DATABASE_URL,TASKEXEC_TOKEN"

/* Whether the variable env (NAME=value) is named in the comma-separated list hide. */
static bool hidden(const char *env, const char *hide)
{
    return names_has(hide, env, strcspn(env, "="), false);
}

/* Our environment with each NAME=value of `ours` replacing the variable of that name,
 * without SECRETS and the variables named in hide (comma-separated; NULL: none). Returns a
 * NULL-terminated array (caller frees with free_env), NULL without memory. */
static char **env_with(char (*ours)[ENV_ITEM], size_t n_ours, const char *hide)
{
    size_t n = 0, k = 0;
    char **env;

    while (environ[n])
        n++;
    env = calloc(n + n_ours + 1, sizeof(*env));
    if (!env)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        bool mine = false;
        for (size_t j = 0; j < n_ours && !mine; j++) {
            size_t len = strcspn(ours[j], "=") + 1;
            mine = !strncmp(environ[i], ours[j], len);
        }
        if (!mine && (hidden(environ[i], SECRETS) || hidden(environ[i], hide)))
            continue;
        if (!mine && !(env[k++] = strdup(environ[i])))
            goto fail;
    }
    for (size_t i = 0; i < n_ours; i++)
        if (!(env[k++] = strdup(ours[i])))
            goto fail;
    return env;
fail:
    for (size_t i = 0; i < k; i++)
        free(env[i]);
    free(env);
    return NULL;
}

/* PYTHONPATH=dir, ahead of the one we were given (which is kept, not replaced). */
static void pythonpath_item(char *dst, const char *dir)
{
    const char *pp = getenv("PYTHONPATH");

    snprintf(dst, ENV_ITEM, "PYTHONPATH=%s%s%s", dir, pp && *pp ? ":" : "", pp ? pp : "");
}

/* Environment of the child: ours plus the task's. */
static char **child_env(const struct runner *rn, const struct task *t)
{
    const char *worker = rn->worker_id;
    char ours[12][ENV_ITEM];
    size_t n_ours = 7;

    snprintf(ours[0], sizeof(ours[0]), "TASK_ID=%s", t->id);
    snprintf(ours[1], sizeof(ours[1]), "PROBLEM_ID=%s", t->problem_id);
    snprintf(ours[2], sizeof(ours[2]), "MAX_STEPS=%d", t->max_steps);
    snprintf(ours[3], sizeof(ours[3]), "WORKER_ID=%s", worker);
    snprintf(ours[4], sizeof(ours[4]), "BACKEND_NAME=%s", worker);
    snprintf(ours[5], sizeof(ours[5]), "KUBE_CONTEXT=kind-%s", worker);
    snprintf(ours[6], sizeof(ours[6]), "AIOPSLAB_CLUSTER=%s", worker);
    if (rn->kubeconfig)
        snprintf(ours[n_ours++], sizeof(ours[0]), "KUBECONFIG=%s", rn->kubeconfig);
    if (rn->pythonpath)
        pythonpath_item(ours[n_ours++], rn->pythonpath);
    if (rn->llm_url && rn->llm_key) {
        /* Any OpenAI client the executor starts reaches the gateway with a key that is
         * this attempt's alone; the upstream's real key stays on the server. */
        snprintf(ours[n_ours++], sizeof(ours[0]), "OPENAI_BASE_URL=%s", rn->llm_url);
        snprintf(ours[n_ours++], sizeof(ours[0]), "OPENAI_API_KEY=%s", rn->llm_key);
        snprintf(ours[n_ours++], sizeof(ours[0]), "TASKEXEC_LLM_GATEWAY=1");
    }
    return env_with(ours, n_ours, rn->llm_hide);
}

char **runner_python_env(const char *pythonpath)
{
    char ours[1][ENV_ITEM];

    if (!pythonpath)
        return env_with(ours, 0, NULL);
    pythonpath_item(ours[0], pythonpath);
    return env_with(ours, 1, NULL);
}

void runner_env_free(char **env)
{
    for (size_t i = 0; env && env[i]; i++)
        free(env[i]);
    free(env);
}


/* Decides how the task ends from the executor's outcome. */
static enum task_status verdict(struct run_ctx *r, const struct exec_outcome *o, char *buf,
                                size_t size)
{
    json_t *success = r->result ? json_object_get(r->result, "success") : NULL;
    json_t *err = r->result ? json_object_get(r->result, "error") : NULL;
    char how[300];

    exec_describe(o, how, sizeof(how));
    buf[0] = '\0';
    switch (o->stopped) {
    case EXEC_STOP_TIMEOUT:
        snprintf(buf, size, "timed out after %d s; the executor was stopped",
                 r->task->timeout_seconds);
        return TASK_TIMEOUT;
    case EXEC_STOP_SHUTDOWN:
        snprintf(buf, size, "the worker shut down while the task was running; "
                 "the executor was stopped");
        return TASK_FAILED;
    case EXEC_STOP_CANCEL:
        snprintf(buf, size, "cancelled by request while running");
        return TASK_CANCELLED;
    case EXEC_STOP_LEASE_LOST:
        snprintf(buf, size, "the task was ended elsewhere while running");
        return TASK_FAILED;
    case EXEC_STOP_NONE:
        break;
    }
    if (!o->started) {
        snprintf(buf, size, "%s", o->error);
        return TASK_FAILED;
    }
    if (!r->result) {
        snprintf(buf, size, "the executor %s without sending a result", how);
        return TASK_FAILED;
    }
    /* A failure the executor explains is the reason, whatever its exit. */
    if (!json_is_true(success)) {
        if (json_is_string(err))
            snprintf(buf, size, "%s", json_string_value(err));
        else
            snprintf(buf, size, "the executor reported failure (success: false) and %s", how);
        return TASK_FAILED;
    }
    if (!o->exited || o->exit_code != 0) {
        snprintf(buf, size, "the executor %s", how);
        return TASK_FAILED;
    }
    return TASK_COMPLETED;
}

/* Whose failure a failed run is (CONTRACT.md, Retries): the executor's own word in its
 * result line first; else the infrastructure's when the executor could not start, the
 * worker shut down under it, or it died before the agent's first step; else the
 * agent's. */
static enum task_error_class classify(const struct run_ctx *r, const struct exec_outcome *o)
{
    enum task_error_class said = task_error_class_parse(
        json_string_value(json_object_get(r->result, "error_class")));

    if (said != TASK_CLASS_NONE)
        return said;
    if (!o->started || o->stopped == EXEC_STOP_SHUTDOWN)
        return TASK_CLASS_INFRASTRUCTURE;
    if (!r->result && !r->agent_acted && r->answered == 0)
        return TASK_CLASS_INFRASTRUCTURE;
    return TASK_CLASS_AGENT;
}

static void add_duration(json_t *result, double seconds)
{
    json_t *m = json_object_get(result, "metrics");

    if (!json_is_object(m)) {
        if (m)
            return; /* the executor's own shape wins */
        m = json_object();
        if (!m || json_object_set_new(result, "metrics", m))
            return;
    }
    if (!json_object_get(m, "duration_seconds"))
        json_object_set_new(m, "duration_seconds", json_real(seconds));
}

int runner_mkdirs(const char *path)
{
    char tmp[PATH_MAX];

    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
                return ERR_IO;
            *p = '/';
        }
    }
    return mkdir(tmp, 0755) < 0 && errno != EEXIST ? ERR_IO : 0;
}

static void run_child(struct run_ctx *r, struct exec_outcome *o)
{
    const struct runner *rn = r->rn;
    const struct task *t = r->task;
    char *sim_argv[] = {(char *)(uintptr_t)rn->self_exe, "simulate", NULL};
    char *py_argv[] = {(char *)(uintptr_t)rn->python, (char *)(uintptr_t)rn->script, NULL};
    char dir[PATH_MAX], *line = NULL, **env = NULL;
    json_t *tj = task_to_json(t);
    int64_t left_ms;
    size_t len;

    memset(o, 0, sizeof(*o));
    snprintf(dir, sizeof(dir), "%s/%s/%s", rn->work_dir, rn->worker_id, t->id);
    line = tj ? json_dumps(tj, JSON_COMPACT) : NULL;
    env = child_env(rn, t);
    if (!line || !env) {
        snprintf(o->error, sizeof(o->error), "out of memory preparing the executor");
        goto out;
    }
    if (runner_mkdirs(dir) < 0) {
        snprintf(o->error, sizeof(o->error), "could not create the working directory %.150s: %s",
                 dir, strerror(errno));
        goto out;
    }
    left_ms = t->deadline_at ? (t->deadline_at - clock_now_us()) / 1000
                             : (int64_t)t->timeout_seconds * 1000;
    len = strlen(line);
    line[len] = '\n'; /* replaces the NUL: the task goes as one line */
    struct exec_spec spec = {
        .argv = rn->executor->start == EXECUTOR_START_COMMAND  ? rn->command
                : rn->executor->start == EXECUTOR_START_RUNNER ? py_argv
                                                               : sim_argv,
        .envp = env,
        .cwd = dir,
        .input = line,
        .input_len = len + 1,
        .deadline_ms = clock_mono_ms() + (left_ms > 0 ? left_ms : 0),
        .grace_ms = rn->grace_seconds * 1000,
        .max_output = rn->max_output,
        .keep_stdin = r->interactive,
        .wake_fd = r->interactive ? r->sink->wake_fd : -1,
    };
    struct exec_hooks hooks = {.ctx = r, .on_event = on_event, .should_stop = should_stop,
                               .take_input = r->interactive ? take_input : NULL};
    if (exec_run(&spec, &hooks, o) < 0)
        log_warn("%s: task %s: %s", rn->worker_id, t->id, o->error);
    rmdir(dir); /* only if the executor left nothing behind */
out:
    json_decref(tj);
    free(line);
    runner_env_free(env);
}

void runner_init(struct runner *rn, const struct config *cfg, const char *worker_id,
                 char *const *command, const char *self_exe, const char *script,
                 const char *pythonpath, const char *kubeconfig)
{
    *rn = (struct runner){
        .executor = executor_find(cfg->executor) ? executor_find(cfg->executor)
                                                 : executor_find("simulated"),
        .command = command,
        .python = cfg->aiopslab_python,
        .script = script,
        .pythonpath = pythonpath && *pythonpath ? pythonpath : NULL,
        .kubeconfig = kubeconfig && *kubeconfig ? kubeconfig : NULL,
        .self_exe = self_exe,
        .work_dir = cfg->work_dir,
        .worker_id = worker_id,
        .grace_seconds = cfg->exec_grace_seconds,
        .max_output = (size_t)cfg->max_output_bytes,
    };
}

/* Runs the executor (or, for "noop", nothing; a session on a sink that hosts none is
 * refused), and ends the session it hosted. */
static void run_or_refuse(struct run_ctx *r, struct exec_outcome *o)
{
    const struct runner_sink *sink = r->sink;

    if (r->interactive &&
        (!sink->session_ready || !sink->session_next || !sink->session_answer)) {
        memset(o, 0, sizeof(*o));
        snprintf(o->error, sizeof(o->error), "this worker cannot host interactive sessions");
    } else if (r->rn->executor->start == EXECUTOR_START_NONE) {
        memset(o, 0, sizeof(*o));
        o->started = o->exited = true;
        r->result = json_pack("{s:b, s:n, s:{s:i}}", "success", 1, "output", "metrics",
                              "steps_taken", 0);
    } else {
        run_child(r, o);
    }
    if (r->interactive) {
        if (r->held) /* a final observation whose result never came: answer it as it is */
            release_held(r);
        if (sink->session_end)
            sink->session_end(sink->ctx, r->task->id);
    }
}

/* The last batch matters most (the outcome is in it): retry it for a while. With
 * keep_final_logs the log lines go to the caller instead. */
static void final_flush(struct run_ctx *r)
{
    int64_t give_up = clock_mono_ms() + FINAL_FLUSH_MS;

    for (int wait_ms = 50; !flush_some(r, !r->rn->keep_final_logs) && clock_mono_ms() < give_up;
         wait_ms *= 2) {
        if (r->sink->check(r->sink->ctx) == EXEC_STOP_SHUTDOWN)
            break;
        usleep((useconds_t)(wait_ms < 2000 ? wait_ms : 2000) * 1000);
    }
}

void runner_run(const struct runner *rn, const struct runner_sink *sink, const struct task *t,
                struct runner_result *out)
{
    struct run_ctx r = {.rn = rn, .sink = sink, .task = t};
    struct exec_outcome o;
    char text[700];

    memset(out, 0, sizeof(*out));
    r.logs = json_array();
    r.msgs = json_array();
    r.last_flush = clock_mono_ms();
    snprintf(text, sizeof(text), "worker %s started the task (executor %s)", rn->worker_id,
             rn->executor->name);
    note(&r, LEVEL_INFO, text);
    r.interactive = task_mode_of(t) == TASK_INTERACTIVE;
    run_or_refuse(&r, &o);
    out->status = verdict(&r, &o, out->error, sizeof(out->error));
    if (out->status == TASK_FAILED && o.stopped != EXEC_STOP_LEASE_LOST)
        out->error_class = classify(&r, &o);
    out->cause = out->status == TASK_COMPLETED ? "success"
                 : out->status == TASK_TIMEOUT ? "timeout"
                 : out->status == TASK_CANCELLED ? "cancel"
                 : (r.result && !json_is_true(json_object_get(r.result, "success"))) ? "failure"
                                                                                     : "crash";
    out->seconds = o.seconds;
    if (r.result)
        add_duration(r.result, o.seconds);
    if (out->status == TASK_COMPLETED)
        snprintf(text, sizeof(text), "task completed in %.3f s", o.seconds);
    else
        snprintf(text, sizeof(text), "task ended %s: %s", task_status_name(out->status),
                 out->error);
    note(&r, out->status == TASK_COMPLETED ? LEVEL_INFO : LEVEL_ERROR, text);
    final_flush(&r);
    if (rn->keep_final_logs) {
        /* The entries point into the log objects: hand both over. */
        out->logs = log_entries(&r, &out->n_logs);
        out->log_objs = r.logs;
        r.logs = json_array();
    }
    r.dropped += json_array_size(r.logs) + json_array_size(r.msgs);
    if (r.dropped)
        log_error("%s: task %s: %zu log lines or messages could not be stored", rn->worker_id,
                  t->id, r.dropped);
    out->result = r.result;
    json_decref(r.logs);
    json_decref(r.msgs);
    free(r.log_ts);
    free(r.msg_ts);
}

extern const char aiopslab_runner_py[];

int runner_write_aiopslab(const char *dir, char *path, size_t size)
{
    char tmp[PATH_MAX];
    FILE *f;
    int ok;

    if (runner_mkdirs(dir) < 0)
        return ERR_IO;
    snprintf(path, size, "%s/aiopslab_runner.py", dir);
    snprintf(tmp, sizeof(tmp), "%s.%d", path, (int)getpid());
    f = fopen(tmp, "w");
    if (!f)
        return ERR_IO;
    ok = fputs(aiopslab_runner_py, f) >= 0;
    ok = (fclose(f) == 0) && ok;
    /* rename: a server and a worker writing at once never see half a file */
    if (!ok || rename(tmp, path) < 0) {
        unlink(tmp);
        return ERR_IO;
    }
    return 0;
}

void runner_result_reset(struct runner_result *r)
{
    json_decref(r->result);
    free(r->logs);
    json_decref(r->log_objs);
    memset(r, 0, sizeof(*r));
}
