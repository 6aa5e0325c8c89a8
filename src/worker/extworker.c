/* extworker: an external worker process (see extworker.h).
 *
 * DESIGN
 * The main thread registers (retrying until the API answers), then loops: claim,
 * run the task through the runner, report the end. A heartbeat thread reports
 * every HEARTBEAT_TIMEOUT_SECONDS/3 and turns the API's cancel list into a stop
 * request for the running task. Every call retries with back-off while the API is
 * unreachable, so the worker rides out an API restart; log batches it cannot send
 * stay in the runner until they can. A 401 means another process registered with
 * our id: we stop. SIGTERM stops the running task, reports it failed, and exits.
 * Locking: ew->lock guards current_task and stop; each thread has its own client. */
#include "worker/extworker.h"
#include "worker/client.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/err.h"
#include "core/log.h"
#include "model/catalog.h"
#include "exec/executor.h"
#include "exec/provision.h"
#include "exec/runner.h"
#include "worker/worker.h"

#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <wordexp.h>

struct extworker {
    struct config cfg;
    const char *api;
    const char *id;
    const char *backend_type;
    json_t *capabilities;
    char token[80];
    char self_exe[PATH_MAX];
    char script[PATH_MAX];                /* the aiopslab runner, "" if unused */
    char pythonpath[PATH_MAX];            /* AIOPSLAB_DIR expanded, "" if unset */
    char kubeconfig[PATH_MAX];            /* its cluster's, "" without provisioning */
    wordexp_t command;
    bool has_command;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    char current_task[TASK_ID_LEN + 1];   /* guarded by lock */
    char cluster_error[600];              /* "" when usable, else why; guarded by lock */
    json_t *clean_namespaces;             /* what a run may leave on the cluster */
    atomic_int stop_task;                 /* enum exec_stop for the current run */
    atomic_bool shutdown;
    atomic_bool fatal;                    /* our token was taken over */
};

/* Sleeps up to ms, returning early at shutdown. */
static void nap(struct extworker *ew, int ms)
{
    struct timespec until;

    clock_deadline(&until, ms);
    pthread_mutex_lock(&ew->lock);
    if (!atomic_load(&ew->shutdown))
        pthread_cond_timedwait(&ew->wake, &ew->lock, &until);
    pthread_mutex_unlock(&ew->lock);
}

static const char *detail_of(json_t *reply)
{
    const char *d = json_string_value(json_object_get(reply, "detail"));
    return d ? d : "(no detail)";
}

/* Registers, retrying while the API is unreachable or failing. */
static int do_register(struct extworker *ew, struct client *c)
{
    json_t *body = json_pack("{s:s, s:s, s:O}", "worker_id", ew->id, "backend_type",
                             ew->backend_type, "capabilities", ew->capabilities);
    int wait = 200, rc = ERR_IO;
    const char *join = ew->cfg.worker_join_token; /* environment, .env or --worker-join-token */

    /* Registration carries the join token when there is one (the API may require it);
     * everything after, the token the API gives back. */
    if (client_set_token(c, join && *join ? join : NULL) < 0) {
        json_decref(body);
        return ERR_NOMEM;
    }
    while (!atomic_load(&ew->shutdown)) {
        json_t *reply = NULL;
        long status = 0;

        if (client_call(c, "POST", "/api/v1/workers/register", body, &status, &reply) < 0) {
            log_warn("%s: cannot reach the API (%s); retrying", ew->id, c->error);
        } else if (status == 201 && json_is_string(json_object_get(reply, "token"))) {
            snprintf(ew->token, sizeof(ew->token), "%s",
                     json_string_value(json_object_get(reply, "token")));
            json_decref(reply);
            rc = 0;
            break;
        } else if (status >= 400 && status < 500) {
            log_error("%s: registration refused (%ld): %s", ew->id, status, detail_of(reply));
            json_decref(reply);
            rc = ERR_INVALID;
            break;
        } else {
            log_warn("%s: registration failed (%ld); retrying", ew->id, status);
        }
        json_decref(reply);
        nap(ew, wait);
        wait = wait < 5000 ? wait * 2 : 5000;
    }
    json_decref(body);
    if (rc == 0)
        log_info("%s: registered with %s (backend %s)", ew->id, ew->api, ew->backend_type);
    return rc;
}

static void *heartbeat_main(void *arg)
{
    struct extworker *ew = arg;
    struct client c;
    int interval = ew->cfg.heartbeat_timeout_seconds * 1000 / 3;

    if (interval < 200)
        interval = 200;
    if (client_init(&c, ew->api) < 0 || client_set_token(&c, ew->token) < 0)
        return NULL;
    c.timeout_ms = interval;
    while (!atomic_load(&ew->shutdown)) {
        char path[300], task[TASK_ID_LEN + 1];
        json_t *body, *reply = NULL, *cancel, *v;
        long status = 0;
        size_t i;

        pthread_mutex_lock(&ew->lock);
        memcpy(task, ew->current_task, sizeof(task));
        pthread_mutex_unlock(&ew->lock);
        pthread_mutex_lock(&ew->lock);
        if (ew->cluster_error[0] && !task[0])
            body = json_pack("{s:s, s:n, s:{s:s, s:s}}", "status", "offline",
                             "current_task_id", "metadata", "cluster_check", "repairing",
                             "cluster_error", ew->cluster_error);
        else
            body = json_pack("{s:s, s:o}", "status", task[0] ? "busy" : "idle",
                             "current_task_id", task[0] ? json_string(task) : json_null());
        pthread_mutex_unlock(&ew->lock);
        snprintf(path, sizeof(path), "/api/v1/workers/%s/heartbeat", ew->id);
        if (client_call(&c, "POST", path, body, &status, &reply) == 0) {
            if (status == 401) {
                log_error("%s: the API refused our token: another process registered as %s; "
                          "stopping", ew->id, ew->id);
                atomic_store(&ew->fatal, true);
                atomic_store(&ew->stop_task, EXEC_STOP_LEASE_LOST);
                atomic_store(&ew->shutdown, true);
                pthread_cond_broadcast(&ew->wake);
            }
            cancel = json_object_get(reply, "cancel");
            json_array_foreach(cancel, i, v) {
                if (task[0] && json_is_string(v) && !strcmp(json_string_value(v), task)) {
                    log_info("%s: task %s was cancelled or ended elsewhere; stopping it",
                             ew->id, task);
                    atomic_store(&ew->stop_task, EXEC_STOP_CANCEL);
                }
            }
        }
        json_decref(body);
        json_decref(reply);
        nap(ew, interval);
    }
    client_reset(&c);
    return NULL;
}

/* ---- the runner's sink over HTTP ---- */

struct http_sink {
    struct extworker *ew;
    struct client *c;
    bool lost;               /* the API says the task is no longer ours */
};

static int post_batch(struct http_sink *s, const char *task_id, const char *what, json_t *items)
{
    char path[400];
    json_t *body = json_pack("{s:O}", what, items), *reply = NULL;
    long status = 0;
    int rc;

    snprintf(path, sizeof(path), "/api/v1/workers/%s/tasks/%s/%s", s->ew->id, task_id,
             !strcmp(what, "logs") ? "logs" : "conversations");
    rc = body ? client_call(s->c, "POST", path, body, &status, &reply) : ERR_NOMEM;
    json_decref(body);
    json_decref(reply);
    if (rc < 0 || status >= 500)
        return ERR_UNAVAILABLE;   /* keep the batch for the next try */
    if (status == 403 || status == 409 || status == 404 || status == 401) {
        s->lost = true;           /* the task ended elsewhere: nothing more to send */
        return 0;
    }
    if (status != 200)
        log_warn("%s: task %s: the API refused a batch of %s (%ld)", s->ew->id, task_id, what,
                 status);
    return 0;
}

static int sink_logs(void *ctx, const char *task_id, const struct log_entry *e, size_t n)
{
    json_t *arr = json_array();
    int rc;

    for (size_t i = 0; arr && i < n; i++)
        json_array_append_new(arr, json_pack("{s:s, s:s, s:O}", "level",
                                             proto_level_name(e[i].level), "message",
                                             e[i].message ? e[i].message : "", "context",
                                             e[i].context ? e[i].context : json_null()));
    rc = arr ? post_batch(ctx, task_id, "logs", arr) : ERR_NOMEM;
    json_decref(arr);
    return rc;
}

/* Messages back in the executor's line shape: metadata fields at the top level. */
static json_t *message_lines(const struct msg_entry *e, size_t n)
{
    json_t *arr = json_array();

    for (size_t i = 0; arr && i < n; i++) {
        json_t *m = json_deep_copy(e[i].msg), *meta = json_object_get(m, "metadata");
        if (json_is_object(meta)) {
            json_object_update_missing(m, meta);
            json_object_del(m, "metadata");
        }
        json_array_append_new(arr, m);
    }
    return arr;
}

/* One call of the session routes; < 0 when the API could not take it. */
static int session_call(struct http_sink *s, const char *method, const char *task_id,
                        const char *what, json_t *body, long *status, json_t **reply)
{
    char path[400];
    int rc;

    snprintf(path, sizeof(path), "/api/v1/workers/%s/tasks/%s/session/%s", s->ew->id, task_id,
             what);
    rc = client_call(s->c, method, path, body, status, reply);
    if (rc < 0 || *status >= 500)
        return ERR_UNAVAILABLE;
    if (*status == 403 || *status == 409 || *status == 404 || *status == 401)
        s->lost = true;
    return *status == 200 || *status == 204 ? 0 : ERR_CONFLICT;
}

static int sink_session_ready(void *ctx, const char *task_id, json_t *ready, int max_steps)
{
    json_t *reply = NULL;
    long status = 0;
    int rc = session_call(ctx, "POST", task_id, "ready", ready, &status, &reply);

    (void)max_steps; /* the server knows the task's */
    json_decref(reply);
    return rc;
}

/* Polled (every 200 ms by the runner): an external worker has no wake-up from the API. */
static int sink_session_next(void *ctx, const char *task_id, int after, int *step, char **action)
{
    json_t *reply = NULL;
    long status = 0;
    char what[48];
    int rc;

    *step = 0;
    *action = NULL;
    snprintf(what, sizeof(what), "next?after=%d", after);
    rc = session_call(ctx, "GET", task_id, what, NULL, &status, &reply);
    if (rc == 0 && status == 200 && json_is_string(json_object_get(reply, "action"))) {
        *action = strdup(json_string_value(json_object_get(reply, "action")));
        *step = *action ? (int)json_integer_value(json_object_get(reply, "step")) : 0;
    }
    json_decref(reply);
    return rc < 0 ? rc : 0;
}

static int sink_session_answer(void *ctx, const char *task_id, int step, json_t *answer,
                               const struct msg_entry *msgs, size_t n_msgs)
{
    json_t *body = json_pack("{s:i, s:O, s:o}", "step", step, "answer", answer, "messages",
                             message_lines(msgs, n_msgs)), *reply = NULL;
    long status = 0;
    int rc = body ? session_call(ctx, "POST", task_id, "answer", body, &status, &reply)
                  : ERR_NOMEM;

    json_decref(body);
    json_decref(reply);
    return rc == ERR_CONFLICT ? 0 : rc; /* refused for good: retrying cannot help */
}

static void sink_session_end(void *ctx, const char *task_id)
{
    json_t *reply = NULL;
    long status = 0;

    if (session_call(ctx, "POST", task_id, "end", NULL, &status, &reply) < 0)
        log_warn("task %s: could not tell the API that its session ended", task_id);
    json_decref(reply);
}

static int sink_messages(void *ctx, const char *task_id, const struct msg_entry *e, size_t n)
{
    json_t *arr = message_lines(e, n);
    int rc = arr ? post_batch(ctx, task_id, "messages", arr) : ERR_NOMEM;

    json_decref(arr);
    return rc;
}

static enum exec_stop sink_check(void *ctx)
{
    struct http_sink *s = ctx;
    int asked = atomic_load(&s->ew->stop_task);

    if (asked != EXEC_STOP_NONE)
        return (enum exec_stop)asked;
    if (atomic_load(&s->ew->shutdown))
        return EXEC_STOP_SHUTDOWN;
    return s->lost ? EXEC_STOP_LEASE_LOST : EXEC_STOP_NONE;
}

/* Reports the end; retries while the API is unreachable (up to ten minutes, or a
 * few seconds when shutting down: the reaper settles it otherwise). */
static void report_end(struct extworker *ew, struct client *c, const struct task *t,
                       const struct runner_result *res)
{
    char path[400];
    json_t *body;
    int64_t give_up = clock_mono_ms() + (atomic_load(&ew->shutdown) ? 10000 : 600000);
    int wait = 200;

    if (res->status == TASK_CANCELLED)
        return; /* the API ended it already */
    if (res->status == TASK_COMPLETED) {
        snprintf(path, sizeof(path), "/api/v1/workers/%s/tasks/%s/complete", ew->id, t->id);
        body = json_pack("{s:O}", "result", res->result ? res->result : json_object());
    } else {
        snprintf(path, sizeof(path), "/api/v1/workers/%s/tasks/%s/fail", ew->id, t->id);
        body = json_pack("{s:s, s:s, s:O, s:s*}", "error", res->error, "status",
                         res->status == TASK_TIMEOUT ? "timeout" : "failed", "result",
                         res->result ? res->result : json_null(), "error_class",
                         task_error_class_name(res->error_class));
    }
    while (body && clock_mono_ms() < give_up) {
        json_t *reply = NULL;
        long status = 0;
        int rc = client_call(c, "POST", path, body, &status, &reply);

        if (rc == 0 && status < 500) {
            if (status == 200)
                log_info("%s: task %s %s", ew->id, t->id, task_status_name(res->status));
            else
                log_warn("%s: task %s: the API did not take its end (%ld): %s", ew->id, t->id,
                         status, detail_of(reply));
            json_decref(reply);
            break;
        }
        json_decref(reply);
        log_warn("%s: task %s: cannot report its end (%s); retrying", ew->id, t->id,
                 rc < 0 ? c->error : "server error");
        usleep((useconds_t)wait * 1000);
        wait = wait < 5000 ? wait * 2 : 5000;
    }
    json_decref(body);
}

/* The claim answer as a task. NULL if it is not one. */
static struct task *task_of(json_t *o)
{
    struct task *t = task_new();
    const char *id = json_string_value(json_object_get(o, "id"));
    const char *pid = json_string_value(json_object_get(o, "problem_id"));
    json_t *params = json_object_get(o, "parameters");
    const char *deadline = json_string_value(json_object_get(json_object_get(o, "lease"),
                                                             "deadline"));
    json_t *v;

    if (!t || !id || strlen(id) != TASK_ID_LEN || !pid || !json_is_object(params)) {
        task_free(t);
        return NULL;
    }
    memcpy(t->id, id, sizeof(t->id));
    t->problem_id = strdup(pid);
    t->backend_type = strdup(json_string_value(json_object_get(o, "backend_type")) ?: "default");
    t->mode = strdup(json_string_value(json_object_get(o, "mode")) ?: task_mode_name(TASK_BATCH));
    t->status = TASK_RUNNING;
    t->parameters = json_incref(params);
    t->metadata = json_incref(json_object_get(o, "metadata"));
    t->worker_id = strdup(json_string_value(json_object_get(o, "worker_id")) ?: "");
    v = json_object_get(params, "max_steps");
    t->max_steps = json_is_integer(v) ? (int)json_integer_value(v) : 30;
    v = json_object_get(params, "timeout");
    if (json_is_integer(v))
        t->timeout_seconds = (int)json_integer_value(v);
    else
        t->timeout_seconds = (int)(json_number_value(json_object_get(params, "timeout_minutes")) *
                                   60);
    if (deadline && clock_parse(deadline, &t->deadline_at) < 0)
        t->deadline_at = 0;
    if (!t->problem_id || !t->backend_type || !t->mode || !t->worker_id) {
        task_free(t);
        return NULL;
    }
    return t;
}

static void run_one(struct extworker *ew, struct client *c, json_t *claimed)
{
    struct task *t = task_of(claimed);
    struct http_sink hs = {.ew = ew, .c = c};
    struct runner_sink sink = {.ctx = &hs, .logs = sink_logs, .messages = sink_messages,
                               .check = sink_check, .session_ready = sink_session_ready,
                               .session_next = sink_session_next,
                               .session_answer = sink_session_answer,
                               .session_end = sink_session_end, .wake_fd = -1};
    struct runner rn;
    struct runner_result res;
    const json_t *llm = json_object_get(claimed, "llm");
    const char *llm_key = json_string_value(json_object_get(llm, "key"));
    const char *llm_path = json_string_value(json_object_get(llm, "path"));
    char llm_url[512];

    if (!t) {
        log_error("%s: the API sent a task this worker cannot read", ew->id);
        return;
    }
    runner_init(&rn, &ew->cfg, ew->id, ew->has_command ? ew->command.we_wordv : NULL,
                ew->self_exe, ew->script, ew->pythonpath, ew->kubeconfig);
    if (llm_key && llm_path) {
        /* The API we work for records this task's model calls at its gateway. */
        size_t n = strlen(ew->api);

        while (n && ew->api[n - 1] == '/')
            n--;
        snprintf(llm_url, sizeof(llm_url), "%.*s%s", (int)n, ew->api, llm_path);
        rn.llm_url = llm_url;
        rn.llm_key = llm_key;
    }
    pthread_mutex_lock(&ew->lock);
    memcpy(ew->current_task, t->id, sizeof(ew->current_task));
    atomic_store(&ew->stop_task, EXEC_STOP_NONE);
    pthread_mutex_unlock(&ew->lock);
    log_info("%s: running task %s (%s)", ew->id, t->id, t->problem_id);
    runner_run(&rn, &sink, t, &res);
    if (!hs.lost)
        report_end(ew, c, t, &res);
    runner_result_reset(&res);
    pthread_mutex_lock(&ew->lock);
    ew->current_task[0] = '\0';
    pthread_mutex_unlock(&ew->lock);
    task_free(t);
}

static void *signal_main(void *arg)
{
    struct extworker *ew = arg;
    sigset_t set;
    int sig;

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    while (sigwait(&set, &sig) != 0)
        ;
    log_info("%s: signal %d: stopping", ew->id, sig);
    pthread_mutex_lock(&ew->lock);
    atomic_store(&ew->shutdown, true);
    pthread_cond_broadcast(&ew->wake);
    pthread_mutex_unlock(&ew->lock);
    return NULL;
}

static void set_cluster_error(struct extworker *ew, const char *why)
{
    pthread_mutex_lock(&ew->lock);
    snprintf(ew->cluster_error, sizeof(ew->cluster_error), "%s", why ? why : "");
    pthread_mutex_unlock(&ew->lock);
}

static void on_repairing(void *ctx, const char *why)
{
    set_cluster_error(ctx, why);
}

/* After a run: the cluster must be clean and ready before this worker claims again;
 * meanwhile its heartbeats say it is offline and why. */
static void cluster_after_run(struct extworker *ew, struct cluster_care *care)
{
    char error[600];
    bool counted = false;

    while (!atomic_load(&ew->shutdown)) {
        int rc = provision_after_run(care, !counted, error, sizeof(error));

        counted = true;
        if (rc == 0)
            break;
        log_error("%s: %s; it claims nothing until it is fixed (next check in %d s)", ew->id,
                  error, ew->cfg.provision_retry_seconds);
        set_cluster_error(ew, error);
        nap(ew, ew->cfg.provision_retry_seconds * 1000);
    }
    set_cluster_error(ew, NULL);
}

static void claim_loop(struct extworker *ew, struct client *c)
{
    bool kind = !strcmp(ew->cfg.backend_provision, "kind");
    struct cluster_care care = {
        .spec = {.cluster = ew->id, .kubeconfig = ew->kubeconfig,
                 .kind_config = ew->cfg.kind_config,
                 .create_timeout_seconds = ew->cfg.kind_create_timeout_seconds},
        .can_recreate = kind, .recycle_after = ew->cfg.cluster_recycle_after_runs,
        .namespaces = ew->clean_namespaces, .repairing = on_repairing, .ctx = ew};
    bool check = ew->cfg.cluster_check &&
                 (kind || executor_find(ew->cfg.executor)->touches_cluster);
    char path[300];
    int wait = 200;

    snprintf(path, sizeof(path), "/api/v1/workers/%s/claim", ew->id);
    while (!atomic_load(&ew->shutdown)) {
        json_t *reply = NULL;
        long status = 0;

        if (client_call(c, "POST", path, NULL, &status, &reply) < 0) {
            log_warn("%s: cannot reach the API (%s); retrying", ew->id, c->error);
            nap(ew, wait);
            wait = wait < 5000 ? wait * 2 : 5000;
            continue;
        }
        wait = 200;
        if (status == 200) {
            run_one(ew, c, reply);
            if (check)
                cluster_after_run(ew, &care);
        } else if (status == 204) {
            nap(ew, ew->cfg.poll_interval_ms);
        } else if (status == 404) {
            /* The API forgot us (a new database): register again. */
            if (do_register(ew, c) < 0 || client_set_token(c, ew->token) < 0)
                atomic_store(&ew->fatal, true);
        } else if (status == 401) {
            log_error("%s: the API refused our token: another process registered as %s",
                      ew->id, ew->id);
            atomic_store(&ew->fatal, true);
            break;
        } else {
            log_warn("%s: claim failed (%ld): %s", ew->id, status, detail_of(reply));
            nap(ew, ew->cfg.poll_interval_ms);
        }
        json_decref(reply);
        if (atomic_load(&ew->fatal))
            break;
    }
}

/* BACKEND_PROVISION=kind: the cluster named after this worker must answer before it
 * registers, so it never claims a task it cannot run. Retries until it does. */
static int provision_loop(struct extworker *ew)
{
    char dir[PATH_MAX - 256], error[600];
    struct provision_spec spec = {.cluster = ew->id, .kubeconfig = ew->kubeconfig,
                                  .kind_config = ew->cfg.kind_config,
                                  .create_timeout_seconds = ew->cfg.kind_create_timeout_seconds};

    snprintf(dir, sizeof(dir), "%.3000s/kube", ew->cfg.work_dir);
    if (runner_mkdirs(dir) < 0)
        return ERR_IO;
    snprintf(ew->kubeconfig, sizeof(ew->kubeconfig), "%s/%s.yaml", dir, ew->id);
    while (!atomic_load(&ew->shutdown)) {
        if (provision_kind(&spec, error, sizeof(error)) == 0)
            return 0;
        log_error("%s: its cluster is not usable: %s; retrying in %d s", ew->id, error,
                  ew->cfg.provision_retry_seconds);
        nap(ew, ew->cfg.provision_retry_seconds * 1000);
    }
    return ERR_IO;
}

/* Takes --api, --id, --backend-type and --supported-problems out of argv; the rest
 * are settings for config_load. */
static int take_flags(struct extworker *ew, int argc, char **argv, int *rest_argc,
                      char **rest)
{
    const char *problems = NULL;

    ew->api = getenv("TASKEXEC_API") ? getenv("TASKEXEC_API") : "http://127.0.0.1:8000";
    ew->id = getenv("WORKER_ID");
    ew->backend_type = NULL;
    *rest_argc = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = !strcmp(a, "--api") ? &ew->api
                            : !strcmp(a, "--id") ? &ew->id
                            : !strcmp(a, "--backend-type") ? &ew->backend_type
                            : !strcmp(a, "--supported-problems") ? &problems
                                                                 : NULL;
        if (!slot) {
            rest[(*rest_argc)++] = argv[i];
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "taskexec worker: %s needs a value\n", a);
            return ERR_INVALID;
        }
        *slot = argv[++i];
    }
    if (!ew->id || !task_valid_name(ew->id, 128)) {
        fprintf(stderr, "taskexec worker: --id NAME is required (1 to 128 characters from "
                        "[A-Za-z0-9_.:-], e.g. worker-001-kind)\n");
        return ERR_INVALID;
    }
    ew->capabilities = json_object();
    if (problems && *problems) {
        json_t *list = json_array();
        char *copy = strdup(problems), *p, *next;
        for (p = copy; p; p = next) {
            next = strchr(p, ',');
            if (next)
                *next++ = '\0';
            while (*p == ' ')
                p++;
            if (*p)
                json_array_append_new(list, json_string(p));
        }
        free(copy);
        json_object_set_new(ew->capabilities, "supported_problems", list);
    }
    return 0;
}

/* Reads the flags and settings, writes the aiopslab runner if the executor needs it,
 * splits EXECUTOR_COMMAND and finds this program. rest (argc + 1 slots) holds the
 * settings' arguments; it must outlive ew->cfg's load. Returns 0, or -1 after saying
 * why. */
static int setup(struct extworker *ew, int argc, char **argv, char **rest)
{
    int rest_argc = 0;
    ssize_t n;

    if (take_flags(ew, argc, argv, &rest_argc, rest) < 0 ||
        config_load(&ew->cfg, rest_argc, rest) < 0)
        return -1;
    if (!ew->backend_type)
        ew->backend_type = ew->cfg.worker_backend_type;
    /* The settings table has checked LOG_LEVEL, EXECUTOR and the other enumerations. */
    log_set_level((enum log_level)log_parse_level(ew->cfg.log_level));
    if (executor_find(ew->cfg.executor)->start == EXECUTOR_START_RUNNER &&
        runner_write_aiopslab(ew->cfg.work_dir, ew->script, sizeof(ew->script)) < 0) {
        log_error("cannot write the aiopslab runner into WORK_DIR %s", ew->cfg.work_dir);
        return -1;
    }
    if (ew->cfg.aiopslab_dir)
        worker_expand(ew->cfg.aiopslab_dir, ew->id, ew->pythonpath, sizeof(ew->pythonpath));
    if (executor_find(ew->cfg.executor)->start == EXECUTOR_START_COMMAND) {
        if (!ew->cfg.executor_command ||
            wordexp(ew->cfg.executor_command, &ew->command, WRDE_NOCMD) != 0) {
            log_error("EXECUTOR=command needs EXECUTOR_COMMAND, a command line without $(...)");
            return -1;
        }
        ew->has_command = true;
    }
    n = readlink("/proc/self/exe", ew->self_exe, sizeof(ew->self_exe) - 1);
    if (n <= 0)
        return -1;
    ew->self_exe[n] = '\0';
    return 0;
}

/* With the signal thread and the client up: provisions the cluster if asked,
 * registers, and loads the namespaces a run may leave. Returns 0 or -1. */
static int join(struct extworker *ew, struct client *c)
{
    json_t *catalog;

    if (!strcmp(ew->cfg.backend_provision, "kind") && provision_loop(ew) < 0)
        return -1;
    if (do_register(ew, c) < 0 || client_set_token(c, ew->token) < 0)
        return -1;
    catalog = catalog_load(ew->cfg.problems_file);
    ew->clean_namespaces = catalog ? catalog_namespaces(catalog) : NULL;
    json_decref(catalog);
    return ew->clean_namespaces ? 0 : -1;
}

/* Signals go to the signal thread alone; a closed connection is an error, not a
 * signal. Returns 0, or -1 when the thread could not start. */
static int take_signals(struct extworker *ew)
{
    pthread_t sig;
    sigset_t set;

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (pthread_create(&sig, NULL, signal_main, ew) != 0)
        return -1;
    pthread_detach(sig);
    return 0;
}

int extworker_main(int argc, char **argv)
{
    struct extworker ew;
    struct client c;
    pthread_t hb;
    char **rest = calloc((size_t)argc + 1, sizeof(char *));
    int code = 2;
    bool has_client = false, has_hb = false;

    memset(&ew, 0, sizeof(ew));
    pthread_mutex_init(&ew.lock, NULL);
    pthread_cond_init(&ew.wake, NULL);
    if (!rest || setup(&ew, argc, argv, rest) < 0)
        goto out;
    code = 3;
    if (take_signals(&ew) < 0 || client_init(&c, ew.api) < 0)
        goto out_curl;
    has_client = true;
    if (join(&ew, &c) < 0 || pthread_create(&hb, NULL, heartbeat_main, &ew) != 0)
        goto out_curl;
    has_hb = true;
    claim_loop(&ew, &c);
    code = atomic_load(&ew.fatal) ? 3 : 0;
out_curl:
    pthread_mutex_lock(&ew.lock);
    atomic_store(&ew.shutdown, true);
    pthread_cond_broadcast(&ew.wake);
    pthread_mutex_unlock(&ew.lock);
    if (has_hb)
        pthread_join(hb, NULL);
    if (has_client)
        client_reset(&c);
    curl_global_cleanup();
    log_info("%s: stopped", ew.id ? ew.id : "worker");
out:
    if (ew.has_command)
        wordfree(&ew.command);
    json_decref(ew.capabilities);
    json_decref(ew.clean_namespaces);
    config_reset(&ew.cfg);
    free(rest);
    return code;
}
